"""Live fenced moves between regions, seen by an auditor with an independent boto3 client."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from router.errors import (
    ConfigError,
    OrgMovingError,
    ResidencyViolationError,
)
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import DataClass, OrgId, OrgResidency, Region, WriteReceipt

ORG = "org-mover"
TABLE = "orgs"
ENDPOINT = "/v1/chat/completions"
MiB = 1024 * 1024


def fast_settings(world: ResidencyWorld, **overrides: Any) -> Any:
    """Settings whose waits are short: a 1-second cache and a 10-second longest request.

    Short, not tight: on a loaded machine the test's event loop can stall for a second or
    more, and moto can take seconds to answer a put or a directory write while a move
    copies; a connect or read timed out then is an outage the test did not mean to stage.
    CI once timed out the move's directory write at 1.5 s while a 6 MiB multipart object
    was copied (3 s makes each scheduled change 7.2 s ahead, not 4.2), and once a copy's
    connect at 1.5 s while an 11 MiB object was copied and a second router wrote, with moto
    in the test's process (its threads took the GIL from the loop). The ``table`` worlds
    are on moto in a child process since (``process_world``).
    """
    values: dict[str, Any] = {
        "directory_table": TABLE,
        "cache_ttl_s": 1.0,
        "clock_skew_s": 0.2,
        "directory_timeout_s": 3.0,
        "retry_deadline_s": 2.0,
        "connect_timeout_s": 3.0,
        "read_timeout_s": 5.0,
        "multipart_threshold": 5 * MiB,
        "multipart_part_size": 5 * MiB,
        "move_concurrency": 8,
    }
    values.update(overrides)
    return world.settings(**values)


@pytest.fixture
def table(process_world: ResidencyWorld) -> ResidencyWorld:
    process_world.create_directory_table(
        TABLE, {ORG: OrgResidency(OrgId(ORG), Region.EU, retention_days=30)}
    )
    return process_world


def org_versions(world: ResidencyWorld, region: Region) -> list[dict[str, Any]]:
    return [v for v in world.all_versions(region) if v["Key"].startswith(f"orgs/{ORG}/")]


def org_uploads(world: ResidencyWorld, region: Region) -> list[dict[str, Any]]:
    s3 = world.s3(region)
    found = s3.list_multipart_uploads(Bucket=world.bucket(region), Prefix=f"orgs/{ORG}/")
    return list(found.get("Uploads", []))


async def wait_for_phase(
    router: ResidencyRouter, phase: str, *, past: str | None = None
) -> OrgResidency:
    """Poll the record until its move is in ``phase`` (and, if named, its instant has come)."""
    while True:
        record = await router.directory.fresh(OrgId(ORG))
        move = record.move
        if move is not None and move.phase == phase:
            at = getattr(move, past) if past else None
            if at is None or datetime.now(UTC) >= at:
                return record
        await asyncio.sleep(0.02)


async def interrupt_move_at(router: ResidencyRouter, phase: str) -> None:
    """Start the org's move to us and cancel it once its record reaches ``phase``."""
    moving = asyncio.create_task(router.move_org(ORG, Region.US))
    await wait_for_phase(router, phase)
    moving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await moving


