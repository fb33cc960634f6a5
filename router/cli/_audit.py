"""``residency-router audit``: scan every bucket and report what breaks a residency promise."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from pydantic import ValidationError

from router.cli._commands import cannot_check, settings_for
from router.cli._exit import (
    EXIT_FOUND,
    EXIT_OK,
    EXIT_UNCHECKED,
    could_not_check,
    error_document,
)
from router.cli._output import table as _table
from router.errors import ResidencyError
from router.routing import ResidencyRouter
from router.types import AuditReport

PROGRESS_EVERY_S = 0.5


def run(args: argparse.Namespace) -> int:
    """Run the audit; 0 when clean, 1 when anything is found, 2 when it could not check."""
    return asyncio.run(_audit(args))


async def _audit(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    try:
        # The audit checks each object itself; start-up verification would only slow it.
        settings = settings_for(args, verify_on_start="off")
        reason = await asyncio.to_thread(cannot_check, settings)
        if reason is not None:
            return could_not_check(reason, as_json=args.json)
        async with ResidencyRouter.from_settings(settings) as router:
            report = await router.audit(regions=args.region, progress=progress)
    except (ResidencyError, ValidationError) as exc:
        print(f"residency-router: could not audit: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps(error_document(exc, EXIT_UNCHECKED), indent=2))
        return EXIT_UNCHECKED
    finally:
        if progress is not None:
            progress.done()
    print(json.dumps(report_json(report), indent=2) if args.json else format_report(report))
    if report.unchecked:
        return EXIT_UNCHECKED  # an incomplete audit proves nothing, whatever it found
    return EXIT_FOUND if report.findings else EXIT_OK


def report_json(report: AuditReport) -> dict[str, Any]:
    """The report as JSON-ready data: findings, counts and the regions left unchecked."""
    return {
        "ok": report.ok,
        "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat(),
        "findings": [
            {
                "region": f.region.value,
                "bucket": f.bucket,
                "key": f.key,
                "kind": f.kind,
                "detail": f.detail,
                "org_id": f.org_id,
                "version_id": f.version_id,
                "upload_id": f.upload_id,
            }
            for f in report.findings
        ],
        "counts": {
            "findings": len(report.findings),
            "by_kind": dict(sorted(Counter(f.kind for f in report.findings).items())),
            "versions_checked": {r.value: n for r, n in report.versions_checked.items()},
            "uploads_checked": {r.value: n for r, n in report.uploads_checked.items()},
        },
        "unchecked": {r.value: reason for r, reason in report.unchecked.items()},
    }


def format_report(report: AuditReport) -> str:
    """The report as text: one row per finding, the regions unchecked, then a summary."""
    lines: list[str] = []
    if report.findings:
        rows = [
            [f.region.value, f.kind, f.key, f.version_id or f.upload_id or "-", f.detail]
            for f in report.findings
        ]
        lines.append(_table(("region", "kind", "key", "version/upload", "detail"), rows))
    lines += [f"NOT CHECKED {r.value}: {reason}" for r, reason in report.unchecked.items()]
    versions = sum(report.versions_checked.values())
    uploads = sum(report.uploads_checked.values())
    regions = ", ".join(r.value for r in report.versions_checked)
    verdict = "ok" if report.ok else f"{len(report.findings)} findings"
    if report.unchecked:
        verdict += f", {len(report.unchecked)} regions not checked"
    lines.append(
        f"audit of {regions}: {versions} object versions and {uploads} uploads checked; {verdict}"
    )
    return "\n".join(lines)


class _Progress:
    """The running count of versions checked, rewritten in place on a terminal."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._shown = 0.0
        self._count = 0

    def __call__(self, checked: int) -> None:
        self._count = checked
        now = self._clock()
        if now - self._shown >= PROGRESS_EVERY_S:
            self._shown = now
            self._stream.write(f"\raudit: {checked} object versions checked")
            self._stream.flush()

    def done(self) -> None:
        if self._shown:
            self._stream.write(f"\raudit: {self._count} object versions checked\n")
            self._stream.flush()
