"""Presigned URLs: SigV4 query signing on the region's own client, every header bound.

botocore presigns S3 with SigV2 unless the client names a signature version, and SigV2
moves ``x-amz-*`` headers into the query string, where nothing obliges the uploader to keep
them. Here every presigned request is SigV4, so each header (the encryption, the region's
key, the residency tags, the content type) is among ``X-Amz-SignedHeaders``: S3 refuses a
request that leaves one out or changes it. The headers are read from the request botocore
signed (``before-sign``), so the caller is told exactly what to send. A :class:`Presigner`
hands out uploads that land as the router's own writes and downloads of checked objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import BotoCoreError, NoCredentialsError, ParamValidationError

from router._s3.clients import RegionClients
from router._s3.objects import ObjectStore, described_write
from router.config import RouterSettings
from router.errors import InvalidArgumentError, ResidencyViolationError, StorageError
from router.types import Placement

# What every presigned upload must sign: S3 refuses an upload that leaves one out or changes it.
_BOUND_ON_UPLOAD = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
    "x-amz-tagging",
)

_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("residency_presigned", default=None)


def _sigv4_for_presigning(
    signature_version: str = "", context: Mapping[str, Any] | None = None, **_: Any
) -> str | None:
    """``choose-signer``: SigV4 query signing for presigned URLs (botocore's default: SigV2)."""
    if context and context.get("is_presign_request") and signature_version == "v4-query":
        return "s3v4"  # botocore appends "-query"
    return None


def _capture_headers(request: Any = None, **_: Any) -> None:
    """``before-sign``: remember the headers of the request about to be presigned."""
    box = _HEADERS.get()
    if box is not None and request is not None and request.context.get("is_presign_request"):
        box.update((str(name), str(value)) for name, value in request.headers.items())


def _hook(client: Any) -> None:
    events = client.meta.events
    # unique_id: registered once per client, whatever the number of calls.
    events.register_first(
        "choose-signer.s3", _sigv4_for_presigning, unique_id="residency-presign-sigv4"
    )
    events.register("before-sign.s3", _capture_headers, unique_id="residency-presign-headers")


async def presign(
    clients: RegionClients,
    place: Placement,
    operation: str,
    params: Mapping[str, Any],
    expires_in: int,
) -> tuple[str, dict[str, str], datetime]:
    """Presign one S3 call on the region's client: the URL, the headers to send, the expiry.

    The region must be admitted (a quarantined region presigns nothing).

    Raises:
        ResidencyViolationError: the URL would not bind every header (not SigV4).
        InvalidArgumentError: botocore refused a parameter.
        StorageError: no credentials.
        RegionUnavailableError, StorageError: the region is quarantined.
    """
    client = clients.s3(place.aws_region)
    _hook(client)
    box: dict[str, str] = {}
    token = _HEADERS.set(box)
    try:
        url: str = await client.generate_presigned_url(
            operation, Params=dict(params), ExpiresIn=expires_in
        )
    except NoCredentialsError:
        raise StorageError(
            f"presigning for bucket {place.bucket} in {place.aws_region}: no AWS credentials "
            "were found; configure them",
            code="NoCredentialsError",
        ) from None
    except (ParamValidationError, ValueError):
        raise InvalidArgumentError(
            f"presigning for bucket {place.bucket}: a parameter was refused; nothing was signed"
        ) from None
    except BotoCoreError as exc:
        raise StorageError(
            f"presigning for bucket {place.bucket} in {place.aws_region} failed "
            f"({type(exc).__name__})"
        ) from None
    finally:
        _HEADERS.reset(token)
    query = parse_qs(urlsplit(url).query)
    signed = set(query.get("X-Amz-SignedHeaders", [""])[0].split(";")) - {""}
    headers = {name: value for name, value in box.items() if name.lower() != "host"}
    if (
        query.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"]
        or "host" not in signed
        or {name.lower() for name in headers} != signed - {"host"}
    ):
        raise ResidencyViolationError(
            f"a presigned URL for bucket {place.bucket} would not bind every header it needs "
            "(not SigV4); nothing was handed out"
        )
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return url, headers, signed_at + timedelta(seconds=expires_in)


class Presigner:
    """Presigned uploads and downloads of single objects, each in the placement's region only.

    An upload binds what :meth:`ObjectStore.put` writes (the encryption, the key, the tags);
    a download is of a version whose key was checked first.
    """

    __slots__ = ("_clients", "_objects", "_settings")

    def __init__(
        self, clients: RegionClients, objects: ObjectStore, settings: RouterSettings
    ) -> None:
        self._clients = clients
        self._objects = objects
        self._settings = settings

    async def presign_put(
        self,
        place: Placement,
        key: str,
        *,
        tagging: str,
        expires_in: int,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sha256_b64: str | None = None,
    ) -> tuple[str, dict[str, str], datetime]:
        """Presign a PutObject as :meth:`ObjectStore.put` writes it: URL, headers, expiry.

        Raises:
            ResidencyViolationError: the URL would not bind the encryption and tags, or
                names another region.
            StorageError, RegionUnavailableError: no credentials; the region is quarantined.
        """
        params: dict[str, Any] = {
            "Key": key,
            **self._objects.encryption(place),
            **described_write(tagging, content_type, metadata),
        }
        if sha256_b64:
            params["ChecksumSHA256"] = sha256_b64
        url, headers, expires_at = await presign(
            self._clients, place, "put_object", params, expires_in
        )
        required = set(_BOUND_ON_UPLOAD) | ({"content-type"} if content_type else set())
        if not required <= {name.lower() for name in headers}:
            raise ResidencyViolationError(
                f"a presigned upload to bucket {place.bucket} would not bind its encryption "
                "and tags; nothing was handed out"
            )
        self._check_url(place, url)
        return url, headers, expires_at

    async def presign_get(
        self, place: Placement, key: str, *, expires_in: int
    ) -> tuple[str, datetime]:
        """Presign a GetObject of the current version, once its key is checked.

        The URL names the version checked (a later write is not served by it) and needs no
        header, so a plain link works.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError, RegionUnavailableError: as for :meth:`ObjectStore.head`.
        """
        found = await self._objects.head(place, key)
        params: dict[str, Any] = {"Bucket": place.bucket, "Key": key}
        if found.version_id:
            params["VersionId"] = found.version_id
        url, headers, expires_at = await presign(
            self._clients, place, "get_object", params, expires_in
        )
        if headers:
            raise ResidencyViolationError(
                f"a presigned download from bucket {place.bucket} would need headers; "
                "nothing was handed out"
            )
        self._check_url(place, url)
        return url, expires_at

    def _check_url(self, place: Placement, url: str) -> None:
        """Refuse a URL that is not the region's own (AWS: https, the regional endpoint)."""
        if self._settings.endpoint_url is not None:
            return  # a local endpoint: the one the router itself uses
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "https" or not host.endswith(f".{place.aws_region}.amazonaws.com"):
            raise ResidencyViolationError(
                f"a presigned URL for bucket {place.bucket} does not name {place.aws_region}'s "
                "regional endpoint; nothing was handed out"
            )
