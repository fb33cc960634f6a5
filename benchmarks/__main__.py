"""Benchmarks: the router against hand-written aiobotocore and obstore, a stub S3 and moto.

``python -m benchmarks`` prints a table and writes ``benchmarks/results/latest.json``.
On the stub, each round runs the router, raw aiobotocore and obstore (the ``bench`` extra;
skipped, and said so, when it is not installed) in an order that changes every round
(A B C, A C B, B A C, ...) so drift hits all alike; ratios are taken round by round, and
each figure reports the median and the spread over its runs. CPU time per operation is
the benchmark process's (all its threads, so obstore's Rust runtime too): the stub runs
in a process of its own.

On a shared 2-core machine single runs swing by 10% and more (slow spells of a second or
two hit whichever side is running). So the comparison uses many short rounds rather than
a few long ones, and takes three steps that treat every client alike: the benchmark and its
servers run on separate cores where the machine allows, a collection runs before every
run, and the objects made during set-up are frozen out of the collector (``gc.freeze``)
so a full collection of botocore's models does not land on one client's run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import importlib.util
import itertools
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
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

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
TAGS = {
    "residency-org": ORG,
    "residency-class": "files",
    "residency-retention": "keep",
    "residency-training": "opt-out",
}
# The reference peer lives in the `bench` extra; CI's mypy runs without it.
HAS_OBSTORE = importlib.util.find_spec("obstore") is not None
OBSTORE_MISSING = "obstore not installed (pip install -e '.[dev,bench]')"


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    target: str = ""
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    def row(self) -> list[str]:
        if not self.runs:  # a contender that was skipped
            return [self.name, "skipped", self.unit, "-", self.target, ""]
        spread = f"{min(self.runs):.3g}..{max(self.runs):.3g}" if len(self.runs) > 1 else "-"
        verdict = "" if self.passed is None else ("PASS" if self.passed else "FAIL")
        return [
            self.name,
            f"{statistics.median(self.runs):.4g}",
            self.unit,
            spread,
            self.target,
            verdict,
        ]


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


@contextlib.contextmanager
def on_stub() -> Iterator[RouterSettings]:
    """Run the stub S3 in its own process; yield router settings for it (nothing verified)."""
    with tempfile.TemporaryDirectory() as work, isolated_aws_environment():
        regions_file = stub_map(Path(work))
        with child(["-m", "benchmarks.stub_s3"]) as port:
            yield RouterSettings(
                regions_file=regions_file,
                endpoint_url=f"http://127.0.0.1:{port}",
                verify_on_start="off",
            )


# -- the contenders -------------------------------------------------------------------


class Peer(Protocol):
    """A hand-written client the router is measured against."""

    async def put(self, key: str, body: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...


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
            Tagging="&".join(f"{k}={v}" for k, v in TAGS.items()),
        )

    async def get(self, key: str) -> bytes:
        cfg = self._map.region(Region.EU)
        response = await self._clients[cfg.aws_region].get_object(
            Bucket=cfg.bucket, Key=f"orgs/{ORG}/files/{key}", ChecksumMode="ENABLED"
        )
        async with response["Body"] as stream:
            data: bytes = await stream.read()
            return data


class Obstore:
    """obstore (Rust's object_store) as a reference peer: one S3Store on the region's bucket,
    sending what the router sends as far as obstore allows (SSE-KMS under the region's key
    with a bucket key, a SHA-256 checksum, the same tags, an unsigned payload; static
    credentials, path style).

    It cannot ask for checksum validation on reads (``x-amz-checksum-mode``), which the
    router and raw aiobotocore do; the stub sends no checksum back, so nothing is checked.
    """

    def __init__(self, settings: RouterSettings, region_map: RegionMap, key_arns: dict[str, str]):
        # Imported here: obstore is the optional `bench` extra (mypy may run without it).
        import obstore  # type: ignore[import-not-found,unused-ignore]
        from obstore.store import S3Store  # type: ignore[import-not-found,unused-ignore]

        cfg = region_map.region(Region.EU)
        assert settings.endpoint_url is not None
        self._put_async = obstore.put_async
        self._get_async = obstore.get_async
        self._prefix = f"orgs/{ORG}/files/"
        self._store = S3Store(
            cfg.bucket,
            endpoint=settings.endpoint_url,
            region=cfg.aws_region,
            access_key_id="testing",  # static: no environment, profile or IMDS lookups
            secret_access_key="testing",
            virtual_hosted_style_request=False,
            server_side_encryption="aws:kms",
            sse_kms_key_id=key_arns[cfg.region],
            sse_bucket_key_enabled=True,
            checksum_algorithm="SHA256",
            unsigned_payload=True,  # botocore's S3 requests here say UNSIGNED-PAYLOAD too
            client_options={
                "allow_http": True,
                "connect_timeout": timedelta(seconds=settings.connect_timeout_s),
                "timeout": timedelta(seconds=settings.read_timeout_s),
            },
        )

    async def put(self, key: str, body: bytes) -> None:
        await self._put_async(self._store, self._prefix + key, body, tags=TAGS, use_multipart=False)

    async def get(self, key: str) -> bytes:
        result = await self._get_async(self._store, self._prefix + key)
        return bytes(await result.bytes_async())


Op = Callable[[int], Awaitable[Any]]


async def throughput(op: Op, count: int, concurrency: int) -> tuple[float, float]:
    """Operations per second of ``count`` calls, ``concurrency`` at a time, and the CPU
    microseconds per operation this process spent on them (all threads)."""
    counter = iter(range(count))

    async def worker() -> None:
        for n in counter:
            await op(n)

    cpu_started = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return count / elapsed, cpu * 1e6 / count


def router_op(op_name: str, router: ResidencyRouter) -> Op:
    """The router's version of one operation on 512 rotating keys."""

    async def put(n: int) -> Any:
        return await router.put(ORG, f"bench/{n % 512}", BODY)

    async def get(n: int) -> Any:
        return await router.get(ORG, f"bench/{n % 512}")

    return put if op_name == "put" else get


def peer_op(op_name: str, peer: Peer) -> Op:
    """A peer's version of one operation on the same 512 rotating keys."""

    async def put(n: int) -> Any:
        return await peer.put(f"bench/{n % 512}", BODY)

    async def get(n: int) -> Any:
        return await peer.get(f"bench/{n % 512}")

    return put if op_name == "put" else get


JUDGED_ROUNDS = 24  # fewest rounds whose median router/peer ratio is judged against a target


async def compare(
    label: str,
    router: ResidencyRouter,
    peers: dict[str, Peer],
    plan: dict[int, tuple[int, int]],
    figures: list[Figure],
    targets: dict[str, dict[int, float]],
    skipped: dict[str, str],
) -> None:
    """The router against each peer for put and get, all in the same rounds.

    ``plan`` maps concurrency to (ops per run, rounds); ``targets`` maps a peer to its
    router/peer targets by concurrency; ``skipped`` maps a peer that is absent to why.
    """
    for op_name in ("put", "get"):
        for concurrency, (count, rounds) in plan.items():
            ops = {"router": router_op(op_name, router)}
            ops |= {name: peer_op(op_name, peer) for name, peer in peers.items()}
            for op in ops.values():
                await throughput(op, min(count, 64), concurrency)  # warm all
            # Every order in turn: each client goes first, and follows each other, as often.
            orders = list(itertools.permutations(ops))
            speed: dict[str, list[float]] = {name: [] for name in ops}
            cpu: dict[str, list[float]] = {name: [] for name in ops}
            ratios: dict[str, list[float]] = {name: [] for name in peers}
            for round_ in range(rounds):
                for name in orders[round_ % len(orders)]:
                    gc.collect()  # no client pays for another's garbage
                    ops_per_s, cpu_us = await throughput(ops[name], count, concurrency)
                    speed[name].append(ops_per_s)
                    cpu[name].append(cpu_us)
                for name in peers:
                    ratios[name].append(speed["router"][-1] / speed[name][-1])
            base = f"{label} {op_name} 1KiB c={concurrency}"
            for name in [*ops, *skipped]:
                figures.append(Figure(f"{base} {name}", "ops/s", speed.get(name, [])))
            for name in [*peers, *skipped]:
                ratio = Figure(f"{base} router/{name}", "ratio", ratios.get(name, []))
                target = targets.get(name, {}).get(concurrency)
                if target is not None and name in skipped:
                    ratio.target = f">= {target} (not judged: {name} skipped)"
                elif target is not None and rounds < JUDGED_ROUNDS:
                    # A raw-against-raw median over a dozen rounds lands anywhere in +-3% here.
                    ratio.target = f">= {target} (too few rounds to judge)"
                elif target is not None:
                    ratio.target = f">= {target}"
                    ratio.passed = statistics.median(ratios[name]) >= target
                figures.append(ratio)
            for name in [*ops, *skipped]:
                figures.append(Figure(f"{base} {name} CPU", "µs/op", cpu.get(name, [])))


# -- figures --------------------------------------------------------------------------


async def warm_decision(router: ResidencyRouter, figures: list[Figure]) -> None:
    iterations = 200_000
    # What put pays before any I/O for an org whose record is cached: no await.
    plan = router._warm_put
    keys = [f"docs/{i}.txt" for i in range(1024)]
    table = {f"org-{i}": i for i in range(1024)}
    decision_runs, dict_runs = [], []
    for _ in range(5):
        # A fresh record each run (one cached minutes ago may expire mid-run), and cached
        # with its kept puts, as for any org that wrote a moment ago.
        router.invalidate(ORG)
        await router._plan_put(ORG, "docs/0.txt", "files", None)
        started = time.perf_counter_ns()
        for i in range(iterations):
            decision = plan(ORG, keys[i & 1023], "files", None)
            assert decision is not None, "the org's record is not cached: nothing measured"
            decision.tagging()
        decision_runs.append((time.perf_counter_ns() - started) / iterations)
        started = time.perf_counter_ns()
        for _ in range(iterations):
            table.get("org-7")
        dict_runs.append((time.perf_counter_ns() - started) / iterations)
    figure = Figure("warm routing decision", "ns", decision_runs, "<= 2000 ns")
    figure.passed = statistics.median(decision_runs) <= 2000
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
        naive_runs.append((await throughput(naive, 60, 1))[0])
        pooled = await throughput(lambda n: router.put(ORG, f"p/{n}", BODY), 300, 1)
        pooled_runs.append(pooled[0])
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
    for name in ("residency-router", "aiobotocore", "botocore", "aiohttp", "moto", "obstore"):
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
    targets: dict[str, dict[int, float]],
    *,
    with_obstore: bool = False,
    extras: Callable[[ResidencyRouter, RegionMap], Awaitable[None]] | None = None,
) -> None:
    region_map = RegionMap.load(settings.regions_file)
    async with ResidencyRouter.from_settings(settings) as router:
        arns = key_arns or {
            r: (await router.resolve(org)).kms_key_arn for r, org in ((Region.EU, ORG),)
        }
        async with Raw(settings, region_map, arns) as raw:
            peers: dict[str, Peer] = {"raw-aiobotocore": raw}
            skipped: dict[str, str] = {}
            if with_obstore and HAS_OBSTORE:
                peers["obstore"] = Obstore(settings, region_map, arns)
            elif with_obstore:
                skipped["obstore"] = OBSTORE_MISSING
            for n in range(512):
                await raw.put(f"bench/{n}", BODY)
            gc.collect()
            gc.freeze()  # set-up's objects (botocore's models, clients) leave the collector
            try:
                await compare(label, router, peers, plan, figures, targets, skipped)
            finally:
                gc.unfreeze()
        if extras is not None:
            await extras(router, region_map)


