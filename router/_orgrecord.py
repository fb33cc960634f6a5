"""The one org-record validator: regions.yaml, DynamoDB items, ``orgs set``, any directory.

A record is its values (region, processing pin, retention, zero data retention, training
opt-in) and, for versioned records, its version, a scheduled change (``effective_at`` with
the ``previous`` values), a move in progress and the regions it has left. Every problem is
returned at once, each starting with ``.field: `` (or ``: `` for the record as a whole), so
callers can prefix their own path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, cast, get_args

from router.inputs import kind_of, plain_str
from router.types import (
    PROCESSING_REGIONS,
    MovePhase,
    OrgId,
    OrgMove,
    OrgResidency,
    OrgValues,
    Region,
    org_id_problem,
)

VALUE_FIELDS = frozenset(
    {"region", "processing_region", "retention_days", "zero_data_retention", "training_opt_in"}
)
VERSION_FIELDS = frozenset({"version", "effective_at", "previous", "move", "moved_from"})
ORG_FIELDS = VALUE_FIELDS | VERSION_FIELDS
_MOVE_FIELDS = frozenset(
    {
        "from_region",
        "to_region",
        "phase",
        "started_at",
        "fence_at",
        "switch_at",
        "objects_copied",
        "bytes_copied",
    }
)
_PHASES = frozenset(get_args(MovePhase))
_REGION_CODES = frozenset(region.value for region in Region)
_REGION_LIST = ", ".join(region.value for region in Region)


def processing_region_problem(
    value: str, configured: Collection[str], without_endpoint: Collection[str]
) -> str | None:
    """What is wrong with a processing region code, given the map's regions, or None."""
    try:
        region = Region(value)
    except ValueError:
        return f"unknown residency region {value!r}"
    if region not in PROCESSING_REGIONS:
        return f"processing can be pinned only to {' or '.join(sorted(PROCESSING_REGIONS))}"
    if region.value not in configured:
        return f"region {value} is not in regions"
    if region.value in without_endpoint:
        return f"regions.{value} has no processing_endpoint"
    return None


def org_record(
    org_id: object,
    fields: object,
    *,
    configured: Collection[str],
    without_endpoint: Collection[str],
    default_days: int,
    allowed_days: Collection[int] | None,
) -> tuple[OrgResidency | None, list[str]]:
    """Validate one org record given as plain fields; return it, or every problem.

    ``fields`` maps field names to plain values (``region`` a code such as ``"eu"``, booleans
    real ``bool``, ``retention_days`` and ``version`` real ``int``, instants aware datetimes
    or ISO 8601 strings, ``previous`` and ``move`` mappings, ``moved_from`` a list of codes).
    """
    problems: list[str] = []
    if (problem := org_id_problem(org_id)) is not None:
        problems.append(f": {problem}")
    if not isinstance(fields, Mapping):
        return None, [*problems, f": expected a mapping of fields, got {kind_of(fields)}"]
    for name in sorted(str(name) for name in fields if name not in ORG_FIELDS):
        problems.append(f".{name}: unknown field (known: {', '.join(sorted(ORG_FIELDS))})")
    rules = _Rules(configured, without_endpoint, default_days, allowed_days)
    values = rules.values(fields, "", problems)
    version = fields.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        problems.append(f".version: expected a whole number from 0, got {kind_of(version)}")
    effective_at = _instant(fields.get("effective_at"), ".effective_at", problems)
    previous = None
    raw_previous = fields.get("previous")
    if raw_previous is not None:
        if not isinstance(raw_previous, Mapping):
            problems.append(f".previous: expected a mapping, got {kind_of(raw_previous)}")
        else:
            for name in sorted(str(n) for n in raw_previous if n not in VALUE_FIELDS):
                problems.append(f".previous.{name}: unknown field")
            previous = rules.values(raw_previous, ".previous", problems)
    if (raw_previous is None) != (fields.get("effective_at") is None):
        problems.append(": effective_at and previous go together (a scheduled change has both)")
    move = rules.move(fields.get("move"), problems)
    moved_from = rules.moved_from(fields.get("moved_from", ()), problems)
    if problems or values is None:
        return None, problems
    return (
        OrgResidency(
            org_id=OrgId(plain_str(org_id)),  # type: ignore[arg-type]
            region=values.region,
            processing_region=values.processing_region,
            retention_days=values.retention_days,
            zero_data_retention=values.zero_data_retention,
            training_opt_in=values.training_opt_in,
            version=int(version),
            effective_at=effective_at,
            previous=previous,
            move=move,
            moved_from=moved_from,
        ),
        [],
    )


def record_fields(record: OrgResidency) -> dict[str, Any]:
    """A record as the plain fields :func:`org_record` takes (to validate a record object)."""
    fields: dict[str, Any] = {name: getattr(record, name) for name in VALUE_FIELDS}
    fields["version"] = record.version
    if record.effective_at is not None:
        fields["effective_at"] = record.effective_at
    if record.previous is not None:
        fields["previous"] = {name: getattr(record.previous, name) for name in VALUE_FIELDS}
    if record.move is not None:
        fields["move"] = {name: getattr(record.move, name) for name in _MOVE_FIELDS}
    if record.moved_from:
        fields["moved_from"] = list(record.moved_from)
    return fields


