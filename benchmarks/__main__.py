"""Benchmarks: the router against hand-written aiobotocore, a stub S3 and the moto server.

``python -m benchmarks`` prints a table and writes ``benchmarks/results/latest.json``.
Router and raw runs alternate (A B, B A, ...) so drift hits both alike; ratios are taken
pair by pair, and each figure reports the median and the spread over its runs.

On a shared 2-core machine single runs swing by 10% and more (slow spells of a second or
two hit whichever side is running). So the comparison uses many short pairs rather than a
few long ones, and takes three steps that treat both sides alike: the benchmark and its
servers run on separate cores where the machine allows, a collection runs before every
run, and the objects made during set-up are frozen out of the collector (``gc.freeze``)
so a full collection of botocore's models does not land on one side's run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from aiobotocore.session import get_session

from router._aws import Transport, aio_config
from router.config import RouterSettings
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld, isolated_aws_environment
from router.types import OrgId, OrgResidency, Region

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BODY = bytes(range(256)) * 4  # 1 KiB
ORG = "org-acme"


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    target: str = ""
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def row(self) -> list[str]:
        spread = f"{min(self.runs):.3g}..{max(self.runs):.3g}" if len(self.runs) > 1 else "-"
        verdict = "" if self.passed is None else ("PASS" if self.passed else "FAIL")
        return [self.name, f"{self.median:.4g}", self.unit, spread, self.target, verdict]


# -- processes ------------------------------------------------------------------------


@contextlib.contextmanager
def child(args: list[str]) -> Iterator[str]:
    """Run a server in its own process (on its own core when possible); yield its first line."""
    process = subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        if SERVER_CPUS:
            os.sched_setaffinity(process.pid, SERVER_CPUS)
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.kill()
        process.wait(timeout=10)


def split_cores() -> tuple[set[int], set[int]]:
    """Give the benchmark one core and its servers the rest, when there are two or more."""
    if not hasattr(os, "sched_getaffinity"):
        return set(), set()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(), set()
    return {cpus[0]}, set(cpus[1:])


BENCH_CPUS, SERVER_CPUS = split_cores()


def stub_map(directory: Path) -> Path:
    """The shipped map with key ARNs the stub reports (nothing to resolve at start)."""
    data = yaml.safe_load((ROOT / "regions.yaml").read_text())
    for cfg in data["regions"].values():
        cfg["kms_key"] = f"arn:aws:kms:{cfg['aws_region']}:123456789012:key/bench"
    path = directory / "regions.bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- the two contenders ---------------------------------------------------------------


class Raw:
    """What a user would write by hand: one reused aiobotocore client per region, the same
    AioConfig, SSE-KMS headers, checksum and tags as the router sends."""

    def __init__(self, settings: RouterSettings, region_map: RegionMap, key_arns: dict[str, str]):
        self._settings = settings
        self._map = region_map
        self._key_arns = key_arns
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str, Any] = {}

    async def __aenter__(self) -> Raw:
        session = get_session()
        config = aio_config(Transport.from_settings(self._settings))
        for cfg in self._map:
            self._clients[cfg.aws_region] = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    region_name=cfg.aws_region,
                    config=config,
                    endpoint_url=self._settings.endpoint_url,
                )
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def put(self, key: str, body: bytes) -> None:
        cfg = self._map.region(Region.EU)
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        await self._clients[cfg.aws_region].put_object(
            Bucket=cfg.bucket,
            Key=f"orgs/{ORG}/files/{key}",
            Body=body,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=self._key_arns[cfg.region],
            BucketKeyEnabled=True,
            ChecksumSHA256=checksum,
            Tagging="residency-org=org-acme&residency-class=files&residency-retention=keep"
            "&residency-training=opt-out",
        )

    async def get(self, key: str) -> bytes:
        cfg = self._map.region(Region.EU)
        response = await self._clients[cfg.aws_region].get_object(
            Bucket=cfg.bucket, Key=f"orgs/{ORG}/files/{key}", ChecksumMode="ENABLED"
        )
        async with response["Body"] as stream:
            data: bytes = await stream.read()
            return data


async def throughput(op: Callable[[int], Awaitable[Any]], count: int, concurrency: int) -> float:
    """Operations per second of ``count`` calls, ``concurrency`` at a time."""
    counter = iter(range(count))

    async def worker() -> None:
        for n in counter:
            await op(n)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def operations(
    op_name: str, router: ResidencyRouter, raw: Raw
) -> tuple[Callable[[int], Awaitable[Any]], Callable[[int], Awaitable[Any]]]:
    """The router's and the hand-written version of one operation on 512 rotating keys."""

    async def router_put(n: int) -> Any:
        return await router.put(ORG, f"bench/{n % 512}", BODY)

    async def raw_put(n: int) -> Any:
        return await raw.put(f"bench/{n % 512}", BODY)

    async def router_get(n: int) -> Any:
        return await router.get(ORG, f"bench/{n % 512}")

    async def raw_get(n: int) -> Any:
        return await raw.get(f"bench/{n % 512}")

    return (router_put, raw_put) if op_name == "put" else (router_get, raw_get)


