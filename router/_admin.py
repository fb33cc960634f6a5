"""The router's operations on whole orgs and regions: retention, erasure, changes, moves, audit.

:class:`~router.routing.ResidencyRouter` inherits them; each is resolve, audit, act.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime

from router._resolve import Resolved
from router._startup import RouterLifecycle
from router.errors import InvalidArgumentError, UnknownOrgError
from router.inputs import parse_data_class, parse_now, parse_org_id, parse_region
from router.policy import erase_target
from router.records import erase_regions
from router.scan import ResidencyScanner
from router.types import (
    AuditReport,
    DataClass,
    ErasureReceipt,
    OrgId,
    OrgResidency,
    PurgeReport,
    Region,
)


class OrgAdmin(RouterLifecycle):
    """Operations over whole orgs and regions (the data path is in ``routing``)."""

    async def purge_expired(self, *, now: datetime | None = None) -> PurgeReport:
        """Delete every version of inputs/outputs whose expiry day is on or before ``now``.

        Sweeps every region's bucket (not the directory), and aborts inputs/outputs
        multipart uploads started more than a day before ``now``. ``now`` defaults to the
        router's clock and must be timezone-aware.

        Raises:
            TypeError: ``now`` is not a datetime.
            InvalidArgumentError: ``now`` has no timezone.
            ResidencyError: a region failed; every region was attempted first.
        """
        with self._audit.operation("purge") as op:
            wiring = self._open()
            moment = parse_now(self._clock() if now is None else now)
            op.data_class = DataClass.INPUTS_OUTPUTS.value
            op.acting()
            report = await wiring.sweeper.purge(moment)
            op.items = sum(r.versions for r in report.by_region.values())
        return report

    async def erase_org(
        self,
        org_id: str,
        *,
        data_class: DataClass | str | None = None,
        region: Region | str | None = None,
    ) -> ErasureReceipt:
        """Delete all of an org's data (or one class), every version, and abort its uploads.

        Runs in one region only: the org's. ``region`` names it for an org no longer in the
        directory; for a known org it must be its region, a region it has left (its record's
        move history) or, while it moves, the move's target. Erasing twice is safe.

        Raises:
            UnknownOrgError: the org is not in the directory and no ``region`` was given.
            ResidencyViolationError: ``region`` is one the org never lived in.
            OrgMovingError: the org's writes are fenced while it moves (retry after the
                switch).
            InvalidArgumentError: bad data class, or a region the map does not configure.
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        with self._audit.operation("erase", org_id) as op:
            wiring = self._open()
            org = parse_org_id(org_id)
            cls = None if data_class is None else parse_data_class(data_class)
            named = None if region is None else parse_region(region)
            op.data_class = None if cls is None else cls.value
            try:
                resolved: Resolved | None = await wiring.resolver.resolve(org)
            except UnknownOrgError:
                if named is None:
                    raise
                resolved = None
            record = None if resolved is None else resolved.record
            lived = () if resolved is None else erase_regions(resolved.raw, self._clock())
            target = erase_target(org, record, named, wiring.region_map.regions, lived)
            if resolved is not None and target is resolved.place.region:
                resolved.check_writable()
            op.region = target.value
            op.acting()
            receipt = await wiring.sweeper.erase(wiring.region_map.region(target), org, target, cls)
            op.items = receipt.versions_deleted
        return receipt

    async def audit(
        self,
        *,
        regions: Collection[Region | str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> AuditReport:
        """Scan every bucket of the map (or ``regions``) and report what breaks a promise.

        Every version and every multipart upload is checked: the org's region (an org
        mid-move may be in either of its two), an org the directory knows, SSE-KMS under the
        region's key, the residency tags, exchanges kept past expiry by more than one sweep
        (``purge_interval_s``), uploads older than a day. Regions are listed concurrently, a
        page at a time; ``progress`` is called with the running count of versions checked.
        A region that cannot be checked is named in ``unchecked`` (the report is not ok).

        Raises:
            InvalidArgumentError: a region is not in the map.
        """
        with self._audit.operation("audit") as op:
            wiring = self._open()
            chosen = _chosen_regions(wiring.region_map.regions, regions)
            op.acting()
            scanner = ResidencyScanner(
                wiring.clients,
                wiring.region_map,
                key_arn=wiring.resolver.key_arn,
                concurrency=self._settings.audit_concurrency,
                purge_interval_s=self._settings.purge_interval_s,
            )
            report = await scanner.scan(chosen, self._clock(), self._org_record, progress)
            op.items = len(report.findings)
        return report

    async def _org_record(self, org_id: OrgId) -> OrgResidency | None:
        """The org's record (through the cache), or None for an org the directory lacks."""
        try:
            return await self._open().resolver.directory.lookup(org_id)
        except UnknownOrgError:
            return None


def _chosen_regions(
    configured: Collection[Region], regions: Collection[Region | str] | None
) -> list[Region]:
    if regions is None:
        return list(configured)
    if isinstance(regions, str):
        regions = [regions]
    chosen = [parse_region(region) for region in regions]
    for region in chosen:
        if region not in configured:
            raise InvalidArgumentError(f"region {region.value} is not in the region map")
    return list(dict.fromkeys(chosen))
