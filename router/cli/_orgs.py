"""``residency-router orgs``: list, show, set (scheduled changes) and move org records."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from router.cli._output import dump, plain
from router.types import MoveReceipt, OrgResidency, Region

if TYPE_CHECKING:  # the commands import them when they run: --help must stay light
    from router.orgs import DynamoDBOrgDirectory
    from router.regions import RegionMap
    from router.routing import ResidencyRouter

Option = Callable[[argparse.ArgumentParser], None]


def add_parser(commands: Any, *options: Option) -> None:
    """Add ``orgs`` and its subcommands to the command parser, each with ``options``."""
    orgs = commands.add_parser("orgs", help="show, list, set or move org residency records")
    orgs_commands = orgs.add_subparsers(dest="orgs_command", required=True)
    listing = orgs_commands.add_parser("list", help="list every org record")
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
    for sub in (listing, show, set_org, move):
        for option in options:
            option(sub)


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


def _emit(args: argparse.Namespace, text: str, document: dict[str, Any]) -> None:
    print(dump(document) if args.json else text)


async def run(args: argparse.Namespace) -> int:
    """Run one ``orgs`` subcommand; return the exit status."""
    from router.cli._commands import settings_for
    from router.cli._exit import usage
    from router.inputs import parse_org_id
    from router.orgs import DynamoDBOrgDirectory
    from router.regions import RegionMap
    from router.routing import ResidencyRouter

    settings = settings_for(args, verify_on_start="off")
    region_map = await asyncio.to_thread(RegionMap.load, settings.regions_file)
    if args.orgs_command in ("set", "move") and not settings.directory_table:
        return usage(
            f"orgs {args.orgs_command} needs RESIDENCY_DIRECTORY_TABLE (a DynamoDB table); "
            "static orgs live in regions.yaml and cannot change at run time",
            as_json=args.json,
        )
    async with ResidencyRouter.from_settings(settings) as router:
        directory = router.directory.inner
        if args.orgs_command == "show":
            record = await router.directory.fresh(parse_org_id(args.org))
            _emit(args, format_org(record), {"ok": True, "org": plain(record)})
            return 0
        if args.orgs_command == "list":
            return await _list(args, directory, region_map)
        if args.orgs_command == "move":
            return await _move(args, router)
        assert isinstance(directory, DynamoDBOrgDirectory)
        return await _set_org(args, router, directory, region_map)


async def _list(args: argparse.Namespace, directory: object, region_map: RegionMap) -> int:
    from router.orgs import DynamoDBOrgDirectory

    bad: list[str] = []
    if isinstance(directory, DynamoDBOrgDirectory):
        records = []
        async for found in directory.list():
            if isinstance(found, OrgResidency):
                records.append(found)
            else:
                bad.append(str(found))
                print(f"residency-router: {found}", file=sys.stderr)
    else:
        records = list(region_map.orgs.values())
    records.sort(key=lambda r: r.org_id)
    _emit(
        args,
        "\n".join(format_org(record) for record in records),
        {"ok": not bad, "orgs": [plain(r) for r in records], "unreadable": bad},
    )
    return 1 if bad else 0


async def _set_org(
    args: argparse.Namespace,
    router: ResidencyRouter,
    directory: DynamoDBOrgDirectory,
    region_map: RegionMap,
) -> int:
    from router.cli._exit import usage
    from router.errors import InvalidArgumentError, UnknownOrgError
    from router.inputs import parse_org_id

    org_id = parse_org_id(args.org)
    try:
        current: OrgResidency | None = await router.directory.fresh(org_id)
    except UnknownOrgError:
        current = None
    if current is None:
        return await _create(args, org_id, directory, region_map)
    if args.region is not None and Region(args.region) is not current.region:
        message = (
            f"refused: {org_id} lives in {current.region.value}; its storage region changes "
            f"only by moving its data: residency-router orgs move {org_id} --to {args.region}"
        )
        print(f"residency-router: {message}", file=sys.stderr)
        if args.json:
            refusal = {"type": "Refused", "kind": "refused", "message": message}
            print(dump({"ok": False, "exit_code": 1, "error": refusal}))
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
        return usage(str(exc), as_json=args.json)
    lines = [format_org(record)]
    changed = record.version != current.version
    if not changed:
        lines.append("nothing changed")
    elif record.effective_at is not None:
        lines.append(f"takes effect on every router at {record.effective_at.isoformat()}")
    _emit(
        args,
        "\n".join(lines),
        {"ok": True, "org": plain(record), "created": False, "changed": changed},
    )
    return 0


async def _create(
    args: argparse.Namespace, org_id: Any, directory: DynamoDBOrgDirectory, region_map: RegionMap
) -> int:
    from router.cli._exit import usage

    if args.region is None:
        return usage("a new org needs --region", as_json=args.json)
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
        return usage("; ".join(f"{org_id}{p}" for p in problems), as_json=args.json)
    await directory.write(record, expected_version=None)
    _emit(
        args,
        format_org(record) + "\ncreated: routers that looked the org up before see it once "
        "their negative cache ends",
        {"ok": True, "org": plain(record), "created": True, "changed": True},
    )
    return 0


async def _move(args: argparse.Namespace, router: ResidencyRouter) -> int:
    from router.cli._exit import usage

    if args.abort:
        aborted = await router.abort_move(args.org)
        if aborted is None:
            _emit(
                args,
                f"{args.org} is not moving: nothing to abort",
                {"ok": True, "aborted": False, "receipt": None},
            )
            return 0
        document = {"ok": True, "aborted": True, "receipt": plain(aborted)}
        _emit(args, format_receipt(aborted), document)
        return 0
    if args.to is None:
        return usage("orgs move needs --to REGION (or --abort)", as_json=args.json)
    progress = _progress if sys.stderr.isatty() else None
    receipt = await router.move_org(args.org, args.to, dry_run=args.dry_run, progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    _emit(args, format_receipt(receipt), {"ok": True, "receipt": plain(receipt)})
    return 0


def _progress(objects: int, size: int) -> None:
    print(f"\rcopied {objects} objects, {size} bytes", end="", file=sys.stderr, flush=True)


def format_receipt(receipt: MoveReceipt) -> str:
    """A move's receipt as text: counts, instants, then the phases in order."""
    head = "dry run: " if receipt.dry_run else ""
    lines = [
        f"{head}{receipt.org_id}: {receipt.from_region.value} -> {receipt.to_region.value}",
        f"  objects copied:   {receipt.objects_copied}",
        f"  bytes copied:     {receipt.bytes_copied}",
        f"  versions deleted: {receipt.versions_deleted}",
        f"  uploads aborted:  {receipt.uploads_aborted}",
        f"  writes fenced:    {receipt.writes_fenced_s:.1f}s",
        f"  started:          {receipt.started_at.isoformat()}",
        f"  finished:         {receipt.finished_at.isoformat()}",
    ]
    lines += [f"  {number}. {phase}" for number, phase in enumerate(receipt.phases, start=1)]
    return "\n".join(lines)