# router/peer targets by concurrency (issue 15): well ahead of hand-written aiobotocore,
# and near obstore, whose requests are signed and sent from Rust, at high concurrency.
STUB_TARGETS = {"raw-aiobotocore": {1: 2.0, 16: 3.0, 64: 3.0}, "obstore": {64: 0.6}}


async def run(quick: bool) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    notes: list[str] = []
    # concurrency -> (operations per run, rounds of every client); c=64 takes the longest
    stub_plan = {1: (150, 30), 16: (500, 24), 64: (500, 48)}
    moto_plan = {1: (150, 3), 16: (400, 3), 64: (600, 3)}
    if quick:
        stub_plan = {c: (count, max(2, rounds // 4)) for c, (count, rounds) in stub_plan.items()}
        moto_plan = {c: (count, 2) for c, (count, _) in moto_plan.items()}
    if not HAS_OBSTORE:
        notes.append(f"{OBSTORE_MISSING}: its figures and the router/obstore targets skipped")
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
                STUB_TARGETS,
                with_obstore=True,
                extras=stub_extras,
            )
            await cold_start(settings, figures)
            streaming(endpoint, regions_file, figures)
        moto_code = (
            "import sys\nfrom router.testing import LocalS3Server\n"
            "print(LocalS3Server().start(), flush=True)\nsys.stdin.read()\n"
        )
        with child(["-c", moto_code]) as moto_endpoint:
            world = ResidencyWorld.provision(moto_endpoint, ROOT / "regions.yaml", workdir)
            await on_endpoint("moto", world.settings(), None, moto_plan, figures, {})
    return figures, notes


def main() -> int:
    quick = "--quick" in sys.argv
    if BENCH_CPUS:
        os.sched_setaffinity(0, BENCH_CPUS)
    started = time.perf_counter()
    figures, notes = asyncio.run(run(quick))
    host = machine()
    report: dict[str, Any] = {
        "machine": host,
        "quick": quick,
        "seconds": round(time.perf_counter() - started, 1),
        "notes": notes,
        "figures": [
            {
                **asdict(f),
                "median": f.median,
                "min": min(f.runs, default=None),
                "max": max(f.runs, default=None),
            }
            for f in figures
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(figures))
    for note in notes:
        print(f"note: {note}")
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
