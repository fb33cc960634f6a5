"""The health book: each region's recent outcomes, and its quarantine with a reason."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from router.errors import RegionUnavailableError, ResidencyViolationError, StorageError
from router.types import AwsRegion, HealthState, ProblemKind, RegionHealth

HEALTH_WINDOW = 100
"""How many recent requests of a region its failure rate is computed over."""
DEGRADED_FAILURE_RATE = 0.5
"""A region whose recent failure rate reaches this is reported ``degraded``."""


@dataclass(slots=True)
class _RegionState:
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=HEALTH_WINDOW))
    last_success: float | None = None  # time.time(): converted only when health() is read
    quarantine: tuple[ProblemKind, str] | None = None


class HealthBook:
    """Recent outcomes and quarantines of every AWS region the router uses.

    A quarantined region refuses every operation until :meth:`release` (which the router
    calls when ``verify()`` passes for it again). Only what says something about the region
    counts: caller mistakes and missing objects are never recorded as failures.
    """

    __slots__ = ("_states",)

    def __init__(self, aws_regions: Iterable[AwsRegion]) -> None:
        self._states = {aws_region: _RegionState() for aws_region in aws_regions}

    def success(self, aws_region: AwsRegion) -> None:
        """Record a request the region answered as it should."""
        state = self._states[aws_region]
        state.outcomes.append(True)
        state.last_success = time.time()

    def failure(self, aws_region: AwsRegion) -> None:
        """Record a request the region failed (after retries, or broken off)."""
        self._states[aws_region].outcomes.append(False)

    def quarantine(self, aws_region: AwsRegion, kind: ProblemKind, reason: str) -> None:
        """Refuse every later operation in ``aws_region`` until it is released."""
        state = self._states[aws_region]
        state.outcomes.append(False)
        state.quarantine = (kind, reason)

    def release(self, aws_region: AwsRegion) -> None:
        """Lift a quarantine (verification passed again)."""
        self._states[aws_region].quarantine = None

    def admit(self, aws_region: AwsRegion) -> None:
        """Raise unless the region may be used now.

        Raises:
            ResidencyViolationError: quarantined for a residency violation.
            StorageError: quarantined because AWS refused for good.
            RegionUnavailableError: quarantined as unreachable.
        """
        quarantine = self._states[aws_region].quarantine
        if quarantine is None:
            return
        kind, reason = quarantine
        message = f"region {aws_region} is quarantined until verify() passes: {reason}"
        if kind == "violation":
            raise ResidencyViolationError(message)
        if kind == "storage":
            raise StorageError(message, code="Quarantined")
        raise RegionUnavailableError(message)

    def health(self, aws_region: AwsRegion) -> RegionHealth:
        """Return one region's health."""
        state = self._states[aws_region]
        outcomes = state.outcomes
        rate = (outcomes.count(False) / len(outcomes)) if outcomes else 0.0
        status: HealthState = "ok"
        reason = ""
        if state.quarantine is not None:
            status, reason = "quarantined", state.quarantine[1]
        elif rate >= DEGRADED_FAILURE_RATE or (outcomes and not outcomes[-1]):
            status, reason = "degraded", f"{rate:.0%} of recent requests failed"
        last = state.last_success
        when = None if last is None else datetime.fromtimestamp(last, UTC)
        return RegionHealth(status, when, rate, reason)
