"""The residency audit scan: every version and upload of every bucket, checked object by object."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from router._s3.bulk import BulkStore
from router._s3.clients import RegionClients
from router.errors import ObjectNotFoundError, ResidencyError, StorageError, first_error
from router.guards import AuditJudgement, audit_upload_findings, audit_version_findings
from router.inputs import split_object_key
from router.policy import STALE_UPLOAD_AGE, expiry_day_of, expiry_instant_of
from router.records import effective
from router.regions import RegionConfig, RegionMap
from router.types import (
    KEY_ROOT,
    AuditFinding,
    AuditReport,
    DataClass,
    OrgId,
    OrgResidency,
    Region,
)

OrgLookup = Callable[[OrgId], Awaitable[OrgResidency | None]]

_MEMO_MAX = 10_000  # org records remembered during one scan (then forgotten, memory stays flat)


@dataclass(slots=True)
class _RegionScan:
    """What one region's scan found so far."""

    cfg: RegionConfig
    key_arn: str
    findings: list[AuditFinding] = field(default_factory=list)
    versions: int = 0
    uploads: int = 0
    unreadable: int = 0
    first_refusal: str = ""


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
        self._bulk = BulkStore(clients)
        self._map = region_map
        self._key_arn = key_arn
        self._concurrency = concurrency
        self._purge_interval_s = purge_interval_s
        self._checked = 0
        self._memo: dict[OrgId, frozenset[Region] | None] = {}

    async def scan(
        self,
        regions: Collection[Region],
        now: datetime,
        lookup: OrgLookup,
        progress: Callable[[int], None] | None = None,
    ) -> AuditReport:
        """Check every version and upload in ``regions``' buckets at ``now``.

        Regions are scanned concurrently, each listing a page at a time with at most
        ``concurrency`` object checks in flight. Delete markers carry no data and are
        skipped. A region whose listing or checks fail is named in ``unchecked`` (with
        what failed); the others complete. ``progress`` gets the running count of
        versions checked, over all regions.
        """
        started = time.monotonic()
        self._checked = 0
        self._memo = {}
        chosen = list(dict.fromkeys(regions))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._scan_region(region, now, lookup, progress))
                    for region in chosen
                ]
        except BaseExceptionGroup as exc:  # only a bug gets here: region failures are kept
            raise first_error(exc) from None
        findings: list[AuditFinding] = []
        versions: dict[Region, int] = {}
        uploads: dict[Region, int] = {}
        unchecked: dict[Region, str] = {}
        for region, task in zip(chosen, tasks, strict=True):
            result, failure = task.result()
            versions[region] = result.versions if result else 0
            uploads[region] = result.uploads if result else 0
            if result is not None:
                findings.extend(result.findings)
            if failure:
                unchecked[region] = failure
        findings.sort(
            key=lambda f: (f.region.value, f.key, f.version_id or "", f.upload_id or "", f.kind)
        )
        return AuditReport(
            ok=not findings and not unchecked,
            findings=tuple(findings),
            versions_checked=MappingProxyType(versions),
            uploads_checked=MappingProxyType(uploads),
            unchecked=MappingProxyType(unchecked),
            started_at=now,
            finished_at=now + timedelta(seconds=time.monotonic() - started),
        )

    async def _scan_region(
        self,
        region: Region,
        now: datetime,
        lookup: OrgLookup,
        progress: Callable[[int], None] | None,
    ) -> tuple[_RegionScan | None, str]:
        """Scan one region; return what it found and why it is unchecked ("" when checked)."""
        cfg = self._map.region(region)
        key_arn = self._key_arn(region)
        if key_arn is None:
            return None, f"the KMS key of {region.value} is not resolved; nothing was checked"
        state = _RegionScan(cfg, key_arn)
        limit = asyncio.Semaphore(self._concurrency)

        async def bounded(work: Awaitable[None]) -> None:
            try:
                await work
            finally:
                limit.release()

        failure = ""
        try:
            async with asyncio.TaskGroup() as group:
                async for key, version, is_marker in self._bulk.list_versions(cfg, ""):
                    if is_marker:
                        continue  # a delete marker carries no data
                    await limit.acquire()
                    group.create_task(
                        bounded(self._check_version(state, key, version, now, lookup, progress))
                    )
                async for key, upload_id, initiated in self._bulk.list_uploads(cfg, ""):
                    await limit.acquire()
                    group.create_task(
                        bounded(self._check_upload(state, key, upload_id, initiated, now, lookup))
                    )
        except BaseExceptionGroup as exc:  # a TaskGroup wraps the listing's errors too
            error = first_error(exc)
            if not isinstance(error, ResidencyError):
                raise error from None
            failure = str(error)
        if not failure and state.unreadable:
            failure = (
                f"{state.unreadable} object versions in bucket {cfg.bucket} could not be "
                f"checked (first: {state.first_refusal})"
            )
        return state, failure

    async def _allowed(
        self, key: str, now: datetime, lookup: OrgLookup
    ) -> frozenset[Region] | None:
        """The regions the key's org may keep data in at ``now``; None for an unknown org."""
        parsed = split_object_key(key)
        if parsed is None:
            return frozenset()  # not judged by org: the key is outside the layout
        org_id = parsed[0]
        memo = self._memo
        if org_id in memo:
            return memo[org_id]
        record = await lookup(org_id)
        if record is None:
            allowed = None
        elif record.move is not None:  # mid-move: the data is in either region, by design
            allowed = frozenset({record.move.from_region, record.move.to_region})
        else:
            allowed = frozenset({effective(record, now).region})
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[org_id] = allowed
        return allowed

    async def _check_version(
        self,
        state: _RegionScan,
        key: str,
        version: str | None,
        now: datetime,
        lookup: OrgLookup,
        progress: Callable[[int], None] | None,
    ) -> None:
        cfg = state.cfg
        parsed = split_object_key(key)
        allowed = await self._allowed(key, now, lookup)
        try:
            head = await self._read(cfg, "head_object", "reading", key, version)
            tags: Mapping[str, str] = {}
            if parsed is not None:
                answer = await self._read(cfg, "get_object_tagging", "reading tags", key, version)
                tags = {tag["Key"]: tag["Value"] for tag in answer.get("TagSet", [])}
        except ObjectNotFoundError:
            return  # deleted since it was listed: nothing left to judge
        except StorageError as exc:  # refused for this object alone: the rest goes on
            state.unreadable += 1
            state.first_refusal = state.first_refusal or str(exc)
            return
        judged = audit_version_findings(
            key,
            region=cfg.region,
            allowed=allowed,
            head=head,
            kms_key_arn=state.key_arn,
            tags=tags,
            key_expires_at=_key_expiry(key),
            expired_before=now - timedelta(seconds=self._purge_interval_s),
            allowed_days=self._map.retention.allowed_days,
        )
        self._record(state, key, judged, version_id=version)
        state.versions += 1
        self._checked += 1
        if progress is not None:
            progress(self._checked)

    async def _check_upload(
        self,
        state: _RegionScan,
        key: str,
        upload_id: str,
        initiated: datetime | None,
        now: datetime,
        lookup: OrgLookup,
    ) -> None:
        judged = audit_upload_findings(
            key,
            region=state.cfg.region,
            allowed=await self._allowed(key, now, lookup),
            initiated=initiated,
            stale_before=now - STALE_UPLOAD_AGE,
        )
        self._record(state, key, judged, upload_id=upload_id)
        state.uploads += 1

    async def _read(
        self, cfg: RegionConfig, method: str, what: str, key: str, version: str | None
    ) -> Mapping[str, Any]:
        """One read of one version (HeadObject, GetObjectTagging) with the router's retries."""
        clients = self._clients
        call = getattr(clients.s3(cfg.aws_region), method)
        args: dict[str, Any] = {"Bucket": cfg.bucket, "Key": key, **clients.owner[cfg.aws_region]}
        if version:
            args["VersionId"] = version
        answer: Mapping[str, Any] = await clients.run(
            cfg.aws_region,
            f"auditing: {what} in bucket {cfg.bucket}",
            lambda: call(**args),
            object_read=True,
        )
        return answer

    @staticmethod
    def _record(
        state: _RegionScan,
        key: str,
        judged: list[AuditJudgement],
        *,
        version_id: str | None = None,
        upload_id: str | None = None,
    ) -> None:
        if not judged:
            return
        parsed = split_object_key(key)
        org_id = parsed[0] if parsed is not None else None
        cfg = state.cfg
        state.findings.extend(
            AuditFinding(cfg.region, cfg.bucket, key, kind, detail, org_id, version_id, upload_id)
            for kind, detail in judged
        )


def _key_expiry(key: str) -> datetime | None:
    """The expiry an ``inputs_outputs`` key names: its day and time, or the end of its day."""
    parts = key.split("/", 5)
    if len(parts) < 5 or parts[0] != KEY_ROOT or parts[2] != DataClass.INPUTS_OUTPUTS.value:
        return None
    day = expiry_day_of("/".join(parts[:4]) + "/")
    if day is None:
        return None
    instant = expiry_instant_of(day, parts[4]) if len(parts) > 5 else None
    if instant is not None:
        return instant
    # Without a time the purge waits for the whole day to pass (policy.purge_scope).
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
