"""Live, fenced moves of an org between regions, recorded in its record so that they resume.

The timeline (``delay`` = ``cache_ttl_s + clock_skew_s``; ``longest`` = the longest one
request can take, :attr:`RouterSettings.longest_request_s`)::

    start    record the move; the org keeps reading and writing in the source
    copy     copy every current object server-side to the target (bounded concurrency)
    fence    schedule the write fence at now + delay: from it, every router refuses the
             org's writes (OrgMovingError, retryable) and still reads from the source
    settle   wait until fence + longest: every write accepted before the fence has ended
             (a multipart upload or streamed write re-checks the record before it commits)
    delta    copy what changed since the first pass, delete copies of what was deleted,
             abort the org's uploads in the source; every object is verified (same size
             and SHA-256 checksum in both regions) when it is copied, and a pair whose
             ETags are unchanged since, as listed, is not compared again
    switch   schedule the switch at now + delay: from it, every router reads and writes
             the target only; writes are refused only between the fence and the switch
    drain    wait until switch + longest: every read of the source has ended
    clean    copy any object a misbehaving router left in the source since (never delete
             what the target lacks), then delete every version, delete marker and upload
             of the org in the source; record the source in the org's ``moved_from``

Each phase is written to the org's record (a conditional write) before it acts, so running
the move again resumes where it stopped, and a move can be abandoned before its switch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from router._s3.bulk import BulkStore
from router._s3.copy import Copier, Fingerprint
from router.config import RouterSettings
from router.errors import ObjectNotFoundError, OrgRecordConflictError, StorageError, first_error
from router.inputs import org_prefix
from router.orgs import CachedOrgDirectory, WritableOrgDirectory
from router.records import (
    abort_move,
    effective,
    fence_move,
    finish_abort,
    finish_move,
    start_move,
    switch_move,
)
from router.regions import RegionMap
from router.types import MoveReceipt, OrgId, OrgResidency, Placement, Region

RECHECK_S = 2.0
"""How often a running copy re-reads the org's record (an abort stops it within this)."""

Progress = Callable[[int, int], None]
"""Called with the running totals of objects and bytes copied."""


@dataclass(slots=True)
class _Tally:
    objects: int = 0
    bytes: int = 0
    versions_deleted: int = 0
    uploads_aborted: int = 0
    phases: list[str] = field(default_factory=list)


