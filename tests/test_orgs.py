from __future__ import annotations

import asyncio

import pytest

from router.errors import DirectoryUnavailableError, UnknownOrgError
from router.orgs import CachedOrgDirectory, OrgDirectory, StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency, Region
from tests.conftest import RequestLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GatedDirectory:
    """A backend that counts lookups and can hold them until released."""

    def __init__(self, orgs: dict[str, OrgResidency], *, gated: set[str] | None = None) -> None:
        self.orgs = orgs
        self.calls: list[str] = []
        self.gated = gated or set()
        self.gate = asyncio.Event()
        self.fail_with: BaseException | None = None

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        self.calls.append(org_id)
        if org_id in self.gated:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        try:
            return self.orgs[org_id]
        except KeyError:
            raise UnknownOrgError(org_id) from None


ACME = OrgResidency(OrgId("acme"), Region.EU)
KIKU = OrgResidency(OrgId("kiku"), Region.JP)


def make(backend: OrgDirectory, clock: FakeClock, **kwargs: float) -> CachedOrgDirectory:
    return CachedOrgDirectory(
        backend,
        ttl_s=kwargs.get("ttl_s", 60),
        negative_ttl_s=kwargs.get("negative_ttl_s", 5),
        max_orgs=int(kwargs.get("max_orgs", 100)),
        timeout_s=kwargs.get("timeout_s", 2),
        clock=clock,
    )


async def test_static_directory_satisfies_protocol_and_raises_unknown() -> None:
    directory = StaticOrgDirectory({"acme": ACME})
    assert isinstance(directory, OrgDirectory)
    assert await directory.lookup(OrgId("acme")) == ACME
    with pytest.raises(UnknownOrgError):
        await directory.lookup(OrgId("nobody"))


async def test_cache_serves_hits_until_ttl_then_refetches() -> None:
    backend = GatedDirectory({"acme": ACME})
    clock = FakeClock()
    cache = make(backend, clock)
    assert await cache.lookup(OrgId("acme")) == ACME
    clock.now += 59
    assert await cache.lookup(OrgId("acme")) == ACME
    assert backend.calls == ["acme"]
    clock.now += 2
    await cache.lookup(OrgId("acme"))
    assert backend.calls == ["acme", "acme"]


async def test_cache_remembers_unknown_orgs_briefly() -> None:
    backend = GatedDirectory({})
    clock = FakeClock()
    cache = make(backend, clock)
    for _ in range(3):
        with pytest.raises(UnknownOrgError):
            await cache.lookup(OrgId("ghost"))
    assert backend.calls == ["ghost"]
    clock.now += 5.1
    backend.orgs["ghost"] = OrgResidency(OrgId("ghost"), Region.US)
    assert (await cache.lookup(OrgId("ghost"))).region is Region.US


async def test_cache_never_caches_backend_errors() -> None:
    backend = GatedDirectory({"acme": ACME})
    backend.fail_with = ConnectionError("table down")
    cache = make(backend, FakeClock())
    with pytest.raises(DirectoryUnavailableError, match="ConnectionError"):
        await cache.lookup(OrgId("acme"))
    backend.fail_with = None
    assert await cache.lookup(OrgId("acme")) == ACME
    assert backend.calls == ["acme", "acme"]


async def test_cache_times_out_slow_backend_as_unavailable() -> None:
    backend = GatedDirectory({"acme": ACME}, gated={"acme"})
    cache = make(backend, FakeClock(), timeout_s=0.05)
    with pytest.raises(DirectoryUnavailableError, match="timed out"):
        await cache.lookup(OrgId("acme"))


async def test_cache_evicts_least_recently_used_beyond_bound() -> None:
    orgs = {f"o{i}": OrgResidency(OrgId(f"o{i}"), Region.US) for i in range(4)}
    backend = GatedDirectory(orgs)
    cache = make(backend, FakeClock(), max_orgs=3)
    for name in ("o0", "o1", "o2"):
        await cache.lookup(OrgId(name))
    await cache.lookup(OrgId("o0"))  # o0 becomes most recent; o1 is now oldest
    await cache.lookup(OrgId("o3"))
    backend.calls.clear()
    await cache.lookup(OrgId("o0"))
    await cache.lookup(OrgId("o1"))
    assert backend.calls == ["o1"]