async def _big(total: int) -> AsyncIterator[bytes]:
    block = hashlib.sha256(b"seed").digest() * (MiB // 32)
    sent = 0
    while sent < total:
        piece = block[: min(len(block), total - sent)]
        sent += len(piece)
        yield piece


async def test_move_with_a_second_router_writing_keeps_every_acknowledged_write(
    table: ResidencyWorld,
) -> None:
    world = table
    settings = fast_settings(world)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as writer,
    ):
        acknowledged: list[WriteReceipt] = []
        for i in range(20):
            acknowledged.append(await mover.put(ORG, f"before/{i}.txt", f"file {i}".encode()))
        acknowledged.append(
            await mover.put(ORG, "tune/set.jsonl", b"{}\n", data_class=DataClass.FINE_TUNING)
        )
        acknowledged.append(await mover.put(ORG, "before/big.bin", _big(11 * MiB)))
        acknowledged.append(
            await mover.record_exchange(ORG, ENDPOINT, request=b'{"q": 1}', response=b"{}")
        )
        await mover.delete(ORG, "before/0.txt")
        acknowledged = acknowledged[1:]
        refused = 0
        done = asyncio.Event()
        in_target = asyncio.Event()

        async def keep_writing() -> None:
            nonlocal refused
            i = 0
            while not done.is_set():
                i += 1
                try:
                    if i % 5 == 0:
                        receipt = await writer.record_exchange(
                            ORG, ENDPOINT, request=b"{}", response=b"{}"
                        )
                    else:
                        receipt = await writer.put(ORG, f"during/{i}.txt", b"x" * i)
                except OrgMovingError:
                    refused += 1
                    await asyncio.sleep(0.05)
                    continue
                acknowledged.append(receipt)
                if (
                    receipt.region is Region.US
                    and sum(r.region is Region.US for r in acknowledged) >= 5
                ):
                    in_target.set()
                await asyncio.sleep(0.01)

        writing = asyncio.create_task(keep_writing())
        try:
            receipt = await mover.move_org(ORG, "us")
            # Keep writing past the switch, until writes land in the target too.
            await asyncio.wait_for(in_target.wait(), timeout=60)
        finally:
            done.set()
            await writing
        assert refused > 0  # the fence held the second router's writes for a while
        assert receipt.from_region is Region.EU
        assert receipt.to_region is Region.US
        assert receipt.objects_copied >= 22
        assert receipt.bytes_copied >= 11 * MiB
        assert receipt.writes_fenced_s > 0
        assert receipt.versions_deleted >= 23
        assert receipt.started_at < receipt.finished_at

    # The auditor: nothing of the org left in the source, every acknowledged write in the
    # target with its bytes, under the target's key.
    assert org_versions(world, Region.EU) == []
    assert org_uploads(world, Region.EU) == []
    s3 = world.s3(Region.US)
    bucket = world.bucket(Region.US)
    for written in acknowledged:
        head = s3.head_object(Bucket=bucket, Key=written.key)
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == world.key_arn(Region.US)
        body = s3.get_object(Bucket=bucket, Key=written.key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == written.sha256
    assert world.regions_holding(f"orgs/{ORG}/files/before/0.txt") == []
    tags = s3.get_object_tagging(Bucket=bucket, Key=f"orgs/{ORG}/fine_tuning/tune/set.jsonl")
    assert {t["Key"]: t["Value"] for t in tags["TagSet"]}["residency-org"] == ORG


async def test_move_resumes_from_its_recorded_phase(table: ResidencyWorld) -> None:
    world = table
    settings = fast_settings(world)
    async with ResidencyRouter.from_settings(settings) as router:
        for i in range(5):
            await router.put(ORG, f"f/{i}", b"data %d" % i)
        await interrupt_move_at(router, "fenced")
        receipt = await router.move_org(ORG, Region.US)
        assert receipt.to_region is Region.US
        # The resumed run copies again what it cannot prove it copied (5 + 5).
        assert receipt.objects_copied == 10
        assert (await router.get(ORG, "f/3")) == b"data 3"
        record = await router.directory.fresh(OrgId(ORG))
    assert record.region is Region.US
    assert record.move is None
    assert record.moved_from == (Region.EU,)
    assert org_versions(world, Region.EU) == []
    assert len(org_versions(world, Region.US)) == 5


async def test_abort_before_the_switch_unfences_and_deletes_the_partial_copy(
    table: ResidencyWorld,
) -> None:
    world = table
    settings = fast_settings(world)
    async with ResidencyRouter.from_settings(settings) as router:
        for i in range(3):
            await router.put(ORG, f"f/{i}", b"kept in the source")
        await interrupt_move_at(router, "fenced")
        aborted = await router.abort_move(ORG)
        assert aborted is not None
        assert aborted.versions_deleted == 3
        receipt = await router.put(ORG, "f/after-abort", b"writes work again")
        assert receipt.region is Region.EU
        assert await router.abort_move(ORG) is None
    assert org_versions(world, Region.US) == []
    assert len(org_versions(world, Region.EU)) == 4


async def test_dry_run_reports_objects_and_phases_and_changes_nothing(
    table: ResidencyWorld,
) -> None:
    world = table
    async with ResidencyRouter.from_settings(fast_settings(world)) as router:
        await router.put(ORG, "a", b"12345")
        await router.put(ORG, "b", b"678")
        plan = await router.move_org(ORG, Region.US, dry_run=True)
        record = await router.directory.fresh(OrgId(ORG))
    assert plan.dry_run
    assert (plan.objects_copied, plan.bytes_copied) == (2, 8)
    assert len(plan.phases) >= 4
    assert record.move is None
    assert record.version == 0
    assert org_versions(world, Region.US) == []


async def test_erase_org_may_erase_where_the_org_lived_and_not_elsewhere(
    table: ResidencyWorld,
) -> None:
    world = table
    async with ResidencyRouter.from_settings(fast_settings(world)) as router:
        await router.put(ORG, "a", b"1")
        await router.move_org(ORG, Region.US)
        # A stale copy left behind by hand (an operator's restore, say) in the old region.
        world.s3(Region.EU).put_object(
            Bucket=world.bucket(Region.EU),
            Key=f"orgs/{ORG}/files/stray",
            Body=b"stray",
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=world.key_arn(Region.EU),
        )
        erased = await router.erase_org(ORG, region=Region.EU)
        assert erased.region is Region.EU
        assert erased.objects_deleted == 1
        with pytest.raises(ResidencyViolationError, match="never lived in jp"):
            await router.erase_org(ORG, region=Region.JP)
    assert org_versions(world, Region.EU) == []
    assert len(org_versions(world, Region.US)) == 1


async def test_move_and_update_are_refused_for_a_static_directory(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    with pytest.raises(ConfigError, match="RESIDENCY_DIRECTORY_TABLE"):
        await residency_router.move_org("org-acme", Region.US)
    with pytest.raises(ConfigError, match="RESIDENCY_DIRECTORY_TABLE"):
        await residency_router.update_org("org-acme", zero_data_retention=True)
    assert residency_world.regions_holding("orgs/org-acme/") == []


async def test_move_to_the_region_the_org_lives_in_is_refused(table: ResidencyWorld) -> None:
    async with ResidencyRouter.from_settings(fast_settings(table)) as router:
        with pytest.raises(ResidencyViolationError, match="already lives in eu"):
            await router.move_org(ORG, Region.EU)
        record = await router.directory.fresh(OrgId(ORG))
    assert record.move is None
