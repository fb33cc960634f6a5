"""Bulk operations in one bucket: listings (objects, versions, prefixes, uploads) and deletions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from router._s3.clients import RegionClients
from router._s3.objects import StoredObject
from router.errors import ObjectNotFoundError, StorageError
from router.types import AwsRegion

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys

Check = Callable[[], Awaitable[None]]
"""Runs before each deletion request; what it raises stops the deletion."""


class BucketRef(Protocol):
    """Anything that names one bucket in one AWS region (a Placement, a RegionConfig)."""

    @property
    def aws_region(self) -> AwsRegion:
        """The bucket's AWS region."""
        ...

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        ...


# Each listing call: (method name, the markers of the next page taken from a page).
_PAGING: dict[str, Callable[[Mapping[str, Any]], dict[str, str]]] = {
    "list_objects_v2": lambda page: {"ContinuationToken": page.get("NextContinuationToken", "")},
    "list_object_versions": lambda page: {
        "KeyMarker": page.get("NextKeyMarker", ""),
        **(
            {"VersionIdMarker": page["NextVersionIdMarker"]}
            if page.get("NextVersionIdMarker")
            else {}
        ),
    },
    "list_multipart_uploads": lambda page: {
        "KeyMarker": page.get("NextKeyMarker", ""),
        "UploadIdMarker": page.get("NextUploadIdMarker", ""),
    },
}


