"""Moves at their edges: races with deletes, erasures, overwrites, aborts and failures.

Each test was first written by a hostile review against the move, and failed then.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from router.errors import (
    OrgMovingError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
)
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency, Region
from tests.test_moves import (  # noqa: F401  (table: the fixture)
    ORG,
    fast_settings,
    interrupt_move_at,
    org_versions,
    table,
    wait_for_phase,
)

MiB = 1024 * 1024


async def test_a_delete_after_the_switch_stays_deleted(
    table: ResidencyWorld,  # noqa: F811
) -> None:
    """Guarantee 1: no resurrection of deleted objects in the target."""
    world = table
    settings = fast_settings(world)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as user,
    ):
        await mover.put(ORG, "doomed.txt", b"delete me")
        moving = asyncio.create_task(mover.move_org(ORG, Region.US))
        await wait_for_phase(mover, "switched", past="switch_at")
        # After the switch every router writes to the target: the user deletes the object.
        deleted = await user.delete(ORG, "doomed.txt")
        assert deleted.region is Region.US
        assert deleted.versions_deleted >= 1
        await moving
    # The delete was acknowledged, yet the object is back in the target.
    assert world.regions_holding(f"orgs/{ORG}/files/doomed.txt") == [], (
        "deleted object resurrected by the straggler pass"
    )


async def test_an_erase_after_the_switch_stays_erased(
    table: ResidencyWorld,  # noqa: F811
) -> None:
    """Guarantee 1: purge/erase during the move; an acknowledged erasure must stick."""
    world = table
    settings = fast_settings(world)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as user,
    ):
        for i in range(3):
            await mover.put(ORG, f"secret/{i}", b"personal data")
        moving = asyncio.create_task(mover.move_org(ORG, Region.US))
        await wait_for_phase(mover, "switched", past="switch_at")
        erased = await user.erase_org(ORG)
        assert erased.region is Region.US
        assert erased.objects_deleted == 3
        await moving
    assert org_versions(world, Region.US) == [], "erased org's data copied back into the target"


async def test_a_failed_copy_raises_a_residency_error_not_a_group(
    table: ResidencyWorld,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Errors from concurrent copies are unwrapped: callers never see an ExceptionGroup."""
    from router._s3.copy import Copier

    world = table
    settings = fast_settings(world)

    async def failing(self: Copier, source: Any, target: Any, key: str) -> Any:
        raise RegionUnavailableError("us failed after retries (simulated)")

    async with ResidencyRouter.from_settings(settings) as router:
        await router.put(ORG, "a", b"x")
        monkeypatch.setattr(Copier, "copy", failing)
        try:
            await router.move_org(ORG, Region.US)
        except BaseException as exc:
            caught: BaseException = exc
        else:
            pytest.fail("the move succeeded without copying")
    assert not isinstance(caught, BaseExceptionGroup), f"leaked {caught!r}"
    assert isinstance(caught, ResidencyError)


async def test_an_overwrite_with_the_same_bytes_before_the_fence_keeps_its_metadata(
    table: ResidencyWorld,  # noqa: F811
) -> None:
    """Guarantee 1: every acknowledged write is readable in the target (as written)."""
    world = table
    settings = fast_settings(world)
    key = f"orgs/{ORG}/files/doc.txt"
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as user,
    ):
        await mover.put(
            ORG, "doc.txt", b"same bytes", content_type="text/plain", metadata={"rev": "1"}
        )
        moving = asyncio.create_task(mover.move_org(ORG, Region.US))
        record = await wait_for_phase(mover, "fenced")
        assert record.move is not None
        assert record.move.fence_at is not None
        assert datetime.now(UTC) < record.move.fence_at  # still writable
        receipt = await user.put(
            ORG, "doc.txt", b"same bytes", content_type="text/csv", metadata={"rev": "2"}
        )
        assert receipt.region is Region.EU
        await moving
    head = world.s3(Region.US).head_object(Bucket=world.bucket(Region.US), Key=key)
    assert (head["ContentType"], head["Metadata"]) == ("text/csv", {"rev": "2"}), (
        f"target kept the first copy: {head['ContentType']} {head['Metadata']}"
    )


