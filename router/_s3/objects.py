"""Object operations in one region: SSE-KMS writes with checksums, key-checked reads."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
from botocore.exceptions import BotoCoreError

from router._s3.clients import RegionClients
from router._s3.multipart import HASH_OFF_LOOP_BYTES, Chunks, MultipartUpload
from router.config import RouterSettings
from router.errors import RegionUnavailableError, ResidencyError, ResidencyViolationError
from router.guards import SSE_KMS, encryption_problem
from router.types import Placement

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

STREAM_CHUNK = 1024 * 1024

BytesLike = bytes | bytearray | memoryview
Body = BytesLike | AsyncIterable[BytesLike]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What S3 reports about one stored object."""

    key: str
    size: int
    version_id: str | None
    last_modified: datetime
    etag: str = ""


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a write produced."""

    version_id: str | None
    sha256: str


class ObjectStore:
    """Writes, reads and heads of single objects, each in the placement's region only."""

    __slots__ = ("_clients", "_settings")

    def __init__(self, clients: RegionClients, settings: RouterSettings) -> None:
        self._clients = clients
        self._settings = settings

    def _encryption(self, place: Placement) -> dict[str, Any]:
        return {
            "Bucket": place.bucket,
            "ServerSideEncryption": SSE_KMS,
            "SSEKMSKeyId": place.kms_key_arn,
            "BucketKeyEnabled": True,
            **self._clients.owner[place.aws_region],
        }

    # -- writes -------------------------------------------------------------------------

    async def put(
        self,
        place: Placement,
        key: str,
        body: Body,
        *,
        tagging: str,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> PutResult:
        """Write one object under the placement's key; multipart above the threshold.

        ``before_commit`` runs right before the request that makes the object exist (the
        PutObject of a body that had to be read first, or CompleteMultipartUpload); what it
        raises stops the write with nothing kept. A small in-memory body is sent at once.

        Raises:
            TypeError: the body is not bytes-like or an async iterable of bytes.
            ResidencyViolationError: S3 reports another key or a redirect; nothing kept.
            StorageError: S3 or KMS refused the write.
            RegionUnavailableError: the region failed after retries; nothing kept.
        """
        client = self._clients.s3(place.aws_region)
        extra: dict[str, Any] = {"Tagging": tagging}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        threshold = self._settings.multipart_threshold
        if type(body) is bytes and len(body) <= min(threshold, HASH_OFF_LOOP_BYTES):
            # Small in-memory bodies (most of them): one hash, one PutObject.
            sha = hashlib.sha256(body).hexdigest()
            return await self._put_single(client, place, key, body, sha, extra)
        if isinstance(body, bytes | bytearray | memoryview):
            chunks = Chunks(None)
            # A mutable buffer is copied so the caller cannot change it mid-upload.
            await chunks.absorb(body if isinstance(body, bytes) else bytes(body))
        elif isinstance(body, AsyncIterable):
            chunks = Chunks(aiter(body))
            await chunks.fill(threshold + 1)
        else:
            raise TypeError(
                f"body must be bytes or an async iterable of bytes, got {type(body).__name__}"
            )
        if chunks.exhausted and chunks.pending <= threshold:
            data = chunks.take(chunks.pending)
            if before_commit is not None:
                await before_commit()
            return await self._put_single(client, place, key, data, chunks.sha256(), extra)
        upload = MultipartUpload(
            self._clients,
            place,
            key,
            part_size=self._settings.multipart_part_size,
            concurrency=self._settings.multipart_concurrency,
        )
        create = {"ChecksumAlgorithm": "SHA256", **self._encryption(place), **extra}
        completed = await upload.run(client, chunks, create, before_commit)
        version = completed.get("VersionId")
        await confirm_encryption(self._clients, place, key, completed)
        return PutResult(version, chunks.sha256())

    async def _put_single(
        self,
        client: S3Client,
        place: Placement,
        key: str,
        data: bytes,
        sha256_hex: str,
        extra: dict[str, Any],
    ) -> PutResult:
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
        response = await self._clients.run(
            place.aws_region,
            f"writing to bucket {place.bucket}",
            lambda: client.put_object(
                Key=key, Body=data, ChecksumSHA256=checksum, **self._encryption(place), **extra
            ),
        )
        version = response.get("VersionId")
        await confirm_encryption(self._clients, place, key, response)
        return PutResult(version, sha256_hex)

    # -- reads --------------------------------------------------------------------------

    def get(self, place: Placement, key: str) -> Coroutine[Any, Any, bytes]:
        """Read a whole object after checking it is under the region's key (await the result).

        A plain function returning the retried read: one coroutine less in flight per read.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._clients.s3(place.aws_region)
        return self._clients.run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            partial(self._read, client, place, key),
            object_read=True,
        )

    async def _read(self, client: S3Client, place: Placement, key: str) -> bytes:
        response = await client.get_object(
            Bucket=place.bucket,
            Key=key,
            ChecksumMode="ENABLED",
            **self._clients.owner[place.aws_region],
        )
        async with response["Body"] as body:
            problem = encryption_problem(response, place.kms_key_arn)
            if problem is not None:
                raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
            data: bytes = await body.read()
            return data

    async def stream(
        self, place: Placement, key: str, chunk_size: int = STREAM_CHUNK
    ) -> AsyncGenerator[bytes, None]:
        """Yield an object's bytes after checking its key; the connection is released on exit.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed (before or during the transfer).
        """
        client = self._clients.s3(place.aws_region)
        owner = self._clients.owner[place.aws_region]
        response = await self._clients.run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            lambda: client.get_object(
                Bucket=place.bucket, Key=key, ChecksumMode="ENABLED", **owner
            ),
            object_read=True,
        )
        body = response["Body"]
        try:
            problem = encryption_problem(response, place.kms_key_arn)
            if problem is not None:
                raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
            try:
                async for chunk in body.iter_chunks(chunk_size):
                    yield chunk
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._clients.health.failure(place.aws_region)
                raise RegionUnavailableError(
                    f"reading from bucket {place.bucket} in {place.aws_region} broke off "
                    f"({type(exc).__name__}); retry later in the same region"
                ) from None  # not chained: the URL carries the key
        finally:
            body.close()

    async def head(self, place: Placement, key: str) -> StoredObject:
        """Return an object's size, version and time after checking its key.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._clients.s3(place.aws_region)
        owner = self._clients.owner[place.aws_region]
        response = await self._clients.run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            lambda: client.head_object(Bucket=place.bucket, Key=key, **owner),
            object_read=True,
        )
        problem = encryption_problem(response, place.kms_key_arn)
        if problem is not None:
            raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
        return StoredObject(
            key, int(response["ContentLength"]), response.get("VersionId"), response["LastModified"]
        )

    async def tags(self, place: Placement, key: str) -> dict[str, str]:
        """Return an object's tags.

        Raises:
            ObjectNotFoundError: no such object.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._clients.s3(place.aws_region)
        owner = self._clients.owner[place.aws_region]
        response = await self._clients.run(
            place.aws_region,
            f"reading tags in bucket {place.bucket}",
            lambda: client.get_object_tagging(Bucket=place.bucket, Key=key, **owner),
            object_read=True,
        )
        return {tag["Key"]: tag["Value"] for tag in response.get("TagSet", [])}


async def confirm_encryption(
    clients: RegionClients,
    place: Placement,
    key: str,
    response: Mapping[str, Any],
    what: str = "write",
) -> Mapping[str, Any]:
    """Check that what a write (or copy) made is SSE-KMS under the placement's key.

    Uses the write's own answer when it names the encryption, else a HEAD of exactly that
    version (with its checksum). Returns the answer checked.

    Raises:
        ResidencyViolationError: another key or no SSE-KMS; exactly that version is removed
            (the message says if it could not be).
    """
    client = clients.s3(place.aws_region)
    owner = clients.owner[place.aws_region]
    version = response.get("VersionId")
    if "SSEKMSKeyId" not in response or "ServerSideEncryption" not in response:
        response = await clients.run(
            place.aws_region,
            f"checking a {what} in bucket {place.bucket}",
            lambda: client.head_object(
                Bucket=place.bucket, Key=key, ChecksumMode="ENABLED", **_version(version), **owner
            ),
        )
    problem = encryption_problem(response, place.kms_key_arn)
    if problem is None:
        return response
    # Keep nothing written under a foreign key: remove exactly that version.
    outcome = "removed"
    try:
        await clients.run(
            place.aws_region,
            f"removing a misencrypted {what}",
            lambda: client.delete_object(
                Bucket=place.bucket, Key=key, **_version(version), **owner
            ),
        )
    except ResidencyError as exc:
        code = getattr(exc, "code", "") or type(exc).__name__
        outcome = f"NOT removed ({code}): an operator must delete version {version or '(none)'}"
    raise ResidencyViolationError(f"{what} to bucket {place.bucket} {problem}; {outcome}")


def _version(version: str | None) -> dict[str, Any]:
    return {"VersionId": version} if version else {}
