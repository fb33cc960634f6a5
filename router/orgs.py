"""Org directories: the protocol, static and DynamoDB directories, and the single-flight cache."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from router._dynamodb import DynamoDBOrgDirectory, dynamodb_item
from router.errors import ConfigError, DirectoryUnavailableError, ResidencyError, UnknownOrgError
from router.regions import RegionMap
from router.types import OrgId, OrgResidency

__all__ = [
    "CachedOrgDirectory",
    "DynamoDBOrgDirectory",
    "OrgDirectory",
    "StaticOrgDirectory",
    "WritableOrgDirectory",
    "dynamodb_item",
]

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


@runtime_checkable
class WritableOrgDirectory(OrgDirectory, Protocol):
    """A directory whose records can change at run time (``update_org``, ``move_org``)."""

    async def write(self, record: OrgResidency, *, expected_version: int | None) -> None:
        """Write ``record`` only if the stored version is ``expected_version``.

        ``expected_version`` None means the org must not exist yet.

        Raises:
            OrgRecordConflictError: the stored version differs; nothing was written.
            DirectoryUnavailableError: the backend failed.
        """
        ...


STATIC_REFUSAL = (
    "org records of a static directory (regions.yaml orgs:, or a StaticOrgDirectory) cannot "
    "change at run time: use a DynamoDB directory (set RESIDENCY_DIRECTORY_TABLE; "
    "residency-router orgs set / orgs move) or pass a directory that implements write()"
)


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

    async def write(self, record: OrgResidency, *, expected_version: int | None) -> None:
        """Refuse: a static directory's records change only by editing its source.

        Raises:
            ConfigError: always; the message names the alternative.
        """
        raise ConfigError(STATIC_REFUSAL)


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

    async def fresh(self, org_id: OrgId) -> OrgResidency:
        """Read the org's record from the backend (validated, like any lookup), then cache it.

        Raises:
            UnknownOrgError, DirectoryUnavailableError: as for :meth:`lookup`.
        """
        self.invalidate(org_id)
        return await self.lookup(org_id)

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
        # An entry lives ttl_s from when its lookup was sent, not from when the answer came:
        # a record read at any moment of the lookup is then never held past sent + ttl_s.
        sent = self._clock()
        try:
            self.backend_lookups += 1
            try:
                async with asyncio.timeout(self._timeout_s):
                    record = await self._inner.lookup(org_id)
            except UnknownOrgError:
                self._store(org_id, this, None, sent + self._negative_ttl_s)
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
            self._store(org_id, this, record, sent + self._ttl_s)
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
        expires_at: float,
    ) -> None:
        # An invalidate() during the lookup detached this task: its answer may be stale.
        if self._inflight.get(org_id) is not task or expires_at <= self._clock():
            return
        self._entries[org_id] = _Entry(record, expires_at)
        self._entries.move_to_end(org_id)
        while len(self._entries) > self._max_orgs:
            self._entries.popitem(last=False)


def _consume_exception(task: asyncio.Task[OrgResidency]) -> None:
    # Every waiter may have been cancelled; retrieve the error so asyncio does not log it.
    if not task.cancelled():
        task.exception()
