"""Verification of one region: bucket location and owner, the KMS key's region and state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from router._s3.clients import RegionClients
from router.errors import (
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
)
from router.guards import key_region_problem, key_state_problem, location_problem
from router.regions import RegionConfig, parse_kms_arn
from router.types import Problem, ProblemKind


@dataclass(frozen=True, slots=True)
class RegionCheck:
    """Result of verifying one region: its resolved key ARN and any problems."""

    key_arn: str | None
    problems: list[Problem]


async def _describe_key(clients: RegionClients, cfg: RegionConfig) -> Mapping[str, Any]:
    kms = clients.kms(cfg.aws_region)
    response = await clients.run(
        cfg.aws_region,
        f"describing the KMS key of regions.{cfg.region.value}",
        lambda: kms.describe_key(KeyId=cfg.kms_key),
    )
    return response["KeyMetadata"]


async def resolve_key(clients: RegionClients, cfg: RegionConfig) -> str:
    """Return the full key ARN behind a region's configured key or alias ARN.

    Raises:
        StorageError: KMS refused (no such key or alias, access denied).
        RegionUnavailableError: KMS failed after retries.
        ResidencyViolationError: the key lives in another AWS region.
    """
    parsed = parse_kms_arn(cfg.kms_key)
    if parsed is not None and not parsed.is_alias:
        return cfg.kms_key
    arn = parse_kms_arn(str((await _describe_key(clients, cfg)).get("Arn", "")))
    if arn is None or arn.aws_region != cfg.aws_region:
        raise ResidencyViolationError(
            f"regions.{cfg.region.value}.kms_key resolves to a key outside {cfg.aws_region}"
        )
    return arn.arn


async def verify_region(clients: RegionClients, cfg: RegionConfig) -> RegionCheck:
    """Check bucket location, bucket owner and the KMS key's region and state."""
    problems = await _check_bucket(clients, cfg)
    key_arn, key_problems = await _check_key(clients, cfg)
    return RegionCheck(key_arn, problems + key_problems)


async def _check_bucket(clients: RegionClients, cfg: RegionConfig) -> list[Problem]:
    where = f"regions.{cfg.region.value}"
    try:
        # Verification asks the bucket itself, quarantined or not.
        s3 = clients.s3_unchecked(cfg.aws_region)
        location = await clients.run(
            cfg.aws_region,
            f"locating bucket {cfg.bucket}",
            lambda: s3.get_bucket_location(Bucket=cfg.bucket, **clients.owner[cfg.aws_region]),
        )
    except ResidencyViolationError as exc:
        return [Problem("violation", f"{where}: {exc}")]
    except StorageError as exc:
        # With ExpectedBucketOwner set, S3 answers AccessDenied for another owner's bucket.
        owned = bool(cfg.account_id) and exc.code == "AccessDenied"
        owner = f" (expected owner {cfg.account_id})" if cfg.account_id else ""
        return [
            Problem(
                "violation" if owned else "storage", f"{where}: bucket {cfg.bucket}: {exc}{owner}"
            )
        ]
    except ResidencyError as exc:  # unavailable, or a 404 without a code
        return [Problem(_kind(exc), f"{where}: bucket {cfg.bucket}: {exc}")]
    problem = location_problem(location.get("LocationConstraint"), cfg.aws_region)
    if problem is not None:
        return [Problem("violation", f"{where}: bucket {cfg.bucket} {problem}")]
    return []


async def _check_key(clients: RegionClients, cfg: RegionConfig) -> tuple[str | None, list[Problem]]:
    where = f"regions.{cfg.region.value}.kms_key"
    try:
        meta = await _describe_key(clients, cfg)
    except ResidencyError as exc:
        return None, [Problem(_kind(exc), f"{where}: {exc}")]
    violation = key_region_problem(meta, cfg.aws_region, cfg.account_id)
    if violation is not None:
        return None, [Problem("violation", f"{where}: {violation}")]
    state = key_state_problem(meta)
    if state is not None:
        return None, [Problem("storage", f"{where}: {state}")]
    return str(meta["Arn"]), []


def _kind(exc: ResidencyError) -> ProblemKind:
    if isinstance(exc, ResidencyViolationError):
        return "violation"
    if isinstance(exc, RegionUnavailableError):
        return "unavailable"
    return "storage"
