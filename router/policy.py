"""Pure residency decisions: ids, keys, placement, full object keys and tags (no I/O, no clock)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeVar
from urllib.parse import quote

from router.errors import (
    DirectoryUnavailableError,
    InvalidArgumentError,
    InvalidKeyError,
    ProcessingNotEligibleError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
)
from router.regions import EndpointRule, RegionMap
from router.types import (
    KEY_ROOT,
    TAG_CLASS,
    TAG_EXPIRES,
    TAG_ORG,
    TAG_RETENTION,
    TAG_TRAINING,
    TRAINING_OPT_IN,
    TRAINING_OPT_OUT,
    DataClass,
    Explanation,
    Operation,
    OrgId,
    OrgResidency,
    Placement,
    Problem,
    ProcessingRoute,
    Region,
    org_id_problem,
    retention_tag_value,
)

MAX_FULL_KEY_BYTES = 1024
_DATA_CLASS_BY_VALUE: dict[object, DataClass] = {cls.value: cls for cls in DataClass}
_CLASS_SEGMENT = {cls: f"/{cls.value}/" for cls in DataClass}  # f"{enum}" is slow
STALE_UPLOAD_AGE = timedelta(days=1)


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
    problem = org_id_problem(value) or "org id is not valid"
    raise InvalidKeyError(f"{problem}; nothing was sent")


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
    return value.astimezone(UTC)


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
    if not (key and key.isascii() and key.isprintable()):
        return False
    first = key[0]
    if first == "/" or key[-1] == "/" or "//" in key:
        return False
    if first != "." and "/." not in key:
        return True  # no segment can start with a dot, so none is '.' or '..'
    framed = f"/{key}/"
    return "/./" not in framed and "/../" not in framed


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


def placement(
    org: OrgResidency, region_map: RegionMap, key_arns: Mapping[Region, str]
) -> Placement | None:
    """Return where ``org``'s data lives; None when the map does not configure its region."""
    cfg = region_map.regions.get(org.region)
    arn = key_arns.get(org.region)
    if cfg is None or arn is None:
        return None
    return Placement(org.org_id, org.region, cfg.aws_region, cfg.bucket, arn)


class WriteDecision(NamedTuple):
    """What a write does: where, under which full key, with which tags, or why it is skipped.

    A named tuple: it is built on every write, and tuples are the cheapest immutable record.
    """

    placement: Placement
    data_class: DataClass
    key: str
    tags: Mapping[str, str]
    store: bool
    reason: str
    expires_at: datetime | None = None
    tag_header: str = ""

    def tagging(self) -> str:
        """Return the tags as S3's URL-encoded ``Tagging`` header value."""
        return self.tag_header or encode_tags(self.tags)


def encode_tags(tags: Mapping[str, str]) -> str:
    """Return tags as S3's URL-encoded ``Tagging`` header value."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())


@dataclass(frozen=True, slots=True)
class KeptTags:
    """The tags of an org's objects that are kept until deleted, and their header form."""

    tags: Mapping[str, str]
    header: str


def kept_tags(org: OrgResidency, data_class: DataClass) -> KeptTags:
    """Return the tags of ``org``'s ``data_class`` objects kept until deleted (cacheable)."""
    tags = object_tags(org, data_class, None)
    return KeptTags(tags, encode_tags(tags))


_new_tuple = tuple.__new__

_KEPT_REASON = {
    cls: f"{cls.value} are stored in the org's residency region until deleted" for cls in DataClass
}


def object_tags(
    org: OrgResidency, data_class: DataClass, expires_at: datetime | None
) -> Mapping[str, str]:
    """Return the tags every object of ``org`` in ``data_class`` carries."""
    retains = data_class is DataClass.INPUTS_OUTPUTS
    tags = {
        TAG_ORG: org.org_id,
        TAG_CLASS: data_class.value,
        TAG_RETENTION: retention_tag_value(org.retention_days if retains else None),
        TAG_TRAINING: TRAINING_OPT_IN if org.training_opt_in else TRAINING_OPT_OUT,
    }
    if retains and expires_at is not None:
        tags[TAG_EXPIRES] = _iso(expires_at)
    return MappingProxyType(tags)


