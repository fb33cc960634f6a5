"""The ``residency-router`` command: demo on a local moto server, verify a deployment."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from router.cli import _demo
from router.cli._output import table as _table
from router.config import RouterSettings
from router.drift import CHECKS, DriftChecker
from router.errors import ResidencyError, UnknownOrgError
from router.infra import render_all
from router.inputs import parse_org_id
from router.orgs import DynamoDBOrgDirectory
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import DataClass, Explanation, Operation, OrgResidency, Region


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
            return _demo.run(args)
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
