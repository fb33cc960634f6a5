from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from router.errors import InvalidKeyError, ObjectNotFoundError
from router.orgs import StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency, Region

REGIONS = list(Region)
ORGS = {
    f"tenant-{i}": OrgResidency(OrgId(f"tenant-{i}"), REGIONS[i % len(REGIONS)]) for i in range(14)
}
# Prefix neighbours: tenant-1 and tenant-10..13 share a string prefix and regions differ.
ORGS["tenant-1x"] = OrgResidency(OrgId("tenant-1x"), ORGS["tenant-1"].region)


def attacks(victim: str) -> list[str]:
    return [
        "shared.txt",
        f"../{victim}/files/shared.txt",
        f"../../orgs/{victim}/files/shared.txt",
        f"orgs/{victim}/files/shared.txt",
        f"%2e%2e/{victim}/files/shared.txt",
        f"..%2f{victim}%2ffiles%2fshared.txt",
        f"..\\{victim}\\files\\shared.txt",
        f"a/../../{victim}/files/shared.txt",
        f"/orgs/{victim}/files/shared.txt",
        f"./{victim}",
    ]


@pytest.fixture
async def router(residency_world: ResidencyWorld) -> AsyncIterator[ResidencyRouter]:
    directory = StaticOrgDirectory(ORGS)
    async with ResidencyRouter.from_settings(residency_world.settings(), directory=directory) as r:
        yield r


async def test_no_operation_of_one_org_touches_another(
    router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    originals = {org: f"{org} owns this".encode() for org in ORGS}
    await asyncio.gather(*(router.put(org, "shared.txt", body) for org, body in originals.items()))
    rng = random.Random(7)
    pairs = [(a, b) for a in ORGS for b in ORGS if a != b]
    rng.shuffle(pairs)

    async def attack(attacker: str, victim: str) -> None:
        for key in attacks(victim):
            try:
                data = await router.get(attacker, key)
                assert data == originals[attacker], (attacker, key)
            except (InvalidKeyError, ObjectNotFoundError):
                pass
            try:
                info = await router.head(attacker, key)
                assert info.org_id == attacker
            except (InvalidKeyError, ObjectNotFoundError):
                pass
            try:
                listed = [o async for o in router.list(attacker, prefix=key)]
                assert all(o.org_id == attacker for o in listed)
            except InvalidKeyError:
                pass
            if key != "shared.txt":
                try:
                    await router.put(attacker, key, b"overwrite attempt")
                    await router.delete(attacker, key)
                except InvalidKeyError:
                    pass

    await asyncio.gather(*(attack(a, v) for a, v in pairs[:30]))

    for org, body in originals.items():
        assert await router.get(org, "shared.txt") == body
        region = ORGS[org].region
        residency_world.assert_stored_in(org, "shared.txt", region)
    for cfg in residency_world.region_map:
        for version in residency_world.all_versions(cfg.region):
            owner = version["Key"].split("/")[1]
            assert ORGS[owner].region is cfg.region
            if version["Key"].endswith("/files/shared.txt"):
                assert version["Key"] == f"orgs/{owner}/files/shared.txt"


async def test_erasing_an_org_spares_its_prefix_neighbour(
    router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    await router.put("tenant-1", "a.txt", b"1")
    await router.put("tenant-1x", "a.txt", b"2")
    await router.put("tenant-1", "a.txt", b"1b")
    receipt = await router.erase_org("tenant-1")
    assert receipt.versions_deleted == 2
    assert await router.get("tenant-1x", "a.txt") == b"2"
    assert [o.key async for o in router.list("tenant-1")] == []
    assert [o.key async for o in router.list("tenant-1x")] == ["a.txt"]
