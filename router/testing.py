"""Local worlds for tests and the demo: a moto server, a provisioner, and an opt-in pytest plugin.

Enable the plugin in a ``conftest.py`` with ``pytest_plugins = ["router.testing"]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from router._aws import Transport, boto3_client
from router.config import RouterSettings
from router.hardening import (
    ACCESS_LOG_PREFIX,
    OWNERSHIP,
    ROLE_ACCESS_LOGS,
    ROLE_DATA,
    ROLE_TAG,
    alias_name,
    bucket_policy,
    hardened_region,
    kms_encryption_rule,
    log_bucket_policy,
    log_encryption_rule,
    public_access_block,
    versioning,
)
from router.orgs import dynamodb_item
from router.regions import RegionConfig, RegionMap
from router.routing import ResidencyRouter
from router.types import KEY_ROOT, DataClass, OrgResidency, Region

DUMMY_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
}


class _LazyPrivateKey:
    """Stands in for moto's per-key RSA private key until something signs with it."""

    def __init__(self, make: Callable[[str], Any], key_spec: str) -> None:
        self._make = make
        self._key_spec = key_spec
        self._key: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._key is None:
            self._key = self._make(self._key_spec)
        return getattr(self._key, name)


def _defer_symmetric_private_keys() -> None:
    # moto generates an RSA-2048 private key for every KMS key, symmetric ones included
    # (about 50 ms each); only sign/verify ever uses it, which symmetric keys never do.
    import moto.kms.models as kms_models

    make = kms_models.generate_private_key  # type: ignore[attr-defined]
    if getattr(make, "_residency_lazy", False):
        return

    def generate(key_spec: str) -> Any:
        if key_spec == "SYMMETRIC_DEFAULT":
            return _LazyPrivateKey(make, key_spec)
        return make(key_spec)

    generate._residency_lazy = True  # type: ignore[attr-defined]
    kms_models.generate_private_key = generate  # type: ignore[attr-defined]