def decide_put(
    org: OrgResidency,
    place: Placement,
    data_class: DataClass,
    key: str,
    full_key: str | None = None,
    kept: KeptTags | None = None,
) -> WriteDecision:
    """Decide a caller's ``put``: files and fine-tuning data, kept until deleted.

    Raises:
        InvalidKeyError: ``inputs_outputs`` (recorded only through ``record_exchange``) or a
            key that breaks a key rule.
    """
    if data_class is DataClass.INPUTS_OUTPUTS:
        raise InvalidKeyError(
            "put does not accept inputs_outputs: record API inputs and outputs with "
            "record_exchange, which applies retention and zero data retention"
        )
    full = full_key if full_key is not None else object_key(org.org_id, data_class, key)
    if kept is None:
        kept = kept_tags(org, data_class)
    # tuple.__new__ skips the generated __new__: this runs on every put.
    return _new_tuple(
        WriteDecision,
        (place, data_class, full, kept.tags, True, _KEPT_REASON[data_class], None, kept.header),
    )


# -- start-up -------------------------------------------------------------------------

VerifyMode = Literal["strict", "quarantine", "off"]


@dataclass(frozen=True, slots=True)
class StartupVerdict:
    """What start-up does with the regions' verification results.

    ``error`` is the error to raise (None: serve), ``quarantine`` the regions to refuse while
    the others serve, each with the problem that decided it.
    """

    error: ResidencyError | None
    quarantine: Mapping[Region, Problem]


def startup_verdict(mode: VerifyMode, checks: Mapping[Region, Sequence[Problem]]) -> StartupVerdict:
    """Decide start-up from every region's problems (``verify_on_start``).

    ``strict``: any problem aborts; a residency violation wins over everything else, and a
    region merely unreachable is :class:`RegionUnavailableError` only when nothing else is
    wrong. ``quarantine`` (and ``off``, whose only checks are key resolutions): each failing
    region is refused, the others serve.
    """
    failing = {region: list(problems) for region, problems in checks.items() if problems}
    if mode == "strict" and failing:
        found = [problem for problems in failing.values() for problem in problems]
        violations = [p.message for p in found if p.kind == "violation"]
        others = [p.message for p in found if p.kind != "violation"]
        message = "verify_on_start=strict: " + "; ".join(violations + others)
        error: ResidencyError
        if violations:
            error = ResidencyViolationError(message)
        elif all(p.kind == "unavailable" for p in found):
            error = RegionUnavailableError(message)
        else:
            error = StorageError(message)
        return StartupVerdict(error, MappingProxyType({}))
    return StartupVerdict(
        None, MappingProxyType({region: worst(problems) for region, problems in failing.items()})
    )


def worst(problems: Sequence[Problem]) -> Problem:
    """The problem that decides a region's fate: the first violation, else the first."""
    for problem in problems:
        if problem.kind == "violation":
            return problem
    return problems[0]


# -- processing -----------------------------------------------------------------------


def endpoint_rule(region_map: RegionMap, endpoint: object) -> EndpointRule:
    """Return the rule of a listed processing endpoint.

    Raises:
        ProcessingNotEligibleError: the endpoint is not listed (exact paths only).
    """
    rule = region_map.processing.endpoints.get(endpoint) if isinstance(endpoint, str) else None
    if rule is None:
        listed = ", ".join(sorted(region_map.processing.endpoints)) or "none"
        raise ProcessingNotEligibleError(
            f"endpoint {endpoint!r} is not listed in processing.endpoints (exact paths: "
            f"{listed}); it is refused for every org"
        )
    return rule


def decide_processing(
    org: OrgResidency, region_map: RegionMap, endpoint: object
) -> ProcessingRoute:
    """Decide where a processing call goes.

    A pinned org gets its region's processing endpoint for regional endpoints and is refused
    for the others; an unpinned org goes to the default processing region.

    Raises:
        ProcessingNotEligibleError: the endpoint is not listed, or not regional for a
            pinned org.
        DirectoryUnavailableError: the org's pinned region has no processing endpoint (a
            record the map does not allow).
    """
    rule = endpoint_rule(region_map, endpoint)
    if org.processing_region is not None:
        if not rule.regional:
            raise ProcessingNotEligibleError(
                f"org {org.org_id} pins processing to {org.processing_region.value} and "
                f"{rule.path} is not regional: it cannot be processed there, and is never "
                "processed elsewhere"
            )
        region = org.processing_region
        reason = (
            f"org pins processing to {region.value}; {rule.path} is regional, so it is "
            f"processed in {region.value}"
        )
    else:
        region = region_map.processing.default_region
        reason = (
            f"org has no processing pin; {rule.path} goes to the default processing "
            f"region {region.value}"
        )
    cfg = region_map.regions.get(region)
    if cfg is None or cfg.processing_endpoint is None:
        raise DirectoryUnavailableError(
            f"org {org.org_id} pins processing to {region.value}, which has no "
            "processing_endpoint in the region map; nothing was sent"
        )
    return ProcessingRoute(region=region, url=cfg.processing_endpoint + rule.path, reason=reason)


