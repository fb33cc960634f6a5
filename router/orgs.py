"""Org directories: the protocol, static and DynamoDB directories, and the single-flight cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from router._aws import Transport, new_aio_session, open_aio_client
from router._retry import RetryPolicy
from router.errors import DirectoryUnavailableError, ResidencyError, UnknownOrgError
from router.inputs import org_record
from router.regions import RegionMap
from router.types import OrgId, OrgResidency, Region

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

RecordCheck = Callable[[object], tuple[OrgResidency | None, list[str]]]


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
    derived: Any = None  # what the router derives from the record, computed once


class CachedOrgDirectory:
    """TTL + LRU cache with per-org single-flight in front of any :class:`OrgDirectory`.

    * Hits are served from memory until ``ttl_s``; unknown orgs are remembered for
      ``negative_ttl_s``; backend errors are never cached.
    * Concurrent misses for one org share one backend lookup; the lookup runs in its own
      task so a cancelled first caller does not break the others, and lookups for other
      orgs are never held up.
    * Each backend lookup is bounded by ``timeout_s``; a timeout or an unexpected backend
      exception becomes :class:`DirectoryUnavailableError`.
    * With ``check`` (the router passes its region map's record validator), every record the
      backend returns is validated; a bad one is :class:`DirectoryUnavailableError`.
    """

    __slots__ = (
        "_check",
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
        check: RecordCheck | None = None,
    ) -> None:
        self._inner = inner
        self._check = check
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

    def derived(self, org_id: str) -> Any:
        """Return what was derived from a fresh cached record (:meth:`derive`), or None."""
        entry = self._entries.get(org_id)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry.derived

    def forget_derived(self) -> None:
        """Drop every derived value (what they were derived from besides records changed)."""
        for entry in self._entries.values():
            entry.derived = None

    def derive(self, record: OrgResidency, value: Any) -> None:
        """Keep ``value`` beside ``record`` while that record is the cached one."""
        entry = self._entries.get(record.org_id)
        if entry is not None and entry.record is record:
            entry.derived = value

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
            record = self._checked(org_id, record)
            self._store(org_id, this, record, self._ttl_s)
            return record
        finally:
            if self._inflight.get(org_id) is this:
                del self._inflight[org_id]

    def _checked(self, org_id: OrgId, record: object) -> OrgResidency:
        if not isinstance(record, OrgResidency):
            raise DirectoryUnavailableError(
                f"org directory returned {type(record).__name__} for {org_id!r}, "
                "not an OrgResidency; nothing was sent"
            )
        checked = record
        if self._check is not None:
            valid, problems = self._check(record)
            if valid is None:
                raise DirectoryUnavailableError(
                    f"org directory returned a bad record for {org_id!r}; nothing was sent: "
                    + "; ".join(f"{org_id}{problem}" for problem in problems)
                )
            checked = valid
        # Compared after validation, as exact strings: a str subclass cannot pass for another.
        if checked.org_id.__class__ is not str or str.__eq__(checked.org_id, org_id) is not True:
            raise DirectoryUnavailableError(
                f"org directory answered for another org when asked for {org_id!r}; "
                "nothing was sent"
            )
        return checked

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


_ITEM_TYPES = {
    "region": "S",
    "processing_region": "S",
    "retention_days": "N",
    "zero_data_retention": "BOOL",
    "training_opt_in": "BOOL",
}


def _item_fields(item: Mapping[str, Any]) -> tuple[dict[str, object], list[str]]:
    """Turn a DynamoDB item's attributes into plain fields for the record validator."""
    fields: dict[str, object] = {}
    problems: list[str] = []
    for name, value in item.items():
        if name == "org_id":
            continue
        kind = _ITEM_TYPES.get(name)
        if kind is None:
            fields[name] = value  # the validator names unknown fields
            continue
        if not isinstance(value, Mapping) or set(value) != {kind}:
            problems.append(f".{name}: must be a DynamoDB {kind}")
            continue
        raw = value[kind]
        if kind == "N":
            try:
                fields[name] = int(str(raw), 10)
            except ValueError:
                problems.append(f".{name}: {raw!r} is not a whole number")
        else:
            fields[name] = raw
    return fields, problems


class DynamoDBOrgDirectory:
    """Org records in a DynamoDB table; an async context manager (aiobotocore).

    Item schema (partition key ``org_id``, a string)::

        org_id               S     the org id (1-128 ASCII letters, digits, '-', '_')
        region               S     residency region: us, eu, jp, ca, kr, sg or in
        processing_region    S     optional: us or eu
        retention_days       N     optional: inputs/outputs window (default 30)
        zero_data_retention  BOOL  optional (default false)
        training_opt_in      BOOL  optional (default false)

    Lookups are strongly consistent reads through a client from the one factory (no
    redirects, no environment endpoints or proxies). Every item is checked by the one
    org-record validator (against ``region_map`` when given); a bad item is
    :class:`DirectoryUnavailableError`. The router puts its cache in front.
    """

    def __init__(
        self,
        table: str,
        *,
        aws_region: str,
        endpoint_url: str | None = None,
        timeout_s: float = 2.0,
        region_map: RegionMap | None = None,
        proxy_url: str | None = None,
    ) -> None:
        self.table = table
        self.aws_region = aws_region
        self._transport = Transport(
            endpoint_url=endpoint_url,
            proxy_url=proxy_url,
            connect_timeout_s=timeout_s,
            read_timeout_s=timeout_s,
        )
        self._retry = RetryPolicy(2, timeout_s)
        self._map = region_map
        self._stack = contextlib.AsyncExitStack()
        self._client: DynamoDBClient | None = None

    async def __aenter__(self) -> DynamoDBOrgDirectory:
        self._client = await self._stack.enter_async_context(
            open_aio_client(new_aio_session(), "dynamodb", self.aws_region, self._transport)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the DynamoDB client."""
        self._client = None
        await self._stack.aclose()

    def _require(self) -> DynamoDBClient:
        if self._client is None:
            raise RuntimeError("DynamoDBOrgDirectory is not open (use 'async with')")
        return self._client

    async def _call(self, what: str, operation: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            try:
                return await operation()
            except Exception as exc:
                return await self._retry.after_first(operation, exc, started)
        except ResidencyError as exc:
            raise DirectoryUnavailableError(
                f"{what} DynamoDB org directory {self.table} in {self.aws_region} was refused: "
                f"{exc}"
            ) from exc
        except Exception as exc:
            raise DirectoryUnavailableError(
                f"{what} DynamoDB org directory {self.table} in {self.aws_region} failed "
                f"({type(exc).__name__})"
            ) from exc

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        """Return the org's record (a strongly consistent read).

        Raises:
            UnknownOrgError: no item for the org.
            DirectoryUnavailableError: DynamoDB failed, or the item breaks the schema (the
                message names the attribute).
        """
        client = self._require()
        response = await self._call(
            "reading",
            lambda: client.get_item(
                TableName=self.table, Key={"org_id": {"S": org_id}}, ConsistentRead=True
            ),
        )
        item = response.get("Item")
        if not item:
            raise UnknownOrgError(org_id)
        return self.record(item)

    async def put(self, record: OrgResidency) -> None:
        """Write one org's record.

        Raises:
            DirectoryUnavailableError: DynamoDB failed.
        """
        client = self._require()
        await self._call(
            "writing to", lambda: client.put_item(TableName=self.table, Item=dynamodb_item(record))
        )

    async def list(self) -> AsyncIterator[OrgResidency | DirectoryUnavailableError]:
        """Yield every org record, or the error of an item that breaks the schema.

        A full scan, for tooling: a malformed item is yielded as its error so that the rest
        can still be listed.

        Raises:
            DirectoryUnavailableError: DynamoDB failed.
        """
        client = self._require()
        start: dict[str, Any] = {}
        while True:
            page = await self._call(
                "scanning",
                lambda start=start: client.scan(  # type: ignore[misc]
                    TableName=self.table, ConsistentRead=True, **start
                ),
            )
            for item in page.get("Items", []):
                try:
                    yield self.record(item)
                except DirectoryUnavailableError as exc:
                    yield exc
            if "LastEvaluatedKey" not in page:
                return
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def record(self, item: Mapping[str, Any]) -> OrgResidency:
        """Validate one item with the one org-record validator.

        Raises:
            DirectoryUnavailableError: the item breaks the schema.
        """
        raw_id = item.get("org_id")
        org_id = raw_id.get("S") if isinstance(raw_id, Mapping) else None
        fields, problems = _item_fields(item)
        if self._map is not None:
            record, found = self._map.org_record(org_id, fields)
        else:
            record, found = org_record(
                org_id,
                fields,
                configured={region.value for region in Region},
                without_endpoint=(),
                default_days=30,
                allowed_days=None,
            )
        problems += found
        if problems or record is None:
            where = f"{self.table}[{org_id}]"
            raise DirectoryUnavailableError(
                "bad org record in the DynamoDB directory; nothing was sent: "
                + "; ".join(f"{where}{problem}" for problem in problems)
            )
        return record