async def test_an_interrupted_abort_finishes_when_run_again(
    table: ResidencyWorld,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guarantee 4: re-running an interrupted abort finishes it (nothing left in the target)."""
    from router._s3.bulk import BulkStore

    world = table
    settings = fast_settings(world)
    async with ResidencyRouter.from_settings(settings) as router:
        for i in range(3):
            await router.put(ORG, f"f/{i}", b"data")
        await interrupt_move_at(router, "fenced")
        assert len(org_versions(world, Region.US)) == 3  # the first pass copied them
        original = BulkStore.delete_prefix
        calls = 0

        async def flaky(self: BulkStore, ref: Any, prefix: str, **kw: Any) -> tuple[int, int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RegionUnavailableError("us failed after retries (simulated)")
            return await original(self, ref, prefix, **kw)

        monkeypatch.setattr(BulkStore, "delete_prefix", flaky)
        with pytest.raises(RegionUnavailableError):
            await router.abort_move(ORG)
        again = await router.abort_move(ORG)  # "run it again"
        stranded = len(org_versions(world, Region.US))
        refused = None
        try:
            await router.erase_org(ORG, region=Region.US)
        except ResidencyViolationError as exc:
            refused = exc
    assert again is not None
    assert stranded == 0, (
        f"re-run abort returned {again!r}; {stranded} versions stranded in us; "
        f"erase_org(region=us) -> {refused!r}"
    )


def test_dynamodb_codec_round_trips_a_full_record() -> None:
    from datetime import timedelta, timezone

    from router._dynamodb import DynamoDBOrgDirectory, dynamodb_item
    from router.types import OrgMove, OrgValues

    tz = timezone(timedelta(hours=9))
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=tz)
    record = OrgResidency(
        OrgId(ORG),
        Region.US,
        processing_region=Region.US,
        retention_days=7,
        zero_data_retention=True,
        training_opt_in=True,
        version=12,
        effective_at=at,
        previous=OrgValues(Region.EU, None, 30, False, False),
        move=OrgMove(Region.EU, Region.US, "switched", at, at, at, 5, 10),
        moved_from=(Region.JP, Region.CA),
    )
    directory = DynamoDBOrgDirectory("t", aws_region="us-east-1")
    back = directory.record(dynamodb_item(record))
    assert back == record
    assert back.effective_at is not None
    assert back.effective_at.utcoffset() == timedelta(0)


import contextvars  # noqa: E402

HOLD: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar("HOLD", default=None)


async def test_an_erase_running_into_the_fence_stops_and_its_retry_erases_the_target(
    table: ResidencyWorld,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An erasure is many requests, unbounded by the settle wait: it re-checks the fence
    before each deletion. Its deletions are held here past the delta pass (as a large
    org's erase would take that long)."""
    from router._s3.bulk import BulkStore

    world = table
    settings = fast_settings(world)
    original = BulkStore.delete_prefix

    async def held(self: BulkStore, ref: Any, prefix: str, **kw: Any) -> tuple[int, int]:
        gate = HOLD.get()
        if gate is not None:
            await gate.wait()
        return await original(self, ref, prefix, **kw)

    monkeypatch.setattr(BulkStore, "delete_prefix", held)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as user,
    ):
        for i in range(3):
            await mover.put(ORG, f"secret/{i}", b"personal data")
        moving = asyncio.create_task(mover.move_org(ORG, Region.US))
        gate = asyncio.Event()
        HOLD.set(gate)
        erasing = asyncio.create_task(user.erase_org(ORG))  # accepted: not fenced yet
        HOLD.set(None)
        await wait_for_phase(mover, "switched")  # the delta copy has run
        gate.set()
        # The erase re-checks the fence before each deletion: it stops, retryable, rather
        # than delete in the source what the move has already copied.
        with pytest.raises(OrgMovingError):
            await erasing
        await moving
        erased = await user.erase_org(ORG)  # the retry, after the switch: the target
        assert erased.region is Region.US
        assert erased.objects_deleted == 3
    assert org_versions(world, Region.EU) == []
    assert org_versions(world, Region.US) == [], "erased data survives in the target"


async def _six_mib() -> Any:
    yield b"z" * (6 * MiB)


async def test_a_one_part_multipart_object_is_copied_and_verified(
    table: ResidencyWorld,  # noqa: F811
) -> None:
    """A multipart object of one part (ETag '-1', a per-part checksum) is copied part by
    part, so that its copy's checksum compares (CopyObject would make a whole-object one)."""
    world = table
    settings = fast_settings(world, multipart_threshold=5 * MiB, multipart_part_size=8 * MiB)
    async with ResidencyRouter.from_settings(settings) as router:
        receipt = await router.put(ORG, "one-part.bin", _six_mib())
        head = world.s3(Region.EU).head_object(
            Bucket=world.bucket(Region.EU), Key=receipt.key, ChecksumMode="ENABLED"
        )
        print("source ETag", head["ETag"], "checksum", head.get("ChecksumSHA256"))
        await router.move_org(ORG, Region.US)
    assert world.regions_holding(receipt.key) == [Region.US]


async def test_an_abort_while_the_move_still_copies_leaves_nothing_in_the_target(
    table: ResidencyWorld,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Abort before the switch leaves nothing in the target, even with copies of a running
    move under way: the mover that loses its record deletes what it copied."""
    from router._s3.copy import Copied, Copier

    world = table
    settings = fast_settings(world)
    original = Copier.copy

    async def held(self: Copier, source: Any, target: Any, key: str) -> Copied:
        gate = HOLD.get()
        if gate is not None:
            await gate.wait()
        return await original(self, source, target, key)

    monkeypatch.setattr(Copier, "copy", held)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as operator,
    ):
        for i in range(3):
            await mover.put(ORG, f"f/{i}", b"data")
        gate = asyncio.Event()
        HOLD.set(gate)
        moving = asyncio.create_task(mover.move_org(ORG, Region.US))
        HOLD.set(None)
        await wait_for_phase(operator, "copying")
        await asyncio.sleep(0.3)  # the copies are under way
        aborted = await operator.abort_move(ORG)
        assert aborted is not None
        gate.set()
        with pytest.raises(ResidencyError):
            await moving  # its next record write conflicts
        refused = None
        try:
            await operator.erase_org(ORG, region=Region.US)
        except ResidencyViolationError as exc:
            refused = exc
    left = org_versions(world, Region.US)
    assert left == [], f"{len(left)} versions stranded in us after abort; erase -> {refused!r}"