class _Rules:
    """The map's rules for the values of one record."""

    def __init__(
        self,
        configured: Collection[str],
        without_endpoint: Collection[str],
        default_days: int,
        allowed_days: Collection[int] | None,
    ) -> None:
        self.configured = configured
        self.without_endpoint = without_endpoint
        self.default_days = default_days
        self.allowed_days = allowed_days

    def region(self, value: object, where: str, problems: list[str]) -> Region | None:
        if not isinstance(value, str) or value not in _REGION_CODES:
            problems.append(f"{where}: {value!r} is not a residency region ({_REGION_LIST})")
            return None
        if value not in self.configured:
            problems.append(f"{where}: region {value} is not in regions")
            return None
        return Region(str(value))

    def values(self, fields: Mapping[Any, Any], at: str, problems: list[str]) -> OrgValues | None:
        found = len(problems)
        region = self.region(fields.get("region"), f"{at}.region", problems)
        pin = fields.get("processing_region")
        if pin is not None:
            if not isinstance(pin, str):
                problems.append(
                    f"{at}.processing_region: expected a region code, got {kind_of(pin)}"
                )
            elif (
                problem := processing_region_problem(pin, self.configured, self.without_endpoint)
            ) is not None:
                problems.append(f"{at}.processing_region: {problem}")
        days = fields.get("retention_days", self.default_days)
        if days is None:
            days = self.default_days
        if not isinstance(days, int) or isinstance(days, bool):
            problems.append(
                f"{at}.retention_days: expected a whole number of days, got {kind_of(days)}"
            )
        elif self.allowed_days is not None and days not in self.allowed_days:
            problems.append(
                f"{at}.retention_days: {days} is not one of allowed_days "
                f"{sorted(self.allowed_days)}"
            )
        flags: dict[str, bool] = {}
        for name in ("zero_data_retention", "training_opt_in"):
            value = fields.get(name, False)
            if not isinstance(value, bool):
                problems.append(
                    f"{at}.{name}: expected true or false, got {kind_of(value)} {value!r}"
                )
            flags[name] = value is True
        if len(problems) > found or region is None:
            return None
        return OrgValues(
            region,
            None if pin is None else Region(str(pin)),
            int(days),
            flags["zero_data_retention"],
            flags["training_opt_in"],
        )

    def move(self, raw: object, problems: list[str]) -> OrgMove | None:
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            problems.append(f".move: expected a mapping, got {kind_of(raw)}")
            return None
        found = len(problems)
        for name in sorted(str(n) for n in raw if n not in _MOVE_FIELDS):
            problems.append(f".move.{name}: unknown field")
        source = self.region(raw.get("from_region"), ".move.from_region", problems)
        target = self.region(raw.get("to_region"), ".move.to_region", problems)
        phase = raw.get("phase")
        if phase not in _PHASES:
            problems.append(f".move.phase: {phase!r} is not one of {', '.join(sorted(_PHASES))}")
        started = _instant(raw.get("started_at"), ".move.started_at", problems, required=True)
        fence_at = _instant(raw.get("fence_at"), ".move.fence_at", problems)
        switch_at = _instant(raw.get("switch_at"), ".move.switch_at", problems)
        counts = []
        for name in ("objects_copied", "bytes_copied"):
            count = raw.get(name, 0)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                problems.append(f".move.{name}: expected a whole number from 0")
                count = 0
            counts.append(count)
        if source is not None and source is target:
            problems.append(".move: from_region and to_region are the same")
        if phase in ("fenced", "switched") and fence_at is None:
            problems.append(f".move.fence_at: a {phase} move has a fence instant")
        if phase == "switched" and switch_at is None:
            problems.append(".move.switch_at: a switched move has a switch instant")
        if len(problems) > found or source is None or target is None or started is None:
            return None
        return OrgMove(
            source,
            target,
            cast(MovePhase, phase),
            started,
            fence_at,
            switch_at,
            counts[0],
            counts[1],
        )

    def moved_from(self, raw: object, problems: list[str]) -> tuple[Region, ...]:
        if not isinstance(raw, list | tuple):
            problems.append(f".moved_from: expected a list of region codes, got {kind_of(raw)}")
            return ()
        regions: list[Region] = []
        for index, code in enumerate(raw):
            if not isinstance(code, str) or code not in _REGION_CODES:
                problems.append(f".moved_from[{index}]: {code!r} is not a residency region")
            elif Region(str(code)) not in regions:
                regions.append(Region(str(code)))
        return tuple(regions)


def _instant(
    value: object, where: str, problems: list[str], *, required: bool = False
) -> datetime | None:
    if value is None:
        if required:
            problems.append(f"{where}: missing")
        return None
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            problems.append(f"{where}: {value!r} is not an ISO 8601 instant")
            return None
    if not isinstance(moment, datetime):
        problems.append(f"{where}: expected an instant, got {kind_of(value)}")
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        problems.append(f"{where}: the instant has no timezone")
        return None
    return moment.astimezone(UTC)
