"""Answers that lack a field the router reads are unreadable answers, never a bare KeyError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.session
import pytest

from router._answers import _NEEDED, MalformedAnswerError, ReadableAnswers, missing_field
from router.errors import RegionUnavailableError
from router.routing import ResidencyRouter
from tests.conftest import unverified
from tests.stubs import Reply, stub_server

MiB = 1024 * 1024


def complete(shape_name: str) -> dict[str, Any]:
    """A successful answer of ``shape_name`` with every field the router reads, two items a list."""
    parsed: dict[str, Any] = {}
    for where, fields in _NEEDED[shape_name]:
        if not where:
            parsed.update({name: "x" for name in fields if name not in parsed})
        elif where == "CopyPartResult":
            parsed[where] = {name: "x" for name in fields}
        else:
            parsed[where] = [{name: "x" for name in fields} for _ in range(2)]
    return parsed


@pytest.mark.parametrize("shape_name", sorted(_NEEDED))
def test_each_field_the_router_reads_is_required_of_a_successful_answer(shape_name: str) -> None:
    assert missing_field(shape_name, complete(shape_name)) == ""
    for where, fields in _NEEDED[shape_name]:
        for name in fields:
            answer = complete(shape_name)
            if not where:
                del answer[name]
            elif isinstance(answer[where], dict):
                del answer[where][name]
            else:
                del answer[where][1][name]  # the second item: every item is checked
            assert missing_field(shape_name, answer) == name
    # Lists may be empty or absent: a listing of nothing is complete.
    assert missing_field("ListObjectsV2Output", {"IsTruncated": False}) == ""
    assert missing_field("PutObjectOutput", {}) == ""  # not an answer the table names


S3_MODEL = botocore.session.get_session().get_service_model("s3")


def output_name(operation: str) -> str:
    shape = S3_MODEL.operation_model(operation).output_shape
    return "" if shape is None else shape.name


def test_each_answer_checked_is_one_of_s3s() -> None:
    # A misspelt name would turn its check off without a word.
    outputs = {output_name(name) for name in S3_MODEL.operation_names}
    assert set(_NEEDED) <= outputs


# Each answer as S3 sends it, and (field, the answer without it): through botocore's own parser.
STAMP = "<LastModified>2026-12-01T00:00:00.000Z</LastModified>"
ANSWERS: dict[str, tuple[dict[str, str], str, list[tuple[str, dict[str, str], str]]]] = {
    "CreateMultipartUpload": (
        {},
        "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId>"
        "</InitiateMultipartUploadResult>",
        [
            (
                "UploadId",
                {},
                "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                "</InitiateMultipartUploadResult>",
            )
        ],
    ),
    "UploadPart": ({"ETag": '"e"'}, "", [("ETag", {}, "")]),
    "UploadPartCopy": (
        {},
        f'<CopyPartResult><ETag>"e"</ETag>{STAMP}</CopyPartResult>',
        [
            ("ETag", {}, f"<CopyPartResult>{STAMP}</CopyPartResult>"),
            ("ETag", {}, ""),  # botocore reads an empty payload as an empty CopyPartResult,
        ],
    ),
    "ListObjectsV2": (
        {},
        "<ListBucketResult><IsTruncated>false</IsTruncated>"
        f"<Contents><Key>a</Key><Size>1</Size>{STAMP}</Contents>"
        f"<Contents><Key>b</Key><Size>2</Size>{STAMP}</Contents></ListBucketResult>",
        [
            (
                "Key",
                {},
                "<ListBucketResult><IsTruncated>false</IsTruncated>"
                f"<Contents><Key>a</Key><Size>1</Size>{STAMP}</Contents>"
                f"<Contents><Size>2</Size>{STAMP}</Contents></ListBucketResult>",
            ),
            (
                "Size",
                {},
                "<ListBucketResult><IsTruncated>false</IsTruncated>"
                f"<Contents><Key>a</Key>{STAMP}</Contents></ListBucketResult>",
            ),
            (
                "LastModified",
                {},
                "<ListBucketResult><IsTruncated>false</IsTruncated>"
                "<Contents><Key>a</Key><Size>1</Size></Contents></ListBucketResult>",
            ),
        ],
    ),
    "ListObjectVersions": (
        {},
        "<ListVersionsResult><IsTruncated>false</IsTruncated>"
        f"<Version><Key>a</Key><VersionId>1</VersionId>{STAMP}</Version>"
        f"<DeleteMarker><Key>b</Key><VersionId>2</VersionId>{STAMP}</DeleteMarker>"
        "<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes></ListVersionsResult>",
        [
            (
                "Key",
                {},
                "<ListVersionsResult><IsTruncated>false</IsTruncated>"
                f"<Version><VersionId>1</VersionId>{STAMP}</Version></ListVersionsResult>",
            ),
            (
                "Key",
                {},
                "<ListVersionsResult><IsTruncated>false</IsTruncated>"
                f"<DeleteMarker><VersionId>2</VersionId>{STAMP}</DeleteMarker></ListVersionsResult>",
            ),
            (
                "Prefix",
                {},
                "<ListVersionsResult><IsTruncated>false</IsTruncated>"
                "<CommonPrefixes></CommonPrefixes></ListVersionsResult>",
            ),
        ],
    ),
    "ListMultipartUploads": (
        {},
        "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
        "<Upload><Key>a</Key><UploadId>u</UploadId></Upload></ListMultipartUploadsResult>",
        [
            (
                "UploadId",
                {},
                "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
                "<Upload><Key>a</Key></Upload></ListMultipartUploadsResult>",
            ),
            (
                "Key",
                {},
                "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
                "<Upload><UploadId>u</UploadId></Upload></ListMultipartUploadsResult>",
            ),
        ],
    ),
    "GetObjectTagging": (
        {},
        "<Tagging><TagSet><Tag><Key>k</Key><Value></Value></Tag></TagSet></Tagging>",
        [
            ("Value", {}, "<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>"),
            ("Key", {}, "<Tagging><TagSet><Tag><Value>v</Value></Tag></TagSet></Tagging>"),
        ],
    ),
}


async def parsed(operation: str, headers: dict[str, str], body: str, status: int = 200) -> Any:
    parser = ReadableAnswers().create_parser("rest-xml")
    answer = {"status_code": status, "headers": headers, "body": body.encode()}
    return await parser.parse(answer, S3_MODEL.operation_model(operation).output_shape)


def test_every_answer_checked_has_its_fixtures() -> None:
    assert {output_name(name) for name in ANSWERS} == set(_NEEDED)


@pytest.mark.parametrize("operation", sorted(ANSWERS))
async def test_an_answer_without_a_field_the_router_reads_is_unreadable(operation: str) -> None:
    headers, body, lacking = ANSWERS[operation]
    await parsed(operation, headers, body)  # as S3 sends it: read
    for field, short_headers, short_body in lacking:
        with pytest.raises(MalformedAnswerError) as raised:
            await parsed(operation, short_headers, short_body)
        assert raised.value.reason == f"no {field}"
        assert raised.value.status == 200
        # An error answer is the error's to report, not this check's.
        error = "<Error><Code>InternalError</Code></Error>"
        assert (await parsed(operation, {}, error, status=500))["Error"]["Code"] == "InternalError"


def xml_reply(body: str) -> Reply:
    return 200, {"Content-Type": "application/xml"}, body.encode()


async def test_a_listing_item_without_its_key_is_an_unreadable_answer(key_arn_map: Path) -> None:
    def answer(method: str, path: str) -> Reply:
        return xml_reply(
            "<ListBucketResult><IsTruncated>false</IsTruncated><Contents>"
            "<Size>1</Size><LastModified>2026-12-01T00:00:00.000Z</LastModified>"
            "</Contents></ListBucketResult>"
        )

    with stub_server(answer) as stub:
        async with ResidencyRouter.from_settings(
            unverified(key_arn_map, stub.url, retry_max_attempts=1)
        ) as router:
            with pytest.raises(RegionUnavailableError, match=r"could not be read \(no Key\)"):
                _ = [found async for found in router.list("org-acme")]
    assert any("list-type=2" in path for _, path in stub.requests)


async def test_a_multipart_upload_started_without_an_id_is_an_unreadable_answer(
    key_arn_map: Path,
) -> None:
    def answer(method: str, path: str) -> Reply:
        if method == "POST" and path.endswith("?uploads"):  # CreateMultipartUpload
            return xml_reply(
                "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key>"
                "</InitiateMultipartUploadResult>"
            )
        return 500, {}, b""

    with stub_server(answer) as stub:
        settings = unverified(
            key_arn_map,
            stub.url,
            retry_max_attempts=1,
            multipart_threshold=5 * MiB,
            multipart_part_size=5 * MiB,
        )
        async with ResidencyRouter.from_settings(settings) as router:
            with pytest.raises(RegionUnavailableError, match=r"could not be read \(no UploadId\)"):
                await router.put("org-acme", "big.bin", b"x" * (6 * MiB))
    # Nothing was sent after the answer that could not be read.
    assert [method for method, _ in stub.requests] == ["POST"]
