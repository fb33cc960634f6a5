"""What a hardened region is: its KMS key, data bucket, lifecycle and policy (pure data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router.regions import RegionConfig, RetentionConfig
from router.types import TAG_CLASS, TAG_RETENTION, DataClass, retention_tag_value

ABORT_INCOMPLETE_UPLOADS_DAYS = 1
NONCURRENT_VERSION_DAYS = 1
MIN_TLS_VERSION = "1.2"


@dataclass(frozen=True, slots=True)
class HardenedBucket:
    """The settings every data bucket must have, in S3 API shapes."""

    bucket: str
    aws_region: str
    kms_key_arn: str
    versioning: Mapping[str, str]
    public_access_block: Mapping[str, bool]
    ownership: str
    encryption: Mapping[str, Any]
    lifecycle_rules: tuple[Mapping[str, Any], ...]


def public_access_block() -> dict[str, bool]:
    """All four Block Public Access settings on."""
    return {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }


def default_encryption(kms_key_arn: str) -> dict[str, Any]:
    """Default SSE-KMS under the region's key, with S3 Bucket Keys."""
    return {
        "Rules": [
            {
                "ApplyServerSideEncryptionByDefault": {
                    "SSEAlgorithm": "aws:kms",
                    "KMSMasterKeyID": kms_key_arn,
                },
                "BucketKeyEnabled": True,
            }
        ]
    }


def lifecycle_rules(retention: RetentionConfig) -> tuple[dict[str, Any], ...]:
    """Lifecycle rules: one tag-filtered expiry per window, plus version and upload clean-up.

    The tag-filtered expirations back up the router's own purge: S3 needs them as separate
    rules because a rule with a tag filter cannot also abort incomplete uploads.
    """
    rules: list[dict[str, Any]] = []
    for days in retention.allowed_days:
        rules.append(
            {
                "ID": f"expire-inputs-outputs-{days}d",
                "Status": "Enabled",
                "Filter": {
                    "And": {
                        "Prefix": "orgs/",
                        "Tags": [
                            {"Key": TAG_CLASS, "Value": DataClass.INPUTS_OUTPUTS.value},
                            {"Key": TAG_RETENTION, "Value": retention_tag_value(days)},
                        ],
                    }
                },
                "Expiration": {"Days": days},
            }
        )
    rules.append(
        {
            "ID": "expire-noncurrent-versions",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_VERSION_DAYS},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        }
    )
    rules.append(
        {
            "ID": "abort-incomplete-multipart-uploads",
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {
                "DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_DAYS
            },
        }
    )
    return tuple(rules)


def hardened_bucket(
    cfg: RegionConfig, kms_key_arn: str, retention: RetentionConfig
) -> HardenedBucket:
    """Return the hardened settings of one region's data bucket."""
    return HardenedBucket(
        bucket=cfg.bucket,
        aws_region=cfg.aws_region,
        kms_key_arn=kms_key_arn,
        versioning={"Status": "Enabled"},
        public_access_block=public_access_block(),
        ownership="BucketOwnerEnforced",
        encryption=default_encryption(kms_key_arn),
        lifecycle_rules=lifecycle_rules(retention),
    )


def bucket_policy(bucket: str, kms_key_arn: str) -> dict[str, Any]:
    """Deny non-TLS, TLS older than 1.2, writes without SSE-KMS or under another key, SSE-C."""
    resource_objects = f"arn:aws:s3:::{bucket}/*"
    resources = [f"arn:aws:s3:::{bucket}", resource_objects]
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
            {
                "Sid": "DenyOldTls",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": resources,
                "Condition": {"NumericLessThan": {"s3:TlsVersion": MIN_TLS_VERSION}},
            },
            {
                "Sid": "DenyNonKmsWrites",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": resource_objects,
                "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
            },
            {
                "Sid": "DenyOtherKmsKeys",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": resource_objects,
                "Condition": {
                    "StringNotEquals": {
                        "s3:x-amz-server-side-encryption-aws-kms-key-id": kms_key_arn
                    }
                },
            },
            {
                "Sid": "DenyCustomerProvidedKeys",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": resource_objects,
                "Condition": {
                    "Null": {"s3:x-amz-server-side-encryption-customer-algorithm": "false"}
                },
            },
        ],
    }
