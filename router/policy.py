"""Pure residency decisions: placement, writes, processing, retention, start-up (no I/O)."""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal
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
from router.inputs import MAX_FULL_KEY_BYTES, object_key, org_prefix, plain_str, split_object_key
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
    OrgId,
    OrgResidency,
    Placement,
    Problem,
    ProcessingRoute,
    Region,
    WriteReceipt,
    retention_tag_value,
)

STALE_UPLOAD_AGE = timedelta(days=1)


def placement(
    org: OrgResidency, region_map: RegionMap, key_arns: Mapping[Region, str]
) -> Placement | None:
    """Return where ``org``'s data lives; None when the map does not configure its region."""
    cfg = region_map.regions.get(org.region)
    arn = key_arns.get(org.region)
    if cfg is None or arn is None:
        return None
    return Placement(org.org_id, org.region, cfg.aws_region, cfg.bucket, arn)


@dataclass(slots=True, init=False)
class WriteDecision:
    """What a write does: where, under which full key, with which tags, or why it is skipped.

    Made by :func:`write_decision` (or a :class:`KeptPut`), and not changed after. Built on
    every write, so without an ``__init__``: a class with none is made at once and its slots
    set plainly, about 500 machine instructions less than a named tuple (whose instances
    are copied out of an argument tuple) and 1,000 less than a generated ``__init__``.
    Compared field by field, as a dataclass is.
    """

    placement: Placement
    data_class: DataClass
    key: str
    tags: Mapping[str, str]
    store: bool
    reason: str
    expires_at: datetime | None
    tag_header: str

    def tagging(self) -> str:
        """Return the tags as S3's URL-encoded ``Tagging`` header value."""
        return self.tag_header or encode_tags(self.tags)


def write_decision(
    placement: Placement,
    data_class: DataClass,
    key: str,
    tags: Mapping[str, str],
    store: bool,
    reason: str,
    expires_at: datetime | None = None,
    tag_header: str = "",
) -> WriteDecision:
    """Return the :class:`WriteDecision` of these fields."""
    decision = WriteDecision()
    decision.placement = placement
    decision.data_class = data_class
    decision.key = key
    decision.tags = tags
    decision.store = store
    decision.reason = reason
    decision.expires_at = expires_at
    decision.tag_header = tag_header
    return decision


