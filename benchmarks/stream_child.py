"""Streams 256 MiB through the router to a discarding stub; prints peak RSS growth and MB/s.

Run in its own process (``python -m benchmarks.stream_child ENDPOINT REGIONS_FILE``) so the
peak resident set size belongs to this upload alone.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from router.config import RouterSettings
from router.routing import ResidencyRouter

MiB = 1024 * 1024
TOTAL = 256 * MiB
CHUNK = 1 * MiB


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def body() -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (CHUNK // 256)
    for _ in range(TOTAL // CHUNK):
        yield block


async def main(endpoint: str, regions_file: str) -> None:
    settings = RouterSettings(
        regions_file=Path(regions_file), endpoint_url=endpoint, verify_on_start="off"
    )
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put("org-acme", "warm.bin", b"x" * 1024)
        reset_peak_rss()
        baseline = rss_bytes()
        started = time.perf_counter()
        receipt = await router.put("org-acme", "stream.bin", body())
        elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "rss_growth_bytes": peak_rss_bytes() - baseline,
                "mb_per_s": TOTAL / MiB / elapsed,
                "seconds": elapsed,
                "part_size": settings.multipart_part_size,
                "concurrency": settings.multipart_concurrency,
                "sha256": receipt.sha256,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
