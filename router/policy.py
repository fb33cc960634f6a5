"""Pure residency decisions: ids, keys, placement, full object keys and tags (no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote

from router.errors import ConfigError, InvalidKeyError
from router.regions import RegionMap
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
    Region,
    org_id_problem,
    retention_tag_value,
)

MAX_FULL_KEY_BYTES = 1024


def parse_org_id(value: object) -> OrgId:
    """Validate an org id from a caller.

    Raises:
        InvalidKeyError: the id is not 1-128 ASCII letters, digits, '-' or '_'.
    """
    problem = org_id_problem(value)
    if problem is not None:
        raise InvalidKeyError(f"{problem}; nothing was sent")
    assert isinstance(value, str)
    return OrgId(value)


def parse_data_class(value: object) -> DataClass:
    """Validate a data class from a caller.

    Raises:
        InvalidKeyError: not one of the data classes.
    """
    if isinstance(value, DataClass):
        return value
    try:
        return DataClass(value if isinstance(value, str) else "")
    except ValueError:
        allowed = ", ".join(d.value for d in DataClass)
        raise InvalidKeyError(f"unknown data class {value!r} (one of {allowed})") from None


def _is_xml_valid(code: int) -> bool:
    # XML 1.0 Char production minus the three whitespace controls (refused separately):
    # S3 list responses are XML, and one such key breaks listing the whole bucket.
    return 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF


def key_problem(key: object) -> str | None:
    """Return what is wrong with a caller's object key, or None when it is acceptable."""
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


def object_key(org_id: OrgId, data_class: DataClass, key: str) -> str:
    """Build and check the full S3 key ``orgs/{org_id}/{data_class}/{key}``.

    Raises:
        InvalidKeyError: the key breaks a key rule or the full key exceeds 1024 bytes.
    """
    problem = key_problem(key)
    if problem is not None:
        raise InvalidKeyError(f"{problem}; nothing was sent")
    full = f"{KEY_ROOT}/{org_id}/{data_class.value}/{key}"
    size = len(full.encode("utf-8"))
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
) -> Placement:
    """Return where ``org``'s data lives.

    Raises:
        ConfigError: the org's region is not in the region map.
    """
    cfg = region_map.regions.get(org.region)
    arn = key_arns.get(org.region)
    if cfg is None or arn is None:
        raise ConfigError(
            f"org {org.org_id} has residency region {org.region.value}, "
            "which the region map does not configure"
        )
    return Placement(org.org_id, org.region, cfg.aws_region, cfg.bucket, arn)


@dataclass(frozen=True, slots=True)
class WriteDecision:
    """What a write does: where, under which full key, with which tags, or why it is skipped."""

    placement: Placement
    data_class: DataClass
    key: str
    tags: Mapping[str, str]
    store: bool
    reason: str
    expires_at: datetime | None = None

    def tagging(self) -> str:
        """Return the tags as S3's URL-encoded ``Tagging`` header value."""
        return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.tags.items())


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
        tags[TAG_EXPIRES] = expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return MappingProxyType(tags)


def decide_put(
    org: OrgResidency,
    place: Placement,
    data_class: DataClass,
    key: str,
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
    full = object_key(org.org_id, data_class, key)
    return WriteDecision(
        placement=place,
        data_class=data_class,
        key=full,
        tags=object_tags(org, data_class, None),
        store=True,
        reason=f"{data_class.value} are stored in the org's residency region until deleted",
    )
