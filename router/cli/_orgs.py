"""``residency-router orgs``: list, show, set (scheduled changes) and move org records."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from router.config import RouterSettings
from router.errors import InvalidArgumentError, UnknownOrgError
from router.inputs import parse_org_id
from router.orgs import DynamoDBOrgDirectory
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import MoveReceipt, OrgResidency, Region


def add_parser(commands: Any) -> None:
    """Add ``orgs`` and its subcommands to the command parser."""
    orgs = commands.add_parser("orgs", help="show, list, set or move org residency records")
    orgs_commands = orgs.add_subparsers(dest="orgs_command", required=True)
    orgs_commands.add_parser("list", help="list every org record")
    show = orgs_commands.add_parser("show", help="show one org record")
    show.add_argument("org")
    set_org = orgs_commands.add_parser(
        "set",
        help="create an org, or schedule a change to its record (DynamoDB directory only)",
    )
    set_org.add_argument("org")
    set_org.add_argument(
        "--region",
        choices=[r.value for r in Region],
        help="a new org's region (an existing org's region changes only with 'orgs move')",
    )
    set_org.add_argument(
        "--processing-region", choices=["us", "eu", "none"], help="'none' removes the pin"
    )
    set_org.add_argument("--retention-days", type=int)
    flag = argparse.BooleanOptionalAction
    set_org.add_argument("--zero-data-retention", action=flag, default=None)
    set_org.add_argument("--training-opt-in", action=flag, default=None)
    move = orgs_commands.add_parser(
        "move", help="move an org's data to another region while it keeps working"
    )
    move.add_argument("org")
    move.add_argument("--to", choices=[r.value for r in Region], help="the target region")
    move.add_argument(
        "--dry-run", action="store_true", help="report objects, bytes and phases; change nothing"
    )
    move.add_argument(
        "--abort", action="store_true", help="abandon the org's move before its switch"
    )


def format_org(record: OrgResidency) -> str:
    """One line per record; a scheduled change and a move in progress on their own lines."""
    line = (
        f"{record.org_id}: region={record.region.value} "
        f"processing_region={record.processing_region.value if record.processing_region else '-'} "
        f"retention_days={record.retention_days} "
        f"zero_data_retention={str(record.zero_data_retention).lower()} "
        f"training_opt_in={str(record.training_opt_in).lower()} version={record.version}"
    )
    if record.effective_at is not None:
        line += f"\n  effective_at={record.effective_at.isoformat()} (previous values before it)"
    if record.move is not None:
        move = record.move
        line += f"\n  moving {move.from_region.value} -> {move.to_region.value}: phase {move.phase}"
    if record.moved_from:
        line += f"\n  moved_from={','.join(r.value for r in record.moved_from)}"
    return line


async def run(args: argparse.Namespace) -> int:
    """Run one ``orgs`` subcommand; return the exit status."""
    settings = RouterSettings().model_copy(update={"verify_on_start": "off"})
    region_map = await asyncio.to_thread(RegionMap.load, settings.regions_file)
    if args.orgs_command in ("set", "move") and not settings.directory_table:
        print(
            f"residency-router: orgs {args.orgs_command} needs RESIDENCY_DIRECTORY_TABLE (a "
            "DynamoDB table); static orgs live in regions.yaml and cannot change at run time",
            file=sys.stderr,
        )
        return 2
    async with ResidencyRouter.from_settings(settings) as router:
        directory = router.directory.inner
        if args.orgs_command == "show":
            print(format_org(await router.directory.fresh(parse_org_id(args.org))))
            return 0
        if args.orgs_command == "list":
            return await _list(directory, region_map)
        if args.orgs_command == "move":
            return await _move(args, router)
        assert isinstance(directory, DynamoDBOrgDirectory)
        return await _set_org(args, router, directory, region_map)


async def _list(directory: object, region_map: RegionMap) -> int:
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
        print(format_org(record))
    return 1 if bad else 0


async def _set_org(
    args: argparse.Namespace,
    router: ResidencyRouter,
    directory: DynamoDBOrgDirectory,
    region_map: RegionMap,
) -> int:
    org_id = parse_org_id(args.org)
    try:
        current: OrgResidency | None = await router.directory.fresh(org_id)
    except UnknownOrgError:
        current = None
    if current is None:
        return await _create(args, org_id, directory, region_map)
    if args.region is not None and Region(args.region) is not current.region:
        print(
            f"residency-router: refused: {org_id} lives in {current.region.value}; its storage "
            f"region changes only by moving its data: residency-router orgs move {org_id} "
            f"--to {args.region}",
            file=sys.stderr,
        )
        return 1
    changes: dict[str, Any] = {}
    if args.processing_region is not None:
        changes["processing_region"] = (
            None if args.processing_region == "none" else args.processing_region
        )
    for name in ("retention_days", "zero_data_retention", "training_opt_in"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    try:
        record = await router.update_org(org_id, **changes)
    except InvalidArgumentError as exc:
        print(f"residency-router: {exc}", file=sys.stderr)
        return 2
    print(format_org(record))
    if record.version == current.version:
        print("nothing changed")
    elif record.effective_at is not None:
        print(f"takes effect on every router at {record.effective_at.isoformat()}")
    return 0


async def _create(
    args: argparse.Namespace, org_id: Any, directory: DynamoDBOrgDirectory, region_map: RegionMap
) -> int:
    if args.region is None:
        print("residency-router: a new org needs --region", file=sys.stderr)
        return 2
    pin = args.processing_region
    record, problems = region_map.org_record(
        org_id,
        {
            "region": args.region,
            "processing_region": None if pin in (None, "none") else pin,
            "retention_days": args.retention_days,
            "zero_data_retention": bool(args.zero_data_retention),
            "training_opt_in": bool(args.training_opt_in),
        },
    )
    if record is None:
        print("residency-router: " + "; ".join(f"{org_id}{p}" for p in problems), file=sys.stderr)
        return 2
    await directory.write(record, expected_version=None)
    print(format_org(record))
    print("created: routers that looked the org up before see it once their negative cache ends")
    return 0


async def _move(args: argparse.Namespace, router: ResidencyRouter) -> int:
    if args.abort:
        aborted = await router.abort_move(args.org)
        if aborted is None:
            print(f"{args.org} is not moving: nothing to abort")
            return 0
        _print_receipt(aborted)
        return 0
    if args.to is None:
        print("residency-router: orgs move needs --to REGION (or --abort)", file=sys.stderr)
        return 2
    progress = _progress if sys.stderr.isatty() else None
    receipt = await router.move_org(args.org, args.to, dry_run=args.dry_run, progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    _print_receipt(receipt)
    return 0


def _progress(objects: int, size: int) -> None:
    print(f"\rcopied {objects} objects, {size} bytes", end="", file=sys.stderr, flush=True)


def _print_receipt(receipt: MoveReceipt) -> None:
    head = "dry run: " if receipt.dry_run else ""
    print(
        f"{head}{receipt.org_id}: {receipt.from_region.value} -> {receipt.to_region.value}\n"
        f"  objects copied:   {receipt.objects_copied}\n"
        f"  bytes copied:     {receipt.bytes_copied}\n"
        f"  versions deleted: {receipt.versions_deleted}\n"
        f"  uploads aborted:  {receipt.uploads_aborted}\n"
        f"  writes fenced:    {receipt.writes_fenced_s:.1f}s\n"
        f"  started:          {receipt.started_at.isoformat()}\n"
        f"  finished:         {receipt.finished_at.isoformat()}"
    )
    for number, phase in enumerate(receipt.phases, start=1):
        print(f"  {number}. {phase}")