class LocalS3Server:
    """moto's threaded server on 127.0.0.1 with a free port, quiet by default."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        """Start the server and return its endpoint URL."""
        # werkzeug logs one line per request; the demo and tests want none of them.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        _defer_symmetric_private_keys()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def reset(self) -> None:
        """Forget every bucket, key and table (moto's reset API)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        """Stop the server."""
        self._server.stop()

    def __enter__(self) -> LocalS3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# boto3 clients are slow to make and hold no state of a world: share them per endpoint.
_CLIENTS: dict[tuple[str, str, str], Any] = {}


def local_client(endpoint_url: str, service: str, aws_region: str) -> Any:
    """Return a boto3 client for a local endpoint with dummy credentials (cached).

    It comes from the project's one client factory, like every other client.
    """
    cache_key = (endpoint_url, service, aws_region)
    cached = _CLIENTS.get(cache_key)
    if cached is None:
        cached = boto3_client(
            service,
            aws_region,
            Transport(endpoint_url=endpoint_url, read_timeout_s=60.0),
            credentials=DUMMY_CREDENTIALS,
        )
        _CLIENTS[cache_key] = cached
    return cached


@dataclass
class ResidencyWorld:
    """A provisioned local world: one hardened bucket and regional KMS key per region.

    ``regions_file`` is the map the router should load: the source map itself, or a copy
    whose key ARNs name the keys moto made (moto cannot create keys with chosen ids).
    """

    endpoint_url: str
    region_map: RegionMap
    regions_file: Path
    key_arns: dict[Region, str]

    @classmethod
    def provision(
        cls,
        endpoint_url: str,
        source: str | Path,
        workdir: str | Path,
        *,
        attach_policy: bool = False,
    ) -> ResidencyWorld:
        """Create every region's key, alias and hardened bucket from a region map file.

        moto evaluates bucket policies without their conditions, so a deny-unless-KMS policy
        would block every request: the policy is attached only when ``attach_policy``.
        """
        region_map = RegionMap.load(source)
        world = cls(endpoint_url, region_map, Path(source), {})
        rewritten: dict[str, str] = {}
        for cfg in region_map:
            arn = world._provision_key(cfg)
            world.key_arns[cfg.region] = arn
            if not cfg.kms_key.startswith(arn.rsplit(":", 1)[0] + ":alias/"):
                rewritten[cfg.region.value] = arn
            world._provision_bucket(cfg, arn, attach_policy=attach_policy)
        if rewritten:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
            for code, arn in rewritten.items():
                data["regions"][code]["kms_key"] = arn
            target = Path(workdir) / "regions.local.yaml"
            target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
            world.regions_file = target
            world.region_map = RegionMap.load(target)
        return world

    def _provision_key(self, cfg: RegionConfig) -> str:
        kms = self.client("kms", cfg.aws_region)
        meta = kms.create_key(
            Description=f"residency-router {cfg.region.value} data key",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            MultiRegion=False,
        )["KeyMetadata"]
        kms.enable_key_rotation(KeyId=meta["KeyId"])
        kms.create_alias(AliasName=alias_name(cfg), TargetKeyId=meta["KeyId"])
        return str(meta["Arn"])

    def _provision_bucket(self, cfg: RegionConfig, key_arn: str, *, attach_policy: bool) -> None:
        spec = hardened_region(cfg, self.region_map.retention)
        s3 = self.client("s3", cfg.aws_region)
        account = key_arn.split(":")[4]
        for bucket, role in ((spec.log_bucket, ROLE_ACCESS_LOGS), (spec.bucket, ROLE_DATA)):
            create: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": OWNERSHIP}
            if cfg.aws_region != "us-east-1":
                create["CreateBucketConfiguration"] = {"LocationConstraint": cfg.aws_region}
            s3.create_bucket(**create)
            s3.put_bucket_tagging(
                Bucket=bucket, Tagging={"TagSet": [{"Key": ROLE_TAG, "Value": role}]}
            )
            s3.put_public_access_block(
                Bucket=bucket, PublicAccessBlockConfiguration=public_access_block()
            )
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=versioning())
        s3.put_bucket_encryption(
            Bucket=spec.log_bucket,
            ServerSideEncryptionConfiguration={"Rules": [log_encryption_rule()]},
        )
        s3.put_bucket_lifecycle_configuration(
            Bucket=spec.log_bucket,
            LifecycleConfiguration={"Rules": [rule.to_s3() for rule in spec.log_lifecycle]},
        )
        s3.put_bucket_encryption(
            Bucket=spec.bucket,
            ServerSideEncryptionConfiguration={"Rules": [kms_encryption_rule(key_arn)]},
        )
        s3.put_bucket_lifecycle_configuration(
            Bucket=spec.bucket,
            LifecycleConfiguration={"Rules": [rule.to_s3() for rule in spec.lifecycle]},
        )
        # The log bucket's policy lets S3 deliver access logs; it is needed before logging
        # can be turned on (ACLs are disabled by BucketOwnerEnforced).
        s3.put_bucket_policy(
            Bucket=spec.log_bucket,
            Policy=json.dumps(
                log_bucket_policy(spec.log_bucket, f"arn:aws:s3:::{spec.bucket}", account)
            ),
        )
        s3.put_bucket_logging(
            Bucket=spec.bucket,
            BucketLoggingStatus={
                "LoggingEnabled": {
                    "TargetBucket": spec.log_bucket,
                    "TargetPrefix": ACCESS_LOG_PREFIX,
                }
            },
        )
        if attach_policy:
            s3.put_bucket_policy(
                Bucket=spec.bucket, Policy=json.dumps(bucket_policy(spec.bucket, key_arn))
            )

    def client(self, service: str, aws_region: str) -> Any:
        """Return an independent boto3 client for ``service`` in ``aws_region``."""
        return local_client(self.endpoint_url, service, aws_region)

    def create_directory_table(
        self,
        table: str,
        orgs: Mapping[str, OrgResidency] | None = None,
        *,
        aws_region: str | None = None,
    ) -> str:
        """Create a DynamoDB org table in ``DynamoDBOrgDirectory``'s schema; return its region.

        ``orgs`` defaults to the map's static orgs.
        """
        if aws_region is None:
            default = self.region_map.processing.default_region
            aws_region = self.region_map.region(default).aws_region
        dynamodb = self.client("dynamodb", aws_region)
        dynamodb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "org_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "org_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for record in (self.region_map.orgs if orgs is None else orgs).values():
            dynamodb.put_item(TableName=table, Item=dynamodb_item(record))
        return aws_region

    def bucket(self, region: Region | str) -> str:
        """Return the bucket of a residency region."""
        return self.region_map.region(Region(region)).bucket

    def key_arn(self, region: Region | str) -> str:
        """Return the full ARN of a residency region's KMS key."""
        return self.key_arns[Region(region)]

    def settings(self, **overrides: Any) -> RouterSettings:
        """Return router settings pointed at this world."""
        values: dict[str, Any] = {
            "regions_file": self.regions_file,
            "endpoint_url": self.endpoint_url,
            "retry_deadline_s": 5.0,
        }
        values.update(overrides)
        return RouterSettings(**values)

    def s3(self, region: Region | str) -> Any:
        """Return an independent boto3 S3 client in a residency region's AWS region."""
        return self.client("s3", self.region_map.region(Region(region)).aws_region)

    def all_versions(self, region: Region | str) -> list[dict[str, Any]]:
        """Return every object version and delete marker in a region's bucket."""
        s3 = self.s3(region)
        found: list[dict[str, Any]] = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket(region)):
            found.extend(page.get("Versions", []))
            found.extend(page.get("DeleteMarkers", []))
        return found

    def assert_stored_in(
        self,
        org_id: str,
        key: str,
        region: Region | str,
        *,
        data_class: DataClass | str = DataClass.FILES,
    ) -> dict[str, Any]:
        """Assert an org's object is in ``region``'s bucket, under its key, and nowhere else.

        A failure is an ``AssertionError`` that says where the key actually is.
        """
        __tracebackhide__ = True
        region = Region(region)
        full = f"{KEY_ROOT}/{org_id}/{DataClass(data_class).value}/{key}"
        s3 = self.s3(region)
        location = s3.get_bucket_location(Bucket=self.bucket(region)).get("LocationConstraint")
        expected_aws = self.region_map.region(region).aws_region
        assert (location or "us-east-1") == expected_aws, (
            f"bucket {self.bucket(region)} is in {location}, not {expected_aws}"
        )
        try:
            head = s3.head_object(Bucket=self.bucket(region), Key=full)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404:
                raise AssertionError(f"reading {full} in {region.value} failed: {exc}") from None
            found = self.regions_holding(full)
            where = ", ".join(r.value for r in found) if found else "no region at all"
            raise AssertionError(
                f"{full} is not in {region.value} ({self.bucket(region)}); it is in: {where}"
            ) from None
        assert head.get("ServerSideEncryption") == "aws:kms", f"{full} is not SSE-KMS"
        assert head.get("SSEKMSKeyId") == self.key_arn(region), (
            f"{full} is under {head.get('SSEKMSKeyId')}, not {region}'s key"
        )
        for other in self.region_map:
            if other.region is region:
                continue
            keys = {v["Key"] for v in self.all_versions(other.region)}
            assert full not in keys, f"{full} also exists in {other.region.value}"
        return dict(head)

    def regions_holding(self, full_key: str) -> list[Region]:
        """The residency regions whose bucket holds any version of ``full_key``."""
        return [
            cfg.region
            for cfg in self.region_map
            if any(v["Key"] == full_key for v in self.all_versions(cfg.region))
        ]

    def assert_nothing_outside(self, region: Region | str) -> None:
        """Assert no object or version exists in any bucket but ``region``'s."""
        __tracebackhide__ = True
        region = Region(region)
        for other in self.region_map:
            if other.region is region:
                continue
            versions = self.all_versions(other.region)
            assert not versions, (
                f"{len(versions)} object versions found in {other.region.value} "
                f"({other.bucket}); expected everything in {region.value}"
            )


