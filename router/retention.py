"""Retention and training: the purge of expired exchanges, erasure, training eligibility."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import partial
from types import MappingProxyType
from typing import TypeVar

from router._s3.bulk import BucketRef, BulkStore, Check
from router._s3.objects import ObjectStore
from router.errors import ObjectNotFoundError, first_error
from router.inputs import object_key, org_prefix
from router.policy import (
    expiry_day_of,
    expiry_instant_of,
    is_expired,
    is_stale_exchange_upload,
    purge_scope,
)
from router.regions import RegionConfig, RegionMap
from router.types import (
    KEY_ROOT,
    TAG_ORG,
    TAG_TRAINING,
    TRAINABLE,
    TRAINING_OPT_IN,
    DataClass,
    ErasureReceipt,
    ObjectInfo,
    OrgId,
    OrgResidency,
    Placement,
    PurgeReport,
    Region,
    RegionPurge,
    org_id_problem,
)

T = TypeVar("T")

INPUTS_OUTPUTS = DataClass.INPUTS_OUTPUTS.value


class RetentionSweeper:
    """Deletes what retention says must go: expired exchanges, erased orgs.

    The purge lists expiry-day prefixes from version listings (so fully delete-marked days
    are found too), reads no object tags and never consults the org directory: data of orgs
    that have left the directory is purged all the same.
    """

    def __init__(self, storage: BulkStore, region_map: RegionMap, *, concurrency: int = 8) -> None:
        self._storage = storage
        self._map = region_map
        self._concurrency = concurrency

    async def purge(self, now: datetime) -> PurgeReport:
        """Purge every region; all regions are attempted before any error is raised.

        Raises:
            ResidencyError: the first region failure (violations first), after every
                region was attempted.
        """
        configs = list(self._map)
        results = await asyncio.gather(
            *(self.purge_region(cfg, now) for cfg in configs), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise first_error(BaseExceptionGroup("purge failed", errors)) from None
        by_region: dict[Region, RegionPurge] = {}
        for cfg, result in zip(configs, results, strict=True):
            assert isinstance(result, RegionPurge)
            by_region[cfg.region] = result
        return PurgeReport(now=now, by_region=MappingProxyType(by_region))

    async def purge_region(self, cfg: RegionConfig, now: datetime) -> RegionPurge:
        """Delete expired inputs/outputs (every version) and stale uploads in one region.

        Raises:
            ResidencyError: the region failed or refused.
        """
        storage = self._storage
        orgs = [
            prefix
            async for prefix in storage.list_prefixes(cfg, f"{KEY_ROOT}/")
            if org_id_problem(prefix[len(KEY_ROOT) + 1 : -1]) is None
        ]
        counts = await self._bounded(
            [partial(self._purge_org, cfg, prefix, now) for prefix in orgs]
        )
        uploads = await storage.abort_uploads(
            cfg, f"{KEY_ROOT}/", select=partial(is_stale_exchange_upload, now=now)
        )
        return RegionPurge(
            objects=sum(c[0] for c in counts),
            versions=sum(c[1] for c in counts),
            uploads_aborted=uploads,
        )

    async def _purge_org(self, ref: BucketRef, prefix: str, now: datetime) -> tuple[int, int]:
        objects = versions = 0
        async for day_prefix in self._storage.list_prefixes(ref, f"{prefix}{INPUTS_OUTPUTS}/"):
            day = expiry_day_of(day_prefix)
            scope = "none" if day is None else purge_scope(day, now)
            if scope == "none":
                continue
            if scope == "day":
                targets = [day_prefix]
            else:  # today: only the times that have come (never an exchange before its time)
                assert day is not None
                targets = [
                    time_prefix
                    async for time_prefix in self._storage.list_prefixes(ref, day_prefix)
                    if (instant := expiry_instant_of(day, time_prefix)) is not None
                    and is_expired(instant, now)
                ]
            for target in targets:
                deleted = await self._storage.delete_prefix(ref, target)
                objects += deleted[0]
                versions += deleted[1]
        return objects, versions

    async def erase(
        self,
        ref: BucketRef,
        org_id: OrgId,
        region: Region,
        data_class: DataClass | None,
        *,
        before_each: Check | None = None,
    ) -> ErasureReceipt:
        """Delete all of an org's data (or one class) and abort its uploads; idempotent.

        ``before_each`` runs before every deletion request (the router re-checks the org's
        write fence there: an erasure is many requests, and a move must not copy what it
        has not reached yet).

        Raises:
            ResidencyError: the region failed or refused, or ``before_each`` raised.
        """
        prefix = org_prefix(org_id, data_class)
        objects, versions = await self._storage.delete_prefix(ref, prefix, before_each=before_each)
        uploads = await self._storage.abort_uploads(ref, prefix)
        return ErasureReceipt(org_id, region, data_class, objects, versions, uploads)

    async def _bounded(self, jobs: list[Callable[[], Awaitable[T]]]) -> list[T]:
        limit = asyncio.Semaphore(self._concurrency)

        async def run(job: Callable[[], Awaitable[T]]) -> T:
            async with limit:
                return await job()

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(run(job)) for job in jobs]
        except BaseExceptionGroup as exc:
            raise first_error(exc) from None
        return [task.result() for task in tasks]


TAG_READ_CONCURRENCY = 16


async def training_eligible(
    objects: ObjectStore,
    record: OrgResidency,
    place: Placement,
    listing: AsyncIterator[ObjectInfo],
) -> AsyncIterator[ObjectInfo]:
    """Yield the listed objects that may be used for training.

    Only ``files`` and ``fine_tuning`` objects of an org opted in now whose own
    ``residency-training`` tag (set at write time) says ``opt-in``: inputs and outputs kept
    for abuse monitoring never are. One tag read per object, with bounded concurrency.

    Raises:
        StorageError, RegionUnavailableError: S3 refused or failed.
    """
    if not record.training_opt_in:
        return
    limit = asyncio.Semaphore(TAG_READ_CONCURRENCY)

    async def eligible(info: ObjectInfo) -> bool:
        if info.data_class not in TRAINABLE:
            return False
        async with limit:
            try:
                tags = await objects.tags(place, object_key(info.org_id, info.data_class, info.key))
            except ObjectNotFoundError:
                return False  # deleted since it was listed
        return tags.get(TAG_TRAINING) == TRAINING_OPT_IN and tags.get(TAG_ORG) == record.org_id

    batch: list[ObjectInfo] = []
    async for info in listing:
        batch.append(info)
        if len(batch) >= TAG_READ_CONCURRENCY * 4:
            for item in await _filter(batch, eligible):
                yield item
            batch = []
    for item in await _filter(batch, eligible):
        yield item


async def _filter(
    items: list[ObjectInfo], keep: Callable[[ObjectInfo], Awaitable[bool]]
) -> list[ObjectInfo]:
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_run(keep, item)) for item in items]
    except BaseExceptionGroup as exc:
        raise first_error(exc) from None
    return [item for item, task in zip(items, tasks, strict=True) if task.result()]


async def _run(keep: Callable[[ObjectInfo], Awaitable[bool]], item: ObjectInfo) -> bool:
    return await keep(item)
