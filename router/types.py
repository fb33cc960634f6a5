"""Vocabulary of the package: regions, data classes, ids, records, results and tag keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal, NewType

OrgId = NewType("OrgId", str)
"""A validated organization id (ASCII letters, digits, ``-``, ``_``; 1-128 characters)."""

AwsRegion = NewType("AwsRegion", str)
"""An AWS region name such as ``eu-west-1``; never a residency :class:`Region`."""


class Region(StrEnum):
    """A residency region: where an org's data lives."""

    US = "us"
    EU = "eu"
    JP = "jp"
    CA = "ca"
    KR = "kr"
    SG = "sg"
    IN = "in"


class DataClass(StrEnum):
    """What kind of data an object is; decides retention."""

    INPUTS_OUTPUTS = "inputs_outputs"
    FILES = "files"
    FINE_TUNING = "fine_tuning"


class Operation(StrEnum):
    """An operation the router can be asked to explain."""

    PUT = "put"
    GET = "get"
    DELETE = "delete"
    RECORD_EXCHANGE = "record_exchange"
    ROUTE_PROCESSING = "route_processing"
    ERASE = "erase"


TRAINABLE: frozenset[DataClass] = frozenset({DataClass.FILES, DataClass.FINE_TUNING})
"""The only data classes that can ever be training-eligible (never inputs and outputs)."""

PROCESSING_REGIONS: frozenset[Region] = frozenset({Region.US, Region.EU})
"""The residency regions an org may pin its processing to."""

# Tag keys and values shared by policy (what is written) and hardening (lifecycle filters).
TAG_ORG = "residency-org"
TAG_CLASS = "residency-class"
TAG_RETENTION = "residency-retention"
TAG_EXPIRES = "residency-expires"
TAG_TRAINING = "residency-training"
RETENTION_KEEP = "keep"
TRAINING_OPT_IN = "opt-in"
TRAINING_OPT_OUT = "opt-out"

KEY_ROOT = "orgs"
"""Every object the router writes lives under ``orgs/{org_id}/{data_class}/``."""


def retention_tag_value(days: int | None) -> str:
    """Return the ``residency-retention`` tag value for a window (``30d``) or ``keep``."""
    return RETENTION_KEEP if days is None else f"{days}d"


@dataclass(frozen=True, slots=True)
class OrgValues:
    """The values of an org record that a scheduled change replaces at its instant."""

    region: Region
    processing_region: Region | None = None
    retention_days: int = 30
    zero_data_retention: bool = False
    training_opt_in: bool = False


MovePhase = Literal["copying", "fenced", "switched", "aborting"]
"""Where a move stands: first copy running; writes fenced (from ``fence_at``); switch
scheduled (from ``switch_at`` every router reads and writes the target, then the source is
cleaned); or being abandoned (writes unfenced, the target's partial copy being deleted)."""


@dataclass(frozen=True, slots=True)
class OrgMove:
    """A move in progress, recorded in the org's record so that it can resume."""

    from_region: Region
    to_region: Region
    phase: MovePhase
    started_at: datetime
    fence_at: datetime | None = None
    """From this instant every router refuses the org's writes until the switch."""
    switch_at: datetime | None = None
    objects_copied: int = 0
    bytes_copied: int = 0


@dataclass(frozen=True, slots=True)
class OrgResidency:
    """One org's residency record, as the directory returns it.

    Records are versioned. A change is written as the next ``version`` with the new values
    here and the values before it in ``previous``; every router applies ``previous`` before
    ``effective_at`` and these values from it (``effective_at`` is never earlier than the
    write plus ``cache_ttl_s`` plus ``clock_skew_s``, so no cache can hold a record older
    than the change past that instant). ``move`` is set while the org moves between regions;
    ``moved_from`` lists the regions it has left (``erase_org`` may still erase there).
    """

    org_id: OrgId
    region: Region
    processing_region: Region | None = None
    retention_days: int = 30
    zero_data_retention: bool = False
    training_opt_in: bool = False
    version: int = 0
    effective_at: datetime | None = None
    previous: OrgValues | None = None
    move: OrgMove | None = None
    moved_from: tuple[Region, ...] = ()

    @property
    def values(self) -> OrgValues:
        """The values this version sets (from ``effective_at`` on)."""
        return OrgValues(
            self.region,
            self.processing_region,
            self.retention_days,
            self.zero_data_retention,
            self.training_opt_in,
        )


