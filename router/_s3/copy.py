"""Server-side copies between regions' buckets, with the checks a move's verification needs.

A copy is made by the target region's client, under the target region's KMS key, with the
source's tags, metadata and content type. A single-part source is copied with CopyObject;
a multipart source (every object above 5 GiB is one) part by part with UploadPartCopy and
the source's own part layout, so that the copy's SHA-256 checksum (full or composite) is
the source's when, and only when, the bytes are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from router._answers import unreadable_answer
from router._s3.bulk import BucketRef
from router._s3.clients import RegionClients
from router._s3.objects import confirm_encryption
from router.errors import ObjectNotFoundError, ResidencyError
from router.guards import SSE_KMS
from router.types import Placement

if TYPE_CHECKING:
    pass

COPY_OBJECT_MAX = 5 * 1024**3
"""CopyObject copies at most 5 GiB; anything larger goes part by part."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What identifies an object's bytes without reading them: size and SHA-256 checksum."""

    size: int
    checksum: str | None
    etag: str
    last_modified: datetime | None = None
    version_id: str | None = None

    def matches(self, other: Fingerprint) -> bool:
        """True when both name the same bytes (same size and the same SHA-256 checksum).

        Without a checksum on either side the size alone cannot prove it: False.
        """
        return (
            self.size == other.size
            and self.checksum is not None
            and _bare(self.checksum) == _bare(other.checksum)
        )


@dataclass(frozen=True, slots=True)
class Copied:
    """One copy: the source version's fingerprint and the copy's."""

    source: Fingerprint
    target: Fingerprint


