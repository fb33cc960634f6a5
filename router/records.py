"""Pure: versioned org records. Which values apply at an instant, scheduled changes, moves.

A change never takes effect at once: it is written as the next version with the values it
replaces (``previous``) and the instant it takes effect (``effective_at``), at least
``cache_ttl_s + clock_skew_s`` after the write. A router that fetched the record before
the write drops it before that instant (its cache entry expires); one that fetched it
after holds both values and switches at the instant. So every router switches together,
stale caches included, without any cross-process invalidation. A move is a sequence of
such changes: start, fence (writes refused from ``fence_at``), switch (the region changes
at ``switch_at``), finish.

No I/O and no clock here: callers pass ``now`` and the delay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from router.errors import (
    InvalidArgumentError,
    OrgMovingError,
    OrgRecordConflictError,
    ResidencyViolationError,
)
from router.types import OrgMove, OrgResidency, Region

CHANGEABLE = frozenset(
    {"processing_region", "retention_days", "zero_data_retention", "training_opt_in"}
)
"""The fields ``update_org`` may change; the storage region changes only through a move."""


def effective(record: OrgResidency, now: datetime) -> OrgResidency:
    """The record as it applies at ``now``: the previous values before ``effective_at``."""
    previous = record.previous
    at = record.effective_at
    if previous is None or at is None or now >= at:
        return record
    return replace(
        record,
        region=previous.region,
        processing_region=previous.processing_region,
        retention_days=previous.retention_days,
        zero_data_retention=previous.zero_data_retention,
        training_opt_in=previous.training_opt_in,
        effective_at=None,
        previous=None,
    )


def next_instant(record: OrgResidency, now: datetime) -> datetime | None:
    """The next instant after ``now`` at which what the record decides changes, or None."""
    instants = [record.effective_at]
    if record.move is not None:
        instants.append(record.move.fence_at)
    later = [at for at in instants if at is not None and at > now]
    return min(later) if later else None


def is_fenced(record: OrgResidency, now: datetime) -> bool:
    """True when the org's writes are refused at ``now``: fenced and not yet switched."""
    move = record.move
    if move is None or move.phase not in ("fenced", "switched"):
        return False
    if move.fence_at is None or now < move.fence_at:
        return False
    return effective(record, now).region is move.from_region


def fence_error(record: OrgResidency) -> OrgMovingError:
    """The error a fenced write raises: when it may be retried, and where reads go."""
    move = record.move
    if move is None:
        return OrgMovingError(
            f"org {record.org_id}'s region changed while the write was under way; retry it "
            "(it goes to the new region); nothing was written"
        )
    switch = move.switch_at.isoformat() if move.switch_at is not None else "not scheduled yet"
    return OrgMovingError(
        f"org {record.org_id} is moving from {move.from_region.value} to "
        f"{move.to_region.value}; its writes are refused until the switch ({switch}); "
        "reads still work; retry the write later; nothing was written"
    )


def is_pending(record: OrgResidency, now: datetime) -> bool:
    """True while a written change has not taken effect yet."""
    return record.effective_at is not None and now < record.effective_at


def schedule_change(
    record: OrgResidency, changes: Mapping[str, object], now: datetime, delay_s: float
) -> OrgResidency:
    """The next version of ``record`` with ``changes`` taking effect ``delay_s`` after ``now``.

    The caller validates the result against the region map before writing it.

    Raises:
        InvalidArgumentError: ``changes`` names a field that is not changeable.
        ResidencyViolationError: ``changes`` names the storage region (use a move).
        OrgMovingError: the org is moving; change it after the move.
        OrgRecordConflictError: a change is still scheduled; write the next after it.
    """
    if "region" in changes:
        raise ResidencyViolationError(
            f"org {record.org_id}: the storage region cannot be changed by an update; "
            "use move_org (residency-router orgs move ORG --to REGION), which moves the data"
        )
    unknown = sorted(set(changes) - CHANGEABLE)
    if unknown:
        raise InvalidArgumentError(
            f"update_org cannot change {', '.join(unknown)} (changeable: "
            f"{', '.join(sorted(CHANGEABLE))})"
        )
    if record.move is not None:
        raise OrgMovingError(
            f"org {record.org_id} is moving to {record.move.to_region.value}; change its "
            "record after the move has finished"
        )
    _check_not_pending(record, now)
    values = record.values
    new = replace(record, **changes)  # type: ignore[arg-type]
    if new.values == values:
        return record
    return replace(
        new,
        version=record.version + 1,
        effective_at=now + timedelta(seconds=delay_s),
        previous=values,
    )


