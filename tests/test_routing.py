from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from router.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    ObjectNotFoundError,
    ResidencyViolationError,
    UnknownOrgError,
)
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import DataClass, Region
from tests.conftest import ORG_BY_REGION, RequestLog, without_bucket_default_encryption


@pytest.mark.parametrize("region", list(Region), ids=[r.value for r in Region])
async def test_put_lands_only_in_org_region_under_region_key(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld, region: Region
) -> None:
    org_id = ORG_BY_REGION[region]
    without_bucket_default_encryption(residency_world, region)
    body = f"payload for {org_id}".encode()
    receipt = await residency_router.put(org_id, "docs/a.txt", body, content_type="text/plain")

    cfg = residency_world.region_map.region(region)
    assert (receipt.region, receipt.aws_region, receipt.bucket) == (
        region,
        cfg.aws_region,
        cfg.bucket,
    )
    assert receipt.key == f"orgs/{org_id}/files/docs/a.txt"
    assert receipt.kms_key_arn == residency_world.key_arn(region)
    assert receipt.sha256 == hashlib.sha256(body).hexdigest()
    assert receipt.stored is True

    head = residency_world.assert_stored_in(org_id, "docs/a.txt", region)
    assert head["BucketKeyEnabled"] is True
    assert head["ContentType"] == "text/plain"
    assert head["VersionId"] == receipt.version_id
    residency_world.assert_nothing_outside(region)
    s3 = residency_world.s3(region)
    tags = s3.get_object_tagging(Bucket=cfg.bucket, Key=receipt.key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {
        "residency-org": org_id,
        "residency-class": "files",
        "residency-retention": "keep",
        "residency-training": "opt-in" if org_id == "org-lark" else "opt-out",
    }
    assert s3.get_object(Bucket=cfg.bucket, Key=receipt.key)["Body"].read() == body


async def test_put_sends_sha256_checksum_and_kms_headers(
    residency_router: ResidencyRouter, s3_requests: RequestLog
) -> None:
    seen: list[dict[str, Any]] = []

    def capture(request: Any, **_: Any) -> None:
        seen.append(
            {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        )

    residency_router.storage.register("before-send.s3.PutObject", capture)
    await residency_router.put("org-acme", "k", b"abc")
    (headers,) = seen
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"].startswith(
        "arn:aws:kms:eu-west-1:"
    )
    assert ":key/" in headers["x-amz-server-side-encryption-aws-kms-key-id"]  # alias resolved
    assert headers["x-amz-server-side-encryption-bucket-key-enabled"] == "true"
    assert headers["x-amz-checksum-sha256"] == "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


async def test_get_head_list_delete_round_trip(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    r = residency_router
    await r.put("org-kiku", "a/1.txt", b"one")
    await r.put("org-kiku", "a/2.txt", b"two", data_class=DataClass.FINE_TUNING)
    await r.put("org-kiku", "b/3.txt", b"three")
    await r.put("org-kiku", "a/1.txt", b"one-v2")  # a second version

    assert await r.get("org-kiku", "a/1.txt") == b"one-v2"
    info = await r.head("org-kiku", "a/2.txt", data_class="fine_tuning")
    assert (info.key, info.size, info.data_class) == ("a/2.txt", 3, DataClass.FINE_TUNING)

    listed = [(o.data_class, o.key) async for o in r.list("org-kiku")]
    assert sorted(listed) == sorted(
        [
            (DataClass.FILES, "a/1.txt"),
            (DataClass.FILES, "b/3.txt"),
            (DataClass.FINE_TUNING, "a/2.txt"),
        ]
    )
    only = [o.key async for o in r.list("org-kiku", data_class="files", prefix="a/")]
    assert only == ["a/1.txt"]

    receipt = await r.delete("org-kiku", "a/1.txt")
    assert receipt.versions_deleted == 2
    versions = [
        v for v in residency_world.all_versions("jp") if v["Key"] == "orgs/org-kiku/files/a/1.txt"
    ]
    assert versions == []
    assert (await r.delete("org-kiku", "a/1.txt")).versions_deleted == 0
    with pytest.raises(ObjectNotFoundError):
        await r.get("org-kiku", "a/1.txt")
    with pytest.raises(ObjectNotFoundError):
        await r.head("org-kiku", "a/1.txt")


async def test_delete_removes_delete_markers_and_spares_similar_keys(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    await residency_router.put("org-acme", "report.txt", b"x")
    await residency_router.put("org-acme", "report.txt.bak", b"y")
    s3 = residency_world.s3("eu")
    s3.delete_object(Bucket=residency_world.bucket("eu"), Key="orgs/org-acme/files/report.txt")
    receipt = await residency_router.delete("org-acme", "report.txt")
    assert receipt.versions_deleted == 2  # the version and the delete marker
    keys = [v["Key"] for v in residency_world.all_versions("eu")]
    assert keys == ["orgs/org-acme/files/report.txt.bak"]


async def test_stream_yields_the_object_and_releases_on_early_exit(
    residency_router: ResidencyRouter,
) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    await residency_router.put("org-acme", "s.bin", body)
    chunks = [c async for c in residency_router.stream("org-acme", "s.bin")]
    assert b"".join(chunks) == body
    for _ in range(20):
        stream = residency_router.stream("org-acme", "s.bin")
        async for _chunk in stream:
            break
        await stream.aclose()
    assert await residency_router.get("org-acme", "s.bin") == body


async def test_list_never_shows_other_orgs(residency_router: ResidencyRouter) -> None:
    await residency_router.put("org-acme", "x", b"1")
    # The directory maps another org to the same region: its data must not show up.
    world_orgs = residency_router.region_map.orgs
    assert world_orgs["org-acme"].region is Region.EU
    listed = [o async for o in residency_router.list("org-stars")]
    assert listed == []


async def test_read_refuses_object_under_foreign_key(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    # Another key in the bucket's own region: real S3 accepts that (it refuses a key from
    # another region, which moto would accept), and it is still not the region's key.
    other_key = residency_world.client("kms", "eu-west-1").create_key(
        Description="someone else's key"
    )["KeyMetadata"]["Arn"]
    s3 = residency_world.s3("eu")
    key = "orgs/org-acme/files/planted.txt"
    s3.put_object(
        Bucket=residency_world.bucket("eu"),
        Key=key,
        Body=b"secret",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=other_key,
    )
    with pytest.raises(ResidencyViolationError, match="KMS key other than"):
        await residency_router.get("org-acme", "planted.txt")
    with pytest.raises(ResidencyViolationError):
        await residency_router.head("org-acme", "planted.txt")
    with pytest.raises(ResidencyViolationError):
        async for _ in residency_router.stream("org-acme", "planted.txt"):
            pass


async def test_read_refuses_unencrypted_object(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    s3 = residency_world.s3("eu")
    s3.delete_bucket_encryption(Bucket=residency_world.bucket("eu"))
    s3.put_object(Bucket=residency_world.bucket("eu"), Key="orgs/org-acme/files/p", Body=b"x")
    with pytest.raises(ResidencyViolationError, match="not SSE-KMS"):
        await residency_router.get("org-acme", "p")


@pytest.mark.parametrize(
    ("org_id", "key", "error"),
    [
        pytest.param("org-unknown", "a.txt", UnknownOrgError, id="unknown-org"),
        pytest.param("org/acme", "a.txt", InvalidKeyError, id="bad-org-id"),
        pytest.param("org-acme", "../a.txt", InvalidKeyError, id="traversal"),
        pytest.param("org-acme", "/a.txt", InvalidKeyError, id="absolute"),
        pytest.param("org-acme", "a\ufffe", InvalidKeyError, id="xml-invalid"),
        pytest.param("org-acme", "a\ud800", InvalidKeyError, id="lone-surrogate"),
        pytest.param("org-acme", "", InvalidKeyError, id="empty"),
        pytest.param("org-acme", "k" * 1100, InvalidKeyError, id="too-long"),
    ],
)
async def test_rejected_requests_send_nothing(
    residency_router: ResidencyRouter,
    residency_world: ResidencyWorld,
    s3_requests: RequestLog,
    org_id: str,
    key: str,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await residency_router.put(org_id, key, b"x")
    with pytest.raises(error):
        await residency_router.get(org_id, key)
    with pytest.raises(error):
        await residency_router.head(org_id, key)
    with pytest.raises(error):
        await residency_router.delete(org_id, key)
    with pytest.raises(error):
        async for _ in residency_router.stream(org_id, key):
            pass
    assert len(s3_requests) == 0
    for region in Region:
        assert residency_world.all_versions(region) == []


async def test_put_refuses_inputs_outputs_and_bad_bodies(
    residency_router: ResidencyRouter, s3_requests: RequestLog
) -> None:
    with pytest.raises(InvalidKeyError, match="record_exchange"):
        await residency_router.put("org-acme", "k", b"x", data_class="inputs_outputs")
    with pytest.raises(InvalidArgumentError, match="data class"):
        await residency_router.put("org-acme", "k", b"x", data_class="nope")
    with pytest.raises(TypeError, match="body"):
        await residency_router.put("org-acme", "k", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="metadata"):
        await residency_router.put("org-acme", "k", b"x", metadata={"bad name": "v"})
    assert len(s3_requests) == 0


async def test_resolve_returns_placement_with_resolved_key(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    place = await residency_router.resolve("org-hana")
    assert place.region is Region.KR
    assert place.aws_region == "ap-northeast-2"
    assert place.bucket == residency_world.bucket("kr")
    assert place.kms_key_arn == residency_world.key_arn("kr")


async def test_verify_reports_every_region_ok(residency_router: ResidencyRouter) -> None:
    report = await residency_router.verify()
    assert report.ok
    assert set(report.by_region) == set(Region)
    assert all(problems == [] for problems in report.by_region.values())
    health = residency_router.health()
    assert {h.state for h in health.values()} == {"ok"}


async def test_closed_router_raises_runtime_error(residency_world: ResidencyWorld) -> None:
    router = ResidencyRouter.from_settings(residency_world.settings())
    with pytest.raises(RuntimeError, match="not started"):
        await router.put("org-acme", "k", b"x")
    async with router:
        await router.put("org-acme", "k", b"x")
    with pytest.raises(RuntimeError, match="closed"):
        await router.get("org-acme", "k")
    with pytest.raises(RuntimeError):
        router.health()


async def test_caller_directory_is_used_and_left_open(residency_world: ResidencyWorld) -> None:
    from router.orgs import StaticOrgDirectory
    from router.types import OrgId, OrgResidency

    directory = StaticOrgDirectory({"own-org": OrgResidency(OrgId("own-org"), Region.SG)})
    async with ResidencyRouter.from_settings(residency_world.settings(), directory=directory) as r:
        receipt = await r.put("own-org", "k", b"x")
        assert receipt.region is Region.SG
        with pytest.raises(UnknownOrgError):
            await r.put("org-acme", "k", b"x")
    assert await directory.lookup(OrgId("own-org"))


async def test_router_ignores_aws_endpoint_environment(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        await router.put("org-acme", "k", b"x")
    residency_world.assert_stored_in("org-acme", "k", "eu")


async def test_concurrent_puts_for_all_regions_land_correctly(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    jobs = [
        residency_router.put(org_id, f"c/{i}", f"{org_id}-{i}".encode())
        for org_id in ORG_BY_REGION.values()
        for i in range(5)
    ]
    receipts = await asyncio.gather(*jobs)
    assert len(receipts) == 35
    for region, org_id in ORG_BY_REGION.items():
        keys = {v["Key"] for v in residency_world.all_versions(region)}
        assert keys == {f"orgs/{org_id}/files/c/{i}" for i in range(5)}


async def test_missing_directory_table_fails_closed_without_s3_requests(
    residency_world: ResidencyWorld,
) -> None:
    from router.errors import DirectoryUnavailableError

    settings = residency_world.settings(directory_table="no-such-table")
    async with ResidencyRouter.from_settings(settings) as router:
        log = RequestLog()
        router.storage.register("before-send.s3", log)
        with pytest.raises(DirectoryUnavailableError, match="no-such-table"):
            await router.put("org-acme", "k", b"x")
        assert len(log) == 0
