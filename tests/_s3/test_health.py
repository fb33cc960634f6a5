"""Health that tells the truth: what quarantines a region, what never counts against it."""

from __future__ import annotations

import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from botocore.exceptions import EndpointConnectionError, ParamValidationError

from router._s3.errors import LeanMisuseError, S3Errors
from router._s3.health import DEGRADED_FAILURE_RATE, HEALTH_WINDOW, HealthBook
from router.errors import (
    InvalidArgumentError,
    RegionUnavailableError,
    ResidencyViolationError,
    StorageError,
)
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import AwsRegion, Region
from tests.conftest import RequestLog, unverified
from tests.stubs import Reply, stub_server


def error_reply(status: int, code: str) -> Reply:
    body = f"<Error><Code>{code}</Code><Message>stub</Message></Error>".encode()
    return status, {"Content-Type": "application/xml"}, body


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        pytest.param(403, "AccessDenied", StorageError, id="access-denied"),
        pytest.param(404, "NoSuchBucket", StorageError, id="no-such-bucket"),
        pytest.param(400, "KMS.DisabledException", StorageError, id="disabled-key"),
        pytest.param(301, "PermanentRedirect", ResidencyViolationError, id="redirect"),
    ],
)
async def test_region_refusing_for_good_is_quarantined_with_its_reason(
    key_arn_map: Path, status: int, code: str, error: type[Exception]
) -> None:
    with stub_server(lambda method, path: error_reply(status, code)) as stub:
        async with ResidencyRouter.from_settings(
            unverified(key_arn_map, stub.url, retry_max_attempts=2)
        ) as router:
            with pytest.raises(error):
                await router.put("org-acme", "a.txt", b"x")
            sent = len(stub.requests)
            assert sent == 1, "refusals for good are not retried"
            health = router.health()[Region.EU]
            assert health.state == "quarantined"
            assert code in health.reason or "redirect" in health.reason
            with pytest.raises(error, match="quarantined"):
                await router.get("org-acme", "a.txt")
            assert len(stub.requests) == sent, "a quarantined region gets no request"
            assert router.health()[Region.US].state == "ok"


@pytest.mark.parametrize(
    "code", ["InvalidArgument", "InvalidRequest", "EntityTooLarge", "InvalidTag"]
)
async def test_caller_mistakes_answered_by_s3_never_count_against_the_region(
    key_arn_map: Path, code: str
) -> None:
    with stub_server(lambda method, path: error_reply(400, code)) as stub:
        async with ResidencyRouter.from_settings(
            unverified(key_arn_map, stub.url, retry_max_attempts=2)
        ) as router:
            for _ in range(3):
                with pytest.raises(StorageError, match=code):
                    await router.put("org-acme", "a.txt", b"x")
            health = router.health()[Region.EU]
            assert health.state == "ok"
            assert health.failure_rate == 0.0
            assert len(stub.requests) == 3


@pytest.mark.parametrize(
    ("content_type", "metadata"),
    [
        pytest.param("text/plain\r\nX-Evil: 1", None, id="crlf-content-type"),
        pytest.param("text/plain\x00", None, id="nul-content-type"),
        pytest.param("text/plaîn", None, id="non-ascii-content-type"),
        pytest.param(None, {"note": "a\nb"}, id="lf-metadata"),
        pytest.param(None, {"note": "x" * 3000}, id="oversized-metadata"),
    ],
)
async def test_bad_headers_are_refused_before_sending_and_leave_health_alone(
    residency_router: ResidencyRouter,
    s3_requests: RequestLog,
    content_type: str | None,
    metadata: dict[str, str] | None,
) -> None:
    for _ in range(3):
        with pytest.raises(InvalidArgumentError):
            await residency_router.put(
                "org-acme", "a.txt", b"x", content_type=content_type, metadata=metadata
            )
    assert len(s3_requests) == 0
    assert residency_router.health()[Region.EU].state == "ok"
    assert residency_router.health()[Region.EU].failure_rate == 0.0


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        # What the lean transport raises for a parameter it does not send: the router's bug.
        pytest.param(LeanMisuseError("the lean transport does not send X"), TypeError, id="lean"),
        pytest.param(
            ParamValidationError(report="Invalid length for parameter Key, value: 0"),
            InvalidArgumentError,
            id="botocore-validation",
        ),
    ],
)
def test_calls_refused_before_sending_are_not_held_against_the_region(
    raised: Exception, error: type[Exception]
) -> None:
    region = AwsRegion("eu-west-1")
    book = HealthBook([region])
    with pytest.raises(error) as caught, S3Errors(book, region, "PutObject on bucket-eu"):
        raise raised
    assert "Invalid length" not in str(caught.value)  # botocore's report quotes values
    assert book.health(region).failure_rate == 0.0
    assert book.health(region).state == "ok"


