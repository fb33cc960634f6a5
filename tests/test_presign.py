"""Presigned URLs: a plain HTTP client uploads and downloads exactly as the router would."""

from __future__ import annotations

import enum
import hashlib
import os
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from router.config import RouterSettings
from router.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    ObjectNotFoundError,
    OrgMovingError,
    ResidencyError,
    UnknownOrgError,
)
from router.orgs import StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import DataClass, OrgId, OrgMove, OrgResidency, Region
from tests.conftest import ORG_BY_REGION, without_bucket_default_encryption
from tests.test_audit import Events, audit_events  # noqa: F401 (fixture)

ORG = ORG_BY_REGION[Region.EU]

SIGNED_ON_UPLOAD = {
    "host",
    "content-type",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
    "x-amz-tagging",
}


def http(method: str, url: str, body: bytes | None = None, headers: Any = None) -> bytes:
    """One request through urllib, independent of botocore and the router."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=60) as response:
        data: bytes = response.read()
        return data


def signed_headers(url: str) -> set[str]:
    return set(parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"][0].split(";"))


async def test_presigned_upload_lands_as_put_would(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    without_bucket_default_encryption(residency_world, "eu")
    upload = await residency_router.presign_put(
        ORG,
        "uploads/photo.png",
        content_type="image/png",
        metadata={"origin": "browser"},
        expires_in=300,
    )
    assert upload.method == "PUT"
    cfg = residency_world.region_map.region(Region.EU)
    assert urlsplit(upload.url).path.startswith(f"/{cfg.bucket}/orgs/{ORG}/files/uploads/")
    assert signed_headers(upload.url) >= SIGNED_ON_UPLOAD
    assert {name.lower() for name in upload.headers} == signed_headers(upload.url) - {"host"}
    body = b"\x89PNG not really"
    http("PUT", upload.url, body, upload.headers)

    s3 = residency_world.s3("eu")
    bucket, key = residency_world.bucket("eu"), f"orgs/{ORG}/files/uploads/photo.png"
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == cfg.aws_region
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == residency_world.key_arn("eu")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"] == {"origin": "browser"}
    assert "x-amz-meta-origin" in signed_headers(upload.url)
    put = await residency_router.put(ORG, "uploads/other.png", b"x", content_type="image/png")
    tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    put_tags = s3.get_object_tagging(Bucket=bucket, Key=put.key)["TagSet"]
    assert sorted(map(str, tags)) == sorted(map(str, put_tags))
    assert await residency_router.get(ORG, "uploads/photo.png") == body


class Label(str, enum.Enum):  # noqa: UP042 (not StrEnum: its str() is not its value)
    NAME = "origin"
    VALUE = "scanner-7"
    TYPE = "image/png"


async def test_str_subclass_metadata_and_content_type_are_stored_as_checked(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    # A (str, Enum) member's str() is "Label.VALUE"; its characters are what was checked,
    # and what a put and a presigned upload store (the signature is made over them too).
    s3 = residency_world.s3("eu")
    bucket = residency_world.bucket("eu")
    meta: dict[str, str] = {Label.NAME: Label.VALUE}
    put = await residency_router.put(ORG, "put.txt", b"x", content_type=Label.TYPE, metadata=meta)
    upload = await residency_router.presign_put(
        ORG, "upload.txt", content_type=Label.TYPE, metadata=meta
    )
    sent = {name.lower(): value for name, value in upload.headers.items()}
    assert sent["x-amz-meta-origin"] == "scanner-7"
    assert sent["content-type"] == "image/png"
    assert all(value.__class__ is str for value in upload.headers.values())
    http("PUT", upload.url, b"y", upload.headers)
    for key in (put.key, f"orgs/{ORG}/files/upload.txt"):
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "image/png", key
        assert head["Metadata"] == {"origin": "scanner-7"}, key


async def test_presigned_upload_expiry_is_bounded_and_reported(
    residency_router: ResidencyRouter,
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    upload = await residency_router.presign_put(ORG, "a.bin", expires_in=120)
    query = parse_qs(urlsplit(upload.url).query)
    assert query["X-Amz-Expires"] == ["120"]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert upload.expires_at == signed_at + timedelta(seconds=120)
    assert signed_at >= before - timedelta(seconds=1)
    default = await residency_router.presign_put(ORG, "a.bin")
    assert parse_qs(urlsplit(default.url).query)["X-Amz-Expires"] == ["900"]


@pytest.mark.parametrize("expires_in", [0, -5, 7 * 24 * 3600 + 1])
async def test_presign_refuses_lifetime_out_of_bounds(
    residency_router: ResidencyRouter, expires_in: int
) -> None:
    with pytest.raises(InvalidArgumentError):
        await residency_router.presign_put(ORG, "a.bin", expires_in=expires_in)
    with pytest.raises(InvalidArgumentError):
        await residency_router.presign_get(ORG, "a.bin", expires_in=expires_in)


@pytest.mark.parametrize("expires_in", [1.5, "60", True, None])
async def test_presign_refuses_lifetime_of_wrong_type(
    residency_router: ResidencyRouter, expires_in: Any
) -> None:
    with pytest.raises(TypeError):
        await residency_router.presign_put(ORG, "a.bin", expires_in=expires_in)


async def test_presign_put_refuses_what_put_refuses(residency_router: ResidencyRouter) -> None:
    with pytest.raises(UnknownOrgError):
        await residency_router.presign_put("org-nobody", "a.bin")
    with pytest.raises(InvalidKeyError):
        await residency_router.presign_put(ORG, "../a.bin")
    with pytest.raises(InvalidKeyError):
        await residency_router.presign_put(ORG, "a.bin", data_class=DataClass.INPUTS_OUTPUTS)
    with pytest.raises(InvalidArgumentError):
        await residency_router.presign_put(ORG, "a.bin", content_type="text/plain\r\nx: y")
    with pytest.raises(InvalidArgumentError):
        await residency_router.presign_put(ORG, "a.bin", metadata={"bad name": "v"})
    with pytest.raises(InvalidArgumentError):
        await residency_router.presign_put(ORG, "a.bin", sha256="abc")


def resign(url: str, headers: dict[str, str]) -> str:
    """The signature S3 computes for this URL's request when the client sends ``headers``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    kept = "&".join(p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature="))
    request = AWSRequest(
        method="PUT",
        url=f"{parts.scheme}://{parts.netloc}{parts.path}?{kept}",
        headers={**headers, "host": parts.netloc},
    )
    request.context["timestamp"] = query["X-Amz-Date"][0]
    credentials = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
    scope = query["X-Amz-Credential"][0].split("/")
    signer = S3SigV4QueryAuth(credentials, "s3", scope[2], expires=int(query["X-Amz-Expires"][0]))
    canonical = signer.canonical_request(request)
    signature: str = signer.signature(signer.string_to_sign(request, canonical), request)
    return signature


