"""Pure validators of every caller input: org ids, keys, data classes, headers, instants.

One rule per input, each in one place: the router, the CLI and the record validator all ask
these. Wrong Python types raise ``TypeError``; bad values ``InvalidArgumentError`` (org ids
and keys: ``InvalidKeyError``), with the problem named and nothing sent.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeVar

from router.errors import InvalidArgumentError, InvalidKeyError
from router.types import (
    KEY_ROOT,
    DataClass,
    Operation,
    OrgId,
    Region,
    org_id_problem,
)

MAX_FULL_KEY_BYTES = 1024
_DATA_CLASS_BY_VALUE: dict[object, DataClass] = {cls.value: cls for cls in DataClass}
_CLASS_SEGMENT = {cls: f"/{cls.value}/" for cls in DataClass}  # f"{enum}" is slow


def parse_org_id(value: object) -> OrgId:
    """Validate an org id from a caller.

    Raises:
        TypeError: the id is not a str.
        InvalidKeyError: the id is not 1-128 ASCII letters, digits, '-' or '_'.
    """
    if value.__class__ is str and _ORG_ID_MATCH(value):
        return value  # type: ignore[return-value]
    if not isinstance(value, str):
        raise TypeError(f"org id must be a str, got {type(value).__name__}")
    value = plain_str(value)
    if _ORG_ID_MATCH(value):
        return OrgId(value)
    problem = org_id_problem(value) or "org id is not valid"
    raise InvalidKeyError(f"{problem}; nothing was sent")


def plain_str(value: str) -> str:
    """The characters of ``value`` as an exact ``str``.

    A ``str`` subclass can override ``__str__``, ``__format__`` or ``__eq__``: what is checked
    must be exactly what is used to build keys and tags.
    """
    return value if value.__class__ is str else str.__str__(value)


def parse_data_class(value: object) -> DataClass:
    """Validate a data class from a caller.

    Raises:
        TypeError: not a str or DataClass.
        InvalidArgumentError: not one of the data classes.
    """
    if value.__class__ is DataClass:
        return value
    found = _DATA_CLASS_BY_VALUE.get(value) if value.__class__ is str else None
    if found is not None:
        return found
    return _parse_enum(DataClass, value, "data class")


def parse_operation(value: object) -> Operation:
    """Validate an operation name from a caller.

    Raises:
        TypeError: not a str or Operation.
        InvalidArgumentError: not one of the operations.
    """
    return _parse_enum(Operation, value, "operation")


def parse_region(value: object) -> Region:
    """Validate a residency region code from a caller.

    Raises:
        TypeError: not a str or Region.
        InvalidArgumentError: not one of the residency regions.
    """
    return _parse_enum(Region, value, "residency region")


_E = TypeVar("_E", DataClass, Operation, Region)


def _parse_enum(kind: type[_E], value: object, what: str) -> _E:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(item.value for item in kind)
        raise InvalidArgumentError(f"unknown {what} {value!r} (one of {allowed})") from None


def parse_now(value: object) -> datetime:
    """Validate an instant from a caller: an aware datetime, returned in UTC.

    Raises:
        TypeError: not a datetime (a ``date`` included).
        InvalidArgumentError: a naive datetime.
    """
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timezone-aware datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError("the datetime needs a timezone (UTC); nothing was done")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not EARLIEST <= moment <= LATEST:
        raise InvalidArgumentError(
            f"the datetime must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} UTC; "
            "nothing was done"
        )
    return moment


EARLIEST = datetime(1970, 1, 2, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


MAX_METADATA_BYTES = 2048  # S3's limit on user metadata, names and values together
MAX_CONTENT_TYPE = 1024


def _header_value_problem(value: str) -> str | None:
    if not value.isascii():
        return "must be ASCII"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must not contain control characters (CR, LF, NUL, ...)"
    return None


def check_content_type(value: object) -> None:
    """Refuse a content type that cannot travel in an HTTP header.

    Raises:
        TypeError: not a str (or None).
        InvalidArgumentError: non-ASCII, control characters, or too long.
    """
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"content_type must be a str, got {type(value).__name__}")
    problem = _header_value_problem(value)
    if problem is None and len(value) > MAX_CONTENT_TYPE:
        problem = f"must be at most {MAX_CONTENT_TYPE} characters"
    if problem is not None:
        raise InvalidArgumentError(f"content_type {problem}; nothing was sent")


def check_metadata(metadata: object) -> None:
    """Refuse metadata S3 would refuse or that cannot travel in HTTP headers.

    Raises:
        TypeError: not a mapping of str to str.
        InvalidArgumentError: a bad name or value, or over S3's 2 KiB.
    """
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping of str to str, got {type(metadata).__name__}")
    size = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("metadata names and values must be str")
        if not name or not name.isascii() or not all(c.isalnum() or c in "-_" for c in name):
            raise InvalidArgumentError(
                f"metadata name {name!r}: use ASCII letters, digits, '-' and '_'; nothing was sent"
            )
        problem = _header_value_problem(value)
        if problem is not None:
            raise InvalidArgumentError(f"metadata value of {name!r} {problem}; nothing was sent")
        size += len(name) + len(value)
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentError(
            f"metadata is {size} bytes; S3 allows {MAX_METADATA_BYTES}; nothing was sent"
        )


def plain_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """A copy of metadata :func:`check_metadata` passed, each name and value an exact ``str``.

    Sent as checked: a ``str`` subclass (a ``(str, Enum)`` member) would otherwise go out as
    its ``str()`` on some paths and as its characters on others.
    """
    return {plain_str(name): plain_str(value) for name, value in metadata.items()}


def _is_xml_valid(code: int) -> bool:
    # XML 1.0 Char production minus the three whitespace controls (refused separately):
    # S3 list responses are XML, and one such key breaks listing the whole bucket.
    return 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF


# Printable ASCII not starting or ending with '/': with no '//', '/./' or '/../' inside
# it is a valid key. Anything else takes the slow path, which names the problem.
_ORG_ID_MATCH = re.compile(r"[A-Za-z0-9_-]{1,128}\Z").match


def key_problem(key: object) -> str | None:
    """Return what is wrong with a caller's object key, or None when it is acceptable."""
    # Fast path for the common case: printable ASCII cannot hold control or XML-invalid
    # characters, so only the segment rules remain to check.
    if key.__class__ is str and is_plain_key(key):
        return None
    return slow_key_problem(key)


