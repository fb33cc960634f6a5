from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from router.errors import DirectoryUnavailableError, UnknownOrgError
from router.orgs import CachedOrgDirectory, DynamoDBOrgDirectory, OrgDirectory, StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency, Region

RECORDS = {
    "org-acme": OrgResidency(OrgId("org-acme"), Region.EU, processing_region=Region.EU),
    "org-kiku": OrgResidency(OrgId("org-kiku"), Region.JP, zero_data_retention=True),
    "org-lark": OrgResidency(OrgId("org-lark"), Region.CA, training_opt_in=True, retention_days=7),
}


@pytest.fixture(params=["static", "dynamodb"])
async def directory(
    request: pytest.FixtureRequest, residency_world: ResidencyWorld
) -> AsyncIterator[OrgDirectory]:
    if request.param == "static":
        yield StaticOrgDirectory(RECORDS)
        return
    aws_region = residency_world.create_directory_table("orgs", RECORDS)
    async with DynamoDBOrgDirectory(
        "orgs", aws_region=aws_region, endpoint_url=residency_world.endpoint_url
    ) as dynamo:
        yield dynamo


async def test_directory_returns_each_record_exactly(directory: OrgDirectory) -> None:
    for org_id, record in RECORDS.items():
        assert await directory.lookup(OrgId(org_id)) == record


async def test_directory_raises_unknown_org(directory: OrgDirectory) -> None:
    with pytest.raises(UnknownOrgError):
        await directory.lookup(OrgId("org-nobody"))


async def test_directory_behind_cache_is_single_flight(directory: OrgDirectory) -> None:
    calls = 0
    inner_lookup = directory.lookup

    class Counting:
        async def lookup(self, org_id: OrgId) -> OrgResidency:
            nonlocal calls
            calls += 1
            return await inner_lookup(org_id)

    cache = CachedOrgDirectory(Counting())
    results = await asyncio.gather(*(cache.lookup(OrgId("org-lark")) for _ in range(100)))
    assert results == [RECORDS["org-lark"]] * 100
    assert calls == 1


async def test_dynamodb_directory_refuses_malformed_items(residency_world: ResidencyWorld) -> None:
    aws_region = residency_world.create_directory_table("orgs", {})
    dynamodb = residency_world.client("dynamodb", aws_region)
    dynamodb.put_item(TableName="orgs", Item={"org_id": {"S": "bad-1"}, "region": {"S": "mars"}})
    dynamodb.put_item(
        TableName="orgs",
        Item={"org_id": {"S": "bad-2"}, "region": {"S": "jp"}, "processing_region": {"S": "jp"}},
    )
    async with DynamoDBOrgDirectory(
        "orgs", aws_region=aws_region, endpoint_url=residency_world.endpoint_url
    ) as dynamo:
        with pytest.raises(DirectoryUnavailableError, match=r"orgs\[bad-1\]\.region"):
            await dynamo.lookup(OrgId("bad-1"))
        with pytest.raises(DirectoryUnavailableError, match="processing_region"):
            await dynamo.lookup(OrgId("bad-2"))


async def test_dynamodb_directory_put_and_list_round_trip(residency_world: ResidencyWorld) -> None:
    aws_region = residency_world.create_directory_table("orgs", {})
    async with DynamoDBOrgDirectory(
        "orgs", aws_region=aws_region, endpoint_url=residency_world.endpoint_url
    ) as dynamo:
        for record in RECORDS.values():
            await dynamo.put(record)
        listed = {r.org_id: r async for r in dynamo.list() if isinstance(r, OrgResidency)}
    assert listed == RECORDS


