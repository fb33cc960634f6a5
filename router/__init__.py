"""residency-router: keep every organization's data in the region it chose."""

# The package imports its parts on first use (PEP 562): ``residency-router --help`` and
# ``import router.types`` must not load aiobotocore, boto3 or botocore.
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.config import RouterSettings
    from router.errors import (
        ConfigError,
        DirectoryUnavailableError,
        InvalidArgumentError,
        InvalidKeyError,
        ObjectNotFoundError,
        OrgMovingError,
        ProcessingNotEligibleError,
        RegionUnavailableError,
        ResidencyError,
        ResidencyViolationError,
        StorageError,
        UnknownOrgError,
    )
    from router.orgs import (
        CachedOrgDirectory,
        DynamoDBOrgDirectory,
        OrgDirectory,
        StaticOrgDirectory,
    )
    from router.regions import RegionConfig, RegionMap
    from router.routing import ResidencyRouter
    from router.types import (
        AwsRegion,
        DataClass,
        DeleteReceipt,
        ErasureReceipt,
        Explanation,
        ObjectInfo,
        Operation,
        OrgId,
        OrgResidency,
        Placement,
        PresignedUpload,
        ProcessingRoute,
        PurgeReport,
        Region,
        RegionHealth,
        StoredObject,
        VerifyReport,
        WriteReceipt,
    )

_WHERE = {
    "RouterSettings": "router.config",
    **dict.fromkeys(
        (
            "ConfigError",
            "DirectoryUnavailableError",
            "InvalidArgumentError",
            "InvalidKeyError",
            "ObjectNotFoundError",
            "OrgMovingError",
            "ProcessingNotEligibleError",
            "RegionUnavailableError",
            "ResidencyError",
            "ResidencyViolationError",
            "StorageError",
            "UnknownOrgError",
        ),
        "router.errors",
    ),
    **dict.fromkeys(
        ("CachedOrgDirectory", "DynamoDBOrgDirectory", "OrgDirectory", "StaticOrgDirectory"),
        "router.orgs",
    ),
    "RegionConfig": "router.regions",
    "RegionMap": "router.regions",
    "ResidencyRouter": "router.routing",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name, "router.types" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AwsRegion",
    "CachedOrgDirectory",
    "ConfigError",
    "DataClass",
    "DeleteReceipt",
    "DirectoryUnavailableError",
    "DynamoDBOrgDirectory",
    "ErasureReceipt",
    "Explanation",
    "InvalidArgumentError",
    "InvalidKeyError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "Operation",
    "OrgDirectory",
    "OrgId",
    "OrgMovingError",
    "OrgResidency",
    "Placement",
    "PresignedUpload",
    "ProcessingNotEligibleError",
    "ProcessingRoute",
    "PurgeReport",
    "Region",
    "RegionConfig",
    "RegionHealth",
    "RegionMap",
    "RegionUnavailableError",
    "ResidencyError",
    "ResidencyRouter",
    "ResidencyViolationError",
    "RouterSettings",
    "StaticOrgDirectory",
    "StorageError",
    "StoredObject",
    "UnknownOrgError",
    "VerifyReport",
    "WriteReceipt",
]
