"""Streamed bodies: chunking with a running SHA-256, and one multipart upload as a small object."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from router._retry import error_code
from router._s3.clients import RegionClients
from router.config import MAX_PARTS
from router.errors import InvalidArgumentError, ResidencyError, first_error
from router.types import Placement

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

HASH_OFF_LOOP_BYTES = 256 * 1024


async def hash_into(hasher: Any, data: bytes | memoryview) -> None:
    """Hash ``data``; above 256 KiB in a worker thread (hashlib releases the GIL there)."""
    if len(data) < HASH_OFF_LOOP_BYTES:
        hasher.update(data)
    else:
        await asyncio.to_thread(hasher.update, data)


class Chunks:
    """Pulls a body into whole parts; never holds more than it was asked to fill.

    Chunks that are not ``bytes`` are copied as they arrive: a producer may refill and
    yield the same buffer, and what is hashed is what is sent.
    """

    __slots__ = ("_exhausted", "_hasher", "_pending", "_pending_bytes", "_source")

    def __init__(self, source: AsyncIterator[bytes | bytearray | memoryview] | None) -> None:
        self._source = source
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._exhausted = source is None
        self._hasher = hashlib.sha256()

    async def absorb(self, body: bytes) -> None:
        """Take a whole in-memory body (hashed off the event loop when large)."""
        if body:
            await hash_into(self._hasher, body)
            self._pending.append(memoryview(body))
            self._pending_bytes += len(body)

    @property
    def pending(self) -> int:
        """Bytes read from the source and not yet taken."""
        return self._pending_bytes

    @property
    def exhausted(self) -> bool:
        """True once the source has ended."""
        return self._exhausted

    def sha256(self) -> str:
        """The hex SHA-256 of everything read so far."""
        return self._hasher.hexdigest()

    async def fill(self, size: int) -> None:
        """Read from the source until ``size`` bytes are pending or it ends.

        Raises:
            TypeError: the source yielded something that is not bytes-like.
        """
        while self._pending_bytes < size and self._source is not None and not self._exhausted:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._exhausted = True
                break
            if chunk.__class__ is not bytes:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(
                        f"body chunks must be bytes, got {type(chunk).__name__}; nothing was stored"
                    )
                chunk = memoryview(chunk).cast("B").tobytes()  # the producer may reuse it
            if chunk:
                self._hasher.update(chunk)
                self._pending.append(memoryview(chunk))
                self._pending_bytes += len(chunk)

    def take(self, size: int) -> bytes:
        """Return up to ``size`` pending bytes as one ``bytes`` (one copy)."""
        pieces: list[memoryview] = []
        taken = 0
        while self._pending and taken < size:
            head = self._pending[0]
            need = size - taken
            if len(head) <= need:
                pieces.append(self._pending.popleft())
                taken += len(head)
            else:
                pieces.append(head[:need])
                self._pending[0] = head[need:]
                taken += need
        self._pending_bytes -= taken
        return b"".join(pieces)


class PartStream(io.RawIOBase):
    """A read-only stream over a part's bytes that never copies more than one read.

    aiohttp copies a ``BytesIO`` body whole, and a ``bytes`` body the socket cannot take at
    once into its own buffer: either doubles the memory of every part in flight.
    """

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        """Always True."""
        return True

    def seekable(self) -> bool:
        """Always True (botocore rewinds a body to retry it)."""
        return True

    def tell(self) -> int:
        """The read position."""
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the read position."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, min(len(self._view), base[whence] + offset))
        return self._position

    def readinto(self, buffer: Any) -> int:
        """Copy the next bytes into ``buffer``."""
        end = min(len(self._view), self._position + len(buffer))
        count = end - self._position
        buffer[:count] = self._view[self._position : end]
        self._position = end
        return count

    def __len__(self) -> int:
        return len(self._view)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class MultipartUpload:
    """One multipart upload: create, parts with SHA-256 checksums, complete, or abort.

    At most ``concurrency`` parts are held in memory, the one being filled included. Any
    failure or cancellation aborts the upload (shielded, so it finishes even if the caller
    is gone).
    """

    __slots__ = ("_clients", "_concurrency", "_key", "_part_size", "_place", "_upload_id")

    def __init__(
        self,
        clients: RegionClients,
        place: Placement,
        key: str,
        *,
        part_size: int,
        concurrency: int,
    ) -> None:
        self._clients = clients
        self._place = place
        self._key = key
        self._part_size = part_size
        self._concurrency = concurrency
        self._upload_id = ""

    async def run(
        self,
        client: S3Client,
        chunks: Chunks,
        create_args: Mapping[str, Any],
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> Mapping[str, Any]:
        """Upload everything ``chunks`` yields; return CompleteMultipartUpload's answer.

        ``before_commit`` runs after the last part, right before the upload is completed;
        whatever it raises aborts the upload (the router re-checks the org's record there).

        Raises:
            InvalidArgumentError: the body needs more than S3's 10,000 parts.
            ResidencyError: the region failed or refused; the upload was aborted.
        """
        place, clients = self._place, self._clients
        where = f"multipart upload to bucket {place.bucket}"
        creating = asyncio.ensure_future(
            clients.run(
                place.aws_region,
                where,
                lambda: client.create_multipart_upload(Key=self._key, **create_args),
                # A retry after a lost answer would leave the first upload behind.
                idempotent=False,
            )
        )
        try:
            # Shielded: a caller cancelled meanwhile must not leave an upload nobody knows of.
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            clients.clean_up(self._abort_once_created(client, creating))
            raise
        self._upload_id = created["UploadId"]
        parts: dict[int, dict[str, Any]] = {}
        try:
            await self._upload_parts(client, chunks, parts, where)
            if before_commit is not None:
                await before_commit()
            completed: Mapping[str, Any] = await clients.run(
                place.aws_region, where, self._completer(client, parts)
            )
        except BaseException as exc:
            await _shielded(self._abort(client))
            error = first_error(exc)
            if error is exc:
                raise
            raise error from None
        return completed

    async def _upload_parts(
        self, client: S3Client, chunks: Chunks, parts: dict[int, dict[str, Any]], where: str
    ) -> None:
        place, clients, owner = (
            self._place,
            self._clients,
            self._clients.owner[self._place.aws_region],
        )
        slots = asyncio.Semaphore(self._concurrency)

        async def upload(number: int, data: bytes) -> None:
            try:
                digest = hashlib.sha256()
                await hash_into(digest, data)
                checksum = _b64(digest.digest())
                response = await clients.run(
                    place.aws_region,
                    f"{where}, part {number}",
                    # A fresh stream per attempt: aiohttp then sends the part in small reads.
                    lambda: client.upload_part(
                        Bucket=place.bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        PartNumber=number,
                        Body=PartStream(data),  # type: ignore[arg-type]
                        ChecksumSHA256=checksum,
                        **owner,
                    ),
                )
                parts[number] = {
                    "PartNumber": number,
                    "ETag": response["ETag"],
                    "ChecksumSHA256": checksum,
                }
            finally:
                slots.release()

        async with asyncio.TaskGroup() as group:
            number = 0
            while True:
                # The slot is taken before the part is read, so at most `concurrency`
                # parts are held in memory, the one being filled included.
                await slots.acquire()
                try:
                    await chunks.fill(self._part_size)
                except BaseException:
                    slots.release()
                    raise
                if chunks.pending == 0:
                    slots.release()
                    return
                number += 1
                if number > MAX_PARTS:
                    slots.release()
                    raise InvalidArgumentError(
                        f"{where}: body exceeds {MAX_PARTS} parts of {self._part_size} bytes; "
                        "raise multipart_part_size; nothing was kept"
                    )
                group.create_task(upload(number, chunks.take(self._part_size)))

    def _completer(self, client: S3Client, parts: Mapping[int, Mapping[str, Any]]) -> Any:
        attempts = 0
        place, key, owner = self._place, self._key, self._clients.owner[self._place.aws_region]
        ordered = [parts[n] for n in sorted(parts)]

        async def complete() -> Mapping[str, Any]:
            nonlocal attempts
            attempts += 1
            try:
                response: Mapping[str, Any] = await client.complete_multipart_upload(
                    Bucket=place.bucket,
                    Key=key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": ordered},  # type: ignore[typeddict-item]
                    **owner,
                )
            except ClientError as exc:
                # A retry after a completion whose answer was lost finds no upload: the
                # object is ours if its composite checksum is the one our parts make.
                if attempts == 1 or error_code(exc) != "NoSuchUpload":
                    raise
                head = await client.head_object(
                    Bucket=place.bucket,
                    Key=key,
                    ChecksumMode="ENABLED",
                    **owner,
                )
                digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in ordered)
                composite = _b64(hashlib.sha256(digests).digest())
                if str(head.get("ChecksumSHA256", "")).split("-")[0] != composite:
                    raise
                return dict(head)
            return response

        return complete

    async def _abort_once_created(self, client: S3Client, creating: asyncio.Future[Any]) -> None:
        """Abort the upload a cancelled caller started, as soon as S3 says its id."""
        try:
            created = await creating
        except Exception:
            return  # S3 created nothing we could name
        self._upload_id = created["UploadId"]
        await self._abort(client)

    async def _abort(self, client: S3Client) -> None:
        place, owner = self._place, self._clients.owner[self._place.aws_region]
        with contextlib.suppress(ResidencyError, RuntimeError):
            await self._clients.run(
                place.aws_region,
                "aborting a multipart upload",
                lambda: client.abort_multipart_upload(
                    Bucket=place.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    **owner,
                ),
            )


async def _shielded(coro: Awaitable[None]) -> None:
    """Finish clean-up even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
