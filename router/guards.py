"""Pure residency guards: is this AWS answer a residency violation? (router and drift check).

No I/O and no clock: each predicate looks at what AWS answered and returns what is wrong,
or None. The router's clients (through :mod:`router._aws`), its start-up verification and
the operators' drift check all ask these same questions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.regions import parse_kms_arn
from router.types import AwsRegion

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