def is_plain_key(key: str) -> bool:
    """Return True when ``key`` passes the fast path of the key rules (printable ASCII)."""
    # isascii() and isprintable() together accept exactly U+0020..U+007E, in C.
    if not (key.isascii() and key.isprintable()):
        return False
    # Framed in slashes, every segment lies between two: '//' means an empty key, a leading
    # or trailing '/' or an empty segment; '/.' a segment starting with a dot, which is
    # refused only when the segment is '.' or '..'.
    framed = f"/{key}/"
    if "//" in framed:
        return False
    return "/." not in framed or ("/./" not in framed and "/../" not in framed)


def slow_key_problem(key: object) -> str | None:
    """Check every key rule character by character (names the first problem found)."""
    if not isinstance(key, str):
        return f"object key must be a string, got {type(key).__name__}"
    if not key:
        return "object key must not be empty"
    if key.startswith("/"):
        return "object key must not start with '/'"
    for index, char in enumerate(key):
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"object key has a control character (U+{code:04X}) at position {index}"
        if not _is_xml_valid(code):
            return f"object key has a code point S3 cannot list (U+{code:04X}) at position {index}"
    for segment in key.split("/"):
        if segment in (".", ".."):
            return f"object key must not contain a {segment!r} path segment"
        if segment == "":
            return "object key must not contain empty path segments ('//' or a trailing '/')"
    return None


def plain_object_key(org_id: str, data_class: DataClass, key: str) -> str | None:
    """Return the full key when id and key pass the fast path of the rules, else None.

    None means "not decided here": the caller then runs ``parse_org_id`` and ``object_key``,
    which either accept or name the problem.
    """
    if (
        org_id.__class__ is str
        and key.__class__ is str
        and (org_id in _VALID_ORG_IDS or _remember_org_id(org_id))
        and is_plain_key(key)
        and len(org_id) + len(key) <= MAX_FULL_KEY_BYTES - 32  # ASCII: characters are bytes
    ):
        return f"{KEY_ROOT}/{org_id}{_CLASS_SEGMENT[data_class]}{key}"
    return None


# A bounded memo of ids that passed the rules: the same orgs come back on every request.
_VALID_ORG_IDS: set[str] = set()
_VALID_ORG_IDS_MAX = 100_000


def _remember_org_id(org_id: str) -> bool:
    if not _ORG_ID_MATCH(org_id):
        return False
    if len(_VALID_ORG_IDS) >= _VALID_ORG_IDS_MAX:
        _VALID_ORG_IDS.clear()
    _VALID_ORG_IDS.add(org_id)
    return True


