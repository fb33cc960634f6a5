"""Where the router's put stands between the floors (``python -m benchmarks.floors [ROUNDS]``).

One 1 KiB put at concurrency 64 against the stub S3, five ways, in the same rounds (each
round starts with a different one), as ``python -m benchmarks`` measures them:

* ``aiohttp floor``: the router's aiohttp session re-sending one signed request's headers
  (nothing signed or checked per request: what any aiohttp-based client pays at least);
* ``aiohttp + botocore signer``: the same session, each request signed by botocore's
  ``S3SigV4Auth`` on an ``AWSRequest``, as issue 15 describes the plain way to do it;
* ``lean transport``: the router's ``LeanS3.put_object`` alone, with the router's arguments;
* ``router``: ``router.put``;
* ``obstore`` (the ``bench`` extra): the reference peer.

It prints ops/s, CPU microseconds per operation and each one's ratio to obstore (median over
the rounds), and writes ``benchmarks/results/floors.json``. A diagnostic, with no targets:
the targets are ``python -m benchmarks``'s.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import os
import sys
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.utils import percent_encode
from yarl import URL

from benchmarks.__main__ import (
    BENCH_CPUS,
    BODY,
    HAS_OBSTORE,
    OBSTORE_MISSING,
    ORG,
    RESULTS,
    Figure,
    Obstore,
    Op,
    on_stub,
    peer_op,
    router_op,
    table,
    throughput,
)
from router.config import RouterSettings
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.types import Region

CONCURRENCY = 64
COUNT = 500


async def measure(rounds: int) -> list[Figure]:
    with on_stub() as settings:
        region_map = RegionMap.load(settings.regions_file)
        async with ResidencyRouter.from_settings(settings) as router:
            ops = await contenders(router, settings, region_map)
            return await rounds_of(ops, rounds)


async def contenders(
    router: ResidencyRouter, settings: RouterSettings, region_map: RegionMap
) -> dict[str, Op]:
    cfg = region_map.region(Region.EU)
    wiring: Any = router._open()  # the router's own parts: its lean transport, its encryption
    objects = wiring.objects
    lean = objects._clients.hot(cfg.aws_region)
    place = await router.resolve(ORG)
    decision = await router._plan_put(ORG, "bench/0", "files", None)
    tagging = decision.tagging()
    checksum = base64.b64encode(hashlib.sha256(BODY).digest()).decode("ascii")
    params = {"ChecksumSHA256": checksum, "Tagging": tagging, **objects.encryption(place)}
    http = lean._http
    base_url: str = lean._base_url
    credentials = await lean._credentials.get_frozen_credentials()

    def object_url(n: int) -> str:
        encoded: str = percent_encode(f"orgs/{ORG}/files/bench/{n % 512}", safe="/~")
        return base_url + encoded

    # One request as the lean transport signs it, kept for the floor to re-send.
    captured: dict[str, str] = {}
    lean.register("before-send", lambda request, **_: captured.update(request.headers))
    await lean.put_object(Key=f"orgs/{ORG}/files/bench/0", Body=BODY, **params)
    lean._handlers.clear()
    added_by_signing = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256")
    to_sign = {k: v for k, v in captured.items() if k not in added_by_signing}
    captured |= {"User-Agent": http.user_agent, "Accept-Encoding": "identity"}

    async def floor(n: int) -> None:
        url = URL(object_url(n), encoded=True)
        async with await http.request("PUT", url, headers=captured, data=BODY) as response:
            await response.read()

    async def botocore_signed(n: int) -> None:
        url = object_url(n)
        request = AWSRequest(method="PUT", url=url, headers=dict(to_sign), data=BODY)
        request.context["client_config"] = lean._config
        request.context["has_streaming_input"] = True
        S3SigV4Auth(credentials, "s3", cfg.aws_region).add_auth(request)
        headers = dict(request.headers.items())
        headers |= {"User-Agent": http.user_agent, "Accept-Encoding": "identity"}
        async with await http.request(
            "PUT", URL(url, encoded=True), headers=headers, data=BODY
        ) as response:
            await response.read()

    async def lean_put(n: int) -> Any:
        return await lean.put_object(Key=f"orgs/{ORG}/files/bench/{n % 512}", Body=BODY, **params)

    ops: dict[str, Op] = {
        "aiohttp floor": floor,
        "aiohttp + botocore signer": botocore_signed,
        "lean transport": lean_put,
        "router": router_op("put", router),
    }
    if HAS_OBSTORE:
        ops["obstore"] = peer_op(
            "put", Obstore(settings, region_map, {Region.EU: place.kms_key_arn})
        )
    return ops


async def rounds_of(ops: dict[str, Op], rounds: int) -> list[Figure]:
    for op in ops.values():
        await throughput(op, CONCURRENCY, CONCURRENCY)  # warm all
    speed: dict[str, list[float]] = {name: [] for name in ops}
    cpu: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    gc.collect()
    gc.freeze()
    try:
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                gc.collect()
                ops_per_s, cpu_us = await throughput(ops[name], COUNT, CONCURRENCY)
                speed[name].append(ops_per_s)
                cpu[name].append(cpu_us)
    finally:
        gc.unfreeze()
    figures = []
    for name in ops:
        base = f"put 1KiB c={CONCURRENCY} {name}"
        figures.append(Figure(base, "ops/s", speed[name]))
        figures.append(Figure(f"{base} CPU", "µs/op", cpu[name]))
        if "obstore" in ops:
            ratios = [a / b for a, b in zip(speed[name], speed["obstore"], strict=True)]
            figures.append(Figure(f"{base} /obstore", "ratio", ratios))
    return figures


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    if BENCH_CPUS:
        os.sched_setaffinity(0, BENCH_CPUS)
    figures = asyncio.run(measure(rounds))
    print(table(figures))
    if not HAS_OBSTORE:
        print(f"note: {OBSTORE_MISSING}: no ratios")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = [{"name": f.name, "unit": f.unit, "median": f.median, "runs": f.runs} for f in figures]
    (RESULTS / "floors.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{rounds} rounds; JSON: {RESULTS / 'floors.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
