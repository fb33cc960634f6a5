"""Scheduled org changes: every router, fresh or stale, switches at the record's instant."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from router.errors import (
    InvalidArgumentError,
    OrgRecordConflictError,
    ResidencyError,
)
from router.orgs import CachedOrgDirectory, DynamoDBOrgDirectory
from router.records import effective, is_fenced, schedule_change, start_move
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency, Region

ORG = "org-sched"
TABLE = "orgs"
ENDPOINT = "/v1/chat/completions"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def settings(world: ResidencyWorld, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "directory_table": TABLE,
        "cache_ttl_s": 2.0,
        "clock_skew_s": 0.5,
        "directory_timeout_s": 1.5,
    }
    values.update(overrides)
    return world.settings(**values)


async def until(instant: datetime) -> None:
    """Sleep until the wall clock reaches ``instant``."""
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()) + 0.01)


@pytest.fixture
def table(process_world: ResidencyWorld) -> ResidencyWorld:
    process_world.create_directory_table(
        TABLE, {ORG: OrgResidency(OrgId(ORG), Region.EU, processing_region=Region.EU)}
    )
    return process_world


def exchanges(world: ResidencyWorld) -> int:
    prefix = f"orgs/{ORG}/inputs_outputs/"
    return sum(1 for v in world.all_versions(Region.EU) if v["Key"].startswith(prefix))


async def test_scheduled_zdr_applies_to_fresh_and_stale_routers_at_the_same_instant(
    table: ResidencyWorld,
) -> None:
    world = table
    async with (
        ResidencyRouter.from_settings(settings(world)) as stale,
        ResidencyRouter.from_settings(settings(world)) as operator,
    ):
        # The stale router caches the record before the change is written.
        first = await stale.record_exchange(ORG, ENDPOINT, request=b"{}", response=b"{}")
        assert first.stored
        written = datetime.now(UTC)
        record = await operator.update_org(ORG, zero_data_retention=True)
        assert record.version == 1
        assert record.zero_data_retention
        assert record.previous is not None
        assert not record.previous.zero_data_retention
        assert record.effective_at is not None
        assert record.effective_at >= written + timedelta(seconds=2.5)
        # Before the instant both routers keep storing (the operator's cache holds both
        # values now, the stale one the old record).
        before_instant = 0
        for router in (stale, operator):
            started = datetime.now(UTC)
            receipt = await router.record_exchange(ORG, ENDPOINT, request=b"{}", response=b"{}")
            if started < record.effective_at and datetime.now(UTC) < record.effective_at:
                assert receipt.stored, "stored before effective_at"
                before_instant += 1
        # The calls above take milliseconds against a 5.5-second delay: unless the machine
        # stalled for seconds, both were checked before the instant.
        assert before_instant >= 1
        await until(record.effective_at)
        before = exchanges(world)
        # From the instant neither stores, whatever each one had cached.
        for router in (stale, operator):
            receipt = await router.record_exchange(ORG, ENDPOINT, request=b"{}", response=b"{}")
            assert not receipt.stored
            assert "zero data retention" in receipt.reason
        assert exchanges(world) == before


async def test_a_moved_processing_pin_switches_at_its_instant(table: ResidencyWorld) -> None:
    async with ResidencyRouter.from_settings(settings(table)) as router:
        before = await router.route_processing(ORG, ENDPOINT)
        record = await router.update_org(ORG, processing_region=Region.US)
        assert before.region is Region.EU
        assert record.effective_at is not None
        await until(record.effective_at)
        after = await router.route_processing(ORG, ENDPOINT)
    assert after.region is Region.US


async def test_concurrent_updates_cannot_clobber_each_other(
    table: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ResidencyRouter.from_settings(settings(table)) as router:
        # Both updates read the record before either writes, whatever the machine's speed
        # (on a slow one the first could otherwise finish before the second reads, and
        # both would rightly succeed, one after the other).
        read = CachedOrgDirectory.fresh
        both_read = asyncio.Barrier(2)
        readers = 0

        async def read_then_wait(directory: CachedOrgDirectory, org_id: OrgId) -> OrgResidency:
            nonlocal readers
            record = await read(directory, org_id)
            readers += 1
            if readers <= 2:
                await both_read.wait()
            return record

        monkeypatch.setattr(CachedOrgDirectory, "fresh", read_then_wait)
        # The two conditional writes then reach the table one after the other. DynamoDB
        # decides a condition and a write atomically; moto checks, then writes, unlocked,
        # so two writes arriving at the same instant can both pass (CI saw both written).
        write = DynamoDBOrgDirectory.write
        one_at_a_time = asyncio.Lock()

        async def serialized(
            directory: DynamoDBOrgDirectory, record: OrgResidency, *, expected_version: int | None
        ) -> None:
            async with one_at_a_time:
                await write(directory, record, expected_version=expected_version)

        monkeypatch.setattr(DynamoDBOrgDirectory, "write", serialized)
        results = await asyncio.gather(
            router.update_org(ORG, zero_data_retention=True),
            router.update_org(ORG, training_opt_in=True),
            return_exceptions=True,
        )
        stored = await router.directory.fresh(OrgId(ORG))
    written = [r for r in results if isinstance(r, OrgResidency)]
    refused = [r for r in results if isinstance(r, ResidencyError)]
    assert len(written) == 1
    assert len(refused) == 1
    assert isinstance(refused[0], OrgRecordConflictError)
    assert stored == written[0]


async def test_an_update_that_breaks_the_map_writes_nothing(table: ResidencyWorld) -> None:
    async with ResidencyRouter.from_settings(settings(table)) as router:
        with pytest.raises(InvalidArgumentError, match="retention_days"):
            await router.update_org(ORG, retention_days=13)
        with pytest.raises(TypeError):
            await router.update_org(ORG, zero_data_retention="yes")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await router.update_org(ORG, region=Region.US)  # type: ignore[call-arg]
        stored = await router.directory.fresh(OrgId(ORG))
    assert stored.version == 0


async def test_an_update_with_the_same_values_writes_nothing(table: ResidencyWorld) -> None:
    async with ResidencyRouter.from_settings(settings(table)) as router:
        record = await router.update_org(ORG, processing_region=Region.EU)
    assert record.version == 0
    assert record.effective_at is None


# -- the pure schedule ---------------------------------------------------------------------

RECORD = OrgResidency(OrgId(ORG), Region.EU)


def test_a_change_applies_the_previous_values_before_its_instant() -> None:
    changed = schedule_change(RECORD, {"zero_data_retention": True}, T0, 65)
    at = T0 + timedelta(seconds=65)
    assert changed.effective_at == at
    assert not effective(changed, at - timedelta(microseconds=1)).zero_data_retention
    assert effective(changed, at).zero_data_retention


def test_a_second_change_waits_for_the_first_to_take_effect() -> None:
    changed = schedule_change(RECORD, {"training_opt_in": True}, T0, 65)
    with pytest.raises(OrgRecordConflictError, match="taking effect at"):
        schedule_change(changed, {"zero_data_retention": True}, T0 + timedelta(seconds=1), 65)
    later = schedule_change(changed, {"zero_data_retention": True}, T0 + timedelta(seconds=66), 65)
    assert later.version == 2
    assert later.previous is not None
    assert later.previous.training_opt_in


def test_the_storage_region_changes_only_by_a_move() -> None:
    from router.errors import ResidencyViolationError

    with pytest.raises(ResidencyViolationError, match="move"):
        schedule_change(RECORD, {"region": Region.US}, T0, 65)


def test_a_move_fences_writes_only_from_its_fence_to_its_switch() -> None:
    from router.records import fence_move, switch_move

    moving = start_move(RECORD, Region.US, T0)
    assert not is_fenced(moving, T0 + timedelta(days=1))
    fenced = fence_move(moving, T0, 10)
    assert not is_fenced(fenced, T0 + timedelta(seconds=9))
    assert is_fenced(fenced, T0 + timedelta(seconds=10))
    switched = switch_move(fenced, T0 + timedelta(seconds=30), 10, (1, 1))
    assert is_fenced(switched, T0 + timedelta(seconds=39))
    assert effective(switched, T0 + timedelta(seconds=39)).region is Region.EU
    assert not is_fenced(switched, T0 + timedelta(seconds=40))
    assert effective(switched, T0 + timedelta(seconds=40)).region is Region.US
