"""Pure residency guards: is this AWS answer a residency violation? (router and drift check).

No I/O and no clock: each predicate looks at what AWS answered and returns what is wrong,
or None. The router's clients (through :mod:`router._aws`), its start-up verification and
the operators' drift check all ask these same questions; the residency audit
(:mod:`router.scan`) asks them of every stored version and upload.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from router.inputs import split_object_key
from router.regions import parse_kms_arn
from router.types import (
    KEY_ROOT,
    RETENTION_KEEP,
    TAG_CLASS,
    TAG_EXPIRES,
    TAG_ORG,
    TAG_RETENTION,
    TAG_TRAINING,
    TRAINING_OPT_IN,
    TRAINING_OPT_OUT,
    AuditKind,
    AwsRegion,
    DataClass,
    Region,
)

SSE_KMS = "aws:kms"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
REDIRECT_CODES = frozenset({"PermanentRedirect", "TemporaryRedirect", "Redirect"})


def response_violation(
    status: int | None, parsed: Mapping[str, Any], aws_region: str, *, is_s3: bool
) -> str | None:
    """Return why an answer is a redirect or names another region, or None.

    ``parsed`` is botocore's parsed response (``Error``, ``ResponseMetadata``).
    """
    error = parsed.get("Error") or {}
    code = error.get("Code")
    headers = (parsed.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    bucket_region = headers.get("x-amz-bucket-region") if is_s3 else None
    where = f" (bucket reports region {bucket_region})" if bucket_region else ""
    if status in REDIRECT_STATUSES:
        named = code if code and code != str(status) else "a redirect"
        return f"{status} {named}{where}"
    if not is_s3:
        return None
    if code in REDIRECT_CODES:
        return f"{status} {code}{where}"
    if bucket_region and bucket_region != aws_region:
        return f"{status} {code or ''}{where}".replace("  ", " ")
    if code == "AuthorizationHeaderMalformed" and "Region" in error:
        return f"{status} {code} (signed for {aws_region}, S3 expects {error['Region']})"
    if code == "IllegalLocationConstraintException":
        return f"{status} {code}"
    return None


def s3_head_probe(status: int | None, operation: str) -> bool:
    """True when botocore would probe a bucket's region after a bare 400 to a HEAD."""
    return status == 400 and operation in ("HeadObject", "HeadBucket")


def encryption_problem(response: Mapping[str, Any], kms_key_arn: str) -> str | None:
    """Return why an object's answer is not SSE-KMS under ``kms_key_arn``, or None."""
    algorithm = response.get("ServerSideEncryption")
    if algorithm != SSE_KMS:
        return f"is not SSE-KMS encrypted (found {algorithm or 'none'})"
    if response.get("SSEKMSKeyId") != kms_key_arn:
        return "is encrypted under a KMS key other than the region's"
    return None


def bucket_region(location_constraint: object) -> AwsRegion:
    """Return the AWS region of a ``GetBucketLocation`` answer (None and 'EU' are legacy)."""
    found = str(location_constraint or "us-east-1")
    return AwsRegion("eu-west-1" if found == "EU" else found)


def location_problem(location_constraint: object, aws_region: str) -> str | None:
    """Return why a bucket's location is not ``aws_region``, or None."""
    found = bucket_region(location_constraint)
    return None if found == aws_region else f"is in {found}, not {aws_region}"


def key_region_problem(
    meta: Mapping[str, Any], aws_region: str, account_id: str | None = None
) -> str | None:
    """Return why a KMS key (``DescribeKey`` metadata) may hold data outside the region."""
    arn = parse_kms_arn(str(meta.get("Arn", "")))
    if arn is None or arn.aws_region != aws_region:
        found = arn.aws_region if arn else "an unknown region"
        return f"key is in {found}, bucket region is {aws_region}"
    if meta.get("MultiRegion"):
        return "a multi-region key may be replicated elsewhere"
    if account_id and arn.account != account_id:
        return f"key belongs to account {arn.account}"
    return None


def key_state_problem(meta: Mapping[str, Any]) -> str | None:
    """Return why a KMS key cannot encrypt now (disabled, pending deletion), or None."""
    state = meta.get("KeyState")
    return None if state == "Enabled" else f"key state is {state}"


def replication_problem(rules: list[Any]) -> str:
    """Describe a bucket replication configuration: data would leave the region."""
    return f"replication is configured ({len(rules)} rules): data would leave the region"


# -- the residency audit: one object version or upload at a time -----------------------

AuditJudgement = tuple[AuditKind, str]
"""One promise an audited version or upload breaks: its kind, and what, in words."""

_RETENTION_DAYS = re.compile(r"[1-9][0-9]{0,4}d\Z")


def placement_findings(
    key: str, region: Region, allowed: Collection[Region] | None
) -> list[AuditJudgement]:
    """Judge where one version or upload is: outside the key layout, unknown org, wrong region.

    ``allowed`` holds the regions the key's org may keep data in now (both regions of a
    move while it runs); None when the directory does not know the org.
    """
    parsed = split_object_key(key)
    if parsed is None:
        return [("foreign_key", f"key is outside the {KEY_ROOT}/{{org_id}}/{{data_class}}/ layout")]
    org_id = parsed[0]
    if allowed is None:
        return [("unknown_org", f"org {org_id} is not in the directory")]
    if region in allowed:
        return []
    where = " or ".join(sorted(r.value for r in allowed)) or "no region"
    return [("wrong_region", f"org {org_id} keeps its data in {where}, not {region.value}")]


