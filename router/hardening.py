"""What a hardened region is: its KMS key, data and log buckets, lifecycle and policies.

One description, three readers: the CloudFormation renderer (``router.infra``), the local
provisioner (``router.testing``) and the drift check (``router.drift``). Values that are
only known at deploy time (the key ARN, the account) are passed in, as literal strings or as
CloudFormation intrinsics, so the same functions serve every reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from router.regions import (
    RegionConfig,
    RetentionConfig,
    log_bucket_name,  # re-exported: one naming rule
)
from router.types import TAG_CLASS, TAG_RETENTION, DataClass, retention_tag_value

ABORT_INCOMPLETE_UPLOADS_DAYS = 1
NONCURRENT_VERSION_DAYS = 1
ACCESS_LOG_RETENTION_DAYS = 365
MIN_TLS_VERSION = "1.2"
ACCESS_LOG_PREFIX = "s3-access/"
ROLE_TAG = "residency-role"
ROLE_DATA = "data"
ROLE_ACCESS_LOGS = "access-logs"
OWNERSHIP = "BucketOwnerEnforced"

# Every S3 and KMS operation the router makes, and nothing else (least privilege).
ROUTER_BUCKET_ACTIONS = (
    "s3:GetBucketLocation",
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:ListBucketMultipartUploads",
)
ROUTER_OBJECT_ACTIONS = (
    "s3:PutObject",
    "s3:PutObjectTagging",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectTagging",
    "s3:GetObjectVersionTagging",
    "s3:ListMultipartUploadParts",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:AbortMultipartUpload",
)
KMS_CRYPTO_ACTIONS = ("kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*")
KMS_READ_ACTIONS = ("kms:DescribeKey", "kms:GetKeyRotationStatus")
KMS_ADMIN_ACTIONS = (
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:DeleteAlias",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListAliases",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
)

Json: TypeAlias = str | int | float | bool | Sequence["Json"] | Mapping[str, "Json"] | None
"""A JSON value: what CloudFormation templates, S3 configurations and IAM policies are made of."""

Value: TypeAlias = str | Mapping[str, Json]
"""A literal string or a CloudFormation intrinsic (``{"Ref": ...}``, ``{"Fn::Sub": ...}``)."""


@dataclass(frozen=True, slots=True)
class LifecycleRule:
    """One lifecycle rule, renderable for the S3 API and for CloudFormation."""

    id: str
    prefix: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    expiration_days: int | None = None
    noncurrent_days: int | None = None
    expired_delete_marker: bool = False
    abort_incomplete_days: int | None = None

    def to_s3(self) -> dict[str, Json]:
        """Return the rule in PutBucketLifecycleConfiguration's shape."""
        if self.tags:
            tag_list = [{"Key": k, "Value": v} for k, v in self.tags]
            filter_: dict[str, Json] = {"And": {"Prefix": self.prefix, "Tags": tag_list}}
        else:
            filter_ = {"Prefix": self.prefix}
        rule: dict[str, Json] = {"ID": self.id, "Status": "Enabled", "Filter": filter_}
        if self.expiration_days is not None:
            rule["Expiration"] = {"Days": self.expiration_days}
        if self.expired_delete_marker:
            rule["Expiration"] = {"ExpiredObjectDeleteMarker": True}
        if self.noncurrent_days is not None:
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": self.noncurrent_days}
        if self.abort_incomplete_days is not None:
            rule["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": self.abort_incomplete_days
            }
        return rule

    def to_cfn(self) -> dict[str, Json]:
        """Return the rule in AWS::S3::Bucket LifecycleConfiguration's shape."""
        rule: dict[str, Json] = {"Id": self.id, "Status": "Enabled", "Prefix": self.prefix}
        if self.tags:
            rule["TagFilters"] = [{"Key": k, "Value": v} for k, v in self.tags]
        if self.expiration_days is not None:
            rule["ExpirationInDays"] = self.expiration_days
        if self.expired_delete_marker:
            rule["ExpiredObjectDeleteMarker"] = True
        if self.noncurrent_days is not None:
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": self.noncurrent_days}
        if self.abort_incomplete_days is not None:
            rule["AbortIncompleteMultipartUpload"] = {
                "DaysAfterInitiation": self.abort_incomplete_days
            }
        return rule


@dataclass(frozen=True, slots=True)
class HardenedRegion:
    """Everything a hardened residency region is made of."""

    cfg: RegionConfig
    bucket: str
    log_bucket: str
    alias: str
    lifecycle: tuple[LifecycleRule, ...]
    log_lifecycle: tuple[LifecycleRule, ...]


