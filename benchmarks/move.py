"""Benchmark: a live move of an org with 1,000 objects on the moto server.

``python -m benchmarks.move [--objects N] [--cache-ttl-s S] [--quick]`` prints a table and
writes ``benchmarks/results/move.json``. A second router keeps writing to the org all
through the move; the figures are the move's own receipt (objects, bytes, the fence window
``writes_fenced_s``), the total move time, and what the writer saw: its writes refused
(OrgMovingError) and the span from its first refusal to its last.

With the library's defaults (``cache_ttl_s`` 60, ``clock_skew_s`` 5, a longest request of
55 s) the fence window is at least 65 + 55 s plus the delta copy: the price of letting
every router switch together without any cross-process call. ``--quick`` uses a 1-second
cache and a 5-second longest request to show the copying itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from router.errors import OrgMovingError
from router.routing import ResidencyRouter
from router.testing import LocalS3Server, ResidencyWorld, isolated_aws_environment
from router.types import OrgId, OrgResidency, Region

ROOT = Path(__file__).resolve().parent.parent
ORG = "org-bench-move"


async def _run(world: ResidencyWorld, objects: int, overrides: dict[str, Any]) -> dict[str, Any]:
    settings = world.settings(directory_table="orgs", **overrides)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as writer,
    ):
        body = bytes(range(256)) * 4
        sem = asyncio.Semaphore(32)

        async def seed(i: int) -> None:
            async with sem:
                await mover.put(ORG, f"seed/{i:05d}.bin", body)

        await asyncio.gather(*(seed(i) for i in range(objects)))
        refusals: list[float] = []
        written = 0
        done = asyncio.Event()

        async def keep_writing() -> None:
            nonlocal written
            i = 0
            while not done.is_set():
                i += 1
                try:
                    await writer.put(ORG, f"live/{i:06d}.bin", body)
                    written += 1
                except OrgMovingError:
                    refusals.append(time.monotonic())
                await asyncio.sleep(0.05)

        task = asyncio.create_task(keep_writing())
        started = time.monotonic()
        receipt = await mover.move_org(ORG, Region.US)
        total_s = time.monotonic() - started
        done.set()
        await task
    return {
        "objects_seeded": objects,
        "objects_copied": receipt.objects_copied,
        "bytes_copied": receipt.bytes_copied,
        "versions_deleted": receipt.versions_deleted,
        "writes_fenced_s": round(receipt.writes_fenced_s, 2),
        "move_total_s": round(total_s, 2),
        "writer_writes_ok": written,
        "writer_refusals": len(refusals),
        "writer_refused_span_s": round(refusals[-1] - refusals[0], 2) if refusals else 0.0,
        "settings": {
            "cache_ttl_s": settings.cache_ttl_s,
            "clock_skew_s": settings.clock_skew_s,
            "longest_request_s": settings.longest_request_s,
            "move_concurrency": settings.move_concurrency,
        },
    }


def main() -> None:
    """Run the move benchmark; print a table and write ``benchmarks/results/move.json``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.move")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="1 s cache, 5 s longest request")
    args = parser.parse_args()
    overrides: dict[str, Any] = {}
    if args.quick:
        overrides = {
            "cache_ttl_s": 1.0,
            "clock_skew_s": 0.2,
            "retry_deadline_s": 1.0,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 3.0,
        }
    with (
        isolated_aws_environment(),
        LocalS3Server() as server,
        tempfile.TemporaryDirectory() as workdir,
    ):
        world = ResidencyWorld.provision(server.endpoint_url, ROOT / "regions.yaml", workdir)
        world.create_directory_table("orgs", {ORG: OrgResidency(OrgId(ORG), Region.EU)})
        result = asyncio.run(_run(world, args.objects, overrides))
        prefix = f"orgs/{ORG}/"
        result["source_versions_left"] = sum(
            1 for v in world.all_versions(Region.EU) if v["Key"].startswith(prefix)
        )
        result["target_objects"] = sum(
            1 for v in world.all_versions(Region.US) if v["Key"].startswith(prefix)
        )
    result["machine"] = f"{platform.machine()} {platform.python_version()}"
    width = max(len(k) for k in result)
    print("move benchmark (moto server, eu -> us, a second router writing throughout)")
    for name, value in result.items():
        print(f"  {name:<{width}}  {value}")
    out = ROOT / "benchmarks" / "results" / "move.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
