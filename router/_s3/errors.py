"""Error translation at the S3/KMS boundary: botocore and aiohttp failures become residency errors.

One context manager, in the shape of httpx's exception mapping: everything the clients raise
inside it leaves as a :class:`~router.errors.ResidencyError`, and the outcome is written in the
region's health book on the way (a region answers for its own failures, never for the
caller's mistakes).
"""

from __future__ import annotations

from json import JSONDecodeError
from types import TracebackType

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ParamValidationError

from router._answers import MalformedAnswerError, answer_violation
from router._retry import error_code, is_transient
from router._s3.health import HealthBook
from router.errors import (
    InvalidArgumentError,
    ObjectNotFoundError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
)
from router.types import AwsRegion

NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
"""Codes that mean "no such object": the region answered as it should."""

REGION_BROKEN = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "KMS.DisabledException",
        "KMS.KMSInvalidStateException",
        "KMS.NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
    }
)
"""Codes that say the region cannot serve anyone until an operator acts: quarantined.

Any other refusal (``InvalidArgument``, ``EntityTooLarge``, ...) is about one request and is
not recorded against the region at all.
"""

OBJECT_SCOPED = REGION_BROKEN - {"NoSuchBucket", "AllAccessDisabled", "InvalidAccessKeyId"}
"""Of those, the ones that a read of one object can get because of that object alone (it is
under a disabled or foreign key, or a policy denies it): a read does not quarantine for them.
"""


class LeanMisuseError(TypeError):
    """The lean transport was asked for something it does not send; nothing was sent."""


class S3Errors:
    """``with S3Errors(health, region, what):`` maps what the block raises (httpx's shape).

    * residency errors pass through (a redirect or foreign region quarantines the region);
    * ``ClientError``: transient codes become :class:`RegionUnavailableError`, missing objects
      :class:`ObjectNotFoundError`, everything else :class:`StorageError` with the AWS code;
      codes in :data:`REGION_BROKEN` also quarantine the region;
    * transport failures, and answers nobody can parse, become :class:`RegionUnavailableError`
      (the request was sent: a malformed answer is never taken for a refusal before sending);
    * :class:`LeanMisuseError` (a call the lean transport does not make) becomes a plain
      ``TypeError`` and botocore's ``ParamValidationError`` :class:`InvalidArgumentError`:
      both refuse before sending, and neither is recorded against the region. Any other
      ``TypeError`` is an answer nobody can parse (a nested ``<Code>``, say).

    Messages name the region, bucket and operation (``what``), never object keys or URLs.
    """

    __slots__ = ("_health", "_object_read", "_region", "_what")

    def __init__(
        self, health: HealthBook, aws_region: AwsRegion, what: str, object_read: bool = False
    ) -> None:
        self._health = health
        self._region = aws_region
        self._what = what
        self._object_read = object_read

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        region = self._region
        if exc is None:
            self._health.success(region)
            return
        if not isinstance(exc, Exception):
            return  # cancellation and exits pass through untouched
        translated = self._translate(exc)
        if translated is not exc:
            if isinstance(translated, ResidencyError) and isinstance(exc, ClientError):
                translated.aws_code = error_code(exc) or None
                metadata = exc.response.get("ResponseMetadata", {})
                translated.request_id = metadata.get("RequestId") or None
            # Not chained: botocore's message and traceback can carry the URL, and so a key.
            raise translated from None

    def _translate(self, exc: Exception) -> BaseException:
        region, what, health = self._region, self._what, self._health
        if isinstance(exc, ResidencyViolationError):
            if exc.region_wide:
                health.quarantine(region, "violation", str(exc))
            return exc
        if isinstance(exc, ResidencyError):
            return exc
        if isinstance(exc, ClientError):
            code = error_code(exc)
            if is_transient(exc):
                health.failure(region)
                return RegionUnavailableError(
                    f"{what} in {region} failed after retries ({code}); "
                    "retry later in the same region"
                )
            if code in NOT_FOUND:
                health.success(region)
                return ObjectNotFoundError(f"{what}: no such object in {region}")
            if code in REGION_BROKEN and not (self._object_read and code in OBJECT_SCOPED):
                health.quarantine(region, "storage", f"{what} refused ({code})")
            return StorageError(f"{what} refused in {region}", code=code)
        if isinstance(exc, LeanMisuseError):
            # A call the lean transport does not make: the router's bug, not the region's.
            # A fresh error, so that nothing of an earlier attempt (its URL) rides along.
            return TypeError(str(exc))
        if isinstance(exc, ParamValidationError):
            # botocore's checks of the arguments, before sending: not recorded against the
            # region. Its report quotes the values, and so perhaps a key: not repeated.
            return InvalidArgumentError(f"{what}: the request was refused before sending")
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"{what} in {region}: no AWS credentials were found; configure them",
                code="NoCredentialsError",
            )
        if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
            health.failure(region)
            return RegionUnavailableError(
                f"{what} in {region} failed after retries ({type(exc).__name__}); "
                "retry later in the same region"
            )
        if isinstance(exc, ValueError) and not isinstance(exc, UnicodeError | JSONDecodeError):
            # aiohttp and botocore refuse malformed headers with ValueError before sending:
            # the caller's input, not the region.
            return InvalidArgumentError(f"{what}: the request was refused before sending")
        # An answer botocore cannot parse (an empty body where XML belongs, a header that
        # is not the number or date the model says, a field S3 always sends missing).
        if isinstance(exc, MalformedAnswerError) and exc.status is not None:
            # It never reached the redirect guard: a redirect or a foreign region is still
            # refused as one (the guard's own check, on what could be read).
            parsed = {"ResponseMetadata": {"HTTPHeaders": exc.headers}}
            violation = answer_violation("s3", region, f"{what} in {region}", exc.status, parsed)
            if violation is not None:
                return self._translate(violation)
        health.failure(region)
        why = exc.reason if isinstance(exc, MalformedAnswerError) else type(exc).__name__
        return RegionUnavailableError(
            f"{what} in {region} got an answer that could not be read ({why}); "
            "retry later in the same region"
        )