@contextlib.contextmanager
def isolated_aws_environment() -> Iterator[None]:
    """Hide the developer's AWS variables and files; use dummy credentials meanwhile."""
    saved = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    with tempfile.TemporaryDirectory() as empty:
        os.environ.update(
            {
                "AWS_ACCESS_KEY_ID": DUMMY_CREDENTIALS["aws_access_key_id"],
                "AWS_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["aws_secret_access_key"],
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": str(Path(empty) / "config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(Path(empty) / "credentials"),
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        try:
            yield
        finally:
            for name in [n for n in os.environ if n.startswith("AWS_")]:
                del os.environ[name]
            os.environ.update(saved)


# -- pytest plugin ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def residency_aws_isolation() -> Iterator[None]:
    """Every test runs without the developer's AWS variables or ~/.aws (dummy credentials)."""
    with isolated_aws_environment():
        yield


@pytest.fixture(scope="session")
def residency_s3_server() -> Iterator[LocalS3Server]:
    """One moto server on 127.0.0.1 for the whole session."""
    with isolated_aws_environment(), LocalS3Server() as server:
        yield server


@pytest.fixture
def residency_moto_endpoint(residency_s3_server: LocalS3Server) -> str:
    """The moto server's endpoint URL, reset to empty for this test."""
    residency_s3_server.reset()
    return residency_s3_server.endpoint_url


@pytest.fixture
def residency_regions_file(request: pytest.FixtureRequest) -> Path:
    """The region map the world is provisioned from; override it in your conftest."""
    return Path(request.config.rootpath) / "regions.yaml"


@pytest.fixture
def residency_world(
    residency_moto_endpoint: str, residency_regions_file: Path, tmp_path: Path
) -> ResidencyWorld:
    """A fresh seven-region world (hardened buckets, regional keys) on the moto server."""
    return ResidencyWorld.provision(residency_moto_endpoint, residency_regions_file, tmp_path)


@pytest.fixture
def residency_settings(residency_world: ResidencyWorld) -> RouterSettings:
    """Router settings pointed at ``residency_world``."""
    return residency_world.settings()


@pytest_asyncio.fixture
async def residency_router(residency_settings: RouterSettings) -> AsyncIterator[ResidencyRouter]:
    """A started router on ``residency_world``, closed after the test."""
    async with ResidencyRouter.from_settings(residency_settings) as router:
        yield router
