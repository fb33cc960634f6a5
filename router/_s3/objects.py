"""Object operations in one region: SSE-KMS writes with checksums, key-checked reads."""

from __future__ import annotations

import binascii
import contextlib
import hashlib
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
from botocore.exceptions import BotoCoreError

from router._answers import MalformedAnswerError, unreadable_answer
from router._s3.bodies import STREAM_CHUNK, Body, body_chunks
from router._s3.clients import RegionClients
from router._s3.multipart import HASH_OFF_LOOP_BYTES, Chunks, MultipartUpload
from router.config import RouterSettings
from router.errors import (
    InvalidArgumentError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
)
from router.guards import SSE_KMS, encryption_problem
from router.inputs import plain_metadata, plain_str
from router.types import Placement

MALFORMED_CHECKSUM = "a malformed checksum"
"""Why an answer whose SHA-256 checksum is not base64 could not be read."""

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What S3 reports about one stored object (a listing fills only the first five)."""

    key: str
    size: int
    version_id: str | None
    last_modified: datetime
    etag: str = ""
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    checksum_sha256: str | None = None


def _described(key: str, response: Mapping[str, Any], size: int | None = None) -> StoredObject:
    """What a HeadObject or GetObject answer says of the object (``size``: the whole's).

    Raises:
        MalformedAnswerError: the answer lacks a header S3 always sends (run it inside
            :meth:`RegionClients.run`, which reports that as an unreadable answer).
    """
    for needed in ("LastModified", "ContentLength") if size is None else ("LastModified",):
        if needed not in response:
            raise unreadable_answer(None, needed)
    if size is None:
        size = int(response["ContentLength"])
    return StoredObject(
        key,
        size,
        response.get("VersionId"),
        response["LastModified"],
        str(response.get("ETag", "")),
        response.get("ContentType"),
        dict(response.get("Metadata") or {}),
        response.get("ChecksumSHA256"),
    )


def _whole_size(response: Mapping[str, Any]) -> int:
    """The whole object's size from a ranged GetObject answer (``bytes a-b/size``)."""
    content_range = str(response.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    return int(response["ContentLength"])


def described_write(
    tagging: str, content_type: str | None, metadata: Mapping[str, str] | None
) -> dict[str, Any]:
    """What a write says of its object beside its body and encryption: tags, type, metadata.

    Shared by :meth:`ObjectStore.put` and presigned uploads, so that both describe an object
    alike; the type and metadata exactly as checked (:func:`plain_str`, :func:`plain_metadata`).
    """
    described: dict[str, Any] = {"Tagging": tagging}
    if content_type:
        described["ContentType"] = plain_str(content_type)
    if metadata:
        described["Metadata"] = plain_metadata(metadata)
    return described


def http_range(start: int | None, end: int | None) -> str | None:
    """S3's ``Range`` header for the half-open byte range ``[start, end)``; None for all."""
    if start is None and end is None:
        return None
    first = start or 0
    return f"bytes={first}-" if end is None else f"bytes={first}-{end - 1}"


@dataclass(slots=True, init=False)
class PutResult:
    """What a write produced.

    Made by :func:`put_result`: one per put, so with no ``__init__``, its two slots set
    plainly (a named tuple costs three times as much).
    """

    version_id: str | None
    sha256: str


def put_result(version_id: str | None, sha256: str) -> PutResult:
    """Return the :class:`PutResult` of a write."""
    result = PutResult()
    result.version_id = version_id
    result.sha256 = sha256
    return result


class ObjectStore:
    """Writes, reads and heads of single objects, each in the placement's region only."""

    __slots__ = ("_clients", "_settings")

    def __init__(self, clients: RegionClients, settings: RouterSettings) -> None:
        self._clients = clients
        self._settings = settings

    def encryption(self, place: Placement) -> dict[str, Any]:
        """The parameters that put a write in ``place``: its bucket, its key, SSE-KMS, owner."""
        return {
            "Bucket": place.bucket,
            "ServerSideEncryption": SSE_KMS,
            "SSEKMSKeyId": place.kms_key_arn,
            "BucketKeyEnabled": True,
            **self._clients.owner[place.aws_region],
        }

    # -- writes -------------------------------------------------------------------------

    def put(
        self,
        place: Placement,
        key: str,
        body: Body,
        *,
        tagging: str,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> Coroutine[Any, Any, PutResult]:
        """Write one object under the placement's key; multipart above the threshold.

        ``before_commit`` runs right before the request that makes the object exist (the
        PutObject of a body that had to be read first, or CompleteMultipartUpload); what it
        raises stops the write with nothing kept. A small in-memory body is sent at once.

        A plain function returning the write (await it): a small in-memory body's write is
        its one PutObject, one coroutine less in flight per put.

        Raises:
            TypeError: the body is not bytes-like, a binary file or an iterable of bytes.
            ResidencyViolationError: S3 reports another key or a redirect; nothing kept.
            StorageError: S3 or KMS refused the write.
            RegionUnavailableError: the region failed after retries; nothing kept.
        """
        client = self._clients.hot(place.aws_region)
        extra = described_write(tagging, content_type, metadata)
        threshold = self._settings.multipart_threshold
        if type(body) is bytes and len(body) <= min(threshold, HASH_OFF_LOOP_BYTES):
            # Small in-memory bodies (most of them): one hash, one PutObject.
            sha = hashlib.sha256(body).hexdigest()
            return self._put_single(client, place, key, body, sha, extra)
        return self._put_read(client, place, key, body, extra, before_commit)

    async def _put_read(
        self,
        client: S3Client,
        place: Placement,
        key: str,
        body: Body,
        extra: dict[str, Any],
        before_commit: Callable[[], Awaitable[None]] | None,
    ) -> PutResult:
        """Write a body that is read first: one PutObject up to the threshold, else multipart."""
        threshold = self._settings.multipart_threshold
        if isinstance(body, bytes | bytearray | memoryview):
            chunks = Chunks(None)
            # A mutable buffer is copied so the caller cannot change it mid-upload.
            await chunks.absorb(body if isinstance(body, bytes) else bytes(body))
        else:
            # Files and iterables stream like async iterables: never read whole.
            chunks = Chunks(body_chunks(body))
            await chunks.fill(threshold + 1)
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
        create = {"ChecksumAlgorithm": "SHA256", **self.encryption(place), **extra}
        multipart = self._clients.s3(place.aws_region)
        completed = await upload.run(multipart, chunks, create, before_commit)
        version = completed.get("VersionId")
        await confirm_encryption(self._clients, place, key, completed)
        return put_result(version, chunks.sha256())

    async def _put_single(
        self,
        client: S3Client,
        place: Placement,
        key: str,
        data: bytes,
        sha256_hex: str,
        extra: dict[str, Any],
    ) -> PutResult:
        checksum = binascii.b2a_base64(bytes.fromhex(sha256_hex), newline=False).decode("ascii")
        response = await self._clients.run(
            place.aws_region,
            f"writing to bucket {place.bucket}",
            lambda: client.put_object(
                Key=key, Body=data, ChecksumSHA256=checksum, **self.encryption(place), **extra
            ),
        )
        # confirm_encryption's steps, the common case without a coroutine: its client is
        # taken (a router closed, or a region quarantined, while the put ran refuses), and an
        # answer that names the region's key is the confirmation. Anything else (no
        # encryption named, or another) is confirm_encryption's: a HEAD, or the object removed.
        self._clients.s3(place.aws_region)
        if encryption_problem(response, place.kms_key_arn) is not None:
            await confirm_encryption(self._clients, place, key, response)
        return put_result(response.get("VersionId"), sha256_hex)

    # -- reads --------------------------------------------------------------------------

    def get(
        self, place: Placement, key: str, byte_range: str | None = None
    ) -> Coroutine[Any, Any, bytes]:
        """Read an object (or a ``Range``) after checking its key (await the result).

        A plain function returning the retried read: one coroutine less in flight per read.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            InvalidArgumentError: the range starts past the object's end.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        if byte_range is None:
            client = self._clients.hot(place.aws_region)
            return self._clients.run(
                place.aws_region,
                f"reading from bucket {place.bucket}",
                partial(self._read, client, place, key),
                object_read=True,
            )
        return self._body_only(place, key, byte_range)

    async def _body_only(self, place: Placement, key: str, byte_range: str) -> bytes:
        return (await self.get_object(place, key, byte_range))[0]

    async def get_object(
        self, place: Placement, key: str, byte_range: str | None = None
    ) -> tuple[bytes, StoredObject]:
        """Read an object (or a ``Range``) and what S3 says of it, after checking its key.

        Raises:
            As :meth:`get`.
        """
        client = self._clients.hot(place.aws_region)
        with _range_refusal():
            return await self._clients.run(
                place.aws_region,
                f"reading from bucket {place.bucket}",
                partial(self._read_described, client, place, key, byte_range),
                object_read=True,
            )

    def _get_args(self, place: Placement, key: str, byte_range: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {
            "Bucket": place.bucket,
            "Key": key,
            **self._clients.owner[place.aws_region],
        }
        if byte_range is None:
            # A whole object's checksum is checked as it is read; a range's cannot be.
            args["ChecksumMode"] = "ENABLED"
        else:
            args["Range"] = byte_range
        return args

    async def _read(self, client: S3Client, place: Placement, key: str) -> bytes:
        response = await client.get_object(
            Bucket=place.bucket,
            Key=key,
            ChecksumMode="ENABLED",
            **self._clients.owner[place.aws_region],
        )
        return await _checked_body(place, response)

    async def _read_described(
        self, client: S3Client, place: Placement, key: str, byte_range: str | None
    ) -> tuple[bytes, StoredObject]:
        response = await client.get_object(**self._get_args(place, key, byte_range))
        data = await _checked_body(place, response)
        size = None if byte_range is None else _whole_size(response)
        return data, _described(key, response, size)

    async def stream(
        self,
        place: Placement,
        key: str,
        chunk_size: int = STREAM_CHUNK,
        byte_range: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield an object's bytes after checking its key; the connection is released on exit.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed (before or during the transfer).
        """
        client = self._clients.hot(place.aws_region)
        args = self._get_args(place, key, byte_range)
        with _range_refusal():
            response = await self._clients.run(
                place.aws_region,
                f"reading from bucket {place.bucket}",
                lambda: client.get_object(**args),
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
            except binascii.Error:  # aiobotocore decodes the answer's checksum at the end
                self._clients.health.failure(place.aws_region)
                raise RegionUnavailableError(
                    f"reading from bucket {place.bucket} in {place.aws_region} got an answer "
                    f"that could not be read ({MALFORMED_CHECKSUM}); retry later in the same "
                    "region"
                ) from None
        finally:
            body.close()

    async def head(self, place: Placement, key: str) -> StoredObject:
        """Return what S3 says of an object (size, version, type, metadata, checksum).

        Checks the object's key first.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._clients.hot(place.aws_region)
        response, found = await self._clients.run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            partial(self._head_described, client, place, key),
            object_read=True,
        )
        if found is None:
            problem = encryption_problem(response, place.kms_key_arn)
            raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
        return found

    async def _head_described(
        self, client: S3Client, place: Placement, key: str
    ) -> tuple[Mapping[str, Any], StoredObject | None]:
        """A HEAD's answer, and what it says of the object (None: not under the region's key).

        The key is checked first, as for a read: an object under another key is refused as
        that, whatever else its answer lacks.
        """
        response = await client.head_object(
            Bucket=place.bucket,
            Key=key,
            ChecksumMode="ENABLED",
            **self._clients.owner[place.aws_region],
        )
        if encryption_problem(response, place.kms_key_arn) is not None:
            return response, None
        return response, _described(key, response)

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


async def _checked_body(place: Placement, response: Mapping[str, Any]) -> bytes:
    """A GetObject answer's body, read only once the object's key is the region's.

    Raises:
        ResidencyViolationError: the object is not under the region's KMS key (nothing read).
    """
    body = response["Body"]
    # Not ``as body``: aiobotocore 2.x's body hands its raw aiohttp response to ``as``,
    # whose read skips the checksum and length checks.
    async with body:
        problem = encryption_problem(response, place.kms_key_arn)
        if problem is not None:
            raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
        try:
            data: bytes = await body.read()
        except binascii.Error:  # aiobotocore decodes the answer's checksum only now
            raise MalformedAnswerError(MALFORMED_CHECKSUM) from None
        return data


@contextlib.contextmanager
def _range_refusal() -> Iterator[None]:
    """Name S3's refusal of a range that starts past the end as the caller's input."""
    try:
        yield
    except StorageError as exc:
        if exc.code != "InvalidRange":
            raise
        raise InvalidArgumentError(
            "the range starts at or past the end of the object; nothing was read"
        ) from None


def _version(version: str | None) -> dict[str, Any]:
    return {"VersionId": version} if version else {}