JUDGED_PAIRS = 24  # fewest router/raw pairs whose median ratio is judged against a target


async def compare(
    label: str,
    router: ResidencyRouter,
    raw: Raw,
    plan: dict[int, tuple[int, int]],
    figures: list[Figure],
    targets: dict[int, float],
) -> None:
    """Router against raw for put and get; ``plan`` maps concurrency to (ops per run, pairs)."""
    for op_name in ("put", "get"):
        for concurrency, (count, pairs) in plan.items():
            router_op, raw_op = operations(op_name, router, raw)
            await throughput(router_op, min(count, 64), concurrency)  # warm both
            await throughput(raw_op, min(count, 64), concurrency)
            router_runs, raw_runs, ratios = [], [], []
            for pair_ in range(pairs):
                pair = [("router", router_op), ("raw", raw_op)]
                if pair_ % 2:
                    pair.reverse()  # A B, B A, ...: neither side always goes first
                measured = {}
                for name, op in pair:
                    gc.collect()  # neither side pays for the other's garbage
                    measured[name] = await throughput(op, count, concurrency)
                router_runs.append(measured["router"])
                raw_runs.append(measured["raw"])
                ratios.append(measured["router"] / measured["raw"])
            base = f"{label} {op_name} 1KiB c={concurrency}"
            figures.append(Figure(f"{base} router", "ops/s", router_runs))
            figures.append(Figure(f"{base} raw", "ops/s", raw_runs))
            target = targets.get(concurrency)
            ratio = Figure(f"{base} router/raw", "ratio", ratios)
            if target is not None and pairs < JUDGED_PAIRS:
                # A raw-against-raw median over a dozen pairs lands anywhere in +-3% here.
                ratio.target = f">= {target} (too few pairs to judge)"
            elif target is not None:
                ratio.target = f">= {target}"
                ratio.passed = ratio.median >= target
            figures.append(ratio)


# -- figures --------------------------------------------------------------------------


async def warm_decision(router: ResidencyRouter, figures: list[Figure]) -> None:
    iterations = 200_000
    plan = router._plan_put
    keys = [f"docs/{i}.txt" for i in range(1024)]
    table = {f"org-{i}": i for i in range(1024)}
    decision_runs, dict_runs = [], []
    for _ in range(5):
        started = time.perf_counter_ns()
        for i in range(iterations):
            decision = await plan(ORG, keys[i & 1023], "files", None)
            decision.tagging()
        decision_runs.append((time.perf_counter_ns() - started) / iterations)
        started = time.perf_counter_ns()
        for _ in range(iterations):
            table.get("org-7")
        dict_runs.append((time.perf_counter_ns() - started) / iterations)
    figure = Figure("warm routing decision", "ns", decision_runs, "<= 2000 ns")
    figure.passed = figure.median <= 2000
    figures += [figure, Figure("bare dict lookup", "ns", dict_runs)]


class SlowDirectory:
    def __init__(self) -> None:
        self.lookups = 0

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        self.lookups += 1
        await asyncio.sleep(0.02)  # a DynamoDB round trip
        return OrgResidency(org_id, Region.EU)


async def cold_start(settings: RouterSettings, figures: list[Figure]) -> None:
    runs, lookups = [], []
    for round_ in range(5):
        directory = SlowDirectory()
        async with ResidencyRouter.from_settings(settings, directory=directory) as router:
            started = time.perf_counter()
            places = await asyncio.gather(
                *(router.resolve(f"cold-org-{round_}") for _ in range(10_000))
            )
            runs.append((time.perf_counter() - started) * 1000)
            assert len(places) == 10_000
            lookups.append(directory.lookups)
    figure = Figure("cold start: 10,000 concurrent resolves", "ms", runs)
    figures.append(figure)
    lookup_figure = Figure("cold start: directory lookups", "lookups", [float(x) for x in lookups])
    lookup_figure.target = "== 1"
    lookup_figure.passed = all(x == 1 for x in lookups)
    figures.append(lookup_figure)


async def client_reuse(
    settings: RouterSettings, region_map: RegionMap, router: ResidencyRouter, figures: list[Figure]
) -> None:
    cfg = region_map.region(Region.EU)
    session = get_session()
    config = aio_config(Transport.from_settings(settings))

    async def naive(n: int) -> None:
        async with session.create_client(
            "s3", region_name=cfg.aws_region, config=config, endpoint_url=settings.endpoint_url
        ) as client:
            await client.put_object(Bucket=cfg.bucket, Key=f"orgs/{ORG}/files/naive/{n}", Body=BODY)

    naive_runs, pooled_runs = [], []
    for _ in range(3):
        naive_runs.append(await throughput(naive, 60, 1))
        pooled_runs.append(await throughput(lambda n: router.put(ORG, f"p/{n}", BODY), 300, 1))
    figures.append(Figure("client per call (naive) put c=1", "ops/s", naive_runs))
    figures.append(Figure("pooled clients (router) put c=1", "ops/s", pooled_runs))
    figures.append(
        Figure(
            "pooled/naive",
            "ratio",
            [p / n for p, n in zip(pooled_runs, naive_runs, strict=True)],
        )
    )


