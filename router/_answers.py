"""Answers that arrived but cannot be read: named as such, never as a refusal before sending.

botocore's parsers raise a plain ``ValueError`` for a header that is not the number or date
S3's model says; :class:`router._s3.errors.S3Errors` used to read that as aiohttp refusing
a bad header before sending. Every aiobotocore session (``router._aws.new_aio_session``)
parses through :class:`ReadableAnswers`, and the lean transport reports its own parsing the
same way, so such an answer is :class:`MalformedAnswerError` on both transports; an answer
that cannot be read and is a redirect, or names another region, is still refused as one
(:func:`answer_violation`, the redirect guard's own check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiobotocore.parsers import AioResponseParserFactory
from botocore.parsers import ResponseParserError

from router.errors import ResidencyViolationError
from router.guards import response_violation

UNREADABLE = (ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError)
"""What parsing an answer raises when the answer is malformed (a header that is not the
number or date the model says, a field S3 always sends missing; botocore's timestamp parser
raises ``RuntimeError`` for a date it cannot place)."""


class MalformedAnswerError(ResponseParserError):
    """An answer arrived but could not be read; ``reason`` says why, without its values.

    ``status`` and ``headers`` (names lowercased) are the answer's, when known, so that a
    redirect or a foreign region is still refused as such (:func:`answer_violation`).
    """

    def __init__(
        self, reason: str, status: int | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers or {}


def unreadable_answer(
    exc: BaseException | None, field: str = "", answer: Mapping[str, Any] | None = None
) -> MalformedAnswerError:
    """The error for an answer that arrived but could not be read.

    botocore's parsers raise a plain ``ValueError`` for a malformed header (a timestamp, an
    integer), which reads like a request refused before sending; the request was sent, and
    S3 may have acted on it. The reason names the exception (``exc``) or the missing
    ``field``, never a value: values can quote the object's key. ``answer`` is the raw
    answer botocore's parser was given (``status_code``, ``headers``), when there is one.
    """
    if exc is None:
        reason = f"no {field}" if field else "malformed"
    else:
        reason = f"{field} {type(exc).__name__}" if field else type(exc).__name__
    if answer is None:
        return MalformedAnswerError(reason)
    headers = {str(name).lower(): str(value) for name, value in answer["headers"].items()}
    return MalformedAnswerError(reason, answer["status_code"], headers)


def answer_violation(
    service: str, aws_region: str, where: str, status: int | None, parsed: Mapping[str, Any]
) -> ResidencyViolationError | None:
    """The error for an answer that is a redirect or names another region, or None.

    What :func:`redirect_guard` raises; also applied to answers that could not be parsed,
    which never reach the guard.
    """
    violation = response_violation(status, parsed, aws_region, is_s3=service == "s3")
    if violation is None:
        return None
    error = ResidencyViolationError(
        f"{service} answered {violation} for {where}: "
        "redirects and region mismatches are refused, never followed"
    )
    error.region_wide = True  # the region itself is unsafe: quarantine it
    return error


# What the router reads of each successful answer that S3 always sends: (where, fields), where
# is "" for the answer itself, else a member that is a list (each item) or a structure. botocore's
# parsers check no output field, so an answer without one would raise a bare KeyError where
# the router reads it, past the error translation; here it is unreadable, as any other.
_NEEDED: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "CreateMultipartUploadOutput": (("", ("UploadId",)),),
    "UploadPartOutput": (("", ("ETag",)),),
    "UploadPartCopyOutput": (("", ("CopyPartResult",)), ("CopyPartResult", ("ETag",))),
    "ListObjectsV2Output": (("Contents", ("Key", "Size", "LastModified")),),
    "ListObjectVersionsOutput": (
        ("Versions", ("Key",)),
        ("DeleteMarkers", ("Key",)),
        ("CommonPrefixes", ("Prefix",)),
    ),
    "ListMultipartUploadsOutput": (("Uploads", ("Key", "UploadId")),),
    "GetObjectTaggingOutput": (("TagSet", ("Key", "Value")),),
}


def missing_field(shape_name: str, parsed: Mapping[str, Any]) -> str:
    """The first field the router reads that a successful answer lacks, or ""."""
    for where, fields in _NEEDED.get(shape_name, ()):
        found: Any = parsed.get(where, []) if where else parsed
        items = [found] if isinstance(found, Mapping) else found
        for item in items:
            for name in fields:
                if name not in item:
                    return name
    return ""


class ReadableAnswers(AioResponseParserFactory):
    """aiobotocore's parsers, each wrapped by :class:`_GuardedParser`."""

    def create_parser(self, protocol_name: str) -> Any:
        return _GuardedParser(super().create_parser(protocol_name))


class _GuardedParser:
    """One of botocore's parsers, with what parsing raises turned into :func:`unreadable_answer`."""

    __slots__ = ("_parser",)

    def __init__(self, parser: Any) -> None:
        self._parser = parser

    async def parse(self, response: dict[str, Any], shape: Any) -> Any:
        try:
            parsed = await self._parser.parse(response, shape)
        except UNREADABLE as exc:
            # Not chained: the values stay out.
            raise unreadable_answer(exc, answer=response) from None
        name = getattr(shape, "name", "")
        if name in _NEEDED and response.get("status_code", 500) < 300 and "Error" not in parsed:
            field = missing_field(name, parsed)
            if field:
                raise unreadable_answer(None, field, answer=response)
        return parsed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)