class Copier:
    """Copies objects from one region's bucket to another's, server-side."""

    __slots__ = ("_clients",)

    def __init__(self, clients: RegionClients) -> None:
        self._clients = clients

    async def fingerprint(self, ref: BucketRef, key: str) -> Fingerprint | None:
        """Return the current object's size and checksum, or None when there is none.

        Raises:
            StorageError, RegionUnavailableError: S3 refused or failed.
        """
        client = self._clients.s3(ref.aws_region)
        owner = self._clients.owner[ref.aws_region]
        try:
            head = await self._clients.run(
                ref.aws_region,
                f"reading an object's checksum in bucket {ref.bucket}",
                lambda: client.head_object(
                    Bucket=ref.bucket, Key=key, ChecksumMode="ENABLED", **owner
                ),
                object_read=True,
            )
        except ObjectNotFoundError:
            return None
        return _fingerprint(head)

    async def copy(self, source: BucketRef, target: Placement, key: str) -> Copied:
        """Copy the current version of ``key`` from ``source`` to ``target``'s bucket.

        The copy is pinned to the version its first request saw; the result names that
        version's fingerprint and the copy's (its checksum as S3 reported it, if it did).

        Raises:
            ObjectNotFoundError: the source object is gone.
            ResidencyViolationError: the copy is not under the target region's key (it is
                removed).
            StorageError, RegionUnavailableError: S3 refused or failed.
        """
        clients = self._clients
        owner = clients.owner[source.aws_region]
        src = clients.s3(source.aws_region)

        async def head_source(**part: Any) -> Mapping[str, Any]:
            async def head() -> Mapping[str, Any]:
                found: Mapping[str, Any] = await src.head_object(
                    Bucket=source.bucket, Key=key, ChecksumMode="ENABLED", **part, **owner
                )
                if "ContentLength" not in found:  # the copy's ranges are made from it
                    raise unreadable_answer(None, "ContentLength")
                return found

            answer: Mapping[str, Any] = await clients.run(
                source.aws_region,
                f"reading an object to copy in bucket {source.bucket}",
                head,
                object_read=True,
            )
            return answer

        head = await head_source()
        size = int(head["ContentLength"])
        copy_source = {"Bucket": source.bucket, "Key": key}
        if head.get("VersionId"):
            copy_source["VersionId"] = head["VersionId"]
        parts = _parts_of(str(head.get("ETag", "")))
        if parts == 0 and size <= COPY_OBJECT_MAX:
            response = await self._copy_object(target, key, copy_source, source)
        else:
            # The source's own layout, so that a composite checksum comes out the same.
            pinned = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
            sizes = [int((await head_source(PartNumber=1, **pinned))["ContentLength"])]
            if parts > 1 and -(-size // sizes[0]) != parts:
                for number in range(2, parts + 1):
                    part = await head_source(PartNumber=number, **pinned)
                    sizes.append(int(part["ContentLength"]))
            response = await self._copy_parts(target, key, copy_source, source, head, size, sizes)
        confirmed = await confirm_encryption(self._clients, target, key, response, "copy")
        return Copied(_fingerprint(head), _fingerprint({**confirmed, "ContentLength": size}))

    async def _copy_object(
        self, target: Placement, key: str, copy_source: Mapping[str, str], source: BucketRef
    ) -> Mapping[str, Any]:
        clients = self._clients
        client = clients.s3(target.aws_region)
        response: Mapping[str, Any] = await clients.run(
            target.aws_region,
            f"copying an object into bucket {target.bucket}",
            lambda: client.copy_object(
                Key=key,
                CopySource=copy_source,  # type: ignore[arg-type]
                MetadataDirective="COPY",
                TaggingDirective="COPY",
                ChecksumAlgorithm="SHA256",
                **_encryption(target),
                **_source_owner(clients, source),
                **clients.owner[target.aws_region],
            ),
        )
        return {**response, **response.get("CopyObjectResult", {})}

    async def _copy_parts(
        self,
        target: Placement,
        key: str,
        copy_source: Mapping[str, str],
        source: BucketRef,
        head: Mapping[str, Any],
        size: int,
        part_sizes: list[int],
    ) -> Mapping[str, Any]:
        clients = self._clients
        client = clients.s3(target.aws_region)
        owner = clients.owner[target.aws_region]
        src = clients.s3(source.aws_region)
        tags = await clients.run(
            source.aws_region,
            f"reading an object's tags in bucket {source.bucket}",
            lambda: src.get_object_tagging(
                **copy_source,  # type: ignore[arg-type]
                **clients.owner[source.aws_region],
            ),
            object_read=True,
        )
        tagging = "&".join(
            f"{_quote(t['Key'])}={_quote(t['Value'])}" for t in tags.get("TagSet", [])
        )
        create: dict[str, Any] = {
            "Key": key,
            "ChecksumAlgorithm": "SHA256",
            "Metadata": dict(head.get("Metadata", {})),
            **_encryption(target),
            **owner,
        }
        if tagging:
            create["Tagging"] = tagging
        if head.get("ContentType"):
            create["ContentType"] = head["ContentType"]
        created = await clients.run(
            target.aws_region,
            f"starting a multipart copy into bucket {target.bucket}",
            lambda: client.create_multipart_upload(**create),
            idempotent=False,
        )
        upload_id = created["UploadId"]
        try:
            ranges = _ranges(size, part_sizes)
            results = await asyncio.gather(
                *(
                    self._copy_part(target, key, upload_id, n, rng, copy_source, source)
                    for n, rng in enumerate(ranges, start=1)
                )
            )
            completed: Mapping[str, Any] = await clients.run(
                target.aws_region,
                f"completing a multipart copy into bucket {target.bucket}",
                lambda: client.complete_multipart_upload(
                    Bucket=target.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": results},  # type: ignore[typeddict-item]
                    **owner,
                ),
            )
        except BaseException:
            with contextlib.suppress(ResidencyError):
                await clients.run(
                    target.aws_region,
                    "aborting a multipart copy",
                    lambda: client.abort_multipart_upload(
                        Bucket=target.bucket, Key=key, UploadId=upload_id, **owner
                    ),
                )
            raise
        return completed

    async def _copy_part(
        self,
        target: Placement,
        key: str,
        upload_id: str,
        number: int,
        byte_range: tuple[int, int],
        copy_source: Mapping[str, str],
        source: BucketRef,
    ) -> dict[str, Any]:
        clients = self._clients
        client = clients.s3(target.aws_region)
        response = await clients.run(
            target.aws_region,
            f"copying part {number} into bucket {target.bucket}",
            lambda: client.upload_part_copy(
                Bucket=target.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=copy_source,  # type: ignore[arg-type]
                CopySourceRange=f"bytes={byte_range[0]}-{byte_range[1]}",
                **_source_owner(clients, source),
                **clients.owner[target.aws_region],
            ),
        )
        result = response.get("CopyPartResult", {})
        part: dict[str, Any] = {"PartNumber": number, "ETag": result["ETag"]}
        if result.get("ChecksumSHA256"):
            part["ChecksumSHA256"] = result["ChecksumSHA256"]
        return part


def _encryption(target: Placement) -> dict[str, Any]:
    return {
        "Bucket": target.bucket,
        "ServerSideEncryption": SSE_KMS,
        "SSEKMSKeyId": target.kms_key_arn,
        "BucketKeyEnabled": True,
    }


def _source_owner(clients: RegionClients, source: BucketRef) -> dict[str, Any]:
    owner = clients.owner[source.aws_region].get("ExpectedBucketOwner")
    return {"ExpectedSourceBucketOwner": owner} if owner else {}


def _fingerprint(head: Mapping[str, Any]) -> Fingerprint:
    checksum = head.get("ChecksumSHA256")
    return Fingerprint(
        int(head["ContentLength"]),
        checksum,
        str(head.get("ETag", "")),
        head.get("LastModified"),
        head.get("VersionId"),
    )


def _parts_of(etag: str) -> int:
    """How many parts a multipart object has (its ETag ends in ``-N``); 0 for a single PUT.

    A multipart object of one part is still multipart: its checksum is per part.
    """
    _, dash, count = etag.strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() else 0


def _ranges(size: int, part_sizes: list[int]) -> list[tuple[int, int]]:
    """Inclusive byte ranges: the given part sizes, then parts of the first one's size."""
    ranges: list[tuple[int, int]] = []
    start = 0
    uniform = max(part_sizes[0], 1)
    for index in range(size):  # bounded by the loop's own exit
        length = part_sizes[index] if index < len(part_sizes) else uniform
        end = min(start + length, size)
        ranges.append((start, end - 1))
        start = end
        if start >= size:
            break
    return ranges


def _bare(checksum: str | None) -> str:
    return (checksum or "").split("-")[0]


def _quote(value: str) -> str:
    return quote(value, safe="")
