from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from tests.conftest import without_bucket_default_encryption

MiB = 1024 * 1024
PART = 5 * MiB
CONCURRENCY = 2
CHUNK = 256 * 1024


class Meter:
    """Bytes handed to the router versus bytes of parts S3 has acknowledged."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.consumed = 0
        self.acknowledged = 0
        self.peak_held = 0

    def part_acknowledged(self, **_: Any) -> None:
        # Every part is PART bytes but the last; the response does not say which part it was.
        self.acknowledged = min(self.acknowledged + PART, self.total)

    def observe(self) -> None:
        self.peak_held = max(self.peak_held, self.consumed - self.acknowledged)


async def body(
    total: int, meter: Meter | None = None, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < total:
        if fail_after is not None and sent >= fail_after:
            raise OSError("the client went away")
        piece = block[: min(CHUNK, total - sent)]
        sent += len(piece)
        if meter is not None:
            meter.consumed += len(piece)
            meter.observe()
        yield piece
        await asyncio.sleep(0)


def expected_sha(total: int) -> str:
    block = bytes(range(256)) * (CHUNK // 256)
    digest = hashlib.sha256()
    sent = 0
    while sent < total:
        piece = block[: min(CHUNK, total - sent)]
        digest.update(piece)
        sent += len(piece)
    return digest.hexdigest()


@pytest.fixture
async def small_part_router(residency_world: ResidencyWorld) -> AsyncIterator[ResidencyRouter]:
    settings = residency_world.settings(
        multipart_threshold=PART, multipart_part_size=PART, multipart_concurrency=CONCURRENCY
    )
    async with ResidencyRouter.from_settings(settings) as router:
        yield router


async def test_streamed_64mib_upload_buffers_at_most_part_size_times_concurrency(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    without_bucket_default_encryption(residency_world, "eu")
    total = 64 * MiB
    meter = Meter(total)
    sizes: dict[int, int] = {}

    def sent(params: dict[str, Any], **_: Any) -> None:
        sizes[params["PartNumber"]] = len(params["Body"])

    storage = small_part_router.storage
    storage.register("before-parameter-build.s3.UploadPart", sent)
    storage.register("after-call.s3.UploadPart", meter.part_acknowledged)
    receipt = await small_part_router.put("org-acme", "big.bin", body(total, meter))

    assert receipt.sha256 == expected_sha(total)
    assert len(sizes) == 13  # ceil(64 / 5)
    assert meter.peak_held <= PART * CONCURRENCY + CHUNK, meter.peak_held
    head = residency_world.assert_stored_in("org-acme", "big.bin", "eu")
    assert head["ContentLength"] == total
    data = (
        residency_world.s3("eu")
        .get_object(Bucket=residency_world.bucket("eu"), Key=receipt.key)["Body"]
        .read()
    )
    assert hashlib.sha256(data).hexdigest() == receipt.sha256
    uploads = residency_world.s3("eu").list_multipart_uploads(Bucket=residency_world.bucket("eu"))
    assert uploads.get("Uploads", []) == []


async def test_small_stream_is_a_single_put(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    calls: list[str] = []
    small_part_router.storage.register(
        "before-send.s3", lambda request, **_: calls.append(request.method)
    )
    receipt = await small_part_router.put("org-acme", "small.bin", body(3 * MiB))
    assert receipt.sha256 == expected_sha(3 * MiB)
    assert calls == ["PUT"]
    residency_world.assert_stored_in("org-acme", "small.bin", "eu")


async def test_large_bytes_body_goes_through_multipart(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    without_bucket_default_encryption(residency_world, "eu")
    data = bytes(range(256)) * (12 * MiB // 256)
    receipt = await small_part_router.put("org-acme", "bytes.bin", data)
    assert receipt.sha256 == hashlib.sha256(data).hexdigest()
    head = residency_world.assert_stored_in("org-acme", "bytes.bin", "eu")
    assert head["ETag"].endswith('-3"')
    assert await small_part_router.get("org-acme", "bytes.bin") == data


async def test_failed_stream_aborts_upload_and_stores_nothing(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    with pytest.raises(OSError, match="went away"):
        await small_part_router.put("org-acme", "broken.bin", body(40 * MiB, fail_after=17 * MiB))
    s3 = residency_world.s3("eu")
    assert s3.list_multipart_uploads(Bucket=residency_world.bucket("eu")).get("Uploads", []) == []
    assert residency_world.all_versions("eu") == []


async def test_cancelled_upload_is_aborted(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        async for piece in body(12 * MiB):
            yield piece
        started.set()
        await asyncio.sleep(30)
        yield b"never"

    task = asyncio.create_task(small_part_router.put("org-acme", "cancelled.bin", slow()))
    await asyncio.wait_for(started.wait(), timeout=20)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s3 = residency_world.s3("eu")
    assert s3.list_multipart_uploads(Bucket=residency_world.bucket("eu")).get("Uploads", []) == []
    assert residency_world.all_versions("eu") == []


async def test_non_bytes_chunk_aborts_with_type_error(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    async def mixed() -> AsyncIterator[Any]:
        yield b"x" * (6 * MiB)
        yield "not bytes"

    with pytest.raises(TypeError, match="chunks must be bytes"):
        await small_part_router.put("org-acme", "mixed.bin", mixed())
    s3 = residency_world.s3("eu")
    assert s3.list_multipart_uploads(Bucket=residency_world.bucket("eu")).get("Uploads", []) == []


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param(16, id="single-put"),  # 1 MiB: one PutObject
        pytest.param(12 * 16, id="multipart"),  # 12 MiB over 5 MiB parts
    ],
)
async def test_streamed_body_is_stored_exactly_as_yielded_when_the_producer_reuses_its_buffer(
    small_part_router: ResidencyRouter, residency_world: ResidencyWorld, chunks: int
) -> None:
    # A file or socket reader refills one bytearray and yields views of it (issue 12.1).
    buffer = bytearray(64 * 1024)

    async def producer() -> AsyncIterator[memoryview]:
        for i in range(chunks):
            buffer[:] = bytes([i % 251]) * len(buffer)
            yield memoryview(buffer)

    expected = hashlib.sha256(
        b"".join(bytes([i % 251]) * len(buffer) for i in range(chunks))
    ).hexdigest()
    receipt = await small_part_router.put("org-acme", "reused.bin", producer())
    stored = (
        residency_world.s3("eu")
        .get_object(Bucket=residency_world.bucket("eu"), Key="orgs/org-acme/files/reused.bin")[
            "Body"
        ]
        .read()
    )
    assert hashlib.sha256(stored).hexdigest() == receipt.sha256 == expected
