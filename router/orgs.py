"""Org directories: the protocol, a static directory, and the TTL/LRU single-flight cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from router.errors import ConfigError, DirectoryUnavailableError, ResidencyError, UnknownOrgError
from router.regions import RegionMap
from router.types import PROCESSING_REGIONS, OrgId, OrgResidency, Region, org_id_problem


@runtime_checkable
class OrgDirectory(Protocol):
    """Where org residency records come from; the router always puts a cache in front."""

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        """Return the org's record.

        Raises:
            UnknownOrgError: the org is not in the directory.
            DirectoryUnavailableError: the backend failed; retry later.
        """
        ...


class StaticOrgDirectory:
    """A directory held in memory: regions.yaml ``orgs:`` or a mapping the caller builds."""

    __slots__ = ("_orgs",)

    def __init__(self, orgs: Mapping[str, OrgResidency]) -> None:
        self._orgs: dict[str, OrgResidency] = dict(orgs)

    @classmethod
    def from_region_map(cls, region_map: RegionMap) -> StaticOrgDirectory:
        """Return the directory of a region map's ``orgs:`` section."""
        return cls(region_map.orgs)

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        """Return the org's record.

        Raises:
            UnknownOrgError: the org is not in the mapping.
        """
        try:
            return self._orgs[org_id]
        except KeyError:
            raise UnknownOrgError(org_id) from None


@dataclass(slots=True)
class _Entry:
    record: OrgResidency | None  # None: a cached "unknown org"
    expires_at: float


class CachedOrgDirectory:
    """TTL + LRU cache with per-org single-flight in front of any :class:`OrgDirectory`.

    * Hits are served from memory until ``ttl_s``; unknown orgs are remembered for
      ``negative_ttl_s``; backend errors are never cached.
    * Concurrent misses for one org share one backend lookup; the lookup runs in its own
      task so a cancelled first caller does not break the others, and lookups for other
      orgs are never held up.
    * Each backend lookup is bounded by ``timeout_s``; a timeout or an unexpected backend
      exception becomes :class:`DirectoryUnavailableError`.
    """

    __slots__ = (
        "_clock",
        "_entries",
        "_inflight",
        "_inner",
        "_max_orgs",
        "_negative_ttl_s",
        "_timeout_s",
        "_ttl_s",
        "backend_lookups",
    )

    def __init__(
        self,
        inner: OrgDirectory,
        *,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        max_orgs: int = 100_000,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_orgs = max_orgs
        self._timeout_s = timeout_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[OrgResidency]] = {}
        self.backend_lookups = 0
        """How many lookups reached the backend (for tests and benchmarks)."""

    @property
    def inner(self) -> OrgDirectory:
        """The directory behind the cache."""
        return self._inner

    def cached(self, org_id: str) -> OrgResidency | None:
        """Return a fresh cached record without any I/O, or None (hot path helper)."""
        entry = self._entries.get(org_id)
        if entry is None or entry.record is None or entry.expires_at <= self._clock():
            return None
        return entry.record

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        """Return the org's record, from the cache when fresh.

        Raises:
            UnknownOrgError: the org is not in the directory (cached briefly).
            DirectoryUnavailableError: the backend failed or timed out (not cached).
        """
        entry = self._entries.get(org_id)
        if entry is not None:
            if entry.expires_at > self._clock():
                self._entries.move_to_end(org_id)
                if entry.record is None:
                    raise UnknownOrgError(org_id)
                return entry.record
            del self._entries[org_id]
        task = self._inflight.get(org_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(org_id))
            task.add_done_callback(_consume_exception)
            self._inflight[org_id] = task
        # shield: cancelling one waiter must not cancel the lookup the others wait on.
        return await asyncio.shield(task)

    def invalidate(self, org_id: str) -> None:
        """Drop one org from the cache; its next lookup goes to the backend."""
        self._entries.pop(org_id, None)
        self._inflight.pop(org_id, None)

    def clear(self) -> None:
        """Drop every cached org."""
        self._entries.clear()
        self._inflight.clear()

    async def aclose(self) -> None:
        """Cancel lookups still in flight (the inner directory stays open)."""
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _fetch(self, org_id: OrgId) -> OrgResidency:
        this = asyncio.current_task()
        try:
            self.backend_lookups += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    record = await self._inner.lookup(org_id)
            except UnknownOrgError:
                self._store(org_id, this, None, self._negative_ttl_s)
                raise
            except ResidencyError:
                raise
            except TimeoutError as exc:
                raise DirectoryUnavailableError(
                    f"org directory lookup for {org_id!r} timed out after {self._timeout_s}s"
                ) from exc
            except Exception as exc:
                raise DirectoryUnavailableError(
                    f"org directory lookup for {org_id!r} failed ({type(exc).__name__})"
                ) from exc
            if record.org_id != org_id:
                raise DirectoryUnavailableError(
                    f"org directory answered for {record.org_id!r} when asked for {org_id!r}"
                )
            self._store(org_id, this, record, self._ttl_s)
            return record
        finally:
            if self._inflight.get(org_id) is this:
                del self._inflight[org_id]

    def _store(
        self,
        org_id: str,
        task: asyncio.Task[object] | None,
        record: OrgResidency | None,
        ttl_s: float,
    ) -> None:
        # An invalidate() during the lookup detached this task: its answer may be stale.
        if self._inflight.get(org_id) is not task or ttl_s <= 0:
            return
        self._entries[org_id] = _Entry(record, self._clock() + ttl_s)
        self._entries.move_to_end(org_id)
        while len(self._entries) > self._max_orgs:
            self._entries.popitem(last=False)