def streaming(endpoint: str, regions_file: Path, figures: list[Figure]) -> None:
    growth, speed = [], []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.stream_child", endpoint, str(regions_file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
            cwd=ROOT,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        growth.append(result["rss_growth_bytes"] / 1024 / 1024)
        speed.append(result["mb_per_s"])
    figure = Figure("stream 256 MiB: peak RSS growth", "MiB", growth, "<= 64 MiB")
    figure.passed = max(growth) <= 64
    figures += [figure, Figure("stream 256 MiB: throughput", "MB/s", speed)]


# -- main -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    versions = {}
    for name in ("residency-router", "aiobotocore", "botocore", "aiohttp", "moto"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "benchmark_cpus": sorted(BENCH_CPUS),
        "server_cpus": sorted(SERVER_CPUS),
        "versions": versions,
    }


def table(figures: list[Figure]) -> str:
    headers = ["figure", "median", "unit", "spread (min..max)", "target", ""]
    rows = [f.row() for f in figures]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


async def on_endpoint(
    label: str,
    settings: RouterSettings,
    key_arns: dict[str, str] | None,
    plan: dict[int, tuple[int, int]],
    figures: list[Figure],
    targets: dict[int, float],
    extras: Callable[[ResidencyRouter, RegionMap], Awaitable[None]] | None = None,
) -> None:
    region_map = RegionMap.load(settings.regions_file)
    async with ResidencyRouter.from_settings(settings) as router:
        arns = key_arns or {
            r: (await router.resolve(org)).kms_key_arn for r, org in ((Region.EU, ORG),)
        }
        async with Raw(settings, region_map, arns) as raw:
            for n in range(512):
                await raw.put(f"bench/{n}", BODY)
            gc.collect()
            gc.freeze()  # set-up's objects (botocore's models, clients) leave the collector
            try:
                await compare(label, router, raw, plan, figures, targets)
            finally:
                gc.unfreeze()
        if extras is not None:
            await extras(router, region_map)


async def run(quick: bool) -> list[Figure]:
    figures: list[Figure] = []
    # concurrency -> (operations per run, router/raw pairs); about 1.5 minutes at c=64
    stub_plan = {1: (150, 30), 16: (1000, 12), 64: (500, 48)}
    moto_plan = {1: (150, 3), 16: (400, 3), 64: (600, 3)}
    if quick:
        stub_plan = {c: (count, max(2, pairs // 4)) for c, (count, pairs) in stub_plan.items()}
        moto_plan = {c: (count, 2) for c, (count, _) in moto_plan.items()}
    with tempfile.TemporaryDirectory() as work, isolated_aws_environment():
        workdir = Path(work)
        regions_file = stub_map(workdir)
        with child(["-m", "benchmarks.stub_s3"]) as port:
            endpoint = f"http://127.0.0.1:{port}"
            settings = RouterSettings(
                regions_file=regions_file, endpoint_url=endpoint, verify_on_start="off"
            )

            async def stub_extras(router: ResidencyRouter, region_map: RegionMap) -> None:
                await warm_decision(router, figures)
                await client_reuse(settings, region_map, router, figures)

            await on_endpoint(
                "stub",
                settings,
                {Region.EU: "arn:aws:kms:eu-west-1:123456789012:key/bench"},
                stub_plan,
                figures,
                {1: 0.95, 64: 0.97},
                stub_extras,
            )
            await cold_start(settings, figures)
            streaming(endpoint, regions_file, figures)
        moto_code = (
            "import sys\nfrom router.testing import LocalS3Server\n"
            "print(LocalS3Server().start(), flush=True)\nsys.stdin.read()\n"
        )
        with child(["-c", moto_code]) as moto_endpoint:
            world = ResidencyWorld.provision(moto_endpoint, ROOT / "regions.yaml", workdir)
            await on_endpoint(
                "moto",
                world.settings(),
                None,
                moto_plan,
                figures,
                {},
            )
    return figures


def main() -> int:
    quick = "--quick" in sys.argv
    if BENCH_CPUS:
        os.sched_setaffinity(0, BENCH_CPUS)
    started = time.perf_counter()
    figures = asyncio.run(run(quick))
    host = machine()
    report: dict[str, Any] = {
        "machine": host,
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [
            {**asdict(f), "median": f.median, "min": min(f.runs), "max": max(f.runs)}
            for f in figures
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(figures))
    print(
        f"\n{host['cpus']} CPUs, Python {host['python']}; "
        f"{report['seconds']} s; JSON: {RESULTS / 'latest.json'}"
    )
    failed = [f.name for f in figures if f.passed is False]
    if failed:
        print("FAILED targets: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
