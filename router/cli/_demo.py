"""``residency-router demo``: write and check objects on a local moto server."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from router.cli._local import TESTING_EXTRA, region_map_file
from router.cli._output import table as _table
from router.errors import ResidencyError, UnknownOrgError
from router.orgs import StaticOrgDirectory
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import OrgId, OrgResidency, Region


def _short_key(arn: str) -> str:
    return arn.split(":", 5)[-1] if arn.count(":") >= 5 else arn


def _demo_orgs(region_map: RegionMap) -> dict[str, OrgResidency]:
    orgs = dict(region_map.orgs)
    covered = {record.region for record in orgs.values()}
    for cfg in region_map:
        if cfg.region not in covered:
            org_id = OrgId(f"demo-{cfg.region.value}")
            orgs[org_id] = OrgResidency(org_id=org_id, region=cfg.region)
    return orgs


async def _chunks(total: int, size: int) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (size // 256)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


async def _demo_writes(world: Any, orgs: dict[str, OrgResidency]) -> int:
    settings = world.settings()
    directory = StaticOrgDirectory(orgs)
    per_region: dict[Region, str] = {}
    for org_id, record in orgs.items():
        per_region.setdefault(record.region, org_id)
    rows: list[list[str]] = []
    async with ResidencyRouter.from_settings(settings, directory=directory) as router:
        report = await router.verify()
        print(f"verify: {'all regions ok' if report.ok else dict(report.by_region)}")
        receipts = []
        for cfg in world.region_map:
            org_id = per_region[cfg.region]
            body = f"hello from {org_id} in {cfg.region.value}\n".encode()
            receipts.append(await router.put(org_id, "demo/hello.txt", body))
        # One streamed upload: 24 MiB from an async generator, through multipart.
        streamed_org = per_region[world.region_map.processing.default_region]
        receipts.append(
            await router.put(streamed_org, "demo/streamed.bin", _chunks(24 * 1024 * 1024, 1 << 20))
        )
        for receipt in receipts:
            s3 = world.client("s3", receipt.aws_region)
            location = s3.get_bucket_location(Bucket=receipt.bucket).get("LocationConstraint")
            head = s3.head_object(Bucket=receipt.bucket, Key=receipt.key)
            data = s3.get_object(Bucket=receipt.bucket, Key=receipt.key)["Body"].read()
            in_region = (location or "us-east-1") == receipt.aws_region
            encrypted = head.get("ServerSideEncryption") == "aws:kms" and head.get(
                "SSEKMSKeyId"
            ) == world.key_arn(receipt.region)
            checksum_ok = hashlib.sha256(data).hexdigest() == receipt.sha256
            rows.append(
                [
                    receipt.org_id,
                    receipt.region.value,
                    f"{location or 'us-east-1'}{'' if in_region else ' (WRONG)'}",
                    receipt.bucket,
                    receipt.key,
                    _short_key(str(head.get("SSEKMSKeyId"))),
                    "yes (SSE-KMS, region key)" if encrypted else "NO",
                    f"sha256 {receipt.sha256[:12]}... {'ok' if checksum_ok else 'MISMATCH'}",
                ]
            )
            if not (in_region and encrypted and checksum_ok):
                print(_table(_HEADERS, rows))
                print("demo failed: an object is misplaced, unencrypted or corrupt")
                return 1
        print()
        print("Objects read back with an independent boto3 client:")
        print(_table(_HEADERS, rows))
        print()
        before = sum(len(world.all_versions(cfg.region)) for cfg in world.region_map)
        try:
            await router.put("org-unknown", "demo/hello.txt", b"should never be stored")
        except UnknownOrgError as exc:
            after = sum(len(world.all_versions(cfg.region)) for cfg in world.region_map)
            print(f"refused: put for org-unknown -> {type(exc).__name__}: {exc}")
            print(f"objects in all buckets before {before}, after {after}: nothing was written")
            if after != before:
                return 1
        else:
            print("demo failed: a write for an unknown org was accepted")
            return 1
        return await _demo_policies(router, world, orgs)


async def _demo_policies(router: ResidencyRouter, world: Any, orgs: dict[str, OrgResidency]) -> int:
    endpoints = world.region_map.processing.endpoints
    regional = next(
        (p for p, rule in endpoints.items() if rule.regional and rule.retains_data), None
    )
    if regional is None:
        print("(no regional endpoint that retains data in this map: policy part skipped)")
        return 0
    print()
    print(f"Processing routes for {regional}:")
    for org_id in orgs:
        route = await router.route_processing(org_id, regional)
        print(f"  {org_id:<12} -> {route.url}  ({route.reason})")
    pinned = next((o for o, r in orgs.items() if r.processing_region is not None), None)
    local_only = next((p for p, rule in endpoints.items() if not rule.regional), None)
    if pinned is not None and local_only is not None:
        try:
            await router.route_processing(pinned, local_only)
        except ResidencyError as exc:
            print(f"  {pinned:<12} {local_only} refused: {type(exc).__name__}: {exc}")
    print()
    print("Recorded exchanges (inputs and outputs):")
    recorded = []
    for org_id in orgs:
        receipt = await router.record_exchange(
            org_id, regional, request=b'{"prompt": "hello"}', response=b'{"reply": "hi"}'
        )
        where = f"stored in {receipt.region.value}: {receipt.key}" if receipt.stored else "skipped"
        print(f"  {org_id:<12} {where}  ({receipt.reason})")
        if receipt.stored:
            recorded.append(receipt)
    zdr = [f"orgs/{o}/" for o, r in orgs.items() if r.zero_data_retention]
    versions = [v["Key"] for cfg in world.region_map for v in world.all_versions(cfg.region)]
    if any(
        key.startswith(prefix) and "/inputs_outputs/" in key for key in versions for prefix in zdr
    ):
        print("demo failed: a zero-data-retention org's exchange reached S3")
        return 1
    print()
    print("Purge (moving the clock forward; files are never purged by age):")
    for days in sorted({orgs[r.org_id].retention_days for r in recorded}):
        report = await router.purge_expired(now=datetime.now(UTC) + timedelta(days=days, hours=1))
        purged = {r.value: c.objects for r, c in report.by_region.items() if c.objects}
        print(f"  now + {days:>2}d: exchanges purged per region {purged}")
    versions = [v["Key"] for cfg in world.region_map for v in world.all_versions(cfg.region)]
    left = sum(1 for r in recorded if r.key in versions)
    files = sum(1 for key in versions if "/files/" in key)
    print(f"  exchanges left: {left} of {len(recorded)}; file versions kept: {files}")
    return 1 if left else 0


async def _demo_move(world: Any, orgs: dict[str, OrgResidency]) -> int:
    """Move one org to another region while it keeps working, then audit every bucket."""
    mover = next((o for o, r in orgs.items() if r.region is not Region.US), None)
    if mover is None or Region.US not in world.region_map.regions:
        print("(no org outside us in this map: move part skipped)")
        return 0
    world.create_directory_table("demo-orgs", orgs)
    # Short waits for the demo: a 1-second org cache and a 4-second longest request (the
    # defaults, 60 s and 55 s, make a real move wait about four minutes in all).
    settings = world.settings(
        directory_table="demo-orgs",
        cache_ttl_s=1.0,
        clock_skew_s=0.2,
        retry_deadline_s=1.0,
        connect_timeout_s=1.0,
        read_timeout_s=2.0,
    )
    print()
    source = orgs[mover].region.value
    print(f"Move {mover} from {source} to us while it keeps working (DynamoDB directory):")
    async with ResidencyRouter.from_settings(settings) as router:
        for i in range(20):
            await router.put(mover, f"demo/moving-{i:02d}.txt", f"object {i}\n".encode())
        plan = await router.move_org(mover, Region.US, dry_run=True)
        print(f"  dry run: {plan.objects_copied} objects, {plan.bytes_copied} bytes to copy")
        receipt = await router.move_org(mover, Region.US)
        for number, phase in enumerate(receipt.phases, start=1):
            print(f"  {number}. {phase}")
        took = (receipt.finished_at - receipt.started_at).total_seconds()
        print(
            f"  moved {receipt.objects_copied} objects ({receipt.bytes_copied} bytes) in "
            f"{took:.1f}s; writes were refused for {receipt.writes_fenced_s:.1f}s; "
            f"{receipt.versions_deleted} versions deleted in {source}"
        )
        left = sum(
            1
            for v in world.all_versions(orgs[mover].region)
            if v["Key"].startswith(f"orgs/{mover}/")
        )
        placed = await router.resolve(mover)
        print(f"  {mover} now lives in {placed.region.value}; versions left in {source}: {left}")
        report = await router.audit()
    print()
    checked = sum(report.versions_checked.values())
    print(f"Residency audit of every bucket: {checked} versions checked, ", end="")
    print(f"{len(report.findings)} findings, {len(report.unchecked)} regions not checked")
    for finding in report.findings:
        print(f"  {finding.region.value} {finding.kind}: {finding.detail}")
    return 0 if report.ok and left == 0 and placed.region is Region.US else 1


_HEADERS = (
    "org",
    "residency",
    "aws region",
    "bucket",
    "key",
    "kms key",
    "encrypted",
    "checksum",
)


def run(args: argparse.Namespace) -> int:
    try:
        from router.testing import LocalS3Server, ResidencyWorld, isolated_aws_environment
    except ImportError as exc:
        print(
            f"the demo needs moto and pytest ({exc.name} is missing): {TESTING_EXTRA}",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    with (
        region_map_file(args.regions) as source,  # default: the map shipped in the package
        isolated_aws_environment(),
        LocalS3Server() as server,
        tempfile.TemporaryDirectory() as workdir,
    ):
        print(f"moto S3/KMS server on {server.endpoint_url} (loopback only)")
        world = ResidencyWorld.provision(server.endpoint_url, source, workdir)
        print(
            f"provisioned {len(world.region_map.regions)} regions: "
            + ", ".join(f"{c.region.value}={c.aws_region}" for c in world.region_map)
        )
        orgs = _demo_orgs(world.region_map)
        status = asyncio.run(_demo_writes(world, orgs))
        if status == 0:
            status = asyncio.run(_demo_move(world, orgs))
    print(f"demo finished in {time.perf_counter() - started:.1f}s")
    return status