def alias_name(cfg: RegionConfig) -> str:
    """Return the KMS alias name (``alias/...``) of a region's key."""
    if ":alias/" in cfg.kms_key:
        return "alias/" + cfg.kms_key.split(":alias/", 1)[1]
    return f"alias/residency-{cfg.region.value}"


def lifecycle_rules(retention: RetentionConfig) -> tuple[LifecycleRule, ...]:
    """Lifecycle rules of a data bucket.

    One tag-filtered expiration per allowed window (a backstop behind the router's own
    purge, never later than the window), then rules without tag filters, separate because
    S3 refuses delete-marker and incomplete-upload actions in tag-filtered rules.
    """
    rules = [
        LifecycleRule(
            id=f"expire-inputs-outputs-{days}d",
            prefix="orgs/",
            tags=(
                (TAG_CLASS, DataClass.INPUTS_OUTPUTS.value),
                (TAG_RETENTION, retention_tag_value(days)),
            ),
            expiration_days=days,
        )
        for days in retention.allowed_days
    ]
    rules += [
        LifecycleRule(id="expire-noncurrent-versions", noncurrent_days=NONCURRENT_VERSION_DAYS),
        LifecycleRule(id="remove-expired-delete-markers", expired_delete_marker=True),
        LifecycleRule(
            id="abort-incomplete-multipart-uploads",
            abort_incomplete_days=ABORT_INCOMPLETE_UPLOADS_DAYS,
        ),
    ]
    return tuple(rules)


def log_lifecycle_rules() -> tuple[LifecycleRule, ...]:
    """Lifecycle rules of an access-log bucket."""
    return (
        LifecycleRule(id="expire-access-logs", expiration_days=ACCESS_LOG_RETENTION_DAYS),
        LifecycleRule(id="expire-noncurrent-versions", noncurrent_days=NONCURRENT_VERSION_DAYS),
        LifecycleRule(
            id="abort-incomplete-multipart-uploads",
            abort_incomplete_days=ABORT_INCOMPLETE_UPLOADS_DAYS,
        ),
    )


def hardened_region(cfg: RegionConfig, retention: RetentionConfig) -> HardenedRegion:
    """Return the hardened description of one residency region."""
    return HardenedRegion(
        cfg=cfg,
        bucket=cfg.bucket,
        log_bucket=log_bucket_name(cfg.bucket),
        alias=alias_name(cfg),
        lifecycle=lifecycle_rules(retention),
        log_lifecycle=log_lifecycle_rules(),
    )


def public_access_block() -> dict[str, bool]:
    """All four Block Public Access settings on."""
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def versioning() -> dict[str, str]:
    """Versioning on (every version is then deleted explicitly by purge and erasure)."""
    return {"Status": "Enabled"}


def kms_encryption_rule(kms_key_arn: Value) -> dict[str, Json]:
    """Default SSE-KMS under the region's key with S3 Bucket Keys (S3 API shape)."""
    return {
        "ApplyServerSideEncryptionByDefault": {
            "SSEAlgorithm": "aws:kms",
            "KMSMasterKeyID": kms_key_arn,
        },
        "BucketKeyEnabled": True,
    }


def log_encryption_rule() -> dict[str, Json]:
    """SSE-S3 for the access-log bucket: S3 server access logs cannot target SSE-KMS."""
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def transport_statements(bucket: str | Value) -> list[dict[str, Json]]:
    """Deny plain HTTP and TLS older than 1.2, for every principal and action."""
    resources = _bucket_resources(bucket)
    return [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyTlsOlderThan12",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"NumericLessThan": {"s3:TlsVersion": MIN_TLS_VERSION}},
        },
    ]


def bucket_policy_statements(bucket: str | Value, kms_key_arn: Value) -> list[dict[str, Json]]:
    """The data bucket's policy statements.

    Transport denies, then encryption denies that together leave exactly two ways to
    write: with ``aws:kms`` and this key named, or with no encryption headers at all (then
    the bucket default, SSE-KMS under this key, applies). Denying header-less writes
    outright would deny every UploadPart, which never carries the headers
    (boto/botocore#471), and with it every multipart upload.
    """
    objects = _object_resource(bucket)
    return [
        *transport_statements(bucket),
        {
            "Sid": "DenyEncryptionOtherThanKms",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {
                "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption": "false"},
            },
        },
        {
            "Sid": "DenyKmsWithoutRegionKey",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {
                "StringEquals": {"s3:x-amz-server-side-encryption": "aws:kms"},
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "true"},
            },
        },
        {
            "Sid": "DenyOtherKmsKeys",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {
                "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": kms_key_arn},
                "Null": {"s3:x-amz-server-side-encryption-aws-kms-key-id": "false"},
            },
        },
        {
            "Sid": "DenyCustomerProvidedKeys",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "s3:PutObject",
            "Resource": objects,
            "Condition": {"Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}},
        },
    ]