class Mover:
    """Carries out one org's move (or its abandonment) through the directory and S3."""

    def __init__(
        self,
        *,
        directory: CachedOrgDirectory,
        writer: WritableOrgDirectory | None,
        bulk: BulkStore,
        copier: Copier,
        region_map: RegionMap,
        key_arn: Callable[[Region], str | None],
        settings: RouterSettings,
        clock: Callable[[], datetime],
        progress: Progress | None = None,
    ) -> None:
        self._directory = directory
        self._writer = writer
        self._bulk = bulk
        self._copier = copier
        self._map = region_map
        self._key_arn = key_arn
        self._delay_s = settings.change_delay_s
        # A router whose clock is behind by up to clock_skew_s still acts until then.
        self._longest_s = settings.longest_request_s + settings.clock_skew_s
        self._concurrency = settings.move_concurrency
        self._clock = clock
        self._progress = progress
        self._expected: OrgResidency | None = None
        self._verified: dict[str, tuple[str, str]] = {}
        """Per key: the source's and the copy's version ids when this move last verified
        the copy. Lost with the process: a resumed move copies everything again."""

    def placement(self, org: OrgId, region: Region) -> Placement:
        """Where ``org``'s data lives in ``region``."""
        cfg = self._map.region(region)
        return Placement(
            org, region, cfg.aws_region, cfg.bucket, self._key_arn(region) or cfg.kms_key
        )

    async def move(self, org: OrgId, to_region: Region, *, dry_run: bool = False) -> MoveReceipt:
        """Move ``org`` to ``to_region``, resuming a recorded move; see the module's timeline.

        Raises:
            ConfigError: the directory cannot change at run time.
            OrgMovingError: the org is moving elsewhere.
            OrgRecordConflictError: the record changed under the move, or a change is
                still scheduled; run the move again.
            ResidencyViolationError: the org already lives in ``to_region``, or a copy was
                not under the target's key.
            StorageError: verification found an object that differs in the target.
            ResidencyError: S3 or the directory failed; run the move again to resume.
        """
        record = await self._directory.fresh(org)
        if dry_run:
            return await self._plan(record, to_region)
        record = await self._write(record, start_move(record, to_region, self._clock()))
        try:
            return await self._phases(record)
        except OrgRecordConflictError:
            await self._clean_if_abandoned(org, to_region)
            raise

    async def _clean_if_abandoned(self, org: OrgId, region: Region) -> None:
        """Delete this move's copies in ``region`` if the org no longer moves there.

        Called after losing the record to another writer (an abort raced with a copy).
        """
        record = await self._directory.fresh(org)
        move = record.move
        lived = {record.region, effective(record, self._clock()).region, *record.moved_from}
        still = move is not None and move.phase != "aborting" and move.to_region is region
        if region in lived or still:
            return
        target = self.placement(org, region)
        await self._bulk.delete_prefix(target, org_prefix(org))
        await self._bulk.abort_uploads(target, org_prefix(org))

    async def _phases(self, record: OrgResidency) -> MoveReceipt:
        """Carry out the move from its recorded phase to the end."""
        org = record.org_id
        tally = _Tally()
        move = record.move
        assert move is not None
        source = self.placement(org, move.from_region)
        target = self.placement(org, move.to_region)
        if move.phase == "copying":
            await self._sync(source, target, tally, verify=False)
            tally.phases.append(f"copied {tally.objects} objects ({tally.bytes} bytes)")
            copied = (tally.objects, tally.bytes)
            record = await self._write(
                record, fence_move(record, self._clock(), self._delay_s, copied)
            )
            tally.objects = tally.bytes = 0  # counted in the record from here on
            move = record.move
            assert move is not None
        if move.phase == "fenced":
            assert move.fence_at is not None
            tally.phases.append(f"writes fenced from {move.fence_at.isoformat()}")
            await self._wait_until(move.fence_at, self._longest_s)
            await self._still_current()  # an abort meanwhile: stop before acting
            before = tally.objects
            await self._sync(source, target, tally, verify=True)
            await self._still_current()
            tally.uploads_aborted += await self._bulk.abort_uploads(source, org_prefix(org))
            tally.phases.append(
                f"copied {tally.objects - before} changed objects and verified every object"
            )
            copied = (move.objects_copied + tally.objects, move.bytes_copied + tally.bytes)
            record = await self._write(
                record, switch_move(record, self._clock(), self._delay_s, copied)
            )
            tally.objects = tally.bytes = 0
            move = record.move
            assert move is not None
        assert move.switch_at is not None
        assert move.fence_at is not None
        tally.phases.append(f"switch to {move.to_region.value} at {move.switch_at.isoformat()}")
        await self._wait_until(move.switch_at, self._longest_s)
        await self._still_current()
        prefix = org_prefix(org)
        await self._refuse_late_writes(source, move.fence_at)
        _, versions = await self._bulk.delete_prefix(source, prefix)
        tally.versions_deleted += versions
        tally.uploads_aborted += await self._bulk.abort_uploads(source, prefix)
        tally.phases.append(f"deleted {tally.versions_deleted} versions in the source")
        record = await self._write(record, finish_move(record))
        return MoveReceipt(
            org_id=org,
            from_region=move.from_region,
            to_region=move.to_region,
            objects_copied=move.objects_copied,
            bytes_copied=move.bytes_copied,
            versions_deleted=tally.versions_deleted,
            uploads_aborted=tally.uploads_aborted,
            writes_fenced_s=(move.switch_at - move.fence_at).total_seconds(),
            started_at=move.started_at,
            finished_at=self._clock(),
            phases=tuple(tally.phases),
        )

    async def abort(self, org: OrgId) -> MoveReceipt | None:
        """Abandon ``org``'s move before its switch: unfence, delete the partial copy.

        Two recorded steps, so that an interrupted abort is finished by running it again:
        the move is marked ``aborting`` (writes are no longer fenced; ``erase_org`` may
        still erase in the target), a running mover stops at its next look at the record,
        the copy in the target is deleted once copies under way have ended, and only then
        is the move removed from the record. Returns None when the org is not moving.

        Raises:
            OrgMovingError: the switch is already scheduled; the move can only finish.
            ResidencyError: as for :meth:`move`.
        """
        record = await self._directory.fresh(org)
        move = record.move
        if move is None:
            return None
        started = self._clock()
        record = await self._write(record, abort_move(record))
        # A mover elsewhere sees the record change within RECHECK_S; its copy under way
        # then ends within the longest request.
        await self._wait_until(started, RECHECK_S + self._longest_s)
        target = self.placement(org, move.to_region)
        prefix = org_prefix(org)
        _, versions = await self._bulk.delete_prefix(target, prefix)
        uploads = await self._bulk.abort_uploads(target, prefix)
        await self._write(record, finish_abort(record))
        return MoveReceipt(
            org_id=org,
            from_region=move.from_region,
            to_region=move.to_region,
            objects_copied=0,
            bytes_copied=0,
            versions_deleted=versions,
            uploads_aborted=uploads,
            writes_fenced_s=0.0,
            started_at=move.started_at,
            finished_at=self._clock(),
            phases=(
                f"move abandoned in phase {move.phase}; writes unfenced",
                f"deleted the partial copy in {move.to_region.value} ({versions} versions)",
            ),
        )

    async def _plan(self, record: OrgResidency, to_region: Region) -> MoveReceipt:
        """What a move would do, without changing anything."""
        now = self._clock()
        start_move(record, to_region, now)  # raises as the move itself would
        from_region = record.region if record.move is None else record.move.from_region
        source = self.placement(record.org_id, from_region)
        objects = size = 0
        async for found in self._bulk.list_objects(source, org_prefix(record.org_id)):
            objects += 1
            size += found.size
        phase = "not started" if record.move is None else f"in phase {record.move.phase}"
        return MoveReceipt(
            org_id=record.org_id,
            from_region=from_region,
            to_region=to_region,
            objects_copied=objects,
            bytes_copied=size,
            versions_deleted=0,
            uploads_aborted=0,
            writes_fenced_s=0.0,
            started_at=now,
            finished_at=self._clock(),
            dry_run=True,
            phases=(
                f"move {phase}: nothing was changed",
                f"copy {objects} objects ({size} bytes) from {from_region.value} to "
                f"{to_region.value} under {to_region.value}'s KMS key, while writes go on",
                f"fence writes {self._delay_s:g}s after the copy, wait {self._longest_s:g}s "
                "for writes under way, copy the changes, verify every object",
                f"switch to {to_region.value} {self._delay_s:g}s later (writes refused from "
                "the fence to the switch)",
                f"wait {self._longest_s:g}s for reads under way, then delete every version "
                f"and upload of the org in {from_region.value}",
            ),
        )

    async def _write(self, current: OrgResidency, new: OrgResidency) -> OrgResidency:
        if new is current:
            self._expected = current
            return current
        if self._writer is None:
            raise RuntimeError("this Mover was made for a dry run; it writes nothing")
        await self._writer.write(new, expected_version=current.version)
        self._directory.invalidate(current.org_id)
        self._expected = new
        return new

    async def _wait_until(self, instant: datetime, extra_s: float) -> None:
        while True:
            left = (instant - self._clock()).total_seconds() + extra_s
            if left <= 0:
                return
            await asyncio.sleep(min(left, 1.0))

    async def _sync(
        self, source: Placement, target: Placement, tally: _Tally, *, verify: bool
    ) -> None:
        """Make the target's current objects the source's; delete copies of deleted ones.

        Every object is copied unless this move already copied that very version and the
        copy is still the target's current version (as the version listings say): a copy is
        verified from the copy's own answer (size and SHA-256 checksum of the version
        copied). ``verify``:
        every object must end verified. The record is re-read every few seconds; a move
        changed by another writer (abandoned, say) stops.
        """
        await self._still_current()
        prefix = org_prefix(source.org_id)
        held = {key: version async for key, version, _ in self._bulk.list_current(target, prefix)}
        seen: set[str] = set()
        slots = asyncio.Semaphore(self._concurrency)
        failures: list[str] = []

        async def one(key: str, version: str | None) -> None:
            try:
                known = self._verified.get(key)
                if known is None or version is None or known != (version, held.get(key)):
                    await self._copy_one(source, target, key, tally, held.get(key))
                if verify and key not in self._verified:
                    failures.append(key)
            finally:
                slots.release()

        checked = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                async for key, version, _ in self._bulk.list_current(source, prefix):
                    seen.add(key)
                    await slots.acquire()  # at most `concurrency` keys in flight
                    group.create_task(one(key, version))
                    if time.monotonic() - checked > RECHECK_S:
                        checked = time.monotonic()
                        await self._still_current()
        except BaseExceptionGroup as exc:
            raise first_error(exc) from None
        if failures:
            raise StorageError(
                f"move of org {source.org_id}: {len(failures)} objects differ in "
                f"{target.region.value} after copying; nothing was switched; run the move again"
            )
        for key in held.keys() - seen:
            await self._bulk.delete_object(target, key)
            self._verified.pop(key, None)

    async def _copy_one(
        self,
        source: Placement,
        target: Placement,
        key: str,
        tally: _Tally,
        replaced: str | None,
    ) -> None:
        """Copy one object; remember the pair of versions when the copy is verified.

        ``replaced``: the target's version this copy supersedes. Before the switch only
        the move writes to the target, so it is an earlier copy: it is deleted.
        """
        self._verified.pop(key, None)
        try:
            copied = await self._copier.copy(source, target, key)
        except ObjectNotFoundError:
            return  # deleted meanwhile: the extras pass removes an older copy
        tally.bytes += copied.source.size
        tally.objects += 1
        if self._progress is not None:
            self._progress(tally.objects, tally.bytes)
        copy = copied.target
        if copy.checksum is None:
            copy = await self._copier.fingerprint(target, key) or copy
        if replaced is not None and replaced != copy.version_id:
            await self._bulk.delete_versions(target, [(key, replaced)])
        verified = copied.source.matches(copy) or _unverifiable_same(copied.source, copy)
        if verified and copied.source.version_id and copy.version_id:
            self._verified[key] = (copied.source.version_id, copy.version_id)

    async def _still_current(self) -> None:
        """Raise if the org's record is no longer the version this move wrote last."""
        if self._expected is None:
            return
        record = await self._directory.fresh(self._expected.org_id)
        if record.version != self._expected.version:
            raise OrgRecordConflictError(
                f"org {record.org_id}'s record changed under its move (now version "
                f"{record.version}, phase {record.move.phase if record.move else 'none'}); "
                "the move stopped; run it again to resume"
            )

    async def _refuse_late_writes(self, source: Placement, fence_at: datetime) -> None:
        """Fail closed before cleaning if anything was written to the source after the fence.

        Under the protocol nothing can be (every router refuses the org's writes from the
        fence, and the settle wait covers the slowest write and clock skew); an object
        written later means a router runs with a longer ``cache_ttl_s`` than this one. It
        is not copied (a delete made in the target since would be undone) nor deleted (it
        may be an acknowledged write): the move stops for an operator.
        """
        late_after = fence_at + timedelta(seconds=self._longest_s)
        late = 0
        async for found in self._bulk.list_objects(source, org_prefix(source.org_id)):
            if found.last_modified > late_after:
                late += 1
        if late:
            raise StorageError(
                f"move of org {source.org_id}: {late} objects were written to "
                f"{source.region.value} after its write fence (a router with a longer "
                "cache_ttl_s?); nothing was deleted; copy or remove them, then run the move "
                "again"
            )


def _unverifiable_same(found: Fingerprint, held: Fingerprint) -> bool:
    # An object stored without a checksum (not by this router) can only be compared by size.
    return found.checksum is None and found.size == held.size and held.checksum is not None