# -- inputs and outputs ---------------------------------------------------------------


def expiry_of(org: OrgResidency, region_map: RegionMap, now: datetime) -> datetime:
    """Return when inputs/outputs recorded at ``now`` must be gone.

    Raises:
        DirectoryUnavailableError: the org's window is not one of ``retention.allowed_days``.
    """
    days = org.retention_days
    if days not in region_map.retention.allowed_days:
        raise DirectoryUnavailableError(
            f"org {org.org_id} has retention_days {days}, which is not one of "
            f"retention.allowed_days {list(region_map.retention.allowed_days)}"
        )
    return _utc(now) + timedelta(days=days)


def exchange_key(org_id: OrgId, expires_at: datetime, endpoint: str, token: str) -> str:
    """Return the full key of one recorded exchange (expiry day first, for the purge)."""
    day = _utc(expires_at).strftime("%Y-%m-%d")
    return (
        f"{org_prefix(org_id, DataClass.INPUTS_OUTPUTS)}{day}/{endpoint.lstrip('/')}/{token}.json"
    )


def exchange_document(
    endpoint: str, recorded_at: datetime, request: bytes, response: bytes
) -> bytes:
    """Return the JSON object stored for one exchange (base64 when a body is not UTF-8)."""
    try:
        encoding = "utf-8"
        request_text, response_text = request.decode("utf-8"), response.decode("utf-8")
    except UnicodeDecodeError:
        encoding = "base64"
        request_text = base64.b64encode(request).decode("ascii")
        response_text = base64.b64encode(response).decode("ascii")
    document = {
        "endpoint": endpoint,
        "recorded_at": _iso(recorded_at),
        "encoding": encoding,
        "request": request_text,
        "response": response_text,
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def decide_exchange(
    org: OrgResidency,
    place: Placement,
    region_map: RegionMap,
    endpoint: object,
    now: datetime,
    token: str,
) -> WriteDecision:
    """Decide whether and where one API exchange is recorded.

    Recording is storage, not processing: it goes to the org's storage region whatever its
    processing pin, and a pinned org's call to a non-regional endpoint is recorded as usual.

    Raises:
        ProcessingNotEligibleError: the endpoint is not listed.
        DirectoryUnavailableError: the org's retention window is not allowed.
    """
    rule = endpoint_rule(region_map, endpoint)
    expires_at = expiry_of(org, region_map, now)
    key = exchange_key(org.org_id, expires_at, rule.path, token)
    tags = object_tags(org, DataClass.INPUTS_OUTPUTS, expires_at)
    if org.zero_data_retention:
        store, reason = False, "org has zero data retention: inputs and outputs are never stored"
    elif not rule.retains_data:
        store, reason = False, f"endpoint {rule.path} never retains data (retains_data: false)"
    else:
        store = True
        reason = (
            f"inputs and outputs are kept {_days(org.retention_days)} for abuse monitoring in the "
            f"org's storage region {place.region.value}, then deleted"
        )
    return WriteDecision(place, DataClass.INPUTS_OUTPUTS, key, tags, store, reason, expires_at)


def expiry_day_of(day_prefix: str) -> date | None:
    """Parse the expiry day out of ``orgs/{org}/inputs_outputs/YYYY-MM-DD/``; None if not one."""
    parts = day_prefix.rstrip("/").split("/")
    if len(parts) != 4 or parts[0] != KEY_ROOT or parts[2] != DataClass.INPUTS_OUTPUTS.value:
        return None
    try:
        return date.fromisoformat(parts[3])
    except ValueError:
        return None


def is_expired(day: date, now: datetime) -> bool:
    """Return True when data whose expiry day is ``day`` must be purged at ``now``."""
    return day <= _utc(now).date()


def is_stale_exchange_upload(key: str, initiated: datetime | None, now: datetime) -> bool:
    """Return True for an inputs/outputs multipart upload started over a day before ``now``.

    An upload with no start time is treated as stale: an exchange upload takes seconds.
    """
    parsed = split_object_key(key)
    if parsed is None or parsed[1] is not DataClass.INPUTS_OUTPUTS:
        return False
    return initiated is None or _utc(initiated) < _utc(now) - STALE_UPLOAD_AGE


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- explain --------------------------------------------------------------------------

_KEY_SHAPE = "{key}"
_TOKEN_SHAPE = "{uuid4 hex}"


def explain(
    org: OrgResidency,
    place: Placement,
    region_map: RegionMap,
    operation: Operation,
    data_class: DataClass | None,
    endpoint: str | None,
    now: datetime,
) -> Explanation:
    """Return the decision the router would take for one operation, with the rule behind each part.

    Raises:
        InvalidArgumentError: ``record_exchange`` or ``route_processing`` without an endpoint.
    """
    rules = {
        "placement": (
            f"org {org.org_id} has residency region {org.region.value}: its data lives only in "
            f"bucket {place.bucket} ({place.aws_region}) under that region's KMS key"
        )
    }
    store = False
    key: str | None = None
    tags: Mapping[str, str] = MappingProxyType({})
    expires_at: datetime | None = None
    route: ProcessingRoute | None = None
    if operation in (Operation.RECORD_EXCHANGE, Operation.ROUTE_PROCESSING) and not endpoint:
        raise InvalidArgumentError(f"explaining {operation.value} needs an endpoint")
    if operation is Operation.PUT:
        cls = data_class or DataClass.FILES
        key = f"{org_prefix(org.org_id, cls)}{_KEY_SHAPE}"
        if cls is DataClass.INPUTS_OUTPUTS:
            rules["store"] = "put refuses inputs_outputs: they are recorded by record_exchange"
        else:
            store = True
            tags = object_tags(org, cls, None)
            rules["store"] = f"{cls.value} are stored until the org deletes them"
            rules["tags"] = _tags_rule(org)
    elif operation is Operation.RECORD_EXCHANGE:
        decision = decide_exchange(org, place, region_map, endpoint, now, _TOKEN_SHAPE)
        store, key, tags, expires_at = (
            decision.store,
            decision.key,
            decision.tags,
            decision.expires_at,
        )
        rules["store"] = decision.reason
        rules["key"] = "the expiry day leads the key so the purge finds expired data by prefix"
        rules["tags"] = _tags_rule(org)
        rules["expires_at"] = (
            f"recorded now + {org.retention_days} days; purged on that UTC day at the latest"
        )
    elif operation is Operation.ROUTE_PROCESSING:
        try:
            route = decide_processing(org, region_map, endpoint)
            rules["processing"] = route.reason
        except ProcessingNotEligibleError as exc:
            rules["processing"] = f"refused (ProcessingNotEligibleError): {exc}"
        rules["store"] = "routing a call stores nothing"
    elif operation is Operation.ERASE:
        key = org_prefix(org.org_id, data_class)
        rules["store"] = (
            "erasure deletes every version and delete marker under this prefix in the org's "
            "region, and aborts its multipart uploads"
        )
    else:
        cls = data_class or DataClass.FILES
        key = f"{org_prefix(org.org_id, cls)}{_KEY_SHAPE}"
        verb = (
            "reads check the object's KMS key"
            if operation is Operation.GET
            else ("deletes remove every version and delete marker")
        )
        rules["store"] = f"{operation.value} stores nothing; {verb}, in the org's region only"
    return Explanation(
        org_id=org.org_id,
        operation=operation,
        placement=place,
        store=store,
        key=key,
        tags=tags,
        expires_at=expires_at,
        processing_route=route,
        rules=MappingProxyType(rules),
    )


def _tags_rule(org: OrgResidency) -> str:
    training = "opted in" if org.training_opt_in else "not opted in"
    return f"tags record the org, class, retention and training choice (org is {training})"
