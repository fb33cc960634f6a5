from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from router.errors import StorageError
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import Region
from tests.conftest import RequestLog, unverified
from tests.stubs import Reply, stub_server


async def test_missing_bucket_aborts_strict_start(residency_world: ResidencyWorld) -> None:
    s3 = residency_world.s3("sg")
    s3.delete_bucket_lifecycle(Bucket=residency_world.bucket("sg"))
    s3.delete_bucket(Bucket=residency_world.bucket("sg"))
    with pytest.raises(StorageError, match="NoSuchBucket"):
        async with ResidencyRouter.from_settings(residency_world.settings()):
            pass


async def test_disabled_key_is_reported_and_quarantined(residency_world: ResidencyWorld) -> None:
    kms = residency_world.client("kms", "ap-south-1")
    kms.disable_key(KeyId=residency_world.key_arn("in").rsplit("/", 1)[1])
    settings = residency_world.settings(verify_on_start="quarantine")
    async with ResidencyRouter.from_settings(settings) as router:
        report = await router.verify()
        assert report.by_region[Region.IN] == ["regions.in.kms_key: key state is Disabled"]
        assert all(not p for r, p in report.by_region.items() if r is not Region.IN)
        assert router.health()[Region.IN].state == "quarantined"
        with pytest.raises(Exception, match="quarantined"):
            await router.put("org-lotus", "a", b"x")
        await router.put("org-kiku", "a", b"x")
    assert residency_world.all_versions("in") == []


async def test_alias_pointing_to_foreign_region_key_is_refused(
    residency_world: ResidencyWorld, tmp_path: Path
) -> None:
    # A map whose kr key ARN is correct in form but names a key that does not exist.
    data: dict[str, Any] = yaml.safe_load(residency_world.regions_file.read_text())
    data["regions"]["kr"]["kms_key"] = "arn:aws:kms:ap-northeast-2:123456789012:alias/missing"
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = residency_world.settings(regions_file=path)
    with pytest.raises(StorageError, match=r"regions\.kr\.kms_key"):
        async with ResidencyRouter.from_settings(settings):
            pass


async def test_account_id_sends_expected_bucket_owner(
    residency_world: ResidencyWorld, tmp_path: Path
) -> None:
    data: dict[str, Any] = yaml.safe_load(residency_world.regions_file.read_text())
    data["regions"]["eu"]["account_id"] = "123456789012"
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data))
    async with ResidencyRouter.from_settings(residency_world.settings(regions_file=path)) as r:
        headers: list[dict[str, str]] = []
        r.storage.register(
            "before-send.s3",
            lambda request, **_: headers.append(
                {
                    k.lower(): v.decode() if isinstance(v, bytes) else v
                    for k, v in request.headers.items()
                }
            ),
        )
        await r.put("org-acme", "a", b"x")
        await r.get("org-acme", "a")
        await r.delete("org-acme", "a")
        await r.put("org-stars", "a", b"x")
    eu_requests, us_request = headers[:-1], headers[-1]
    assert eu_requests
    assert all(h.get("x-amz-expected-bucket-owner") == "123456789012" for h in eu_requests)
    assert "x-amz-expected-bucket-owner" not in us_request


async def test_verify_sends_no_object_requests(
    residency_router: ResidencyRouter, s3_requests: RequestLog
) -> None:
    report = await residency_router.verify()
    assert report.ok
    assert len(s3_requests) == 7  # one GetBucketLocation per region
    assert all(method == "GET" and "location" in url for method, url in s3_requests.requests)


async def test_verify_passing_again_resolves_the_key_anew(residency_world: ResidencyWorld) -> None:
    key_id = residency_world.key_arn("eu").rsplit("/", 1)[1]
    kms = residency_world.client("kms", "eu-west-1")
    kms.disable_key(KeyId=key_id)
    settings = residency_world.settings(verify_on_start="quarantine")
    async with ResidencyRouter.from_settings(settings) as router:
        assert router.health()[Region.EU].state == "quarantined"
        kms.enable_key(KeyId=key_id)
        assert (await router.verify()).ok
        placement = await router.resolve("org-acme")
        assert placement.kms_key_arn == residency_world.key_arn("eu")  # a key ARN, not the alias
        receipt = await router.put("org-acme", "a.txt", b"x")
        assert receipt.kms_key_arn == residency_world.key_arn("eu")
        assert await router.get("org-acme", "a.txt") == b"x"
    residency_world.assert_stored_in("org-acme", "a.txt", "eu")


def redirect_everything(method: str, path: str) -> Reply:
    return 307, {"Location": "http://127.0.0.1:9/elsewhere"}, b""


def empty_not_found(method: str, path: str) -> Reply:
    return 404, {}, b""


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        pytest.param(redirect_everything, "redirect", id="redirect"),
        pytest.param(empty_not_found, "could not be read", id="empty-404"),
    ],
)
async def test_verify_reports_what_it_finds_and_never_raises(
    key_arn_map: Path, reply: Any, kind: str
) -> None:
    with stub_server(reply) as stub:
        settings = unverified(key_arn_map, stub.url, verify_on_start="quarantine")
        async with ResidencyRouter.from_settings(settings) as router:
            report = await router.verify()
            assert not report.ok
            assert all(report.by_region.values())
            assert all(kind in " ".join(problems) for problems in report.by_region.values())