ProblemKind = Literal["violation", "unavailable", "storage"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a region: how bad (``kind``) and what, with its field path.

    ``violation``: data could leave the region (never served); ``storage``: AWS refuses for
    good until an operator acts; ``unavailable``: unreachable for now.
    """

    kind: ProblemKind
    message: str


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an org's data lives: region, AWS region, bucket and KMS key."""

    org_id: OrgId
    region: Region
    aws_region: AwsRegion
    bucket: str
    kms_key_arn: str


@dataclass(frozen=True, slots=True)
class ProcessingRoute:
    """Where a processing call goes, and why."""

    region: Region
    url: str
    reason: str


@dataclass(frozen=True, slots=True)
class WriteReceipt:
    """What a write did: where it landed, under which key, with which checksum."""

    org_id: OrgId
    region: Region
    aws_region: AwsRegion
    bucket: str
    key: str
    version_id: str | None
    sha256: str
    kms_key_arn: str
    data_class: DataClass
    stored: bool = True
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object, named by the caller's key.

    ``head`` and ``get_object`` fill every field; a listing only the first six (S3 lists no
    content type, metadata or checksum). ``checksum_sha256`` is S3's base64 SHA-256 as S3
    reports it (a multipart object's ends in ``-{parts}``: a checksum of the parts' ones);
    ``metadata`` is the user metadata (``x-amz-meta-*``) without its prefix.
    """

    org_id: OrgId
    data_class: DataClass
    key: str
    size: int
    version_id: str | None
    last_modified: datetime
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    checksum_sha256: str | None = None
    etag: str = ""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes (the whole object, or the range asked for) and what S3 says of it.

    ``info.size`` is the size of the whole object; ``len(body)`` what was read.
    """

    body: bytes
    info: ObjectInfo


@dataclass(frozen=True, slots=True)
class PresignedUpload:
    """A presigned upload: send ``method`` to ``url`` with exactly ``headers`` before expiry.

    Every header here is signed: S3 refuses an upload that leaves one out or changes it (the
    encryption, the region's key, the residency tags, the content type).
    """

    url: str
    headers: Mapping[str, str]
    expires_at: datetime
    method: str = "PUT"


@dataclass(frozen=True, slots=True)
class DeleteReceipt:
    """What a delete removed."""

    org_id: OrgId
    region: Region
    key: str
    versions_deleted: int


@dataclass(frozen=True, slots=True)
class ErasureReceipt:
    """What an erasure removed."""

    org_id: OrgId
    region: Region
    data_class: DataClass | None
    objects_deleted: int
    versions_deleted: int
    uploads_aborted: int


@dataclass(frozen=True, slots=True)
class MoveReceipt:
    """What a move did (or, with ``dry_run``, would do)."""

    org_id: OrgId
    from_region: Region
    to_region: Region
    objects_copied: int
    bytes_copied: int
    versions_deleted: int
    uploads_aborted: int
    writes_fenced_s: float
    started_at: datetime
    finished_at: datetime
    dry_run: bool = False
    phases: tuple[str, ...] = ()
    """The phases in order, each in words (what was done, or would be with ``dry_run``)."""


AuditKind = Literal[
    "wrong_region",
    "unknown_org",
    "unencrypted",
    "wrong_key",
    "bad_tags",
    "expired",
    "stale_upload",
    "foreign_key",
]
"""What an audit finding breaks: outside the org's region, an org the directory does not
know, not SSE-KMS, SSE-KMS under another key, missing or wrong residency tags, an exchange
kept past its expiry by more than one sweep, an upload older than a day, a key outside the
``orgs/{org_id}/{data_class}/`` layout."""


@dataclass(frozen=True, slots=True)
class AuditFinding:
    """One object version or upload that breaks a residency promise."""

    region: Region
    bucket: str
    key: str
    kind: AuditKind
    detail: str
    org_id: str | None = None
    version_id: str | None = None
    upload_id: str | None = None


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What a residency audit found; ``ok`` only when every region was checked and is clean.

    ``unchecked`` names each region that could not be checked (the CLI exits 2 then).
    """

    ok: bool
    findings: tuple[AuditFinding, ...]
    versions_checked: Mapping[Region, int]
    uploads_checked: Mapping[Region, int]
    unchecked: Mapping[Region, str]
    started_at: datetime
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class RegionPurge:
    """What a purge removed in one region."""

    objects: int = 0
    versions: int = 0
    uploads_aborted: int = 0


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge removed, per region."""

    now: datetime
    by_region: Mapping[Region, RegionPurge]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Per-region verification result; a region is fine when its problem list is empty."""

    ok: bool
    by_region: Mapping[Region, list[str]]


HealthState = Literal["ok", "degraded", "quarantined"]


@dataclass(frozen=True, slots=True)
class RegionHealth:
    """A region's recent health as seen by this router."""

    state: HealthState
    last_success: datetime | None
    failure_rate: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Explanation:
    """The decision the router would take for one operation, and the rule behind each part."""

    org_id: OrgId
    operation: Operation
    placement: Placement
    store: bool
    key: str | None
    tags: Mapping[str, str]
    expires_at: datetime | None
    processing_route: ProcessingRoute | None
    rules: Mapping[str, str] = field(default_factory=dict)


_ORG_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
ORG_ID_MAX_LEN = 128


_ORG_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")


def org_id_problem(value: object) -> str | None:
    """Return what is wrong with an org id, or None when it is valid."""
    if isinstance(value, str) and _ORG_ID.match(value):
        return None
    if not isinstance(value, str):
        return f"org id must be a string, got {type(value).__name__}"
    if not value:
        return "org id must not be empty"
    if len(value) > ORG_ID_MAX_LEN:
        return f"org id is {len(value)} characters; at most {ORG_ID_MAX_LEN} are allowed"
    if not _ORG_ID_CHARS.issuperset(value):
        return "org id may contain only ASCII letters, digits, '-' and '_'"
    return None