def _consume_exception(task: asyncio.Task[OrgResidency]) -> None:
    # Every waiter may have been cancelled; retrieve the error so asyncio does not log it.
    if not task.cancelled():
        task.exception()


_BOOL_FIELDS = ("zero_data_retention", "training_opt_in")


def dynamodb_item(record: OrgResidency) -> dict[str, Any]:
    """Return an org record as a DynamoDB item of ``DynamoDBOrgDirectory``'s schema."""
    item: dict[str, Any] = {
        "org_id": {"S": record.org_id},
        "region": {"S": record.region.value},
        "retention_days": {"N": str(record.retention_days)},
        "zero_data_retention": {"BOOL": record.zero_data_retention},
        "training_opt_in": {"BOOL": record.training_opt_in},
    }
    if record.processing_region is not None:
        item["processing_region"] = {"S": record.processing_region.value}
    return item


class DynamoDBOrgDirectory:
    """Org records in a DynamoDB table; an async context manager (aiobotocore).

    Item schema (partition key ``org_id``, a string)::

        org_id               S     the org id (1-128 ASCII letters, digits, '-', '_')
        region               S     residency region: us, eu, jp, ca, kr, sg or in
        processing_region    S     optional: us or eu
        retention_days       N     optional: inputs/outputs window (default 30)
        zero_data_retention  BOOL  optional (default false)
        training_opt_in      BOOL  optional (default false)

    Lookups are strongly consistent reads. The router puts its cache (TTL, single-flight) in
    front, so a changed record reaches running routers within ``cache_ttl_s``.
    """

    def __init__(
        self,
        table: str,
        *,
        aws_region: str,
        endpoint_url: str | None = None,
        timeout_s: float = 2.0,
        default_retention_days: int = 30,
    ) -> None:
        self.table = table
        self.aws_region = aws_region
        self._endpoint_url = endpoint_url
        self._timeout_s = timeout_s
        self._default_retention_days = default_retention_days
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> DynamoDBOrgDirectory:
        config = AioConfig(
            connect_timeout=self._timeout_s,
            read_timeout=self._timeout_s,
            retries={"total_max_attempts": 2, "mode": "standard"},
            ignore_configured_endpoint_urls=True,
        )
        self._client = await self._stack.enter_async_context(
            get_session().create_client(
                "dynamodb",
                region_name=self.aws_region,
                config=config,
                endpoint_url=self._endpoint_url,
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the DynamoDB client."""
        self._client = None
        await self._stack.aclose()

    def _require(self) -> Any:
        if self._client is None:
            raise RuntimeError("DynamoDBOrgDirectory is not open (use 'async with')")
        return self._client

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        """Return the org's record (a strongly consistent read).

        Raises:
            UnknownOrgError: no item for the org.
            ConfigError: the item breaks the schema (the message names the attribute).
            DirectoryUnavailableError: DynamoDB failed.
        """
        client = self._require()
        try:
            response = await client.get_item(
                TableName=self.table, Key={"org_id": {"S": org_id}}, ConsistentRead=True
            )
        except Exception as exc:
            raise DirectoryUnavailableError(
                f"DynamoDB org directory {self.table} in {self.aws_region} failed "
                f"({type(exc).__name__})"
            ) from exc
        item = response.get("Item")
        if not item:
            raise UnknownOrgError(org_id)
        return self._record(org_id, item)

    async def put(self, record: OrgResidency) -> None:
        """Write one org's record.

        Raises:
            DirectoryUnavailableError: DynamoDB failed.
        """
        try:
            await self._require().put_item(TableName=self.table, Item=dynamodb_item(record))
        except Exception as exc:
            raise DirectoryUnavailableError(
                f"writing to DynamoDB org directory {self.table} failed ({type(exc).__name__})"
            ) from exc

    async def list(self) -> AsyncIterator[OrgResidency]:
        """Yield every org record (a full scan: for tooling, not for the request path).

        Raises:
            DirectoryUnavailableError: DynamoDB failed.
            ConfigError: an item breaks the schema.
        """
        client = self._require()
        start: dict[str, Any] = {}
        while True:
            try:
                page = await client.scan(TableName=self.table, ConsistentRead=True, **start)
            except Exception as exc:
                raise DirectoryUnavailableError(
                    f"scanning DynamoDB org directory {self.table} failed ({type(exc).__name__})"
                ) from exc
            for item in page.get("Items", []):
                org_id = item.get("org_id", {}).get("S", "")
                yield self._record(OrgId(org_id), item)
            if "LastEvaluatedKey" not in page:
                return
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def _record(self, org_id: OrgId, item: dict[str, Any]) -> OrgResidency:
        where = f"{self.table}[{org_id}]"
        if org_id_problem(org_id) is not None:
            raise ConfigError(f"{where}.org_id: {org_id_problem(org_id)}")
        try:
            region = Region(item["region"]["S"])
        except (KeyError, ValueError, TypeError):
            raise ConfigError(f"{where}.region: missing or not a residency region") from None
        processing = None
        if "processing_region" in item:
            try:
                processing = Region(item["processing_region"]["S"])
            except (KeyError, ValueError, TypeError):
                raise ConfigError(f"{where}.processing_region: not a residency region") from None
            if processing not in PROCESSING_REGIONS:
                raise ConfigError(f"{where}.processing_region: processing pins only to us or eu")
        days = self._default_retention_days
        if "retention_days" in item:
            try:
                days = int(item["retention_days"]["N"])
            except (KeyError, ValueError, TypeError):
                raise ConfigError(f"{where}.retention_days: not a number") from None
        flags = {}
        for name in _BOOL_FIELDS:
            value = item.get(name, {"BOOL": False})
            if not isinstance(value, dict) or not isinstance(value.get("BOOL"), bool):
                raise ConfigError(f"{where}.{name}: must be a DynamoDB BOOL")
            flags[name] = value["BOOL"]
        return OrgResidency(
            org_id=org_id,
            region=region,
            processing_region=processing,
            retention_days=days,
            zero_data_retention=flags["zero_data_retention"],
            training_opt_in=flags["training_opt_in"],
        )