class BulkStore:
    """Listings and deletions over many objects, a page at a time (memory stays flat)."""

    __slots__ = ("_clients",)

    def __init__(self, clients: RegionClients) -> None:
        self._clients = clients

    async def _pages(
        self, ref: BucketRef, method: str, what: str, **args: Any
    ) -> AsyncIterator[Mapping[str, Any]]:
        """The one pagination helper: yield every page of a listing call."""
        clients = self._clients
        call = getattr(clients.s3(ref.aws_region), method)
        next_markers = _PAGING[method]
        fixed = {"Bucket": ref.bucket, **args, **clients.owner[ref.aws_region]}
        markers: dict[str, str] = {}
        while True:
            page: Mapping[str, Any] = await clients.run(
                ref.aws_region,
                f"{what} in bucket {ref.bucket}",
                partial(call, **fixed, **markers),
            )
            yield page
            if not page.get("IsTruncated"):
                return
            markers = next_markers(page)
            if not any(markers.values()):
                return

    async def list_objects(self, ref: BucketRef, prefix: str) -> AsyncIterator[StoredObject]:
        """Yield the current objects under ``prefix``.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._pages(ref, "list_objects_v2", "listing", Prefix=prefix):
            for item in page.get("Contents", []):
                yield StoredObject(
                    item["Key"], int(item["Size"]), None, item["LastModified"], item.get("ETag", "")
                )

    async def list_versions(
        self, ref: BucketRef, prefix: str
    ) -> AsyncGenerator[tuple[str, str | None, bool], None]:
        """Yield (key, version id, is delete marker) for every version under ``prefix``.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._pages(
            ref, "list_object_versions", "listing versions", Prefix=prefix
        ):
            for item in page.get("Versions", []):
                yield item["Key"], item.get("VersionId"), False
            for item in page.get("DeleteMarkers", []):
                yield item["Key"], item.get("VersionId"), True

    async def list_uploads(
        self, ref: BucketRef, prefix: str
    ) -> AsyncIterator[tuple[str, str, datetime | None]]:
        """Yield (key, upload id, initiated) for every multipart upload under ``prefix``.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._pages(
            ref, "list_multipart_uploads", "listing multipart uploads", Prefix=prefix
        ):
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"], upload.get("Initiated")

    async def list_current(
        self, ref: BucketRef, prefix: str
    ) -> AsyncIterator[tuple[str, str | None, int]]:
        """Yield (key, version id, size) of every current object under ``prefix``.

        From the version listing, so that each object is named by its exact version (a
        key whose latest version is a delete marker is not yielded).

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._pages(
            ref, "list_object_versions", "listing versions", Prefix=prefix
        ):
            for item in page.get("Versions", []):
                if item.get("IsLatest"):
                    yield item["Key"], item.get("VersionId"), int(item.get("Size", 0))

    async def list_prefixes(self, ref: BucketRef, prefix: str) -> AsyncIterator[str]:
        """Yield the next-level ``/`` prefixes under ``prefix`` that hold any version.

        Version listings are used so that a prefix whose objects are all delete-marked is
        still found.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._pages(
            ref, "list_object_versions", "listing versions", Prefix=prefix, Delimiter="/"
        ):
            for item in page.get("CommonPrefixes", []):
                yield item["Prefix"]

    async def delete_versions(
        self,
        ref: BucketRef,
        targets: list[tuple[str, str | None]],
        *,
        before_each: Check | None = None,
    ) -> int:
        """Delete the given (key, version id) pairs, 1000 a request; return how many went.

        Raises:
            StorageError: S3 refused any of them.
            RegionUnavailableError: the region failed after retries.
        """
        clients = self._clients
        client = clients.s3(ref.aws_region)
        owner = clients.owner[ref.aws_region]
        deleted = 0
        for start in range(0, len(targets), DELETE_BATCH):
            batch = [
                {"Key": key, **({"VersionId": version} if version else {})}
                for key, version in targets[start : start + DELETE_BATCH]
            ]
            if before_each is not None:
                await before_each()
            response = await clients.run(
                ref.aws_region,
                f"deleting from bucket {ref.bucket}",
                lambda batch=batch: client.delete_objects(  # type: ignore[misc]
                    Bucket=ref.bucket, Delete={"Objects": batch, "Quiet": True}, **owner
                ),
            )
            errors = response.get("Errors", [])
            if errors:
                raise StorageError(
                    f"S3 kept {len(errors)} versions in bucket {ref.bucket}",
                    code=str(errors[0].get("Code", "")),
                )
            deleted += len(batch)
        return deleted

    async def delete_object(self, ref: BucketRef, key: str, *, first: Check | None = None) -> int:
        """Delete every version and delete marker of one key; return how many went.

        ``first`` runs once, right before the first DeleteObjects request (the router
        re-checks the org's write fence there); what it raises stops the deletion.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        targets = [
            (found, version)
            async for found, version, _ in self.list_versions(ref, key)
            if found == key
        ]
        if first is not None and targets:
            await first()
        return await self.delete_versions(ref, targets)

    async def delete_prefix(
        self, ref: BucketRef, prefix: str, *, before_each: Check | None = None
    ) -> tuple[int, int]:
        """Delete every version and delete marker under ``prefix``, a page at a time.

        Each round lists the first page again (up to 1000 versions) and deletes it, until
        the listing is empty: continuing from a marker whose version was just deleted is
        not reliable everywhere (some S3 implementations then end the listing early), and
        versions written meanwhile are found too.

        Returns:
            (distinct keys, versions and delete markers) deleted.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        keys: set[str] = set()
        versions = 0
        last: list[tuple[str, str | None]] = []
        while True:
            batch: list[tuple[str, str | None]] = []
            async with contextlib.aclosing(self.list_versions(ref, prefix)) as listing:
                async for key, version, _ in listing:
                    batch.append((key, version))
                    if len(batch) == DELETE_BATCH:
                        break
            if not batch:
                return len(keys), versions
            if batch == last:
                raise StorageError(
                    f"S3 listed the same {len(batch)} versions in bucket {ref.bucket} again "
                    "after deleting them; they were not deleted"
                )
            versions += await self.delete_versions(ref, batch, before_each=before_each)
            keys.update(key for key, _ in batch)
            last = batch

    async def abort_uploads(
        self,
        ref: BucketRef,
        prefix: str,
        *,
        select: Callable[[str, datetime | None], bool] | None = None,
    ) -> int:
        """Abort multipart uploads under ``prefix`` (those ``select(key, initiated)`` picks).

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        targets = [
            (key, upload_id)
            async for key, upload_id, initiated in self.list_uploads(ref, prefix)
            if select is None or select(key, initiated)
        ]
        clients = self._clients
        client = clients.s3(ref.aws_region)
        owner = clients.owner[ref.aws_region]
        aborted = 0
        for key, upload_id in targets:
            try:
                await clients.run(
                    ref.aws_region,
                    f"aborting a multipart upload in bucket {ref.bucket}",
                    lambda key=key, upload_id=upload_id: client.abort_multipart_upload(  # type: ignore[misc]
                        Bucket=ref.bucket, Key=key, UploadId=upload_id, **owner
                    ),
                )
            except ObjectNotFoundError:
                continue
            except StorageError as exc:
                if exc.code != "NoSuchUpload":
                    raise
                continue  # finished or aborted meanwhile: idempotent
            aborted += 1
        return aborted