def bucket_policy(bucket: str | Value, kms_key_arn: Value) -> dict[str, Json]:
    """The data bucket's policy document."""
    return {"Version": "2012-10-17", "Statement": bucket_policy_statements(bucket, kms_key_arn)}


def log_bucket_policy(
    log_bucket: str | Value, source_bucket_arn: Value, account: Value
) -> dict[str, Json]:
    """The log bucket's policy: TLS only, and S3's logging service may deliver logs."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            *transport_statements(log_bucket),
            {
                "Sid": "AllowServerAccessLogDelivery",
                "Effect": "Allow",
                "Principal": {"Service": "logging.s3.amazonaws.com"},
                "Action": "s3:PutObject",
                "Resource": _join_arn(log_bucket, "/" + ACCESS_LOG_PREFIX + "*"),
                "Condition": {
                    "ArnLike": {"aws:SourceArn": source_bucket_arn},
                    "StringEquals": {"aws:SourceAccount": account},
                },
            },
        ],
    }


def key_policy(
    account_root: Value, router_role: Value, operator_role: Value, aws_region: str
) -> dict[str, Json]:
    """The key policy: no wildcard principal; crypto only through S3 in the key's region.

    The account root keeps administration (without it a key can become unmanageable), but a
    Deny on the account makes every encryption use go through S3 in ``aws_region``; the
    router role may also describe the key and read its rotation status directly.
    """
    via_s3 = f"s3.{aws_region}.amazonaws.com"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AccountAdministersKey",
                "Effect": "Allow",
                "Principal": {"AWS": account_root},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "OperatorAdministersKey",
                "Effect": "Allow",
                "Principal": {"AWS": operator_role},
                "Action": list(KMS_ADMIN_ACTIONS),
                "Resource": "*",
            },
            {
                "Sid": "RouterUsesKeyThroughRegionalS3",
                "Effect": "Allow",
                "Principal": {"AWS": router_role},
                "Action": list(KMS_CRYPTO_ACTIONS),
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:ViaService": via_s3}},
            },
            {
                "Sid": "RouterReadsKeyState",
                "Effect": "Allow",
                "Principal": {"AWS": router_role},
                "Action": list(KMS_READ_ACTIONS),
                "Resource": "*",
            },
            {
                "Sid": "DenyCryptoOutsideRegionalS3",
                "Effect": "Deny",
                "Principal": {"AWS": account_root},
                "Action": list(KMS_CRYPTO_ACTIONS),
                "Resource": "*",
                "Condition": {"StringNotEquals": {"kms:ViaService": via_s3}},
            },
        ],
    }


def router_policy(bucket: str | Value, kms_key_arn: Value, aws_region: str) -> dict[str, Json]:
    """The router role's least-privilege IAM policy: its bucket, its key, its operations."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "RouterBucket",
                "Effect": "Allow",
                "Action": list(ROUTER_BUCKET_ACTIONS),
                "Resource": _join_arn(bucket, ""),
            },
            {
                "Sid": "RouterObjects",
                "Effect": "Allow",
                "Action": list(ROUTER_OBJECT_ACTIONS),
                "Resource": _join_arn(bucket, "/orgs/*"),
            },
            {
                "Sid": "RouterKeyThroughS3",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": kms_key_arn,
                "Condition": {"StringEquals": {"kms:ViaService": f"s3.{aws_region}.amazonaws.com"}},
            },
            {
                "Sid": "RouterKeyState",
                "Effect": "Allow",
                "Action": list(KMS_READ_ACTIONS),
                "Resource": kms_key_arn,
            },
        ],
    }


def _join_arn(bucket: str | Value, suffix: str) -> Value:
    if isinstance(bucket, str):
        return f"arn:aws:s3:::{bucket}{suffix}"
    return {"Fn::Join": ["", ["arn:aws:s3:::", bucket, suffix]]}


def _bucket_resources(bucket: str | Value) -> list[Value]:
    return [_join_arn(bucket, ""), _join_arn(bucket, "/*")]


def _object_resource(bucket: str | Value) -> Value:
    return _join_arn(bucket, "/*")
