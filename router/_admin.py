"""The router's operations on whole orgs and regions: retention, erasure, changes, moves, audit.

:class:`~router.routing.ResidencyRouter` inherits them; each is resolve, audit, act.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime
from functools import partial
from types import EllipsisType

from router._resolve import Resolved
from router._s3.copy import Copier
from router._startup import RouterLifecycle
from router.errors import ConfigError, InvalidArgumentError, UnknownOrgError
from router.inputs import parse_data_class, parse_now, parse_org_id, parse_region
from router.moves import Mover
from router.orgs import STATIC_REFUSAL, StaticOrgDirectory, WritableOrgDirectory
from router.policy import erase_target
from router.records import erase_regions, schedule_change
from router.scan import ResidencyScanner
from router.types import (
    AuditReport,
    DataClass,
    ErasureReceipt,
    MoveReceipt,
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
            check = None
            if resolved is not None and target is resolved.place.region:
                check = partial(wiring.resolver.check_writable, org, target)
            receipt = await wiring.sweeper.erase(
                wiring.region_map.region(target), org, target, cls, before_each=check
            )
            op.items = receipt.versions_deleted
        return receipt

    async def update_org(
        self,
        org_id: str,
        *,
        processing_region: Region | str | EllipsisType | None = ...,
        retention_days: int | EllipsisType = ...,
        zero_data_retention: bool | EllipsisType = ...,
        training_opt_in: bool | EllipsisType = ...,
    ) -> OrgResidency:
        """Schedule a change to an org's record; return the written record.

        Only the fields given change (``processing_region=None`` removes the pin). The
        change is written as the next version, conditional on the current one, and takes
        effect at the returned record's ``effective_at``: ``cache_ttl_s + clock_skew_s``
        after now, so every router (stale caches included) switches at that instant. Until
        then every router applies the previous values. Nothing changes (and nothing is
        written) when the values are already those.

        Raises:
            TypeError: a value has the wrong Python type.
            ConfigError: the directory is static (regions.yaml): it cannot change at run
                time; the message names the alternative.
            InvalidArgumentError: a value breaks the map's rules (the message lists each).
            OrgMovingError: the org is moving; change it after the move.
            OrgRecordConflictError: another change came first, or one is still scheduled.
            UnknownOrgError, DirectoryUnavailableError: as for ``put``.
        """
        with self._audit.operation("update_org", org_id) as op:
            wiring = self._open()
            org = parse_org_id(org_id)
            changes = _changes(
                processing_region, retention_days, zero_data_retention, training_opt_in
            )
            writer = self._writer()
            current = await wiring.resolver.directory.fresh(org)
            op.at(current.region.value)
            # The values first (what to fix), then whether the record may change now.
            _, problems = wiring.region_map.check_org(replace(current, **changes))  # type: ignore[arg-type]
            if problems:
                raise InvalidArgumentError(
                    f"update_org: the change breaks the region map's rules; nothing was "
                    f"written: {'; '.join(f'{org}{p}' for p in problems)}"
                )
            new = schedule_change(current, changes, self._clock(), self._settings.change_delay_s)
            if new is current:
                op.skipped()
                return current
            checked, problems = wiring.region_map.check_org(new)
            if checked is None:
                raise InvalidArgumentError(
                    f"update_org: the scheduled record is invalid; nothing was written: "
                    f"{'; '.join(f'{org}{p}' for p in problems)}"
                )
            op.acting()
            await writer.write(checked, expected_version=current.version)
            wiring.resolver.directory.invalidate(org)
        return checked

    async def move_org(
        self,
        org_id: str,
        to_region: Region | str,
        *,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> MoveReceipt:
        """Move an org's data to ``to_region`` while it keeps working; return the receipt.

        Copies every current object server-side under the target's KMS key while the org
        writes to the source, fences its writes (``OrgMovingError`` on every router from the
        fence to the switch; reads keep working), copies what changed, verifies every object
        (size and SHA-256), switches every router to the target at one instant, then deletes
        everything of the org in the source. Each phase is recorded in the org's record:
        running it again resumes where it stopped. ``dry_run`` reports the objects, bytes
        and phases without changing anything. ``progress`` is called with the running
        objects and bytes copied.

        Raises:
            ConfigError: the directory is static, or ``to_region`` is not in the map.
            InvalidArgumentError: ``to_region`` is not a residency region.
            ResidencyViolationError: the org already lives in ``to_region``.
            OrgMovingError: the org is moving to another region.
            OrgRecordConflictError: the record changed under the move; run it again.
            ResidencyError: S3 or the directory failed; run it again to resume.
        """
        with self._audit.operation("move_org", org_id) as op:
            self._open()
            org = parse_org_id(org_id)
            target = self._configured(parse_region(to_region))
            op.region = target.value
            writer = self._writer() if not dry_run else None
            mover = self._mover(writer, progress)
            op.acting()
            receipt = await mover.move(org, target, dry_run=dry_run)
            op.items = receipt.objects_copied
            if dry_run:
                op.skipped()
        return receipt

    async def abort_move(self, org_id: str) -> MoveReceipt | None:
        """Abandon an org's move before its switch: unfence its writes, delete the copy.

        Returns None when the org is not moving.

        Raises:
            ConfigError: the directory is static.
            OrgMovingError: the switch is scheduled: the move can only be finished.
            ResidencyError: S3 or the directory failed; run it again.
        """
        with self._audit.operation("abort_move", org_id) as op:
            org = parse_org_id(org_id)
            mover = self._mover(self._writer(), None)
            op.acting()
            receipt = await mover.abort(org)
            if receipt is None:
                op.skipped()
        return receipt

    def _writer(self) -> WritableOrgDirectory:
        inner = self._open().resolver.directory.inner
        if isinstance(inner, StaticOrgDirectory) or not isinstance(inner, WritableOrgDirectory):
            raise ConfigError(STATIC_REFUSAL)
        return inner

    def _configured(self, region: Region) -> Region:
        if region not in self._open().region_map.regions:
            raise ConfigError(f"region {region.value} is not in the region map")
        return region

    def _mover(
        self, writer: WritableOrgDirectory | None, progress: Callable[[int, int], None] | None
    ) -> Mover:
        wiring = self._open()
        return Mover(
            directory=wiring.resolver.directory,
            writer=writer,
            bulk=wiring.bulk,
            copier=Copier(wiring.clients),
            region_map=wiring.region_map,
            key_arn=wiring.resolver.key_arn,
            settings=self._settings,
            clock=self._clock,
            progress=progress,
        )

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


def _changes(
    processing_region: object, retention_days: object, zero_data_retention: object, training: object
) -> dict[str, object]:
    """The fields ``update_org`` was given, type-checked (the map's rules come after)."""
    changes: dict[str, object] = {}
    if processing_region is not ...:
        changes["processing_region"] = (
            None if processing_region is None else parse_region(processing_region)
        )
    if retention_days is not ...:
        if not isinstance(retention_days, int) or isinstance(retention_days, bool):
            raise TypeError(f"retention_days must be an int, got {type(retention_days).__name__}")
        changes["retention_days"] = retention_days
    for name, value in (
        ("zero_data_retention", zero_data_retention),
        ("training_opt_in", training),
    ):
        if value is not ...:
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
            changes[name] = value
    return changes


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