async def test_router_uses_dynamodb_table_when_directory_table_is_set(
    residency_world: ResidencyWorld,
) -> None:
    residency_world.create_directory_table("org-directory", RECORDS)
    settings = residency_world.settings(directory_table="org-directory")
    async with ResidencyRouter.from_settings(settings) as router:
        receipt = await router.put("org-lark", "a.txt", b"x")
        assert receipt.region is Region.CA
        with pytest.raises(UnknownOrgError):
            await router.put("org-stars", "a.txt", b"x")  # in regions.yaml, not in the table
        # A changed record reaches the router at once after invalidate().
        dynamodb = residency_world.client("dynamodb", "us-east-1")
        dynamodb.update_item(
            TableName="org-directory",
            Key={"org_id": {"S": "org-lark"}},
            UpdateExpression="SET training_opt_in = :f",
            ExpressionAttributeValues={":f": {"BOOL": False}},
        )
        router.invalidate("org-lark")
        assert [o async for o in router.list_training_eligible("org-lark")] == []
    residency_world.assert_stored_in("org-lark", "a.txt", "ca")


def test_orgs_cli_sets_shows_lists_and_refuses_a_region_edit(
    world_environment: ResidencyWorld,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.cli import main

    world = world_environment
    world.create_directory_table("org-directory", RECORDS)
    monkeypatch.setenv("RESIDENCY_DIRECTORY_TABLE", "org-directory")

    assert main(["orgs", "set", "org-new", "--region", "sg", "--training-opt-in"]) == 0
    assert "org-new: region=sg" in capsys.readouterr().out
    assert main(["orgs", "show", "org-new"]) == 0
    assert "training_opt_in=true" in capsys.readouterr().out
    assert main(["orgs", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{org_id}:" in listed for org_id in [*RECORDS, "org-new"])

    # The storage region never changes by an edit (running routers would write to either
    # region meanwhile): the refusal points to the move, which moves the data.
    assert main(["orgs", "set", "org-lark", "--region", "us"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err
    assert "orgs move org-lark --to us" in err
    assert main(["orgs", "show", "org-lark"]) == 0
    assert "region=ca" in capsys.readouterr().out
    assert main(["orgs", "set", "org-lark", "--no-training-opt-in"]) == 0
    out = capsys.readouterr().out
    assert "training_opt_in=false" in out
    assert "takes effect on every router at" in out
    assert main(["orgs", "set", "org-lark", "--retention-days", "14"]) == 2
    assert "retention_days: 14" in capsys.readouterr().err
    assert main(["orgs", "set", "org-kiku", "--processing-region", "eu"]) == 0
    assert "processing_region=eu" in capsys.readouterr().out


def test_orgs_set_needs_a_dynamodb_table(
    world_environment: ResidencyWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    from router.cli import main

    assert main(["orgs", "set", "org-acme", "--region", "us"]) == 2
    assert "RESIDENCY_DIRECTORY_TABLE" in capsys.readouterr().err
    assert main(["orgs", "show", "org-acme"]) == 0
    assert "region=eu" in capsys.readouterr().out


def test_orgs_set_refuses_a_zero_day_window_and_keeps_the_old_value(
    world_environment: ResidencyWorld,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.cli import main

    world_environment.create_directory_table("org-directory", RECORDS)
    monkeypatch.setenv("RESIDENCY_DIRECTORY_TABLE", "org-directory")
    assert main(["orgs", "set", "org-lark", "--retention-days", "0"]) == 2
    assert "retention_days: 0 is not one of allowed_days" in capsys.readouterr().err
    assert main(["orgs", "show", "org-lark"]) == 0
    assert "retention_days=7" in capsys.readouterr().out


def test_orgs_list_reports_a_malformed_item_and_lists_the_rest(
    world_environment: ResidencyWorld,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from router.cli import main

    aws_region = world_environment.create_directory_table("org-directory", RECORDS)
    world_environment.client("dynamodb", aws_region).put_item(
        TableName="org-directory",
        Item={"org_id": {"S": "org-bad"}, "region": {"S": "mars"}},
    )
    monkeypatch.setenv("RESIDENCY_DIRECTORY_TABLE", "org-directory")
    assert main(["orgs", "list"]) == 1
    captured = capsys.readouterr()
    assert all(f"{org_id}:" in captured.out for org_id in RECORDS)
    assert "org-bad" in captured.err
    assert "region" in captured.err
