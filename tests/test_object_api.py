"""The object API: info on reads, range reads, and every kind of body ``put`` accepts."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from router.errors import InvalidArgumentError, ResidencyViolationError
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import ObjectInfo, Region, StoredObject
from tests.conftest import ORG_BY_REGION

ORG = ORG_BY_REGION[Region.EU]
MiB = 1024 * 1024
BODY = bytes(range(256)) * 4  # 1 KiB, every byte value


def stored_keys(world: ResidencyWorld) -> list[str]:
    listed = world.s3("eu").list_objects_v2(Bucket=world.bucket("eu"))
    return [item["Key"] for item in listed.get("Contents", [])]


# -- info on reads ------------------------------------------------------------------------


async def test_head_and_get_object_report_type_metadata_size_version_checksum(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    receipt = await residency_router.put(
        ORG, "r.json", BODY, content_type="application/json", metadata={"origin": "scanner-7"}
    )
    info = await residency_router.head(ORG, "r.json")
    assert isinstance(info, ObjectInfo)
    assert (info.org_id, info.key, info.size) == (ORG, "r.json", len(BODY))
    assert info.content_type == "application/json"
    assert dict(info.metadata) == {"origin": "scanner-7"}
    assert info.version_id == receipt.version_id
    independent = residency_world.s3("eu").head_object(
        Bucket=residency_world.bucket("eu"), Key=receipt.key, ChecksumMode="ENABLED"
    )
    # moto keeps no checksum of the router's own PutObject (S3 does): equal either way.
    assert info.checksum_sha256 == independent.get("ChecksumSHA256")
    assert info.etag == independent["ETag"]

    got = await residency_router.get_object(ORG, "r.json")
    assert isinstance(got, StoredObject)
    assert got.body == BODY
    assert got.info == info
    assert await residency_router.get(ORG, "r.json") == BODY  # still bytes


async def test_head_reports_the_sha256_checksum_s3_keeps(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    residency_world.s3("eu").put_object(
        Bucket=residency_world.bucket("eu"),
        Key=f"orgs/{ORG}/files/summed.bin",
        Body=BODY,
        ChecksumAlgorithm="SHA256",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=residency_world.key_arn("eu"),
    )
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert (await residency_router.head(ORG, "summed.bin")).checksum_sha256 == digest
    assert (await residency_router.get_object(ORG, "summed.bin")).info.checksum_sha256 == digest


async def test_info_is_frozen(residency_router: ResidencyRouter) -> None:
    await residency_router.put(ORG, "f.txt", b"x", metadata={"a": "b"})
    info = await residency_router.head(ORG, "f.txt")
    with pytest.raises(AttributeError):
        info.size = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.metadata["a"] = "c"  # type: ignore[index]


async def test_get_object_refuses_object_under_foreign_key(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    # Another key in the bucket's own region: real S3 accepts it, and it is not the region's.
    other_key = residency_world.client("kms", "eu-west-1").create_key()["KeyMetadata"]["Arn"]
    residency_world.s3("eu").put_object(
        Bucket=residency_world.bucket("eu"),
        Key=f"orgs/{ORG}/files/planted.txt",
        Body=b"secret",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=other_key,
    )
    with pytest.raises(ResidencyViolationError):
        await residency_router.get_object(ORG, "planted.txt")
    with pytest.raises(ResidencyViolationError):
        await residency_router.get(ORG, "planted.txt", start=0, end=2)
    with pytest.raises(ResidencyViolationError):
        async for _ in residency_router.stream(ORG, "planted.txt", start=1):
            pass
    with pytest.raises(ResidencyViolationError):
        await residency_router.presign_get(ORG, "planted.txt")


# -- range reads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(0, 10, BODY[:10], id="first-ten"),
        pytest.param(100, 200, BODY[100:200], id="middle"),
        pytest.param(1000, None, BODY[1000:], id="from-start"),
        pytest.param(None, 5, BODY[:5], id="up-to-end"),
        pytest.param(1020, 5000, BODY[1020:], id="end-past-object"),
        pytest.param(None, None, BODY, id="whole"),
    ],
)
async def test_range_reads_return_the_slice(
    residency_router: ResidencyRouter,
    start: int | None,
    end: int | None,
    expected: bytes,
) -> None:
    await residency_router.put(ORG, "range.bin", BODY)
    assert await residency_router.get(ORG, "range.bin", start=start, end=end) == expected
    streamed = b"".join(
        [c async for c in residency_router.stream(ORG, "range.bin", start=start, end=end)]
    )
    assert streamed == expected
    got = await residency_router.get_object(ORG, "range.bin", start=start, end=end)
    assert got.body == expected
    assert got.info.size == len(BODY)  # the whole object's size


@pytest.mark.parametrize(
    ("start", "end"),
    [
        pytest.param(-1, None, id="negative-start"),
        pytest.param(None, -1, id="negative-end"),
        pytest.param(5, 5, id="empty"),
        pytest.param(6, 5, id="reversed"),
        pytest.param(None, 0, id="end-zero"),
    ],
)
async def test_range_reads_refuse_bad_ranges(
    residency_router: ResidencyRouter, s3_requests: Any, start: int | None, end: int | None
) -> None:
    with pytest.raises(InvalidArgumentError):
        await residency_router.get(ORG, "range.bin", start=start, end=end)
    with pytest.raises(InvalidArgumentError):
        await residency_router.get_object(ORG, "range.bin", start=start, end=end)
    with pytest.raises(InvalidArgumentError):
        async for _ in residency_router.stream(ORG, "range.bin", start=start, end=end):
            pass
    assert len(s3_requests) == 0  # refused before anything was sent


@pytest.mark.parametrize("bad", [1.0, "1", True, b"1"])
async def test_range_reads_refuse_offsets_of_wrong_type(
    residency_router: ResidencyRouter, bad: Any
) -> None:
    with pytest.raises(TypeError):
        await residency_router.get(ORG, "range.bin", start=bad)
    with pytest.raises(TypeError):
        await residency_router.get_object(ORG, "range.bin", end=bad)


async def test_range_starting_past_the_end_is_an_argument_error(
    residency_router: ResidencyRouter,
) -> None:
    await residency_router.put(ORG, "short.bin", b"abc")
    with pytest.raises(InvalidArgumentError):
        await residency_router.get(ORG, "short.bin", start=10)


# -- bodies -------------------------------------------------------------------------------


def _sync_chunks() -> Iterator[bytes | bytearray | memoryview]:
    yield BODY[:100]
    yield bytearray(BODY[100:500])
    yield memoryview(BODY[500:])


async def _async_chunks() -> AsyncIterator[bytes | bytearray | memoryview]:
    for chunk in _sync_chunks():
        yield chunk


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: BODY, id="bytes"),
        pytest.param(lambda: bytearray(BODY), id="bytearray"),
        pytest.param(lambda: memoryview(BODY), id="memoryview"),
        pytest.param(lambda: io.BytesIO(BODY), id="bytesio"),
        pytest.param(lambda: io.BufferedReader(io.BytesIO(BODY)), id="buffered-reader"),
        pytest.param(lambda: [BODY[:10], BODY[10:]], id="list"),
        pytest.param(_sync_chunks, id="generator"),
        pytest.param(_async_chunks, id="async-generator"),
    ],
)
async def test_put_accepts_every_kind_of_bytes_body(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld, make: Any
) -> None:
    receipt = await residency_router.put(ORG, "body.bin", make())
    assert receipt.sha256 == hashlib.sha256(BODY).hexdigest()
    stored = residency_world.s3("eu").get_object(
        Bucket=residency_world.bucket("eu"), Key=receipt.key
    )
    assert stored["Body"].read() == BODY
    assert stored["SSEKMSKeyId"] == residency_world.key_arn("eu")


async def test_put_reads_an_open_binary_file(
    residency_router: ResidencyRouter, tmp_path: Path
) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(BODY)
    with path.open("rb") as handle:
        await residency_router.put(ORG, "file.bin", handle)
    assert await residency_router.get(ORG, "file.bin") == BODY


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda _: "text", id="str"),
        pytest.param(lambda _: io.StringIO("text"), id="stringio"),
        pytest.param(lambda p: p.open("r"), id="text-file"),
        pytest.param(lambda _: 42, id="int"),
        pytest.param(lambda _: None, id="none"),
        pytest.param(lambda _: ["a", "b"], id="list-of-str"),
        pytest.param(lambda _: [1, 2], id="list-of-int"),
        pytest.param(lambda _: (c for c in "ab"), id="generator-of-str"),
    ],
)
async def test_put_refuses_non_bytes_bodies_with_type_error(
    residency_router: ResidencyRouter,
    residency_world: ResidencyWorld,
    tmp_path: Path,
    make: Any,
) -> None:
    path = tmp_path / "t.txt"
    path.write_text("text")
    body = make(path)
    try:
        with pytest.raises(TypeError):
            await residency_router.put(ORG, "typed.bin", body)
        if not isinstance(body, Iterator):  # a generator's items are known only as read
            with pytest.raises(TypeError):
                await residency_router.put("org-nobody", "../bad", body)  # type before key
    finally:
        if isinstance(body, io.IOBase):
            body.close()
    assert stored_keys(residency_world) == []


async def test_put_streams_a_large_file_object_through_multipart(
    residency_world: ResidencyWorld,
) -> None:
    settings = residency_world.settings(
        multipart_threshold=5 * MiB, multipart_part_size=5 * MiB, multipart_concurrency=2
    )
    body = hashlib.sha256(b"seed").digest() * (11 * MiB // 32)  # 11 MiB: three parts

    class OnlyRead:
        """A file object that says how much it was asked for at once (never everything)."""

        def __init__(self) -> None:
            self._inner = io.BytesIO(body)
            self.largest = 0

        def read(self, size: int = -1) -> bytes:
            self.largest = max(self.largest, size if size >= 0 else len(body))
            return self._inner.read(size)

    source = OnlyRead()
    async with ResidencyRouter.from_settings(settings) as router:
        receipt = await router.put(ORG, "big.bin", source)
        assert receipt.sha256 == hashlib.sha256(body).hexdigest()
        assert await router.get(ORG, "big.bin", start=len(body) - 4) == body[-4:]
    assert source.largest < len(body)
    head = residency_world.s3("eu").head_object(
        Bucket=residency_world.bucket("eu"), Key=receipt.key, PartNumber=1
    )
    assert head.get("PartsCount") == 3
    assert head["SSEKMSKeyId"] == residency_world.key_arn("eu")