def test_a_type_error_from_an_answer_fails_the_region_and_names_no_key() -> None:
    # botocore parses <Code><X/></Code> into a dict; the code checks then raise TypeError.
    region = AwsRegion("eu-west-1")
    book = HealthBook([region])
    url = "http://127.0.0.1:9/bucket-eu/orgs/org-acme/files/secret-name.pdf"

    def second_attempt() -> None:
        try:
            raise EndpointConnectionError(endpoint_url=url)  # the first attempt's failure
        except EndpointConnectionError as first:
            raise TypeError("unhashable type: 'dict'") from first

    with pytest.raises(RegionUnavailableError) as caught, S3Errors(book, region, "PutObject"):
        second_attempt()
    assert "secret-name" not in "".join(traceback.format_exception(caught.value))
    assert book.health(region).failure_rate == 1.0


async def test_an_error_answer_with_a_nested_code_fails_the_region(key_arn_map: Path) -> None:
    def nested(method: str, path: str) -> Reply:
        body = b"<Error><Code><X>SlowDown</X></Code><Message>stub</Message></Error>"
        return 503, {"Content-Type": "application/xml"}, body

    with stub_server(nested) as stub:
        async with ResidencyRouter.from_settings(
            unverified(key_arn_map, stub.url, retry_max_attempts=2)
        ) as router:
            with pytest.raises(RegionUnavailableError, match="could not be read"):
                await router.put("org-acme", "a.txt", b"x")
            with pytest.raises(RegionUnavailableError, match="could not be read"):
                await router.get("org-acme", "a.txt")
            health = router.health()[Region.EU]
            assert health.state == "degraded"
            assert health.failure_rate == 1.0


MALFORMED_ANSWERS = {
    # Each header is not what S3's model says (S3 itself never sends these): the request was
    # sent, so the answer is unreadable, never "refused before sending". Beside each: the
    # calls whose answers carry that header, and so fail; the others succeed.
    "object-size": ({"x-amz-object-size": "secretvalue"}, {"put"}),
    "last-modified": ({"Last-Modified": "secretvalue"}, {"head", "get", "stream"}),
    "parts-count": ({"x-amz-mp-parts-count": "secretvalue"}, {"head", "get", "stream"}),
    "no-last-modified": ({"Last-Modified": ""}, {"head"}),
    "checksum": ({"x-amz-checksum-sha256": "secretvalue"}, {"get", "stream"}),
}


def object_answer(arn: str, changes: dict[str, str]) -> Callable[[str, str], Reply]:
    """A 200 for every request, as S3 answers for the object b"a" under ``arn``, changed."""

    def answer(method: str, path: str) -> Reply:
        headers = {
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": arn,
            "ETag": '"0cc175b9c0f1b6a831c399e269772661"',
            "Last-Modified": "Tue, 01 Dec 2026 00:00:00 GMT",
            "x-amz-checksum-sha256": "ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs=",  # of b"a"
        }
        headers.update(changes)
        headers = {name: value for name, value in headers.items() if value}
        return 200, headers, b"" if method != "GET" else b"a"

    return answer


@pytest.mark.parametrize("transport", ["lean", "botocore"])
@pytest.mark.parametrize(
    ("malformed", "failing"), MALFORMED_ANSWERS.values(), ids=list(MALFORMED_ANSWERS)
)
async def test_a_malformed_answer_fails_the_region_and_is_never_a_bad_argument(
    key_arn_map: Path, transport: str, malformed: dict[str, str], failing: set[str]
) -> None:
    arn = RegionMap.load(key_arn_map).region(Region.EU).kms_key
    with stub_server(object_answer(arn, malformed)) as stub:
        settings = unverified(key_arn_map, stub.url, retry_max_attempts=1, transport=transport)
        async with ResidencyRouter.from_settings(settings) as router:
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "put": lambda: router.put("org-acme", "a.txt", b"a"),
                "head": lambda: router.head("org-acme", "a.txt"),
                "get": lambda: router.get("org-acme", "a.txt"),
                "stream": lambda: collect(router.stream("org-acme", "a.txt")),
            }
            unreadable: dict[str, RegionUnavailableError] = {}
            for name, call in calls.items():
                try:
                    await call()
                except RegionUnavailableError as exc:  # anything else fails the test
                    unreadable[name] = exc
            assert set(unreadable) == failing
            for error in unreadable.values():
                assert "could not be read" in str(error)
                # Neither the error nor what it was made from shows a value of the answer.
                for shown in (error, error.__context__):
                    assert shown is not None
                    assert "secretvalue" not in "".join(traceback.format_exception(shown))
            assert router.health()[Region.EU].failure_rate > 0


