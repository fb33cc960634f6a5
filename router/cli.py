"""The ``residency-router`` command: demo on a local moto server, verify a deployment."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router.config import RouterSettings
from router.drift import CHECKS, DriftChecker
from router.errors import ResidencyError, UnknownOrgError
from router.infra import render_all
from router.inputs import parse_org_id
from router.orgs import DynamoDBOrgDirectory, StaticOrgDirectory
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import DataClass, Explanation, Operation, OrgId, OrgResidency, Region

TESTING_EXTRA = "pip install 'residency-router[testing]'"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


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


def _demo(args: argparse.Namespace) -> int:
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
        isolated_aws_environment(),
        LocalS3Server() as server,
        tempfile.TemporaryDirectory() as workdir,
    ):
        print(f"moto S3/KMS server on {server.endpoint_url} (loopback only)")
        world = ResidencyWorld.provision(server.endpoint_url, args.regions, workdir)
        print(
            f"provisioned {len(world.region_map.regions)} regions: "
            + ", ".join(f"{c.region.value}={c.aws_region}" for c in world.region_map)
        )
        status = asyncio.run(_demo_writes(world, _demo_orgs(world.region_map)))
    print(f"demo finished in {time.perf_counter() - started:.1f}s")
    return status


async def _verify() -> int:
    settings = RouterSettings(verify_on_start="off")
    async with ResidencyRouter.from_settings(settings) as router:
        report = await router.verify()
    rows = [
        [region.value, "ok" if not problems else "FAIL", "; ".join(problems)]
        for region, problems in report.by_region.items()
    ]
    print(_table(("region", "result", "problems"), rows))
    return 0 if report.ok else 1


def _format_explanation(result: Explanation) -> str:
    place = result.placement
    route = result.processing_route
    lines = [
        f"org:         {result.org_id}",
        f"operation:   {result.operation.value}",
        f"placement:   {place.region.value} ({place.aws_region}), bucket {place.bucket}",
        f"kms key:     {place.kms_key_arn}",
        f"store:       {'yes' if result.store else 'no'}",
        f"key:         {result.key or '-'}",
        "tags:        " + (", ".join(f"{k}={v}" for k, v in result.tags.items()) or "-"),
        "expires at:  " + (result.expires_at.isoformat() if result.expires_at else "-"),
        "processing:  " + (f"{route.region.value} {route.url}" if route else "-"),
        "rules:",
    ]
    lines += [f"  {part}: {rule}" for part, rule in result.rules.items()]
    return "\n".join(lines)


async def _explain(args: argparse.Namespace) -> int:
    # explain sends no S3 request; only KMS aliases are resolved at start.
    settings = RouterSettings().model_copy(update={"verify_on_start": "off"})
    async with ResidencyRouter.from_settings(settings) as router:
        result = await router.explain(
            args.org,
            operation=args.operation,
            data_class=args.data_class,
            endpoint=args.endpoint,
        )
    print(_format_explanation(result))
    return 0


def _render(args: argparse.Namespace) -> int:
    region_map = RegionMap.load(args.regions)
    written = render_all(
        region_map,
        args.out,
        router_role_arn=args.router_role_arn,
        operator_role_arn=args.operator_role_arn,
    )
    for path in written:
        print(path)
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = RouterSettings()
    region_map = RegionMap.load(settings.regions_file)
    checker = DriftChecker(
        region_map, endpoint_url=settings.endpoint_url, skip=args.skip, proxy_url=settings.proxy_url
    )
    results = checker.check()
    rows = [[r.region, r.check, "ok" if r.ok else "DRIFT", r.detail] for r in results]
    print(_table(("region", "check", "result", "detail"), rows))
    drifted = [r for r in results if not r.ok]
    print(f"{len(results)} checks, {len(drifted)} drifted")
    return 1 if drifted else 0


def _format_org(record: OrgResidency) -> str:
    return (
        f"{record.org_id}: region={record.region.value} "
        f"processing_region={record.processing_region.value if record.processing_region else '-'} "
        f"retention_days={record.retention_days} "
        f"zero_data_retention={str(record.zero_data_retention).lower()} "
        f"training_opt_in={str(record.training_opt_in).lower()}"
    )


async def _orgs(args: argparse.Namespace) -> int:
    settings = RouterSettings().model_copy(update={"verify_on_start": "off"})
    region_map = await asyncio.to_thread(RegionMap.load, settings.regions_file)
    if args.orgs_command == "set" and not settings.directory_table:
        print(
            "residency-router: orgs set needs RESIDENCY_DIRECTORY_TABLE (a DynamoDB table); "
            "static orgs live in regions.yaml: edit it instead",
            file=sys.stderr,
        )
        return 2
    async with ResidencyRouter.from_settings(settings) as router:
        directory = router.directory.inner
        if args.orgs_command == "show":
            print(_format_org(await router.directory.lookup(parse_org_id(args.org))))
            return 0
        if args.orgs_command == "list":
            bad = 0
            if isinstance(directory, DynamoDBOrgDirectory):
                records = []
                async for found in directory.list():
                    if isinstance(found, OrgResidency):
                        records.append(found)
                    else:
                        bad += 1
                        print(f"residency-router: {found}", file=sys.stderr)
            else:
                records = list(region_map.orgs.values())
            for record in sorted(records, key=lambda r: r.org_id):
                print(_format_org(record))
            return 1 if bad else 0
        assert isinstance(directory, DynamoDBOrgDirectory)
        return await _set_org(args, router, directory, region_map)


async def _set_org(
    args: argparse.Namespace,
    router: ResidencyRouter,
    directory: DynamoDBOrgDirectory,
    region_map: RegionMap,
) -> int:
    org_id = parse_org_id(args.org)
    try:
        current: OrgResidency | None = await directory.lookup(org_id)
    except UnknownOrgError:
        current = None
    region = Region(args.region) if args.region else (current.region if current else None)
    if region is None:
        print("residency-router: a new org needs --region", file=sys.stderr)
        return 2
    pin = _pin(args.processing_region, current)
    days = args.retention_days
    if days is None:
        days = current.retention_days if current else region_map.retention.inputs_outputs_days
    record, problems = region_map.org_record(
        org_id,
        {
            "region": region.value,
            "processing_region": None if pin is None else pin.value,
            "retention_days": days,
            "zero_data_retention": _flag(args.zero_data_retention, current, "zero_data_retention"),
            "training_opt_in": _flag(args.training_opt_in, current, "training_opt_in"),
        },
    )
    if record is None:
        print("residency-router: " + "; ".join(f"{org_id}{p}" for p in problems), file=sys.stderr)
        return 2
    if current is not None and current.region is not record.region:
        # Checked through the router, in the org's current region: moving stored data
        # between regions is a separate capability, never a side effect of a record edit.
        async for found in router.list(org_id):
            print(
                f"residency-router: refused: {org_id} has stored data in "
                f"{current.region.value} (for example {found.data_class.value} objects); "
                f"its storage region cannot change to {record.region.value}",
                file=sys.stderr,
            )
            return 1
    await directory.put(record)
    router.invalidate(org_id)
    print(_format_org(record))
    print("running routers see the change within cache_ttl_s (or at once after invalidate)")
    return 0


def _pin(value: str | None, current: OrgResidency | None) -> Region | None:
    if value is None:
        return current.processing_region if current is not None else None
    return None if value == "none" else Region(value)


def _flag(value: bool | None, current: OrgResidency | None, name: str) -> bool:
    if value is not None:
        return value
    return bool(getattr(current, name)) if current is not None else False


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="residency-router", description="Keep every org's data in its residency region."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write and check objects on a local moto server")
    demo.add_argument("--regions", type=Path, default=Path("regions.yaml"), help="region map")
    commands.add_parser(
        "verify", help="check every region's bucket and key (settings from RESIDENCY_* vars)"
    )
    infra = commands.add_parser("infra", help="CloudFormation for the regions")
    infra_commands = infra.add_subparsers(dest="infra_command", required=True)
    render = infra_commands.add_parser("render", help="render one template per region")
    render.add_argument("--out", type=Path, required=True, help="output directory")
    render.add_argument("--regions", type=Path, default=Path("regions.yaml"), help="region map")
    render.add_argument("--router-role-arn", default=None, help="IAM role the router runs as")
    render.add_argument("--operator-role-arn", default=None, help="IAM role administering keys")
    check = commands.add_parser(
        "check", help="compare live buckets and keys with the map and the hardening rules"
    )
    check.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=list(CHECKS),
        help="leave a check out (repeatable); 'policy' for local worlds that are written to",
    )
    orgs = commands.add_parser("orgs", help="show, list or set org residency records")
    orgs_commands = orgs.add_subparsers(dest="orgs_command", required=True)
    orgs_commands.add_parser("list", help="list every org record")
    show = orgs_commands.add_parser("show", help="show one org record")
    show.add_argument("org")
    set_org = orgs_commands.add_parser(
        "set", help="create or change an org record (DynamoDB directory only)"
    )
    set_org.add_argument("org")
    set_org.add_argument("--region", choices=[r.value for r in Region])
    set_org.add_argument(
        "--processing-region", choices=["us", "eu", "none"], help="'none' removes the pin"
    )
    set_org.add_argument("--retention-days", type=int)
    flag = argparse.BooleanOptionalAction
    set_org.add_argument("--zero-data-retention", action=flag, default=None)
    set_org.add_argument("--training-opt-in", action=flag, default=None)
    explain = commands.add_parser(
        "explain", help="show the decision the router would take for an org, and why"
    )
    explain.add_argument("org", help="org id")
    explain.add_argument(
        "--operation", choices=[o.value for o in Operation], default=Operation.PUT.value
    )
    explain.add_argument("--data-class", choices=[d.value for d in DataClass], default=None)
    explain.add_argument("--endpoint", default=None, help="processing endpoint path")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "explain":
            return asyncio.run(_explain(args))
        if args.command == "infra":
            return _render(args)
        if args.command == "check":
            return _check(args)
        if args.command == "orgs":
            return asyncio.run(_orgs(args))
        return asyncio.run(_verify())
    except (ResidencyError, ValidationError) as exc:
        print(f"residency-router: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
