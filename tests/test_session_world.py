"""The session world: provisioned once, emptied between tests, apart from the per-test world."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import router.testing
from router.hardening import alias_name, hardened_region, kms_encryption_rule
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld, SessionWorld, changes_configuration
from router.types import Region
from tests.conftest import without_bucket_default_encryption

KEY = "orgs/org-acme/files/left-behind.txt"


def leave_everything_behind(world: ResidencyWorld) -> None:
    """What a careless test leaves: versions, a delete marker, an upload, a table, logs."""
    s3 = world.s3("eu")
    bucket = world.bucket("eu")
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"one")
    s3.put_object(Bucket=bucket, Key=KEY, Body=b"two")
    s3.delete_object(Bucket=bucket, Key=KEY)  # a delete marker on top of two versions
    s3.create_multipart_upload(Bucket=bucket, Key="orgs/org-acme/files/big.bin")
    world.create_directory_table("orgs")  # with the map's static orgs as items
    cfg = world.region_map.region(Region.EU)
    log_bucket = hardened_region(cfg, world.region_map.retention).log_bucket
    # moto writes a bucket's access logs as it serves its requests (S3 delivers them later).
    assert s3.list_object_versions(Bucket=log_bucket)["Versions"]


def assert_nothing_left(world: ResidencyWorld) -> None:
    for cfg in world.region_map:
        s3 = world.s3(cfg.region)
        log_bucket = hardened_region(cfg, world.region_map.retention).log_bucket
        # The log bucket first: moto logs each request to the data bucket into it.
        for bucket in (log_bucket, cfg.bucket):
            listing = s3.list_object_versions(Bucket=bucket)
            assert not listing.get("Versions"), bucket
            assert not listing.get("DeleteMarkers"), bucket
            assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), bucket
        assert not world.client("dynamodb", cfg.aws_region).list_tables()["TableNames"]


def test_session_world_is_emptied_of_everything_a_test_left(
    residency_session_world: ResidencyWorld, residency_shared_world: SessionWorld
) -> None:
    key_arn = residency_session_world.key_arn("eu")
    leave_everything_behind(residency_session_world)

    world = residency_shared_world.fresh()  # what the next test gets

    assert world is residency_session_world
    assert_nothing_left(world)
    # Emptied, not provisioned again: the same keys, and the directory table can be remade.
    assert world.key_arn("eu") == key_arn
    world.create_directory_table("orgs")


def test_session_world_empties_more_than_one_delete_batch(
    residency_session_world: ResidencyWorld, residency_shared_world: SessionWorld
) -> None:
    s3 = residency_session_world.s3("jp")
    bucket = residency_session_world.bucket("jp")
    keys = [f"orgs/org-kiku/files/{n:04}" for n in range(1005)]  # DeleteObjects takes 1000
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))

    residency_shared_world.fresh()

    assert residency_session_world.all_versions("jp") == []


def test_session_world_restores_configuration_a_test_changed(
    residency_session_world: ResidencyWorld, residency_shared_world: SessionWorld
) -> None:
    world = residency_session_world
    without_bucket_default_encryption(world, "eu")
    world.s3("jp").delete_bucket(Bucket=world.bucket("jp"))
    us = world.region_map.region(Region.US)
    world.client("kms", us.aws_region).delete_alias(AliasName=alias_name(us))

    residency_shared_world.fresh()

    assert_nothing_left(world)  # first: reading the buckets' settings writes access logs
    encryption = world.s3("eu").get_bucket_encryption(Bucket=world.bucket("eu"))
    rules = encryption["ServerSideEncryptionConfiguration"]["Rules"]
    assert (
        rules[0]["ApplyServerSideEncryptionByDefault"]
        == (kms_encryption_rule(world.key_arn("eu"))["ApplyServerSideEncryptionByDefault"])
    )
    world.s3("jp").head_bucket(Bucket=world.bucket("jp"))
    kms = world.client("kms", us.aws_region)
    assert kms.describe_key(KeyId=alias_name(us))["KeyMetadata"]["Arn"] == world.key_arn("us")


async def test_session_router_writes_into_the_session_world(
    residency_session_router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    await residency_session_router.put("org-acme", "doc.txt", b"x")

    residency_session_world.assert_stored_in("org-acme", "doc.txt", "eu")
    residency_session_world.assert_nothing_outside("eu")


# The next two run in this order on one worker (xdist may split them; each holds alone).
def test_session_world_first_test_leaves_things_behind(
    residency_session_world: ResidencyWorld,
) -> None:
    leave_everything_behind(residency_session_world)


def test_session_world_next_test_finds_nothing(residency_session_world: ResidencyWorld) -> None:
    assert_nothing_left(residency_session_world)


def test_per_test_world_resets_leave_the_session_world_alone(
    residency_session_world: ResidencyWorld,
    residency_world: ResidencyWorld,  # provisioned after a reset of its own server
) -> None:
    assert residency_session_world.endpoint_url != residency_world.endpoint_url
    residency_session_world.s3("eu").put_object(
        Bucket=residency_session_world.bucket("eu"), Key=KEY, Body=b"session"
    )
    residency_world.s3("eu").put_object(
        Bucket=residency_world.bucket("eu"), Key=KEY, Body=b"per-test"
    )

    for world, body in ((residency_session_world, b"session"), (residency_world, b"per-test")):
        got = world.s3("eu").get_object(Bucket=world.bucket("eu"), Key=KEY)
        assert got["Body"].read() == body
        assert len(world.all_versions("eu")) == 1


def plugin_fixture_names() -> list[str]:
    names = []
    for attribute in vars(router.testing).values():
        # pytest >= 8.4 wraps fixtures in FixtureFunctionDefinition; 8.3 marks the function.
        marker = getattr(attribute, "_pytestfixturefunction", None)
        if type(attribute).__name__ == "FixtureFunctionDefinition":
            names.append(attribute.name)
        elif marker is not None:
            names.append(marker.name or attribute.__name__)
    return names


def test_plugin_fixtures_are_all_prefixed_residency() -> None:
    names = plugin_fixture_names()

    assert "residency_session_world" in names
    assert "residency_world" in names
    assert [name for name in names if not name.startswith("residency_")] == []


def test_aws_isolation_fixture_is_autouse_under_its_prefixed_name(
    request: pytest.FixtureRequest,
) -> None:
    assert "residency_aws_isolation" in request.fixturenames
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def environ(method: str, path: str, query: str = "", service: str = "s3", target: str = "") -> Any:
    credential = f"testing/20260101/eu-west-1/{service}/aws4_request"
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host",
        "HTTP_X_AMZ_TARGET": target,
    }


@pytest.mark.parametrize(
    ("request_environ", "changes"),
    [
        pytest.param(environ("GET", "/b"), False, id="list-objects"),
        pytest.param(environ("PUT", "/b/k"), False, id="put-object"),
        pytest.param(environ("PUT", "/b/k", "partNumber=1&uploadId=u"), False, id="upload-part"),
        pytest.param(environ("DELETE", "/b/k", "versionId=v"), False, id="delete-version"),
        pytest.param(environ("POST", "/b", "delete"), False, id="delete-objects"),
        pytest.param(environ("POST", "/b"), False, id="form-upload"),
        pytest.param(environ("PUT", "/b", "encryption"), True, id="put-encryption"),
        pytest.param(environ("DELETE", "/b", "encryption"), True, id="delete-encryption"),
        pytest.param(environ("DELETE", "/b"), True, id="delete-bucket"),
        pytest.param(environ("PUT", "/b"), True, id="create-bucket"),
        pytest.param({**environ("PUT", "/b/k"), "HTTP_AUTHORIZATION": ""}, True, id="unsigned-put"),
        pytest.param(
            {
                **environ("PUT", "/b/k"),
                "HTTP_AUTHORIZATION": "",
                "QUERY_STRING": "X-Amz-Credential=t%2F20260101%2Feu-west-1%2Fs3%2Faws4_request",
            },
            False,
            id="presigned-put",
        ),
        pytest.param(
            environ("POST", "/", service="kms", target="TrentService.Decrypt"), False, id="decrypt"
        ),
        pytest.param(
            environ("POST", "/", service="kms", target="TrentService.DescribeKey"),
            False,
            id="describe-key",
        ),
        pytest.param(
            environ("POST", "/", service="kms", target="TrentService.DisableKey"),
            True,
            id="disable-key",
        ),
        pytest.param(
            environ("POST", "/", service="dynamodb", target="DynamoDB_20120810.PutItem"),
            False,
            id="put-item",
        ),
        pytest.param(
            environ("POST", "/", service="dynamodb", target="DynamoDB_20120810.UpdateTimeToLive"),
            True,
            id="update-ttl",
        ),
        pytest.param(environ("POST", "/", service="iam"), True, id="another-service"),
    ],
)
def test_changes_configuration_tells_data_from_configuration(
    request_environ: Any, changes: bool
) -> None:
    assert changes_configuration(request_environ) is changes