def object_key(org_id: OrgId, data_class: DataClass, key: str) -> str:
    """Build and check the full S3 key ``orgs/{org_id}/{data_class}/{key}``.

    Raises:
        InvalidKeyError: the key breaks a key rule or the full key exceeds 1024 bytes.
    """
    if isinstance(key, str):
        key = plain_str(key)
    problem = key_problem(key)
    if problem is not None:
        raise InvalidKeyError(f"{problem}; nothing was sent")
    full = f"{KEY_ROOT}/{org_id}{_CLASS_SEGMENT[data_class]}{key}"
    # UTF-8 takes at most 4 bytes a character: short keys need no encoding to be measured.
    size = len(full) if len(full) * 4 <= MAX_FULL_KEY_BYTES else len(full.encode("utf-8"))
    if size > MAX_FULL_KEY_BYTES:
        raise InvalidKeyError(
            f"full object key is {size} bytes; S3 allows {MAX_FULL_KEY_BYTES} "
            f"(the prefix takes {size - len(key.encode('utf-8'))}); nothing was sent"
        )
    return full


def org_prefix(org_id: OrgId, data_class: DataClass | None = None) -> str:
    """Return the S3 prefix that holds an org's objects (of one class when given)."""
    if data_class is None:
        return f"{KEY_ROOT}/{org_id}/"
    return f"{KEY_ROOT}/{org_id}/{data_class.value}/"


def list_prefix(org_id: OrgId, data_class: DataClass, prefix: str) -> str:
    """Return the S3 prefix for listing an org's keys that start with ``prefix``.

    Raises:
        InvalidKeyError: the prefix has characters no key may have.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"list prefix must be a str, got {type(prefix).__name__}")
    if prefix:
        problem = key_problem(prefix.rstrip("/") or "x")
        if problem is not None or prefix.startswith("/"):
            raise InvalidKeyError(f"list prefix: {problem or 'must not start with /'}")
    return org_prefix(org_id, data_class) + prefix


def split_object_key(full_key: str) -> tuple[OrgId, DataClass, str] | None:
    """Parse a full S3 key back into (org id, data class, caller's key); None if not ours."""
    parts = full_key.split("/", 3)
    if len(parts) != 4 or parts[0] != KEY_ROOT:
        return None
    _, org, data_class, key = parts
    if org_id_problem(org) is not None or key_problem(key) is not None:
        return None
    try:
        return OrgId(org), DataClass(data_class), key
    except ValueError:
        return None


def kind_of(value: object) -> str:
    """A short name of a value's type for messages (never the value of a secret)."""
    return "nothing" if value is None else type(value).__name__


def parse_byte_range(start: object, end: object) -> tuple[int | None, int | None]:
    """Validate a byte range ``[start, end)`` from a caller (``start`` in, ``end`` out).

    Raises:
        TypeError: an offset that is not an int (``bool`` included) or None.
        InvalidArgumentError: a negative offset, or ``end <= start``.
    """
    for name, value in (("start", start), ("end", end)):
        if value is not None and (value.__class__ is bool or not isinstance(value, int)):
            raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    first: int | None = start  # type: ignore[assignment]
    last: int | None = end  # type: ignore[assignment]
    if (first is not None and first < 0) or (last is not None and last < 0):
        raise InvalidArgumentError("a byte range cannot be negative; nothing was read")
    if last is not None and last <= (first or 0):
        raise InvalidArgumentError(
            "the byte range is empty (end must be greater than start); nothing was read"
        )
    return first, last


def parse_expires_in(value: object, maximum: int) -> int:
    """Validate a presigned URL's lifetime in seconds (1 to ``maximum``).

    Raises:
        TypeError: not an int.
        InvalidArgumentError: out of bounds.
    """
    if value.__class__ is bool or not isinstance(value, int):
        raise TypeError(f"expires_in must be an int (seconds), got {type(value).__name__}")
    if not 1 <= value <= maximum:
        raise InvalidArgumentError(f"expires_in must be 1 to {maximum} seconds; nothing was signed")
    return int(value)


def sha256_b64(value: object) -> str:
    """Validate a hex SHA-256 from a caller and return S3's base64 form of it.

    Raises:
        TypeError: not a str.
        InvalidArgumentError: not 64 hex digits.
    """
    if not isinstance(value, str):
        raise TypeError(f"sha256 must be a str of 64 hex digits, got {type(value).__name__}")
    if len(value) != 64 or not all(c in "0123456789abcdefABCDEF" for c in value):
        raise InvalidArgumentError("sha256 must be 64 hex digits; nothing was signed")
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")
