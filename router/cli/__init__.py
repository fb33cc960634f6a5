"""The ``residency-router`` command: demo, local world, verify, check, orgs, purge, erase.

Only the parser lives here, with light imports: ``--help`` and ``--version`` must not load
aiobotocore, boto3 or botocore. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from router.cli import _orgs
from router.cli._exit import EXIT_FOUND, EXIT_UNCHECKED, exit_code_for, report_error
from router.errors import ResidencyError
from router.types import DataClass, Operation, Region

EXIT_CODES = """\
exit status:
  0  fine: nothing wrong was found, or the command did what it was asked
  1  a violation or drift was found (verify, check, audit), or a change was refused
  2  usage error, or could not check: no credentials, endpoint or network unreachable,
     a bad region map or setting, an unknown org

settings come from RESIDENCY_* environment variables (RESIDENCY_ENDPOINT_URL,
RESIDENCY_REGIONS_FILE, RESIDENCY_DIRECTORY_TABLE, ...); --regions overrides the map.
'residency-router local' starts a local world and prints the variables to export.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("residency-router")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _regions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--regions",
        type=Path,
        default=None,
        metavar="FILE",
        help="region map (default: RESIDENCY_REGIONS_FILE, else ./regions.yaml)",
    )


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout instead of text"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="residency-router",
        description="Keep every org's data in its residency region.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write and check objects on a local moto server")
    demo.add_argument(
        "--regions",
        type=Path,
        default=None,
        metavar="FILE",
        help="region map (default: the example map shipped with the package)",
    )
    local = commands.add_parser(
        "local",
        help="start a local world (moto on 127.0.0.1) and print the variables to export",
        description="Start moto on 127.0.0.1, provision every region of the map (buckets, "
        "KMS keys, aliases) and a DynamoDB directory table with the map's orgs, print "
        "'export RESIDENCY_...=...' lines on stdout, and run until interrupted.",
    )
    local.add_argument(
        "--regions",
        type=Path,
        default=None,
        metavar="FILE",
        help="region map (default: the example map shipped with the package)",
    )
    local.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    local.add_argument(
        "--table", default="residency-orgs", help="name of the DynamoDB directory table"
    )
    init = commands.add_parser("init", help="write a commented regions.yaml to start from")
    init.add_argument("path", nargs="?", type=Path, default=Path("regions.yaml"))
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    verify = commands.add_parser(
        "verify", help="check every region's bucket and key (settings from RESIDENCY_* vars)"
    )
    _regions(verify)
    _json(verify)
    infra = commands.add_parser("infra", help="CloudFormation for the regions")
    infra_commands = infra.add_subparsers(dest="infra_command", required=True)
    render = infra_commands.add_parser("render", help="render one template per region")
    render.add_argument("--out", type=Path, required=True, help="output directory")
    render.add_argument(
        "--regions", type=Path, default=Path("regions.yaml"), metavar="FILE", help="region map"
    )
    render.add_argument("--router-role-arn", default=None, help="IAM role the router runs as")
    render.add_argument("--operator-role-arn", default=None, help="IAM role administering keys")
    check = commands.add_parser(
        "check", help="compare live buckets and keys with the map and the hardening rules"
    )
    check.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="CHECK",
        help="leave a check out (repeatable; e.g. 'policy' for local worlds that are written "
        "to); an unknown name lists the known ones",
    )
    _regions(check)
    _json(check)
    _orgs.add_parser(commands, _regions, _json)
    explain = commands.add_parser(
        "explain", help="show the decision the router would take for an org, and why"
    )
    explain.add_argument("org", help="org id")
    explain.add_argument(
        "--operation", choices=[o.value for o in Operation], default=Operation.PUT.value
    )
    explain.add_argument("--data-class", choices=[d.value for d in DataClass], default=None)
    explain.add_argument("--endpoint", default=None, help="processing endpoint path")
    _regions(explain)
    _json(explain)
    purge = commands.add_parser(
        "purge", help="delete expired inputs/outputs in every region (for a cron job)"
    )
    purge.add_argument(
        "--now",
        default=None,
        metavar="ISO",
        help="the instant to purge as of, ISO 8601 with a timezone (default: now)",
    )
    _regions(purge)
    _json(purge)
    erase = commands.add_parser(
        "erase", help="delete all of an org's data (or one data class), every version"
    )
    erase.add_argument("org", help="org id")
    erase.add_argument("--data-class", choices=[d.value for d in DataClass], default=None)
    erase.add_argument(
        "--region",
        choices=[r.value for r in Region],
        default=None,
        help="the region to erase in (needed for an org no longer in the directory)",
    )
    erase.add_argument("--yes", action="store_true", help="really erase (required)")
    _regions(erase)
    _json(erase)
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
    _regions(audit)
    _json(audit)
    return parser


def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo":
        from router.cli import _demo

        return _demo.run(args)
    if command in ("local", "init"):
        from router.cli import _local

        return _local.run_local(args) if command == "local" else _local.run_init(args)
    if command == "infra":
        from router.cli import _commands

        return _commands.render(args)
    if command == "orgs":
        return asyncio.run(_orgs.run(args))
    if command == "audit":
        from router.cli import _audit

        return _audit.run(args)
    from router.cli import _commands

    return _commands.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see ``EXIT_CODES``)."""
    args = build_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        return _run(args)
    except (ResidencyError, ValidationError) as exc:
        return report_error(exc, as_json=as_json)
    except KeyboardInterrupt:
        return report_error(RuntimeError("interrupted"), as_json=as_json)
    except BrokenPipeError:
        # The reader went away (``| head``): say nothing more, and let no flush at exit fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_UNCHECKED


__all__ = ["EXIT_CODES", "EXIT_FOUND", "EXIT_UNCHECKED", "build_parser", "exit_code_for", "main"]


if __name__ == "__main__":
    sys.exit(main())
