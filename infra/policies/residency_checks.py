"""Custom checkov policies for residency-router data buckets, their keys and policies.

Loaded with ``checkov --external-checks-dir infra/policies``. They cover what the built-in
CloudFormation checks miss. A bucket tagged ``residency-role: access-logs`` is a log bucket
and exempt from the data-bucket policies; every other bucket is treated as a data bucket.
Each policy has a fixture under ``tests/infra_fixtures/`` that it must fail.
"""

from __future__ import annotations

import re
from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

RETENTION_TAG = "residency-retention"
ROLE_TAG = "residency-role"
ACCESS_LOGS = "access-logs"


def _props(conf: dict[str, Any]) -> dict[str, Any]:
    props = conf.get("Properties")
    return props if isinstance(props, dict) else {}


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _is_log_bucket(conf: dict[str, Any]) -> bool:
    tags = _props(conf).get("Tags")
    if not isinstance(tags, list):
        return False
    return any(
        isinstance(t, dict) and t.get("Key") == ROLE_TAG and t.get("Value") == ACCESS_LOGS
        for t in tags
    )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _lifecycle_rules(conf: dict[str, Any]) -> list[dict[str, Any]]:
    lifecycle = _props(conf).get("LifecycleConfiguration")
    rules = lifecycle.get("Rules") if isinstance(lifecycle, dict) else None
    return [r for r in rules if isinstance(r, dict)] if isinstance(rules, list) else []


class _DataBucketCheck(BaseResourceCheck):
    def __init__(self, name: str, check_id: str) -> None:
        super().__init__(
            name=name,
            id=check_id,
            categories=(CheckCategories.GENERAL_SECURITY,),
            supported_resources=("AWS::S3::Bucket",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Return PASSED or FAILED for one resource."""
        if _is_log_bucket(conf):
            return CheckResult.UNKNOWN
        return CheckResult.PASSED if self.holds(conf) else CheckResult.FAILED

    def holds(self, conf: dict[str, Any]) -> bool:
        """Return True when the data bucket satisfies the policy."""
        raise NotImplementedError


class DataBucketKmsCustomerKey(_DataBucketCheck):
    """Data buckets encrypt by default with SSE-KMS under a customer key, nothing else."""

    def __init__(self) -> None:
        super().__init__(
            "Residency data buckets default to SSE-KMS under a customer managed key",
            "CKV_RR_1",
        )

    def holds(self, conf: dict[str, Any]) -> bool:
        """Return True when the data bucket satisfies the policy."""
        encryption = _props(conf).get("BucketEncryption")
        rules = (
            encryption.get("ServerSideEncryptionConfiguration")
            if isinstance(encryption, dict)
            else None
        )
        if not isinstance(rules, list) or not rules:
            return False
        for rule in rules:
            default = rule.get("ServerSideEncryptionByDefault") if isinstance(rule, dict) else None
            if not isinstance(default, dict) or default.get("SSEAlgorithm") != "aws:kms":
                return False
            key = default.get("KMSMasterKeyID")
            if not key or (isinstance(key, str) and key.endswith("alias/aws/s3")):
                return False
        return True


class KeyRotationEnabled(BaseResourceCheck):
    """Residency keys rotate their material yearly."""

    def __init__(self) -> None:
        super().__init__(
            name="Residency KMS keys have automatic rotation enabled",
            id="CKV_RR_2",
            categories=(CheckCategories.ENCRYPTION,),
            supported_resources=("AWS::KMS::Key",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Return PASSED or FAILED for one resource."""
        enabled = _is_true(_props(conf).get("EnableKeyRotation"))
        return CheckResult.PASSED if enabled else CheckResult.FAILED


class SingleRegionKey(BaseResourceCheck):
    """A multi-region key can be replicated out of the residency region."""

    def __init__(self) -> None:
        super().__init__(
            name="Residency KMS keys are single-region keys",
            id="CKV_RR_3",
            categories=(CheckCategories.ENCRYPTION,),
            supported_resources=("AWS::KMS::Key",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Return PASSED or FAILED for one resource."""
        multi = _is_true(_props(conf).get("MultiRegion"))
        return CheckResult.FAILED if multi else CheckResult.PASSED


class BucketPolicyDeniesOldTransport(BaseResourceCheck):
    """Bucket policies deny plain HTTP and TLS older than 1.2 for every S3 action."""

    def __init__(self) -> None:
        super().__init__(
            name="Residency bucket policies deny non-TLS requests and TLS older than 1.2",
            id="CKV_RR_4",
            categories=(CheckCategories.NETWORKING,),
            supported_resources=("AWS::S3::BucketPolicy",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Return PASSED or FAILED for one resource."""
        document = _props(conf).get("PolicyDocument")
        statements = document.get("Statement") if isinstance(document, dict) else None
        denies = [
            s
            for s in _as_list(statements)
            if isinstance(s, dict)
            and s.get("Effect") == "Deny"
            and "s3:*" in _as_list(s.get("Action"))
        ]
        has_tls = any(
            str(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport", "")).lower()
            == "false"
            for s in denies
        )
        has_version = False
        for s in denies:
            minimum = s.get("Condition", {}).get("NumericLessThan", {}).get("s3:TlsVersion")
            try:
                has_version = has_version or float(str(minimum)) >= 1.2
            except ValueError:
                continue
        return CheckResult.PASSED if has_tls and has_version else CheckResult.FAILED


class LifecycleWithinWindow(_DataBucketCheck):
    """Retention-tagged expirations exist and never exceed the window their tag names."""

    _WINDOW = re.compile(r"^(\d+)d$")

    def __init__(self) -> None:
        super().__init__(
            "Residency data buckets expire retention-tagged objects within their window",
            "CKV_RR_5",
        )

    def holds(self, conf: dict[str, Any]) -> bool:
        """Return True when the data bucket satisfies the policy."""
        windows = 0
        for rule in _lifecycle_rules(conf):
            for tag in _as_list(rule.get("TagFilters") or []):
                if not isinstance(tag, dict) or tag.get("Key") != RETENTION_TAG:
                    continue
                match = self._WINDOW.match(str(tag.get("Value", "")))
                days = rule.get("ExpirationInDays")
                if match is None or rule.get("Status") != "Enabled" or days is None:
                    return False
                if int(days) > int(match.group(1)):
                    return False
                windows += 1
        return windows > 0


class NoncurrentVersionExpiry(_DataBucketCheck):
    """Deleted data must not linger as noncurrent versions."""

    def __init__(self) -> None:
        super().__init__(
            "Residency data buckets expire noncurrent versions in an untagged rule",
            "CKV_RR_6",
        )

    def holds(self, conf: dict[str, Any]) -> bool:
        """Return True when the data bucket satisfies the policy."""
        for rule in _lifecycle_rules(conf):
            if rule.get("Status") != "Enabled" or rule.get("TagFilters"):
                continue
            if rule.get("NoncurrentVersionExpiration") or rule.get(
                "NoncurrentVersionExpirationInDays"
            ):
                return True
        return False


check_kms_customer_key = DataBucketKmsCustomerKey()
check_key_rotation = KeyRotationEnabled()
check_single_region = SingleRegionKey()
check_transport = BucketPolicyDeniesOldTransport()
check_lifecycle_window = LifecycleWithinWindow()
check_noncurrent = NoncurrentVersionExpiry()
