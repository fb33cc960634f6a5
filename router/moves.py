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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from router._s3.bulk import BulkStore
from router._s3.copy import Copier, Fingerprint
from router.config import RouterSettings
from router.errors import ObjectNotFoundError, StorageError
from router.inputs import org_prefix
from router.orgs import CachedOrgDirectory, WritableOrgDirectory
from router.records import abort_move, fence_move, finish_move, start_move, switch_move
from router.regions import RegionMap
from router.types import MoveReceipt, OrgId, OrgResidency, Placement, Region

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
        self._longest_s = settings.longest_request_s
        self._concurrency = settings.move_concurrency
        self._clock = clock
        self._progress = progress
        self._verified: dict[str, tuple[str, str]] = {}
        """Per key: the source's and the copy's ETags when this move last found them the
        same bytes. Lost with the process: a resumed move compares everything again."""

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
        tally = _Tally()
        record = await self._write(record, start_move(record, to_region, self._clock()))
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
            before = tally.objects
            await self._sync(source, target, tally, verify=True)
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
        await self._sync(source, target, tally, verify=False, stragglers=True)
        prefix = org_prefix(org)
        _, versions = await self._bulk.delete_prefix(source, prefix)
        tally.versions_deleted += versions
        tally.uploads_aborted += await self._bulk.abort_uploads(source, prefix)
        tally.phases.append(f"deleted {tally.versions_deleted} versions in the source")
        record = await self._write(record, finish_move(record))
        return MoveReceipt(
            org_id=org,
            from_region=move.from_region,
            to_region=move.to_region,
            objects_copied=move.objects_copied + tally.objects,
            bytes_copied=move.bytes_copied + tally.bytes,
            versions_deleted=tally.versions_deleted,
            uploads_aborted=tally.uploads_aborted,
            writes_fenced_s=(move.switch_at - move.fence_at).total_seconds(),
            started_at=move.started_at,
            finished_at=self._clock(),
            phases=tuple(tally.phases),
        )

    async def abort(self, org: OrgId) -> MoveReceipt | None:
        """Abandon ``org``'s move before its switch: unfence, delete the partial copy.

        Returns None when the org is not moving.

        Raises:
            OrgMovingError: the switch is already scheduled; the move can only finish.
            ResidencyError: as for :meth:`move`.
        """
        record = await self._directory.fresh(org)
        move = record.move
        if move is None:
            return None
        record = await self._write(record, abort_move(record))
        target = self.placement(org, move.to_region)
        prefix = org_prefix(org)
        _, versions = await self._bulk.delete_prefix(target, prefix)
        uploads = await self._bulk.abort_uploads(target, prefix)
        now = self._clock()
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
            finished_at=now,
            phases=(
                f"move abandoned in phase {move.phase}; writes unfenced",
                f"deleted the partial copy in {move.to_region.value} ({versions} versions)",
            ),
        )

    async def _plan(self, record: OrgResidency, to_region: Region) -> MoveReceipt:
        """What a move would do, without changing anything."""
        now = self._clock()
        if record.move is None:
            start_move(record, to_region, now)  # raises as the move itself would
            from_region = record.region
        else:
            from_region = record.move.from_region
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
            return current
        if self._writer is None:
            raise RuntimeError("this Mover was made for a dry run; it writes nothing")
        await self._writer.write(new, expected_version=current.version)
        self._directory.invalidate(current.org_id)
        return new

    async def _wait_until(self, instant: datetime, extra_s: float) -> None:
        while True:
            left = (instant - self._clock()).total_seconds() + extra_s
            if left <= 0:
                return
            await asyncio.sleep(min(left, 1.0))

    async def _sync(
        self,
        source: Placement,
        target: Placement,
        tally: _Tally,
        *,
        verify: bool,
        stragglers: bool = False,
    ) -> None:
        """Make the target's current objects the source's; delete copies of deleted ones.

        An object whose source and copy are both unchanged since this move verified them
        (their ETags as listed) is not looked at again; any other is compared by size and
        SHA-256 checksum and copied when they differ. ``verify``: every object must end the
        same in both. ``stragglers``: after the switch, copy only what the target lacks or
        holds older, and delete nothing in it.
        """
        prefix = org_prefix(source.org_id)
        held = {found.key: found.etag async for found in self._bulk.list_objects(target, prefix)}
        seen: set[str] = set()
        slots = asyncio.Semaphore(self._concurrency)
        failures: list[str] = []

        async def one(key: str, etag: str) -> None:
            try:
                known = self._verified.get(key)
                if known is not None and known == (etag, held.get(key)):
                    return
                await self._sync_one(source, target, key, key in held, tally, stragglers)
                if verify and key not in self._verified:
                    failures.append(key)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            async for found in self._bulk.list_objects(source, prefix):
                seen.add(found.key)
                await slots.acquire()  # at most `concurrency` keys in flight
                group.create_task(one(found.key, found.etag))
        if failures:
            raise StorageError(
                f"move of org {source.org_id}: {len(failures)} objects differ in "
                f"{target.region.value} after copying; nothing was switched; run the move again"
            )
        if stragglers:
            return
        for key in held.keys() - seen:
            await self._bulk.delete_object(target, key)
            self._verified.pop(key, None)

    async def _sync_one(
        self,
        source: Placement,
        target: Placement,
        key: str,
        in_target: bool,
        tally: _Tally,
        stragglers: bool,
    ) -> None:
        """Compare one object (when the target has it) and copy it when it differs.

        Records the pair of ETags in ``_verified`` when both end with the same bytes.
        """
        self._verified.pop(key, None)
        if in_target:
            found = await self._copier.fingerprint(source, key)
            if found is None:
                return  # deleted meanwhile: the extras pass removes its copy
            held = await self._copier.fingerprint(target, key)
            if held is not None and (found.matches(held) or _unverifiable_same(found, held)):
                self._verified[key] = (found.etag, held.etag)
                return
            if stragglers and held is not None and not _newer(found, held):
                return  # the target's is newer: written there after the switch
        try:
            copied = await self._copier.copy(source, target, key)
        except ObjectNotFoundError:
            return  # deleted meanwhile
        tally.bytes += copied.source.size
        tally.objects += 1
        if self._progress is not None:
            self._progress(tally.objects, tally.bytes)
        copy = copied.target
        if copy.checksum is None:
            copy = await self._copier.fingerprint(target, key) or copy
        if copied.source.matches(copy) or _unverifiable_same(copied.source, copy):
            self._verified[key] = (copied.source.etag, copy.etag)


def _newer(found: Fingerprint, held: Fingerprint) -> bool:
    if found.last_modified is None or held.last_modified is None:
        return True
    return found.last_modified > held.last_modified


def _unverifiable_same(found: Fingerprint, held: Fingerprint) -> bool:
    # An object stored without a checksum (not by this router) can only be compared by size.
    return found.checksum is None and found.size == held.size and held.checksum is not None
