"""Presigned URLs: SigV4 query signing on the region's own client, every header bound.

botocore presigns S3 with SigV2 unless the client names a signature version, and SigV2
moves ``x-amz-*`` headers into the query string, where nothing obliges the uploader to keep
them. Here every presigned request is SigV4, so each header (the encryption, the region's
key, the residency tags, the content type) is among ``X-Amz-SignedHeaders``: S3 refuses a
request that leaves one out or changes it. The headers are read from the request botocore
signed (``before-sign``), so the caller is told exactly what to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from botocore.exceptions import BotoCoreError, NoCredentialsError, ParamValidationError

from router._s3.clients import RegionClients
from router.errors import InvalidArgumentError, ResidencyViolationError, StorageError
from router.types import Placement

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
