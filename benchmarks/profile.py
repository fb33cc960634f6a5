"""Where the router's CPU per operation goes (``python -m benchmarks.profile [put|get]``).

Runs the router's 1 KiB put or get against the stub S3 (in its own process) at concurrency
16 under cProfile and sums each function's own time into parts: the router's code, botocore's
signer, aiohttp (request, connection, parser), yarl and multidict, the event loop and its
sockets, and the rest. Profiling slows everything, Python code more than C, so the figures
are shares of a profiled run, not timings; the benchmark (``python -m benchmarks``) has the
timings.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import pstats
import sys
from collections import defaultdict

from benchmarks.__main__ import BENCH_CPUS, BODY, ORG, on_stub
from router.config import RouterSettings
from router.routing import ResidencyRouter

OPERATIONS = 3000
PARTS = (
    ("router: lean transport", "/router/_s3/lean"),  # lean.py, lean_model.py, lean_failures.py
    ("router: lean transport", "/router/_s3/sigv4.py"),
    ("router: the rest (policy, cache, audit, retry, errors)", "/router/"),
    ("botocore signer", "/botocore/auth.py"),
    ("botocore: other (checksum, parser, utils)", "/botocore/"),
    ("aiobotocore (body, checksum)", "/aiobotocore/"),
    ("aiohttp", "/aiohttp/"),
    ("yarl, multidict", "/yarl/"),
    ("yarl, multidict", "/multidict/"),
    ("event loop, sockets (asyncio, selectors, ssl)", "/asyncio/"),
    ("event loop, sockets (asyncio, selectors, ssl)", "/selectors.py"),
    ("standard library: urllib, hmac, hashlib, email", "/urllib/"),
    ("standard library: urllib, hmac, hashlib, email", "/hmac.py"),
    ("standard library: urllib, hmac, hashlib, email", "/email/"),
)


def part_of(filename: str, function: str) -> str:
    for part, marker in PARTS:
        if marker in filename:
            return part
    if filename == "~":  # a builtin: attribute by name
        if "socket" in function or "poll" in function or "select" in function:
            return "event loop, sockets (asyncio, selectors, ssl)"
        if "hmac" in function or "hashlib" in function or "openssl" in function:
            return "standard library: urllib, hmac, hashlib, email"
        return "builtins (str, dict, ...)"
    return "other"


async def profiled(settings: RouterSettings, op_name: str) -> pstats.Stats:
    async with ResidencyRouter.from_settings(settings) as router:

        async def op(n: int) -> object:
            if op_name == "put":
                return await router.put(ORG, f"bench/{n % 512}", BODY)
            return await router.get(ORG, f"bench/{n % 512}")

        async def run(count: int) -> None:
            counter = iter(range(count))

            async def worker() -> None:
                for n in counter:
                    await op(n)

            await asyncio.gather(*(worker() for _ in range(16)))

        await run(300)  # warm
        gc.collect()
        profile = cProfile.Profile()
        profile.enable()
        await run(OPERATIONS)
        profile.disable()
        return pstats.Stats(profile)


def main() -> int:
    op_name = sys.argv[1] if len(sys.argv) > 1 else "put"
    if BENCH_CPUS:
        os.sched_setaffinity(0, BENCH_CPUS)
    with on_stub() as settings:
        stats = asyncio.run(profiled(settings, op_name))
    totals: dict[str, float] = defaultdict(float)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _, function), (_, _, own, _, _) in raw.items():
        totals[part_of(filename, function)] += own
    whole = sum(totals.values())
    print(f"router {op_name} 1 KiB, concurrency 16, {OPERATIONS} operations under cProfile")
    print(f"{'part':56} {'share':>6}")
    for part, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{part:56} {seconds / whole:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
