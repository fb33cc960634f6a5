"""Org resolution, warm and cold: the only hot-path module, with one cache (the directory's).

A warm resolution is a dict lookup and a clock read, no await: the cached record and what
the router derives from it (placement, tags) sit in one cache entry, so they expire and are
invalidated together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from router.errors import DirectoryUnavailableError
from router.inputs import object_key, parse_data_class, parse_org_id, plain_object_key
from router.orgs import CachedOrgDirectory
from router.policy import KeptPut, kept_put, placement
from router.records import effective, fence_error, is_fenced, next_instant
from router.regions import RegionMap
from router.types import DataClass, OrgId, OrgResidency, Placement, Region


@dataclass(slots=True)
class Resolved:
    """An org's record as it applies now, with what the hot path derives from it.

    Computed once per cached record and instant: ``until`` is the next instant of the
    record's schedule (a change taking effect, a move's write fence), after which it is
    derived again; ``raw`` is the record as the directory holds it.
    """

    record: OrgResidency
    place: Placement
    raw: OrgResidency
    until: datetime | None = None
    fenced: bool = False
    # By data class: the warm put looks up what the caller passed, a member or its value
    # (a StrEnum member hashes and compares as its value; both keys are set all the same).
    puts: dict[str, KeptPut] = field(default_factory=dict)

    def check_writable(self) -> None:
        """Raise unless the org's writes are allowed now.

        Raises:
            OrgMovingError: the org's writes are fenced while it moves.
        """
        if self.fenced:
            raise fence_error(self.raw)

    def kept_put(self, data_class: DataClass) -> KeptPut:
        """What this org's puts of ``data_class`` share, computed on first use.

        Raises:
            InvalidKeyError: ``inputs_outputs``, recorded only through ``record_exchange``.
        """
        kept = self.puts.get(data_class)
        if kept is None:
            kept = self.puts[data_class] = self.puts[data_class.value] = kept_put(
                self.record, self.place, data_class
            )
        return kept


class Resolver:
    """Turns org ids into :class:`Resolved` records through the cached directory."""

    __slots__ = ("_clock", "_directory", "_key_arns", "_map")

    def __init__(
        self,
        directory: CachedOrgDirectory,
        region_map: RegionMap,
        key_arns: Mapping[Region, str],
        clock: Callable[[], datetime],
    ) -> None:
        self._directory = directory
        self._map = region_map
        self._key_arns = key_arns
        self._clock = clock

    def key_arn(self, region: Region) -> str | None:
        """The key ARN in use for a region, if any yet."""
        return self._key_arns.get(region)

    def rekey(self, key_arns: Mapping[Region, str]) -> None:
        """Use these key ARNs from now on (verification resolved them anew)."""
        if dict(self._key_arns) != dict(key_arns):
            self._key_arns = dict(key_arns)
            self._directory.forget_derived()

    @property
    def directory(self) -> CachedOrgDirectory:
        """The cached directory behind this resolver."""
        return self._directory

    def warm(self, org: str) -> Resolved | None:
        """The org's resolved record when the cache holds it (no await), else None."""
        resolved = self._directory.derived(org)
        if resolved.__class__ is not Resolved:
            return None
        # Records with a schedule are derived again at its next instant (one clock read).
        if resolved.until is not None and self._clock() >= resolved.until:
            return None
        return resolved

    async def resolve(self, org: OrgId) -> Resolved:
        """Resolve through the directory (cache first).

        Raises:
            UnknownOrgError: the org is not in the directory.
            DirectoryUnavailableError: the directory failed, or its record names a region
                the map does not configure; nothing was sent.
        """
        resolved = self.warm(org)
        if resolved is not None:
            return resolved
        raw = await self._directory.lookup(org)
        resolved = self.warm(org)
        if resolved is not None and resolved.raw is raw:
            return resolved
        now = self._clock()
        record = effective(raw, now)
        place = placement(record, self._map, self._key_arns)
        if place is None:
            raise DirectoryUnavailableError(
                f"org directory places org {org} in region {record.region.value}, which the "
                "region map does not configure; nothing was sent"
            )
        resolved = Resolved(record, place, raw, next_instant(raw, now), is_fenced(raw, now))
        self._directory.derive(raw, resolved)
        return resolved

    async def check_writable(self, org: OrgId, region: Region) -> None:
        """Re-check, right before a write commits, that the org still writes to ``region``.

        Raises:
            OrgMovingError: the org's writes are fenced now, or its region has changed.
            UnknownOrgError, DirectoryUnavailableError: as for :meth:`resolve`.
        """
        resolved = await self.resolve(org)
        resolved.check_writable()
        if resolved.place.region is not region:
            raise fence_error(resolved.raw)


def checked_key(org_id: object, key: object, data_class: object) -> tuple[OrgId, DataClass, str]:
    """Apply the id, class and key rules before any lookup; return the full S3 key.

    The common case stays on one fast path (a set hit or one regex for the id, str methods
    for the key); anything else falls back to the full validators, which name the problem.

    Raises:
        TypeError: an argument has the wrong Python type.
        InvalidKeyError: the org id or key breaks a rule.
        InvalidArgumentError: the data class is unknown.
    """
    cls = data_class if data_class.__class__ is DataClass else parse_data_class(data_class)
    if org_id.__class__ is str and key.__class__ is str:
        full = plain_object_key(org_id, cls, key)
        if full is not None:
            org: OrgId = org_id  # type: ignore[assignment]  # checked: an OrgId (no call)
            return org, cls, full
    org = parse_org_id(org_id)
    if not isinstance(key, str):
        raise TypeError(f"object key must be a str, got {type(key).__name__}")
    return org, cls, object_key(org, cls, key)
