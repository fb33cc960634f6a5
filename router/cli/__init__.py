"""The ``residency-router`` command: demo on a local moto server, verify a deployment."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from router.cli import _demo, _orgs
from router.cli._output import table as _table
from router.config import RouterSettings
from router.drift import CHECKS, DriftChecker
from router.errors import ResidencyError
from router.infra import render_all
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import DataClass, Explanation, Operation, Region


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
    _orgs.add_parser(commands)
    explain = commands.add_parser(
        "explain", help="show the decision the router would take for an org, and why"
    )
    explain.add_argument("org", help="org id")
    explain.add_argument(
        "--operation", choices=[o.value for o in Operation], default=Operation.PUT.value
    )
    explain.add_argument("--data-class", choices=[d.value for d in DataClass], default=None)
    explain.add_argument("--endpoint", default=None, help="processing endpoint path")
    audit = commands.add_parser(
        "audit",
        help="check every object version and upload of every bucket against the residency "
        "promises; exit 1 when anything is found, 2 when a region could not be checked",
    )
    audit.add_argument(
        "--region",
        action="append",
        default=None,
        choices=[r.value for r in Region],
        help="audit only this region (repeatable); default: every region of the map",
    )
    audit.add_argument("--json", action="store_true", help="print the report as JSON")
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
            return asyncio.run(_orgs.run(args))
        if args.command == "audit":
            from router.cli import _audit  # lazy: only the audit needs it

            return _audit.run(args)
        return asyncio.run(_verify())
    except (ResidencyError, ValidationError) as exc:
        print(f"residency-router: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
