"""verify, check, explain, purge, erase and infra render (imported only when they run)."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from router.cli._exit import EXIT_FOUND, EXIT_OK, EXIT_UNCHECKED, could_not_check, usage
from router.cli._output import dump, plain
from router.cli._output import table as _table
from router.config import RouterSettings
from router.types import Explanation, PurgeReport, Region, VerifyReport

# AWS answers that mean "these credentials may not look", not "the bucket drifted".
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)


def settings_for(args: argparse.Namespace, **overrides: Any) -> RouterSettings:
    """RESIDENCY_* settings, with ``--regions`` (when given) and ``overrides`` on top."""
    values: dict[str, Any] = {}
    if getattr(args, "regions", None) is not None:
        values["regions_file"] = args.regions
    values.update(overrides)
    return RouterSettings(**values)


def cannot_check(settings: RouterSettings) -> str | None:
    """Why nothing could be checked (no credentials, endpoint unreachable), or None.

    Without this, every check of a world the command cannot reach reads as drift.
    """
    if settings.endpoint_url is not None:
        parts = urlsplit(settings.endpoint_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection(
                (parts.hostname or "", port), timeout=settings.connect_timeout_s
            ).close()
        except OSError as exc:
            return (
                f"the endpoint {parts.scheme}://{parts.hostname}:{port} is unreachable "
                f"({type(exc).__name__}); is 'residency-router local' running?"
            )
    import boto3  # lazy: --help must not load the SDK

    # The chain every client of the project resolves (environment, profile, role).
    if boto3.Session().get_credentials() is None:
        return (
            "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run where an instance or task role is available)"
        )
    return None


def _unchecked(settings: RouterSettings, as_json: bool) -> int | None:
    reason = cannot_check(settings)
    return None if reason is None else could_not_check(reason, as_json=as_json)


def run(args: argparse.Namespace) -> int:
    """Run verify, check, explain, purge or erase."""
    if args.command == "check":
        return check(args)
    if args.command == "erase" and not args.yes:
        return usage(
            f"erase deletes every version of {args.org}'s data for good; add --yes to do it",
            as_json=args.json,
        )
    now = None
    if args.command == "purge" and args.now is not None:
        try:
            now = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        except ValueError:
            return usage(
                "--now must be an ISO 8601 instant with a timezone, e.g. 2026-01-31T00:00:00Z",
                as_json=args.json,
            )
        if now.tzinfo is None:
            return usage("--now needs a timezone, e.g. 2026-01-31T00:00:00Z", as_json=args.json)
    # Start-up verification is the verify command's own work, and only slows the others.
    settings = settings_for(args, verify_on_start="off")
    if args.command != "explain":
        status = _unchecked(settings, args.json)
        if status is not None:
            return status
    if args.command == "verify":
        return asyncio.run(_verify(settings, args.json))
    if args.command == "explain":
        return asyncio.run(_explain(settings, args))
    if args.command == "purge":
        return asyncio.run(_purge(settings, now, args.json))
    return asyncio.run(_erase(settings, args))


async def _verify(settings: RouterSettings, as_json: bool) -> int:
    from router.routing import ResidencyRouter

    async with ResidencyRouter.from_settings(settings) as router:
        report = await router.verify()
        # A region that failed and never answered (unreachable, credentials refused) was not
        # checked: that proves nothing either way, so it is not reported as a violation.
        health = router.health()
    unchecked = [
        region
        for region, problems in report.by_region.items()
        if problems and health[region].last_success is None
    ]
    if as_json:
        print(dump(verify_json(report, unchecked)))
    else:
        rows = [
            [
                region.value,
                "ok" if not problems else "NOT CHECKED" if region in unchecked else "FAIL",
                "; ".join(problems),
            ]
            for region, problems in report.by_region.items()
        ]
        print(_table(("region", "result", "problems"), rows))
    if unchecked:
        names = ", ".join(r.value for r in unchecked)
        print(f"residency-router: could not check {names}: no answer", file=sys.stderr)
        return EXIT_UNCHECKED
    return EXIT_OK if report.ok else EXIT_FOUND


def verify_json(report: VerifyReport, unchecked: Sequence[Region] = ()) -> dict[str, Any]:
    """``{"ok", "regions": {region: {"ok", "checked", "problems"}}}``."""
    return {
        "ok": report.ok,
        "regions": {
            region.value: {
                "ok": not problems,
                "checked": region not in unchecked,
                "problems": list(problems),
            }
            for region, problems in report.by_region.items()
        },
        "unchecked": [r.value for r in unchecked],
    }


def format_explanation(result: Explanation) -> str:
    """The decision as aligned text, one part per line, then the rules."""
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


async def _explain(settings: RouterSettings, args: argparse.Namespace) -> int:
    from router.routing import ResidencyRouter

    # explain sends no S3 request; only KMS aliases are resolved at start.
    async with ResidencyRouter.from_settings(settings) as router:
        result = await router.explain(
            args.org,
            operation=args.operation,
            data_class=args.data_class,
            endpoint=args.endpoint,
        )
    print(dump(result) if args.json else format_explanation(result))
    return EXIT_OK


async def _purge(settings: RouterSettings, now: datetime | None, as_json: bool) -> int:
    from router.routing import ResidencyRouter

    async with ResidencyRouter.from_settings(settings) as router:
        report = await router.purge_expired(now=now)
    if as_json:
        print(dump(purge_json(report)))
        return EXIT_OK
    rows = [
        [region.value, str(c.objects), str(c.versions), str(c.uploads_aborted)]
        for region, c in report.by_region.items()
    ]
    print(_table(("region", "objects", "versions", "uploads aborted"), rows))
    totals = purge_json(report)["totals"]
    print(
        f"purged as of {report.now.isoformat()}: {totals['objects']} objects, "
        f"{totals['versions']} versions, {totals['uploads_aborted']} uploads aborted"
    )
    return EXIT_OK


def purge_json(report: PurgeReport) -> dict[str, Any]:
    """``{"ok", "now", "regions": {region: counts}, "totals": counts}``."""
    regions: Mapping[str, Any] = plain(report.by_region)
    names = ("objects", "versions", "uploads_aborted")
    return {
        "ok": True,
        "now": report.now.isoformat(),
        "regions": regions,
        "totals": {n: sum(int(r[n]) for r in regions.values()) for n in names},
    }


async def _erase(settings: RouterSettings, args: argparse.Namespace) -> int:
    from router.routing import ResidencyRouter

    async with ResidencyRouter.from_settings(settings) as router:
        receipt = await router.erase_org(args.org, data_class=args.data_class, region=args.region)
    if args.json:
        print(dump({"ok": True, **plain(receipt)}))
        return EXIT_OK
    what = receipt.data_class.value if receipt.data_class is not None else "all data"
    print(
        f"erased {what} of {receipt.org_id} in {receipt.region.value}: "
        f"{receipt.objects_deleted} objects, {receipt.versions_deleted} versions, "
        f"{receipt.uploads_aborted} uploads aborted"
    )
    return EXIT_OK


def _unchecked_detail(detail: str) -> bool:
    # DriftChecker reports "unreachable: ...", "unreadable answer (...)" and "<code>: ...".
    code = detail.split(":", 1)[0]
    return code in _AUTH_CODES or code == "unreachable" or detail.startswith("unreadable answer")


def check(args: argparse.Namespace) -> int:
    """The drift check: 0 no drift, 1 drift, 2 a region could not be checked."""
    from router.drift import CHECKS, DriftChecker
    from router.regions import RegionMap

    unknown = sorted(set(args.skip) - set(CHECKS))
    if unknown:
        return usage(
            f"unknown checks to skip: {', '.join(unknown)} (known: {', '.join(CHECKS)})",
            as_json=args.json,
        )
    settings = settings_for(args)
    region_map = RegionMap.load(settings.regions_file)
    status = _unchecked(settings, args.json)
    if status is not None:
        return status
    checker = DriftChecker(
        region_map, endpoint_url=settings.endpoint_url, skip=args.skip, proxy_url=settings.proxy_url
    )
    results = checker.check()
    unchecked: dict[str, str] = {}
    for r in results:
        if not r.ok and _unchecked_detail(r.detail):
            unchecked.setdefault(r.region, r.detail)
    drifted = [r for r in results if not r.ok and r.region not in unchecked]
    if args.json:
        print(
            dump(
                {
                    "ok": not drifted and not unchecked,
                    "checks": [plain(r) for r in results],
                    "drifted": len(drifted),
                    "unchecked": unchecked,
                }
            )
        )
    else:
        rows = [[r.region, r.check, "ok" if r.ok else "DRIFT", r.detail] for r in results]
        print(_table(("region", "check", "result", "detail"), rows))
        summary = f"{len(results)} checks, {len(drifted)} drifted"
        if unchecked:
            summary += f", {len(unchecked)} regions not checked"
        print(summary)
        for region, reason in unchecked.items():
            print(f"residency-router: could not check {region}: {reason}", file=sys.stderr)
    if unchecked:
        return EXIT_UNCHECKED  # an incomplete check proves nothing, whatever it found
    return EXIT_FOUND if drifted else EXIT_OK


def render(args: argparse.Namespace) -> int:
    """Write one CloudFormation template per region; print their paths."""
    from router.infra import render_all
    from router.regions import RegionMap

    region_map = RegionMap.load(args.regions)
    written = render_all(
        region_map,
        args.out,
        router_role_arn=args.router_role_arn,
        operator_role_arn=args.operator_role_arn,
    )
    for path in written:
        print(path)
    return EXIT_OK
