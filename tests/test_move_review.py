"""Moves against a second hostile review: a sleeping mover, record shapes, dry runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from router.errors import OrgMovingError, ResidencyError
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, Region
from tests.test_moves import (  # noqa: F401
    ORG,
    fast_settings,
    org_uploads,
    org_versions,
    table,
    wait_for_phase,
)


async def test_a_mover_woken_after_an_abort_stops_without_touching_the_org(
    table: ResidencyWorld,  # noqa: F811
) -> None:
    """Mover sleeps in the settle wait; abort completes meanwhile; the mover wakes, runs the
    delta without re-reading the record (source listing < RECHECK_S) and aborts the org's
    live multipart uploads in the source, although the org is no longer fenced."""
    world = table
    settings = fast_settings(world, cache_ttl_s=5.0)
    async with (
        ResidencyRouter.from_settings(settings) as mover,
        ResidencyRouter.from_settings(settings) as operator,
    ):
        await mover.put(ORG, "f/0", b"data")
        moving = asyncio.create_task(mover.move_org(ORG, Region.US))
        await wait_for_phase(operator, "fenced")
        assert await operator.abort_move(ORG) is not None
        record = await operator.directory.fresh(OrgId(ORG))
        assert record.move is None  # abort finished; org writes normally in eu
        assert not moving.done()  # the mover still sleeps in its settle wait
        # A router's in-flight multipart upload of the unfenced org, in the source.
        s3 = world.s3(Region.EU)
        s3.create_multipart_upload(Bucket=world.bucket(Region.EU), Key=f"orgs/{ORG}/files/live.bin")
        assert len(org_uploads(world, Region.EU)) == 1
        with pytest.raises(ResidencyError):
            await moving
    assert len(org_uploads(world, Region.EU)) == 1, (
        "an abandoned mover aborted a live upload of the org in its home region"
    )


def test_a_fence_in_a_copying_or_aborting_move_fences_nothing() -> None:
    from router._orgrecord import org_record
    from router.records import is_fenced

    now = datetime.now(UTC)
    bad = []
    for phase in ("copying", "aborting"):
        record, _problems = org_record(
            ORG,
            {
                "region": "eu",
                "move": {
                    "from_region": "eu",
                    "to_region": "us",
                    "phase": phase,
                    "started_at": now,
                    "fence_at": now - timedelta(seconds=1),
                },
            },
            configured={"eu", "us"},
            without_endpoint=(),
            default_days=30,
            allowed_days=None,
        )
        if record is not None and is_fenced(record, now):
            bad.append(phase)
    assert not bad, f"accepted and fenced forever: {bad}"


async def test_a_dry_run_refuses_what_the_move_would_refuse(
    table: ResidencyWorld,  # noqa: F811
) -> None:
    world = table
    settings = fast_settings(world, cache_ttl_s=5.0)
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put(ORG, "a", b"x")
        moving = asyncio.create_task(router.move_org(ORG, Region.US))
        await wait_for_phase(router, "fenced")
        other = Region.CA if Region.CA in router._open().region_map.regions else Region.JP
        try:
            plan = await router.move_org(ORG, other, dry_run=True)
            refused = None
        except OrgMovingError as exc:
            plan, refused = None, exc
        moving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await moving
        await router.abort_move(ORG)
    assert refused is not None, f"dry run planned a move the real one refuses: {plan}"
