"""The ``residency-router`` command: demo on a local moto server, verify a deployment."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router.config import RouterSettings
from router.errors import ResidencyError, UnknownOrgError
from router.orgs import StaticOrgDirectory
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import OrgId, OrgResidency, Region

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
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        return asyncio.run(_verify())
    except (ResidencyError, ValidationError) as exc:
        print(f"residency-router: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