def encryption_finding(head: Mapping[str, Any], kms_key_arn: str) -> AuditJudgement | None:
    """Judge a version's ``HeadObject`` answer: SSE-KMS under the region's key, or what not."""
    algorithm = head.get("ServerSideEncryption")
    if algorithm != SSE_KMS:
        return ("unencrypted", f"not SSE-KMS encrypted (found {algorithm or 'none'})")
    found = head.get("SSEKMSKeyId")
    if found != kms_key_arn:
        return ("wrong_key", f"SSE-KMS under {found or 'an unnamed key'}, not {kms_key_arn}")
    return None


def tag_expiry(tags: Mapping[str, str]) -> datetime | None:
    """The instant a ``residency-expires`` tag names (UTC), or None when missing or malformed."""
    value = tags.get(TAG_EXPIRES)
    if value is None:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if instant.tzinfo is None else instant.astimezone(UTC)


def tag_problems(
    tags: Mapping[str, str], org_id: str, data_class: DataClass, allowed_days: Collection[int]
) -> list[str]:
    """Return what is wrong with one object's residency tags (empty when they are right).

    The org and class tags must match the key; retention is ``keep`` for files and
    fine-tuning data and ``<N>d`` (N one of ``allowed_days``, each of which has a lifecycle
    rule) for inputs and outputs, which also need ``residency-expires``; training is
    ``opt-in`` or ``opt-out``.
    """
    problems: list[str] = []

    def check(name: str, is_right: bool, expected: str) -> None:
        if name not in tags:
            problems.append(f"{name} is missing")
        elif not is_right:
            problems.append(f"{name} must be {expected}")

    check(TAG_ORG, tags.get(TAG_ORG) == org_id, repr(org_id))
    check(TAG_CLASS, tags.get(TAG_CLASS) == data_class.value, repr(data_class.value))
    retention = tags.get(TAG_RETENTION, "")
    if data_class is DataClass.INPUTS_OUTPUTS:
        days = sorted(allowed_days)
        check(
            TAG_RETENTION,
            _RETENTION_DAYS.match(retention) is not None and int(retention[:-1]) in days,
            "<N>d with N one of " + ", ".join(map(str, days)),
        )
        check(TAG_EXPIRES, tag_expiry(tags) is not None, "a UTC ISO 8601 instant")
    else:
        check(TAG_RETENTION, retention == RETENTION_KEEP, repr(RETENTION_KEEP))
    check(
        TAG_TRAINING,
        tags.get(TAG_TRAINING) in (TRAINING_OPT_IN, TRAINING_OPT_OUT),
        f"{TRAINING_OPT_IN} or {TRAINING_OPT_OUT}",
    )
    return problems


def audit_version_findings(
    key: str,
    *,
    region: Region,
    allowed: Collection[Region] | None,
    head: Mapping[str, Any],
    kms_key_arn: str,
    tags: Mapping[str, str],
    key_expires_at: datetime | None,
    expired_before: datetime,
    allowed_days: Collection[int],
) -> list[AuditJudgement]:
    """Judge one stored object version: every residency promise it breaks, in order.

    Args:
        key: the full S3 key.
        region: the region whose bucket holds it.
        allowed: as for :func:`placement_findings`.
        head: the version's ``HeadObject`` answer.
        kms_key_arn: the key the region's objects must be under.
        tags: the version's tags (ignored for a key outside the layout).
        key_expires_at: for inputs and outputs, the expiry its key names (day, then time
            of day; the end of the day without one); None when the key names none.
        expired_before: an exchange whose expiry is earlier than this was kept past it by
            more than one purge sweep.
        allowed_days: the retention windows the region map allows.
    """
    found = placement_findings(key, region, allowed)
    problem = encryption_finding(head, kms_key_arn)
    if problem is not None:
        found.append(problem)
    parsed = split_object_key(key)
    if parsed is None:
        return found
    org_id, data_class, _ = parsed
    problems = tag_problems(tags, org_id, data_class, allowed_days)
    if problems:
        found.append(("bad_tags", "; ".join(problems)))
    if data_class is not DataClass.INPUTS_OUTPUTS:
        return found
    if key_expires_at is None:
        found.append(
            ("foreign_key", "inputs_outputs key names no expiry day: the purge never finds it")
        )
    # The router writes both from one instant; the earlier one is the promise to keep.
    known = [at for at in (tag_expiry(tags), key_expires_at) if at is not None]
    if known and min(known) < expired_before:
        found.append(("expired", f"expired at {_iso(min(known))}, more than one purge sweep ago"))
    return found


def audit_upload_findings(
    key: str,
    *,
    region: Region,
    allowed: Collection[Region] | None,
    initiated: datetime | None,
    stale_before: datetime,
) -> list[AuditJudgement]:
    """Judge one multipart upload: where it is (its parts are data) and whether it is stale.

    An upload with no start time counts as stale.
    """
    found = placement_findings(key, region, allowed)
    if initiated is None:
        found.append(("stale_upload", "multipart upload with no start time"))
    elif initiated < stale_before:
        found.append(("stale_upload", f"multipart upload started {_iso(initiated)}"))
    return found


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