async def test_presigned_upload_without_a_signed_header_would_be_refused(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    # moto does not check signatures: recompute with botocore's signer that the one in the
    # URL is for exactly these headers, and differs once any of them is left out.
    upload = await residency_router.presign_put(ORG, "a.bin", content_type="text/plain")
    given = parse_qs(urlsplit(upload.url).query)["X-Amz-Signature"][0]
    headers = dict(upload.headers)
    assert resign(upload.url, headers) == given
    for name in headers:
        fewer = {k: v for k, v in headers.items() if k != name}
        assert resign(upload.url, fewer) != given, name


async def test_presigned_download_returns_the_body_by_plain_http(
    residency_router: ResidencyRouter,
) -> None:
    body = b"download me"
    await residency_router.put(ORG, "d.txt", body)
    url = await residency_router.presign_get(ORG, "d.txt", expires_in=60)
    assert signed_headers(url) == {"host"}
    assert http("GET", url) == body
    assert "versionId=" in url  # the version checked, not whatever is current later


async def test_presigned_download_of_missing_object_is_refused(
    residency_router: ResidencyRouter,
) -> None:
    with pytest.raises(ObjectNotFoundError):
        await residency_router.presign_get(ORG, "nothing-here.txt")


async def test_presigned_upload_with_checksum_binds_the_body(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    body = b"exact bytes"
    upload = await residency_router.presign_put(
        ORG, "c.bin", sha256=hashlib.sha256(body).hexdigest()
    )
    assert "x-amz-checksum-sha256" in signed_headers(upload.url)
    http("PUT", upload.url, body, upload.headers)
    info = await residency_router.head(ORG, "c.bin")
    assert info.size == len(body)
    assert info.content_type == "application/octet-stream"  # signed even when not asked
    assert await residency_router.get(ORG, "c.bin") == body
    # Another body is refused by S3 (BadDigest) because the checksum header is signed;
    # moto does not check it, so the header's place among the signed ones is what is shown.


async def test_presign_put_refuses_an_org_that_is_moving(residency_world: ResidencyWorld) -> None:
    # A URL outlives the check: one issued mid-move could land behind the move's copy.
    move = OrgMove(Region.EU, Region.US, "copying", datetime.now(UTC))
    directory = StaticOrgDirectory({"moving": OrgResidency(OrgId("moving"), Region.EU, move=move)})
    async with ResidencyRouter.from_settings(residency_world.settings(), directory=directory) as r:
        with pytest.raises(OrgMovingError):
            await r.presign_put("moving", "a.bin")


async def test_each_presign_emits_one_event_without_url_or_key(
    residency_router: ResidencyRouter,
    audit_events: Events,  # noqa: F811 (the fixture imported above)
) -> None:
    await residency_router.put(ORG, "secret-name.txt", b"x")
    audit_events.events.clear()
    upload = await residency_router.presign_put(ORG, "secret-name.txt")
    url = await residency_router.presign_get(ORG, "secret-name.txt")
    with pytest.raises(UnknownOrgError):
        await residency_router.presign_put("org-nobody", "secret-name.txt")
    ops = [(e["operation"], e["outcome"]) for e in audit_events.events]
    assert ops == [("presign_put", "ok"), ("presign_get", "ok"), ("presign_put", "refused")]
    for event in audit_events.events:
        text = repr(event)
        assert "secret-name" not in text
        assert "Signature" not in text
        assert upload.url not in text
        assert url not in text


async def test_presigned_urls_name_the_regional_aws_endpoint_over_https(key_arn_map: Path) -> None:
    # No endpoint override: what a service on AWS gets. Presigning sends nothing.
    settings = RouterSettings(regions_file=key_arn_map, verify_on_start="off")
    async with ResidencyRouter.from_settings(settings) as router:
        for region, org in ORG_BY_REGION.items():
            upload = await router.presign_put(org, "a.bin", content_type="text/plain")
            place = await router.resolve(org)
            parts = urlsplit(upload.url)
            assert parts.scheme == "https", region
            assert parts.hostname == f"{place.bucket}.s3.{place.aws_region}.amazonaws.com"
            assert signed_headers(upload.url) >= SIGNED_ON_UPLOAD
            query = parse_qs(parts.query)
            assert query["X-Amz-Credential"][0].split("/")[2] == place.aws_region
            assert upload.headers["x-amz-server-side-encryption-aws-kms-key-id"] == (
                place.kms_key_arn
            )


async def test_presign_refuses_a_quarantined_region(residency_world: ResidencyWorld) -> None:
    s3 = residency_world.s3("jp")
    s3.delete_bucket_lifecycle(Bucket=residency_world.bucket("jp"))
    s3.delete_bucket(Bucket=residency_world.bucket("jp"))
    settings = residency_world.settings(verify_on_start="quarantine")
    async with ResidencyRouter.from_settings(settings) as router:
        jp_org = ORG_BY_REGION[Region.JP]
        with pytest.raises(ResidencyError):
            await router.presign_put(jp_org, "a.bin")
        with pytest.raises(ResidencyError):
            await router.presign_get(jp_org, "a.bin")
        await router.presign_put(ORG, "a.bin")  # other regions still serve