async def test_single_flight_makes_one_backend_lookup_for_concurrent_misses() -> None:
    backend = GatedDirectory({"acme": ACME}, gated={"acme"})
    cache = make(backend, FakeClock())
    waiters = [asyncio.create_task(cache.lookup(OrgId("acme"))) for _ in range(200)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    backend.gate.set()
    results = await asyncio.gather(*waiters)
    assert all(result == ACME for result in results)
    assert backend.calls == ["acme"]
    assert cache.backend_lookups == 1


async def test_single_flight_does_not_hold_up_other_orgs() -> None:
    backend = GatedDirectory({"acme": ACME, "kiku": KIKU}, gated={"acme"})
    cache = make(backend, FakeClock())
    slow = asyncio.create_task(cache.lookup(OrgId("acme")))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(cache.lookup(OrgId("kiku")), timeout=1) == KIKU
    assert not slow.done()
    backend.gate.set()
    assert await slow == ACME


async def test_single_flight_survives_cancelled_first_caller() -> None:
    backend = GatedDirectory({"acme": ACME}, gated={"acme"})
    cache = make(backend, FakeClock())
    first = asyncio.create_task(cache.lookup(OrgId("acme")))
    await asyncio.sleep(0)
    others = [asyncio.create_task(cache.lookup(OrgId("acme"))) for _ in range(10)]
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    backend.gate.set()
    assert await asyncio.gather(*others) == [ACME] * 10
    assert backend.calls == ["acme"]


async def test_single_flight_shares_errors_without_caching_them() -> None:
    backend = GatedDirectory({"acme": ACME}, gated={"acme"})
    backend.fail_with = RuntimeError("boom")
    cache = make(backend, FakeClock())
    waiters = [asyncio.create_task(cache.lookup(OrgId("acme"))) for _ in range(5)]
    await asyncio.sleep(0)
    backend.gate.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, DirectoryUnavailableError) for r in results)
    assert backend.calls == ["acme"]
    backend.fail_with = None
    assert await cache.lookup(OrgId("acme")) == ACME


async def test_invalidate_drops_one_org() -> None:
    backend = GatedDirectory({"acme": ACME, "kiku": KIKU})
    cache = make(backend, FakeClock())
    await cache.lookup(OrgId("acme"))
    await cache.lookup(OrgId("kiku"))
    backend.orgs["acme"] = OrgResidency(OrgId("acme"), Region.EU, training_opt_in=True)
    cache.invalidate("acme")
    assert (await cache.lookup(OrgId("acme"))).training_opt_in is True
    await cache.lookup(OrgId("kiku"))
    assert backend.calls == ["acme", "kiku", "acme"]


async def test_invalidate_during_lookup_discards_stale_answer() -> None:
    backend = GatedDirectory({"acme": ACME}, gated={"acme"})
    cache = make(backend, FakeClock())
    stale = asyncio.create_task(cache.lookup(OrgId("acme")))
    await asyncio.sleep(0)
    cache.invalidate("acme")
    backend.gate.set()
    await stale
    assert cache.cached("acme") is None


async def test_backend_answer_for_another_org_is_refused() -> None:
    backend = GatedDirectory({"acme": KIKU})
    cache = make(backend, FakeClock())
    with pytest.raises(DirectoryUnavailableError, match="answered for"):
        await cache.lookup(OrgId("acme"))


class OneRecord:
    """A caller's own directory that answers with whatever record it was given."""

    def __init__(self, record: object) -> None:
        self.record = record

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        return self.record  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        pytest.param(
            OrgResidency(OrgId("org-x"), Region.EU, training_opt_in="false"),  # type: ignore[arg-type]
            "training_opt_in",
            id="str-training-flag",
        ),
        pytest.param(
            OrgResidency(OrgId("org-x"), "eu"),  # type: ignore[arg-type]
            "region",
            id="str-region",
        ),
        pytest.param(
            OrgResidency(OrgId("org-x"), Region.EU, retention_days=14),
            "retention_days",
            id="window-not-allowed",
        ),
        pytest.param(
            OrgResidency(OrgId("org-x"), Region.EU, processing_region=Region.JP),
            "processing_region",
            id="pin-jp",
        ),
        pytest.param(
            OrgResidency(OrgId("org-x"), Region.EU, zero_data_retention=1),  # type: ignore[arg-type]
            "zero_data_retention",
            id="int-zdr",
        ),
        pytest.param({"org_id": "org-x", "region": "eu"}, "OrgResidency", id="not-a-record"),
        pytest.param(OrgResidency(OrgId("org-y"), Region.EU), "another org", id="other-org"),
    ],
)
async def test_caller_directory_records_are_validated_before_anything_is_sent(
    residency_world: ResidencyWorld, record: object, problem: str
) -> None:
    directory = OneRecord(record)
    async with ResidencyRouter.from_settings(residency_world.settings(), directory) as router:
        requests = RequestLog()
        router.storage.register("before-send.s3", requests)
        with pytest.raises(DirectoryUnavailableError, match=problem):
            await router.put("org-x", "a.txt", b"x")
        with pytest.raises(DirectoryUnavailableError, match=problem):
            await router.record_exchange(
                "org-x", "/v1/chat/completions", request=b"q", response=b"a"
            )
        async with asyncio.timeout(30):
            training = router.list_training_eligible("org-x")
            with pytest.raises(DirectoryUnavailableError):
                await anext(training)
        assert len(requests) == 0
    for region in Region:
        assert residency_world.all_versions(region) == []