@pytest.mark.parametrize("transport", ["lean", "botocore"])
async def test_a_foreign_region_in_an_unreadable_answer_is_still_refused_as_one(
    key_arn_map: Path, transport: str
) -> None:
    # The redirect guard reads parsed answers; this one cannot be parsed, and still names
    # another region: it is a residency violation, and the region is quarantined.
    arn = RegionMap.load(key_arn_map).region(Region.EU).kms_key
    changes = {"Last-Modified": "secretvalue", "x-amz-bucket-region": "us-east-1"}
    with stub_server(object_answer(arn, changes)) as stub:
        settings = unverified(key_arn_map, stub.url, retry_max_attempts=1, transport=transport)
        async with ResidencyRouter.from_settings(settings) as router:
            with pytest.raises(ResidencyViolationError, match="us-east-1"):
                await router.head("org-acme", "a.txt")
            assert router.health()[Region.EU].state == "quarantined"


@pytest.mark.parametrize("transport", ["lean", "botocore"])
async def test_a_head_under_a_foreign_key_is_refused_as_such_whatever_else_it_lacks(
    key_arn_map: Path, transport: str
) -> None:
    foreign = "arn:aws:kms:eu-west-1:123456789012:key/someone-elses"
    changes = {"x-amz-server-side-encryption-aws-kms-key-id": foreign, "Last-Modified": ""}
    with stub_server(object_answer(foreign, changes)) as stub:
        settings = unverified(key_arn_map, stub.url, retry_max_attempts=1, transport=transport)
        async with ResidencyRouter.from_settings(settings) as router:
            with pytest.raises(ResidencyViolationError, match="KMS key other than"):
                await router.head("org-acme", "a.txt")


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_missing_bucket_quarantines_until_verify_passes_again(
    residency_world: ResidencyWorld,
) -> None:
    settings = residency_world.settings(retry_max_attempts=1)
    bucket = residency_world.bucket("eu")
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put("org-acme", "before.txt", b"x")
        s3 = residency_world.s3("eu")
        s3.delete_bucket_lifecycle(Bucket=bucket)
        for version in residency_world.all_versions("eu"):
            s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        s3.delete_bucket(Bucket=bucket)
        with pytest.raises(StorageError, match="NoSuchBucket"):
            await router.put("org-acme", "a.txt", b"x")
        health = router.health()[Region.EU]
        assert health.state == "quarantined"
        assert "NoSuchBucket" in health.reason
        with pytest.raises(StorageError, match="quarantined"):
            await router.put("org-acme", "a.txt", b"x")
        report = await router.verify()
        assert not report.ok
        assert router.health()[Region.EU].state == "quarantined"
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        report = await router.verify()
        assert report.ok
        assert router.health()[Region.EU].state != "quarantined"
        await router.put("org-acme", "after.txt", b"y")
    residency_world.assert_stored_in("org-acme", "after.txt", "eu")


async def test_verify_leaves_a_merely_unreachable_region_as_it_was(key_arn_map: Path) -> None:
    with stub_server(lambda method, path: error_reply(503, "ServiceUnavailable")) as stub:
        async with ResidencyRouter.from_settings(
            unverified(key_arn_map, stub.url, retry_max_attempts=2)
        ) as router:
            report = await router.verify()
            assert not report.ok
            assert router.health()[Region.EU].state == "degraded"
            with pytest.raises(RegionUnavailableError):
                await router.put("org-acme", "a.txt", b"x")
            assert len(stub.requests) > 0


def test_degraded_threshold_is_the_named_rate() -> None:
    book = HealthBook([AwsRegion("eu-west-1")])
    region = AwsRegion("eu-west-1")
    failures = int(HEALTH_WINDOW * DEGRADED_FAILURE_RATE)
    for _ in range(HEALTH_WINDOW - failures):
        book.success(region)
    for _ in range(failures - 1):
        book.failure(region)
    book.success(region)
    assert book.health(region).state == "ok"
    book.failure(region)
    book.success(region)
    assert book.health(region).state == "degraded"
    assert book.health(region).failure_rate >= DEGRADED_FAILURE_RATE


@pytest.mark.parametrize("code", ["AccessDenied", "KMS.DisabledException", "KMS.NotFoundException"])
async def test_a_refused_read_of_one_object_does_not_quarantine_the_region(
    key_arn_map: Path, code: str
) -> None:
    # One object under a disabled, foreign or denied key says nothing about the region.
    with stub_server(lambda method, path: error_reply(403, code)) as stub:
        async with ResidencyRouter.from_settings(unverified(key_arn_map, stub.url)) as router:
            for read in (router.get, router.head):
                with pytest.raises(StorageError):
                    await read("org-acme", "bad-object.txt")
            assert router.health()[Region.EU].state != "quarantined"
            sent = len(stub.requests)
            with pytest.raises(StorageError):
                await router.get("org-acme", "other-object.txt")
            assert len(stub.requests) == sent + 1, "the region still serves requests"
