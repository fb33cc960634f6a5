from __future__ import annotations

from pathlib import Path

import pytest

from router.config import RouterSettings
from router.errors import RegionUnavailableError, ResidencyViolationError
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import Region
from tests.conftest import REGIONS_FILE, unverified
from tests.stubs import Reply, stub_server

PERMANENT_REDIRECT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code>'
    b"<Message>The bucket you are attempting to access must be addressed using the specified "
    b"endpoint.</Message><Endpoint>residency-example-eu.s3.us-west-2.amazonaws.com</Endpoint>"
    b"<Bucket>residency-example-eu</Bucket></Error>"
)


def permanent_redirect(method: str, path: str) -> Reply:
    headers = {"Content-Type": "application/xml", "x-amz-bucket-region": "us-west-2"}
    return 301, headers, PERMANENT_REDIRECT


async def test_permanent_redirect_raises_and_is_not_resent(key_arn_map: Path) -> None:
    with stub_server(permanent_redirect) as stub:
        settings = unverified(key_arn_map, stub.url)
        async with ResidencyRouter.from_settings(settings) as router:
            stub.requests.clear()
            with pytest.raises(ResidencyViolationError, match="us-west-2"):
                await router.put("org-acme", "a.txt", b"secret")
            assert [method for method, _ in stub.requests] == ["PUT"]
            stub.requests.clear()
            # The region is quarantined with the reason: nothing more is sent there.
            health = router.health()[Region.EU]
            assert health.state == "quarantined"
            assert "us-west-2" in health.reason
            with pytest.raises(ResidencyViolationError, match="quarantined"):
                await router.get("org-acme", "a.txt")
            with pytest.raises(ResidencyViolationError, match="quarantined"):
                await router.head("org-acme", "a.txt")
            assert stub.requests == []
            # Other regions are untouched by one region's redirect.
            assert router.health()[Region.US].state == "ok"


async def test_permanent_redirect_at_start_aborts_strict_router() -> None:
    with stub_server(permanent_redirect) as stub:
        settings = RouterSettings(
            regions_file=REGIONS_FILE, endpoint_url=stub.url, retry_deadline_s=2
        )
        with pytest.raises(ResidencyViolationError, match="redirects"):
            async with ResidencyRouter.from_settings(settings):
                pass


async def test_temporary_redirect_to_other_server_is_not_followed(key_arn_map: Path) -> None:
    with stub_server(lambda m, p: (200, {}, b"")) as elsewhere:

        def temporary_redirect(method: str, path: str) -> Reply:
            return 307, {"Location": f"{elsewhere.url}{path}"}, b""

        with stub_server(temporary_redirect) as stub:
            settings = unverified(key_arn_map, stub.url)
            async with ResidencyRouter.from_settings(settings) as router:
                with pytest.raises(ResidencyViolationError, match="307"):
                    await router.put("org-acme", "a.txt", b"secret body")
                with pytest.raises(ResidencyViolationError):
                    await router.get("org-acme", "a.txt")
                with pytest.raises(ResidencyViolationError):
                    await router.delete("org-acme", "a.txt")
            assert stub.requests, "the router never reached the first server"
            assert elsewhere.requests == []


async def test_unresolvable_alias_refuses_region_when_verify_is_off() -> None:
    with stub_server(lambda m, p: (500, {}, b"")) as stub:
        settings = unverified(REGIONS_FILE, stub.url, retry_max_attempts=1)
        async with ResidencyRouter.from_settings(settings) as router:
            stub.requests.clear()
            with pytest.raises(RegionUnavailableError, match="quarantined"):
                await router.put("org-acme", "a.txt", b"x")
            assert stub.requests == []
            assert router.health()[Region.EU].state == "quarantined"


async def test_bucket_in_wrong_region_fails_closed_with_nothing_written(
    residency_world: ResidencyWorld,
) -> None:
    eu = residency_world.region_map.region("eu")  # type: ignore[arg-type]
    s3 = residency_world.client("s3", "eu-central-1")
    s3.delete_bucket_lifecycle(Bucket=eu.bucket)
    residency_world.s3("eu").delete_bucket(Bucket=eu.bucket)
    s3.create_bucket(
        Bucket=eu.bucket, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    with pytest.raises(ResidencyViolationError, match="eu-central-1"):
        async with ResidencyRouter.from_settings(residency_world.settings()):
            pass

    settings = residency_world.settings(verify_on_start="quarantine")
    async with ResidencyRouter.from_settings(settings) as router:
        report = await router.verify()
        assert not report.ok
        assert any("eu-central-1" in p for p in report.by_region["eu"])  # type: ignore[index]
        assert router.health()["eu"].state == "quarantined"  # type: ignore[index]
        with pytest.raises(ResidencyViolationError, match="quarantined"):
            await router.put("org-acme", "a.txt", b"x")
        with pytest.raises(ResidencyViolationError):
            await router.get("org-acme", "a.txt")
        # Other regions keep serving.
        await router.put("org-stars", "a.txt", b"x")
    assert s3.list_object_versions(Bucket=eu.bucket).get("Versions", []) == []
    residency_world.assert_stored_in("org-stars", "a.txt", "us")


async def test_write_answered_under_a_foreign_key_is_removed_and_refused(
    key_arn_map: Path,
) -> None:
    def foreign_key(method: str, path: str) -> Reply:
        if method == "DELETE":
            return 204, {}, b""
        headers = {
            "ETag": '"abc"',
            "x-amz-version-id": "v-foreign",
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": (
                "arn:aws:kms:us-east-1:123456789012:key/someone-elses"
            ),
        }
        return 200, headers, b""

    with stub_server(foreign_key) as stub:
        async with ResidencyRouter.from_settings(unverified(key_arn_map, stub.url)) as router:
            stub.requests.clear()
            with pytest.raises(ResidencyViolationError, match="KMS key other than"):
                await router.put("org-acme", "a.txt", b"secret")
    methods = [method for method, _ in stub.requests]
    assert methods == ["PUT", "DELETE"]
    assert "versionId=v-foreign" in stub.requests[1][1]


async def test_success_from_a_bucket_reporting_another_region_is_refused(
    key_arn_map: Path,
) -> None:
    # Successes take a fast path through the guard; a 200 that names a foreign bucket
    # region must still be refused rather than read.
    def foreign(method: str, path: str) -> Reply:
        return 200, {"x-amz-bucket-region": "us-west-2"}, b"data"

    with stub_server(foreign) as stub:
        async with ResidencyRouter.from_settings(unverified(key_arn_map, stub.url)) as router:
            with pytest.raises(ResidencyViolationError, match="bucket reports region us-west-2"):
                await router.get("org-acme", "a.txt")


async def test_a_foreign_key_write_that_cannot_be_removed_says_so(key_arn_map: Path) -> None:
    def foreign_key_kept(method: str, path: str) -> Reply:
        if method == "DELETE":
            body = b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
            return 403, {"Content-Type": "application/xml"}, body
        headers = {
            "ETag": '"abc"',
            "x-amz-version-id": "v-foreign",
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": (
                "arn:aws:kms:eu-west-1:123456789012:key/someone-elses"
            ),
        }
        return 200, headers, b""

    with stub_server(foreign_key_kept) as stub:
        async with ResidencyRouter.from_settings(unverified(key_arn_map, stub.url)) as router:
            with pytest.raises(ResidencyViolationError) as info:
                await router.put("org-acme", "a.txt", b"secret")
    message = str(info.value)
    assert "NOT removed" in message
    assert "AccessDenied" in message
    assert "v-foreign" in message
    assert "; removed" not in message
