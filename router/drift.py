"""The drift check: live buckets and keys compared with the region map and hardening (boto3)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from router._aws import Transport, boto3_client
from router.errors import ResidencyError
from router.guards import key_state_problem, location_problem, replication_problem
from router.hardening import (
    OWNERSHIP,
    HardenedRegion,
    bucket_policy_statements,
    hardened_region,
    public_access_block,
)
from router.regions import RegionConfig, RegionMap, parse_kms_arn

CHECKS = (
    "location",
    "encryption",
    "encryption-key",
    "key-region",
    "key-rotation",
    "key-single-region",
    "public-access-block",
    "ownership",
    "versioning",
    "logging",
    "lifecycle",
    "policy",
    "replication",
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check of one region: passed, or what drifted."""

    region: str
    check: str
    ok: bool
    detail: str = ""


def _norm(value: Any) -> Any:
    """Normalise a policy or rule fragment so equal meaning compares equal."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _norm(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        items = [_norm(v) for v in value]
        return items[0] if len(items) == 1 else tuple(sorted(items, key=repr))
    return value


def _rule_signature(rule: Mapping[str, Any]) -> Any:
    filter_ = rule.get("Filter", {"Prefix": rule.get("Prefix", "")})
    if "And" in filter_:
        prefix = filter_["And"].get("Prefix", "")
        tags = filter_["And"].get("Tags", [])
    else:
        prefix = filter_.get("Prefix", "")
        tags = [filter_["Tag"]] if "Tag" in filter_ else []
    fields = ("Expiration", "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload")
    return _norm(
        {
            "Status": rule.get("Status"),
            "Prefix": prefix or "",
            "Tags": sorted((t["Key"], t["Value"]) for t in tags),
            **{name: rule.get(name) for name in fields},
        }
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unless_missing(call: Callable[[], Any], missing_code: str) -> Any:
    """Return ``call()``, or None when S3 answers that this configuration does not exist."""
    try:
        return call()
    except ClientError as exc:
        if _error_code(exc) == missing_code:
            return None
        raise


class DriftChecker:
    """Compares live buckets and keys with the region map and ``router/hardening.py``."""

    def __init__(
        self,
        region_map: RegionMap,
        *,
        endpoint_url: str | None = None,
        skip: Iterable[str] = (),
        session: boto3.Session | None = None,
        proxy_url: str | None = None,
    ) -> None:
        self._map = region_map
        self._endpoint_url = endpoint_url
        self._skip = frozenset(skip)
        unknown = self._skip - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown checks to skip: {sorted(unknown)} (known: {list(CHECKS)})")
        self._session = session or boto3.Session()
        self._transport = Transport(endpoint_url=endpoint_url, proxy_url=proxy_url)

    def _client(self, service: str, aws_region: str) -> Any:
        # From the one factory: no redirects, no AWS_ENDPOINT_URL, no environment proxies.
        return boto3_client(service, aws_region, self._transport, session=self._session)

    def check(self) -> list[CheckResult]:
        """Run every check in every region; one result per region and check."""
        results: list[CheckResult] = []
        for cfg in self._map:
            results += self.check_region(cfg)
        return results

    def check_region(self, cfg: RegionConfig) -> list[CheckResult]:
        """Run every check in one region."""
        spec = hardened_region(cfg, self._map.retention)
        s3 = self._client("s3", cfg.aws_region)
        kms = self._client("kms", cfg.aws_region)
        region = cfg.region.value
        key_meta = self._key(kms, cfg)
        key_arn = key_meta.get("Arn") if key_meta else None
        probes = {
            "location": lambda: self._location(s3, cfg),
            "encryption": lambda: self._encryption(s3, cfg, key_arn, key_only=False),
            "encryption-key": lambda: self._encryption(s3, cfg, key_arn, key_only=True),
            "key-region": lambda: self._key_region(cfg, key_meta),
            "key-rotation": lambda: self._rotation(kms, key_meta),
            "key-single-region": lambda: self._single_region(key_meta),
            "public-access-block": lambda: self._bpa(s3, cfg),
            "ownership": lambda: self._ownership(s3, cfg),
            "versioning": lambda: self._versioning(s3, cfg),
            "logging": lambda: self._logging(s3, spec),
            "lifecycle": lambda: self._lifecycle(s3, spec),
            "policy": lambda: self._policy(s3, spec, key_arn),
            "replication": lambda: self._replication(s3, cfg),
        }
        results = []
        for name in CHECKS:
            if name in self._skip:
                continue
            try:
                problem = probes[name]()
            except ClientError as exc:
                problem = f"{_error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}"
            except BotoCoreError as exc:
                problem = f"unreachable: {type(exc).__name__}"
            except ResidencyError as exc:
                problem = f"refused: {exc}"
            except Exception as exc:  # an answer of the wrong shape: report it, go on
                problem = f"unreadable answer ({type(exc).__name__})"
            results.append(CheckResult(region, name, problem is None, problem or ""))
        return results

    # Each probe returns None when the check passes, or what drifted.

    def _key(self, kms: Any, cfg: RegionConfig) -> dict[str, Any] | None:
        try:
            meta = kms.describe_key(KeyId=cfg.kms_key)["KeyMetadata"]
        except Exception:  # refused, unreachable or malformed: every key check says so
            return None
        return meta if isinstance(meta, dict) else None

    def _location(self, s3: Any, cfg: RegionConfig) -> str | None:
        found = s3.get_bucket_location(Bucket=cfg.bucket).get("LocationConstraint")
        problem = location_problem(found, cfg.aws_region)
        return None if problem is None else f"bucket {problem}"

    def _encryption(
        self, s3: Any, cfg: RegionConfig, key_arn: str | None, *, key_only: bool
    ) -> str | None:
        found = _unless_missing(
            lambda: s3.get_bucket_encryption(Bucket=cfg.bucket),
            "ServerSideEncryptionConfigurationNotFoundError",
        )
        if found is None:
            return "no default encryption"
        rules = (found.get("ServerSideEncryptionConfiguration") or {}).get("Rules") or []
        if not rules:
            return "no default encryption (the configuration has no rules)"
        default = rules[0].get("ApplyServerSideEncryptionByDefault", {})
        if not key_only:
            if default.get("SSEAlgorithm") != "aws:kms":
                return f"default encryption is {default.get('SSEAlgorithm')}, not aws:kms"
            if not rules[0].get("BucketKeyEnabled"):
                return "S3 Bucket Keys are off"
            return None
        configured = default.get("KMSMasterKeyID")
        if key_arn is None:
            return "the region's KMS key cannot be described"
        if configured != key_arn:
            return f"default key is {configured}, not the region's key {key_arn}"
        return None

    def _key_region(self, cfg: RegionConfig, meta: Mapping[str, Any] | None) -> str | None:
        if meta is None:
            return "the region's KMS key cannot be described"
        arn = parse_kms_arn(str(meta.get("Arn", "")))
        if arn is None or arn.aws_region != cfg.aws_region:
            return f"key {meta.get('Arn')} is not in {cfg.aws_region}"
        return key_state_problem(meta)

    def _rotation(self, kms: Any, meta: Mapping[str, Any] | None) -> str | None:
        if meta is None:
            return "the region's KMS key cannot be described"
        status = kms.get_key_rotation_status(KeyId=meta["KeyId"])
        return None if status.get("KeyRotationEnabled") else "key rotation is off"

    def _single_region(self, meta: Mapping[str, Any] | None) -> str | None:
        if meta is None:
            return "the region's KMS key cannot be described"
        return "key is multi-region" if meta.get("MultiRegion") else None  # see guards

    def _bpa(self, s3: Any, cfg: RegionConfig) -> str | None:
        found = _unless_missing(
            lambda: s3.get_public_access_block(Bucket=cfg.bucket),
            "NoSuchPublicAccessBlockConfiguration",
        )
        if found is None:
            return "no Block Public Access configuration"
        live = found["PublicAccessBlockConfiguration"]
        off = [name for name in public_access_block() if not live.get(name)]
        return f"{', '.join(off)} off" if off else None

    def _ownership(self, s3: Any, cfg: RegionConfig) -> str | None:
        found = _unless_missing(
            lambda: s3.get_bucket_ownership_controls(Bucket=cfg.bucket),
            "OwnershipControlsNotFoundError",
        )
        if found is None:
            return "no ownership controls (ACLs enabled)"
        rules = found["OwnershipControls"]["Rules"]
        found = rules[0].get("ObjectOwnership") if rules else None
        return None if found == OWNERSHIP else f"object ownership is {found}, not {OWNERSHIP}"

    def _versioning(self, s3: Any, cfg: RegionConfig) -> str | None:
        status = s3.get_bucket_versioning(Bucket=cfg.bucket).get("Status")
        return None if status == "Enabled" else f"versioning is {status or 'never enabled'}"

    def _logging(self, s3: Any, spec: HardenedRegion) -> str | None:
        enabled = s3.get_bucket_logging(Bucket=spec.bucket).get("LoggingEnabled")
        if not enabled:
            return "server access logging is off"
        target = enabled.get("TargetBucket")
        if target != spec.log_bucket:
            return f"access logs go to {target}, not {spec.log_bucket}"
        return None

    def _lifecycle(self, s3: Any, spec: HardenedRegion) -> str | None:
        found = _unless_missing(
            lambda: s3.get_bucket_lifecycle_configuration(Bucket=spec.bucket),
            "NoSuchLifecycleConfiguration",
        )
        if found is None:
            return "no lifecycle rules"
        live = found["Rules"]
        by_id = {rule.get("ID"): rule for rule in live}
        problems = []
        for expected in spec.lifecycle:
            found = by_id.get(expected.id)
            if found is None:
                problems.append(f"rule {expected.id} missing")
            elif _rule_signature(found) != _rule_signature(expected.to_s3()):
                problems.append(f"rule {expected.id} changed")
        return "; ".join(problems) or None

    def _policy(self, s3: Any, spec: HardenedRegion, key_arn: str | None) -> str | None:
        found = _unless_missing(
            lambda: s3.get_bucket_policy(Bucket=spec.bucket), "NoSuchBucketPolicy"
        )
        if found is None:
            return "no bucket policy"
        live = json.loads(found["Policy"])
        if not isinstance(live, Mapping):
            return "the bucket policy is not a JSON object"
        statements = live.get("Statement", [])
        if not isinstance(statements, list):
            statements = [statements]
        by_sid = {s.get("Sid"): s for s in statements if isinstance(s, Mapping)}
        problems = []
        for expected in bucket_policy_statements(spec.bucket, key_arn or spec.cfg.kms_key):
            found = by_sid.get(expected["Sid"])
            if found is None:
                problems.append(f"statement {expected['Sid']} missing")
            elif _norm(found) != _norm(expected):
                problems.append(f"statement {expected['Sid']} changed")
        return "; ".join(problems) or None

    def _replication(self, s3: Any, cfg: RegionConfig) -> str | None:
        found = _unless_missing(
            lambda: s3.get_bucket_replication(Bucket=cfg.bucket),
            "ReplicationConfigurationNotFoundError",
        )
        if found is None:
            return None
        return replication_problem(found["ReplicationConfiguration"].get("Rules", []))
