from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.errors import RegionUnavailableError
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import Region
from tests.conftest import ORG_BY_REGION
from tests.faults import FaultPlan, FaultProxy

MiB = 1024 * 1024


@pytest.fixture
async def proxy(residency_world: ResidencyWorld) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(residency_world.endpoint_url) as running:
        yield running


def proxied_settings(world: ResidencyWorld, proxy: FaultProxy, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "endpoint_url": proxy.url,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "retry_max_attempts": 5,
        "retry_deadline_s": 10.0,
        "multipart_threshold": 5 * MiB,
        "multipart_part_size": 5 * MiB,
        "multipart_concurrency": 2,
    }
    values.update(overrides)
    return world.settings(**values)


async def test_acknowledged_writes_survive_transient_faults_intact(
    residency_world: ResidencyWorld, proxy: FaultProxy
) -> None:
    async with ResidencyRouter.from_settings(proxied_settings(residency_world, proxy)) as router:
        proxy.plan.rate = 0.3
        bodies = {
            (org_id, f"faulty/{i}.bin"): hashlib.sha256(f"{org_id}:{i}".encode()).digest()
            * (1 + i * 97)
            for org_id in ORG_BY_REGION.values()
            for i in range(8)
        }
        bodies[("org-acme", "faulty/multipart.bin")] = bytes(range(256)) * (11 * MiB // 256)

        async def write(org_id: str, key: str, body: bytes) -> tuple[str, str, str] | None:
            try:
                receipt = await router.put(org_id, key, body)
            except RegionUnavailableError:
                return None
            return org_id, key, receipt.sha256

        results = await asyncio.gather(*(write(o, k, b) for (o, k), b in bodies.items()))
        proxy.plan.rate = 0.0
        acknowledged = [r for r in results if r is not None]
        faults = proxy.faults()
        for kind in ("503", "500", "reset_request", "reset_response"):
            assert faults[kind] > 0, faults
        assert len(acknowledged) >= len(bodies) * 0.9
        for org_id, key, sha in acknowledged:
            body = bodies[(org_id, key)]
            assert sha == hashlib.sha256(body).hexdigest()
            assert await router.get(org_id, key) == body
            region = residency_world.region_map.orgs[org_id].region
            head = residency_world.assert_stored_in(org_id, key, region)
            data = (
                residency_world.s3(region)
                .get_object(
                    Bucket=residency_world.bucket(region), Key=f"orgs/{org_id}/files/{key}"
                )["Body"]
                .read()
            )
            assert hashlib.sha256(data).hexdigest() == sha
            assert head["ContentLength"] == len(body)


async def test_black_holed_region_fails_in_budget_while_others_serve(
    residency_world: ResidencyWorld, proxy: FaultProxy
) -> None:
    settings = proxied_settings(
        residency_world, proxy, read_timeout_s=0.4, retry_max_attempts=3, retry_deadline_s=3.0
    )
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put("org-acme", "before.txt", b"fine")
        proxy.plan.blackhole = {"eu-west-1"}
        proxy.seen.clear()

        async def eu_write() -> None:
            with pytest.raises(RegionUnavailableError, match="eu-west-1"):
                await router.put("org-acme", "during.txt", b"never acknowledged")

        others = [
            router.put(org_id, "during.txt", b"served")
            for region, org_id in ORG_BY_REGION.items()
            if region is not Region.EU
        ]
        _, receipts = await asyncio.gather(eu_write(), asyncio.gather(*others))
        # Within the budget, counted where it is spent: requests, not wall-clock seconds.
        sent_to_eu = [s for s in proxy.seen if s.aws_region == "eu-west-1"]
        assert 1 <= len(sent_to_eu) <= settings.retry_max_attempts
        assert {r.region for r in receipts} == set(Region) - {Region.EU}
        health = router.health()
        assert health[Region.EU].failure_rate > 0
        assert health[Region.EU].state == "degraded"
        assert health[Region.US].state == "ok"

    s3_seen = [s for s in proxy.seen if s.service == "s3"]
    eu_bucket = residency_world.bucket("eu")
    eu_attempts = [s for s in s3_seen if s.aws_region == "eu-west-1"]
    assert 1 <= len(eu_attempts) <= settings.retry_max_attempts
    assert all(s.bucket == eu_bucket for s in eu_attempts)
    for seen in s3_seen:
        cfg = residency_world.region_map.by_aws_region(seen.aws_region)
        assert cfg is not None
        assert seen.bucket == cfg.bucket, seen
    assert not any(s.bucket == eu_bucket and s.aws_region != "eu-west-1" for s in s3_seen)
    keys = [v["Key"] for v in residency_world.all_versions("eu")]
    assert "orgs/org-acme/files/during.txt" not in keys


async def test_steady_503_storm_sends_at_most_attempts_times_operations(
    residency_world: ResidencyWorld, proxy: FaultProxy
) -> None:
    settings = proxied_settings(residency_world, proxy, retry_max_attempts=3)
    async with ResidencyRouter.from_settings(settings) as router:
        proxy.plan = FaultPlan(rate=1.0, kinds=("503",))
        proxy.seen.clear()
        operations = [
            *(router.put("org-hana", f"storm/{i}", b"x") for i in range(5)),
            *(router.get("org-hana", f"storm/{i}") for i in range(5)),
            *(router.head("org-hana", f"storm/{i}") for i in range(5)),
            *(router.delete("org-hana", f"storm/{i}") for i in range(5)),
        ]
        results = await asyncio.gather(*operations, return_exceptions=True)
        listing: list[Any] = []
        with pytest.raises(RegionUnavailableError):
            listing.extend([o async for o in router.list("org-hana")])
    assert all(isinstance(r, RegionUnavailableError) for r in results), results
    sent = [s for s in proxy.seen if s.service == "s3"]
    assert len(sent) <= settings.retry_max_attempts * (len(operations) + 1)
    assert len(sent) >= len(operations) + 1
    assert {s.aws_region for s in sent} == {"ap-northeast-2"}


async def test_put_cancelled_while_creating_its_upload_leaves_no_upload(
    residency_world: ResidencyWorld, proxy: FaultProxy
) -> None:
    settings = proxied_settings(residency_world, proxy, read_timeout_s=10.0)
    bucket = residency_world.bucket("eu")

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"p" * (5 * MiB)

    async with ResidencyRouter.from_settings(settings) as router:
        # S3 creates the upload at once; its answer (the upload id) takes a second to come.
        proxy.plan.answer_latency_s = 1.0
        task = asyncio.create_task(router.put("org-acme", "cancelled.bin", body()))
        async with asyncio.timeout(30):
            # The proxy records what it saw; poll it (it offers no event to wait on).
            while not any(s.method == "POST" and s.bucket == bucket for s in proxy.seen):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        proxy.plan.answer_latency_s = 0.0
    # Closing the router waited for the clean-up: S3 created the upload after the caller was
    # gone, and the router aborted it as soon as its id arrived.
    s3 = residency_world.s3("eu")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert residency_world.all_versions("eu") == []


@pytest.mark.parametrize("kind", ["reset_response", "reset_request"])
async def test_retry_budget_counts_the_requests_actually_sent(
    residency_world: ResidencyWorld, proxy: FaultProxy, kind: str
) -> None:
    # aiohttp would re-send an idempotent request once, silently, on a dropped connection:
    # a region would then see twice the attempts the budget allows (issue 12.4).
    settings = proxied_settings(residency_world, proxy, retry_max_attempts=3, retry_deadline_s=20.0)
    bucket = residency_world.bucket("eu")
    async with ResidencyRouter.from_settings(settings) as router:
        proxy.seen.clear()
        proxy.plan.rate = 1.0
        proxy.plan.kinds = (kind,)
        with pytest.raises(RegionUnavailableError):
            await router.put("org-acme", "reset.txt", b"body" * 64)
        proxy.plan.rate = 0.0
    sent = [s for s in proxy.seen if s.bucket == bucket and s.method == "PUT"]
    assert len(sent) == settings.retry_max_attempts