def start_move(record: OrgResidency, to_region: Region, now: datetime) -> OrgResidency:
    """The version that records a move's start (writes and reads stay in the source).

    Raises:
        ResidencyViolationError: the org already lives in ``to_region``.
        OrgMovingError: the org is moving elsewhere.
        OrgRecordConflictError: a change is still scheduled.
    """
    current = effective(record, now)
    if record.move is not None:
        if record.move.phase == "aborting":
            raise OrgMovingError(
                f"org {record.org_id}'s move to {record.move.to_region.value} is being "
                "abandoned; finish that first (residency-router orgs move ORG --abort)"
            )
        if record.move.to_region is to_region:
            return record  # resumed: the caller carries on from the recorded phase
        raise OrgMovingError(
            f"org {record.org_id} is already moving to {record.move.to_region.value}; "
            "finish or abort that move first"
        )
    if current.region is to_region:
        raise ResidencyViolationError(
            f"org {record.org_id} already lives in {to_region.value}; nothing to move"
        )
    _check_not_pending(record, now)
    move = OrgMove(current.region, to_region, "copying", now)
    return replace(record, version=record.version + 1, move=move)


def fence_move(
    record: OrgResidency, now: datetime, delay_s: float, copied: tuple[int, int] = (0, 0)
) -> OrgResidency:
    """The version that fences the org's writes from ``now + delay_s`` until the switch."""
    move = _moving(record, "copying")
    fenced = replace(
        move,
        phase="fenced",
        fence_at=now + timedelta(seconds=delay_s),
        objects_copied=copied[0],
        bytes_copied=copied[1],
    )
    return replace(record, version=record.version + 1, move=fenced)


def switch_move(
    record: OrgResidency, now: datetime, delay_s: float, copied: tuple[int, int]
) -> OrgResidency:
    """The version whose region is the target from ``now + delay_s`` (the switch)."""
    move = _moving(record, "fenced")
    at = now + timedelta(seconds=delay_s)
    switched = replace(
        move, phase="switched", switch_at=at, objects_copied=copied[0], bytes_copied=copied[1]
    )
    return replace(
        record,
        region=move.to_region,
        version=record.version + 1,
        effective_at=at,
        previous=record.values,
        move=switched,
    )


def finish_move(record: OrgResidency) -> OrgResidency:
    """The version after a move: no move, the source added to the regions the org left."""
    move = _moving(record, "switched")
    left = record.moved_from
    if move.from_region not in left:
        left = (*left, move.from_region)
    return replace(record, version=record.version + 1, move=None, moved_from=left)


def abort_move(record: OrgResidency) -> OrgResidency:
    """The version that starts abandoning a move before its switch (writes unfenced).

    Raises:
        OrgMovingError: the switch is already scheduled; the move can only finish.
    """
    move = record.move
    if move is None:
        return record
    if move.phase == "aborting":
        return record  # resumed: the caller finishes the abandonment
    if move.phase == "switched":
        raise OrgMovingError(
            f"org {record.org_id}: the switch to {move.to_region.value} is scheduled "
            f"({move.switch_at.isoformat() if move.switch_at else '?'}); the move can no "
            "longer be abandoned: run it again to finish"
        )
    aborting = replace(move, phase="aborting", fence_at=None, switch_at=None)
    return replace(record, version=record.version + 1, move=aborting)


def finish_abort(record: OrgResidency) -> OrgResidency:
    """The version after an abandoned move: no move (its partial copy is gone)."""
    _moving(record, "aborting")
    return replace(record, version=record.version + 1, move=None)


def erase_regions(record: OrgResidency, now: datetime) -> frozenset[Region]:
    """Where ``erase_org`` may erase this org: its region, regions it left, a move's two."""
    regions = {effective(record, now).region, record.region, *record.moved_from}
    if record.move is not None:
        regions |= {record.move.from_region, record.move.to_region}
    return frozenset(regions)


def _moving(record: OrgResidency, phase: str) -> OrgMove:
    move = record.move
    if move is None or move.phase != phase:
        raise OrgRecordConflictError(
            f"org {record.org_id}: expected its move in phase {phase}, found "
            f"{'no move' if move is None else move.phase}; run the move again to resume"
        )
    return move


def _check_not_pending(record: OrgResidency, now: datetime) -> None:
    if is_pending(record, now):
        assert record.effective_at is not None
        raise OrgRecordConflictError(
            f"org {record.org_id} has a change taking effect at "
            f"{record.effective_at.isoformat()}; write the next change after that instant"
        )
