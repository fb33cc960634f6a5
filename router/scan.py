"""The residency audit scan: every version and upload of every bucket, checked object by object."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

from router._s3.clients import RegionClients
from router.regions import RegionMap
from router.types import AuditReport, OrgId, OrgResidency, Region

OrgLookup = Callable[[OrgId], Awaitable[OrgResidency | None]]


class ResidencyScanner:
    """Lists every region's bucket concurrently and checks each version and upload."""

    def __init__(
        self,
        clients: RegionClients,
        region_map: RegionMap,
        *,
        key_arn: Callable[[Region], str | None],
        concurrency: int,
        purge_interval_s: float,
    ) -> None:
        self._clients = clients
        self._map = region_map
        self._key_arn = key_arn
        self._concurrency = concurrency
        self._purge_interval_s = purge_interval_s

    async def scan(
        self,
        regions: Collection[Region],
        now: datetime,
        lookup: OrgLookup,
        progress: Callable[[int], None] | None = None,
    ) -> AuditReport:
        """Check every version and upload in ``regions``' buckets at ``now``."""
        raise NotImplementedError("the residency audit scan is being built (issue 13)")