def encode_tags(tags: Mapping[str, str]) -> str:
    """Return tags as S3's URL-encoded ``Tagging`` header value."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())


@dataclass(frozen=True, slots=True)
class KeptPut:
    """What every put of one org's kept data class shares: computed once per cached record.

    ``prefix`` is the full key up to the caller's key; ``key_room`` how many characters of
    a printable-ASCII caller key still fit S3's 1024-byte limit after it.
    """

    placement: Placement
    data_class: DataClass
    prefix: str
    tags: Mapping[str, str]
    header: str
    reason: str
    key_room: int

    def decision(self, full_key: str) -> WriteDecision:
        """The decision of a put under ``full_key``, which must already be checked."""
        # write_decision's steps, inline: a call more costs what the slotted class saved
        # (about 500 machine instructions), and this runs on every put.
        decision = WriteDecision()
        decision.placement = self.placement
        decision.data_class = self.data_class
        decision.key = full_key
        decision.tags = self.tags
        decision.store = True
        decision.reason = self.reason
        decision.expires_at = None
        decision.tag_header = self.header
        return decision


# A member read from the enum class costs about 0.1 us (EnumType's lookup); a global, 20 ns.
_INPUTS_OUTPUTS = DataClass.INPUTS_OUTPUTS

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


def kept_put(org: OrgResidency, place: Placement, data_class: DataClass) -> KeptPut:
    """Return what ``org``'s puts of ``data_class`` share: files and fine-tuning data.

    Raises:
        InvalidKeyError: ``inputs_outputs``, recorded only through ``record_exchange``.
    """
    if data_class is _INPUTS_OUTPUTS:
        raise InvalidKeyError(
            "put does not accept inputs_outputs: record API inputs and outputs with "
            "record_exchange, which applies retention and zero data retention"
        )
    tags = object_tags(org, data_class, None)
    prefix = org_prefix(org.org_id, data_class)
    return KeptPut(
        place,
        data_class,
        prefix,
        tags,
        encode_tags(tags),
        _KEPT_REASON[data_class],
        MAX_FULL_KEY_BYTES - len(prefix.encode("utf-8")),
    )


def decide_put(
    org: OrgResidency, place: Placement, data_class: DataClass, key: str
) -> WriteDecision:
    """Decide a caller's ``put``: files and fine-tuning data, kept until deleted.

    Raises:
        InvalidKeyError: ``inputs_outputs`` (recorded only through ``record_exchange``) or a
            key that breaks a key rule.
    """
    kept = kept_put(org, place, data_class)
    return kept.decision(object_key(org.org_id, data_class, key))


def write_receipt(decision: WriteDecision, version_id: str | None, sha256: str) -> WriteReceipt:
    """Return the receipt of a decided write (``stored=False`` when policy skipped it)."""
    place = decision.placement
    # Filled as a _ReceiptFields, then made the WriteReceipt it is laid out as (see there).
    receipt: Any = _ReceiptFields()
    receipt.org_id = place.org_id
    receipt.region = place.region
    receipt.aws_region = place.aws_region
    receipt.bucket = place.bucket
    receipt.key = decision.key if decision.store else ""
    receipt.version_id = version_id
    receipt.sha256 = sha256
    receipt.kms_key_arn = place.kms_key_arn
    receipt.data_class = decision.data_class
    receipt.stored = decision.store
    receipt.reason = decision.reason
    receipt.__class__ = WriteReceipt
    made: WriteReceipt = receipt
    return made


class _ReceiptFields:
    """A :class:`WriteReceipt` being filled: its slots, without its frozen ``__setattr__``.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, about
    1,300 machine instructions a field, 11 fields: more than the rest of a warm put's routing
    decision. Set plainly here and then given the class it is laid out as (``__class__``
    assignment, which Python allows between classes of the same slots and base), the receipt
    costs a fifth of that and is every bit a WriteReceipt: frozen, equal and hashed as one.
    ``write_receipt`` sets every field; ``tests/test_policy.py`` checks it against the
    dataclass's own constructor.
    """

    __slots__ = WriteReceipt.__slots__


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
        TypeError: the endpoint is not a str.
        ProcessingNotEligibleError: the endpoint is not listed (exact paths only).
    """
    if not isinstance(endpoint, str):
        raise TypeError(
            f"endpoint must be a str such as /v1/chat/completions, got {type(endpoint).__name__}"
        )
    rule = region_map.processing.endpoints.get(plain_str(endpoint))
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
    """Return the full key of one recorded exchange: its expiry day, then its expiry time.

    ``orgs/{org}/inputs_outputs/YYYY-MM-DD/THHMMSSZ/{endpoint}/{token}.json``: the purge
    finds expired data by listing prefixes (no tag reads), and deletes an exchange no earlier
    than its expiry instant (rounded up to the whole second, so never before it).
    """
    instant = _utc(expires_at)
    if instant.microsecond:
        instant = instant.replace(microsecond=0) + timedelta(seconds=1)
    return (
        f"{org_prefix(org_id, DataClass.INPUTS_OUTPUTS)}{instant:%Y-%m-%d}/T{instant:%H%M%S}Z/"
        f"{endpoint.lstrip('/')}/{token}.json"
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
    return write_decision(place, DataClass.INPUTS_OUTPUTS, key, tags, store, reason, expires_at)


def expiry_day_of(day_prefix: str) -> date | None:
    """Parse the expiry day out of ``orgs/{org}/inputs_outputs/YYYY-MM-DD/``; None if not one."""
    parts = day_prefix.rstrip("/").split("/")
    if len(parts) != 4 or parts[0] != KEY_ROOT or parts[2] != DataClass.INPUTS_OUTPUTS.value:
        return None
    try:
        return date.fromisoformat(parts[3])
    except ValueError:
        return None


PurgeScope = Literal["day", "by-time", "none"]


def purge_scope(day: date, now: datetime) -> PurgeScope:
    """How much of an expiry day's exchanges may go at ``now``.

    ``day``: the whole day is past, everything under it goes. ``by-time``: the day is today,
    only exchanges whose expiry time (the key's ``THHMMSSZ`` segment) has come may go;
    exchanges stored without a time segment wait for the whole day to pass. ``none``: later.
    """
    today = _utc(now).date()
    if day < today:
        return "day"
    return "by-time" if day == today else "none"


def expiry_instant_of(day: date, time_prefix: str) -> datetime | None:
    """The expiry instant of a ``.../YYYY-MM-DD/THHMMSSZ/`` prefix; None for other prefixes."""
    segment = time_prefix.rstrip("/").rsplit("/", 1)[-1]
    if len(segment) != 8 or segment[0] != "T" or segment[-1] != "Z":
        return None
    digits = segment[1:7]
    if not (digits.isascii() and digits.isdigit()):
        return None
    hour, minute, second = int(digits[:2]), int(digits[2:4]), int(digits[4:])
    if hour > 23 or minute > 59 or second > 59:
        return None
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=UTC)


def is_expired(instant: datetime, now: datetime) -> bool:
    """Return True when an exchange expiring at ``instant`` must be purged at ``now``."""
    return _utc(instant) <= _utc(now)


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


def erase_target(
    org_id: OrgId,
    record: OrgResidency | None,
    named: Region | None,
    configured: Collection[Region],
    lived: Collection[Region] = (),
) -> Region:
    """Decide where an erasure runs: the org's region, or the one named.

    ``named`` may be any region in ``lived`` (where the org's record says it has data: its
    region, regions it left, a move's two), or any region for an org gone from the directory.

    Raises:
        ResidencyViolationError: the org never lived in ``named``; nothing is deleted.
        InvalidArgumentError: ``named`` is not a region of the map.
    """
    if named is not None and named not in configured:
        raise InvalidArgumentError(
            f"erase_org: region {named.value} is not in the region map; nothing was deleted"
        )
    if record is None:
        assert named is not None  # the caller re-raises UnknownOrgError otherwise
        return named
    if named is not None and named is not record.region:
        if named in lived:
            return named
        raise ResidencyViolationError(
            f"erase_org: org {org_id} lives in {record.region.value} and never lived in "
            f"{named.value}; nothing was deleted"
        )
    return record.region
