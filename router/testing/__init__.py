"""Local worlds for tests and the demo: a moto server, a provisioner, and an opt-in pytest plugin.

Enable the plugin in a ``conftest.py`` with ``pytest_plugins = ["router.testing"]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from botocore.exceptions import ClientError

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
from router.testing._moto import DUMMY_CREDENTIALS as DUMMY_CREDENTIALS
from router.testing._moto import LocalS3Process as LocalS3Process
from router.testing._moto import LocalS3Server as LocalS3Server
from router.testing._moto import changes_configuration as changes_configuration
from router.testing._moto import isolated_aws_environment as isolated_aws_environment
from router.testing._moto import local_client as local_client
from router.types import KEY_ROOT, DataClass, OrgResidency, Region


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
        s3.put_bucket_policy(Bucket=spec.log_bucket, Policy=self._log_bucket_policy(cfg))
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

    def empty(self) -> None:
        """Delete what tests leave: objects, versions, delete markers, uploads and tables.

        Every object version, delete marker and multipart upload goes from every bucket of
        the world (data and access-log buckets), and every DynamoDB table from the map's AWS
        regions and us-east-1 (the world provisions none, so each one is a test's own).
        Bucket and key configuration is left as it is (a log bucket's policy is lifted while
        its logs are deleted, then put back as provisioned).

        Raises:
            RuntimeError: S3 refused to delete some object versions.
        """
        aws_regions = sorted({cfg.aws_region for cfg in self.region_map} | {"us-east-1"})
        # Clients are made here, not in the threads: making boto3 sessions is not thread-safe.
        s3 = {cfg.region: self.client("s3", cfg.aws_region) for cfg in self.region_map}
        tables = [self.client("dynamodb", aws_region) for aws_region in aws_regions]
        # Requests are mostly waiting on the server: overlap them.
        with ThreadPoolExecutor(max_workers=8) as pool:
            done = [pool.submit(self._empty_region, cfg, s3[cfg.region]) for cfg in self.region_map]
            done += [pool.submit(_drop_tables, dynamodb) for dynamodb in tables]
            for future in done:
                future.result()

    def _empty_region(self, cfg: RegionConfig, s3: Any) -> None:
        _empty_bucket(s3, cfg.bucket)
        # After the data bucket: emptying it wrote access logs. moto applies the log bucket's
        # TLS-only denies to plain http deletes (it drops their condition), so the policy is
        # lifted while the logs go; a faithful S3 reached over TLS would need no lifting.
        log_bucket = hardened_region(cfg, self.region_map.retention).log_bucket
        first = s3.list_object_versions(Bucket=log_bucket, MaxKeys=1)
        if not (first.get("Versions") or first.get("DeleteMarkers")):
            return
        s3.delete_bucket_policy(Bucket=log_bucket)
        try:
            _empty_bucket(s3, log_bucket)
        finally:
            s3.put_bucket_policy(Bucket=log_bucket, Policy=self._log_bucket_policy(cfg))

    def _log_bucket_policy(self, cfg: RegionConfig) -> str:
        log_bucket = hardened_region(cfg, self.region_map.retention).log_bucket
        account = self.key_arn(cfg.region).split(":")[4]
        return json.dumps(log_bucket_policy(log_bucket, f"arn:aws:s3:::{cfg.bucket}", account))

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


def _empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    # Listed in full before deleting, so that no page marker points at a deleted version.
    entries = [
        {"Key": entry["Key"], "VersionId": entry["VersionId"]}
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
        for entry in (*page.get("Versions", []), *page.get("DeleteMarkers", []))
    ]
    for start in range(0, len(entries), 1000):
        answer = s3.delete_objects(
            Bucket=bucket, Delete={"Objects": entries[start : start + 1000], "Quiet": True}
        )
        if answer.get("Errors"):
            raise RuntimeError(f"could not empty {bucket}: {answer['Errors'][:3]}")


def _drop_tables(dynamodb: Any) -> None:
    for page in dynamodb.get_paginator("list_tables").paginate():
        for table in page.get("TableNames", []):
            dynamodb.delete_table(TableName=table)


class SessionWorld:
    """One world for many tests: provisioned once, handed out emptied.

    ``fresh`` empties the world (``ResidencyWorld.empty``) when no test changed its
    configuration since it was last handed out, and otherwise resets the server and
    provisions the world again (seconds, so only after tests that need it).
    """

    def __init__(self, server: LocalS3Process, source: Path, workdir: Path) -> None:
        self._server = server
        self._source = source
        self._workdir = workdir
        self.provisions = 0
        self.world = self._provision()
        self._changes = server.configuration_changes()

    def _provision(self) -> ResidencyWorld:
        self.provisions += 1
        with isolated_aws_environment():
            return ResidencyWorld.provision(self._server.endpoint_url, self._source, self._workdir)

    def fresh(self) -> ResidencyWorld:
        """Return the world as provisioned, with nothing a test left in it.

        Raises:
            RuntimeError: S3 refused to delete some object versions.
        """
        if self._server.configuration_changes() != self._changes:
            self._server.reset()
            # In place: whoever holds the world keeps holding the current one.
            vars(self.world).update(vars(self._provision()))
        # Also after provisioning: moto logged some of its requests into the log buckets.
        self.world.empty()
        # Emptying lifts and restores the log buckets' policies: not a test's change.
        self._changes = self._server.configuration_changes()
        return self.world


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


def local_s3_server(port: int = 0) -> LocalS3Server:
    """A :class:`LocalS3Server` that will listen on ``port`` of 127.0.0.1 (0: any free port).

    ``residency-router local --port N`` uses it.
    """
    return LocalS3Server(port)


@pytest.fixture(scope="session")
def residency_session_server() -> Iterator[LocalS3Process]:
    """A second moto server, in a child process, for the session world.

    The per-test world's resets (``residency_moto_endpoint``) do not reach it.
    """
    with isolated_aws_environment(), LocalS3Process() as server:
        yield server


@pytest.fixture(scope="session")
def residency_session_regions_file(request: pytest.FixtureRequest) -> Path:
    """The region map the session world is provisioned from; override it in your conftest."""
    return Path(request.config.rootpath) / "regions.yaml"


@pytest.fixture(scope="session")
def residency_shared_world(
    residency_session_server: LocalS3Process,
    residency_session_regions_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> SessionWorld:
    """The session world's keeper: provisioned once per session (per xdist worker)."""
    return SessionWorld(
        residency_session_server,
        residency_session_regions_file,
        tmp_path_factory.mktemp("residency-session-world"),
    )


@pytest.fixture
def residency_session_world(residency_shared_world: SessionWorld) -> ResidencyWorld:
    """The session's one world, emptied for this test (see ``SessionWorld.fresh``)."""
    return residency_shared_world.fresh()


@pytest.fixture
def residency_session_settings(residency_session_world: ResidencyWorld) -> RouterSettings:
    """Router settings pointed at ``residency_session_world``."""
    return residency_session_world.settings()


@pytest_asyncio.fixture
async def residency_session_router(
    residency_session_settings: RouterSettings,
) -> AsyncIterator[ResidencyRouter]:
    """A started router on ``residency_session_world``, closed after the test."""
    async with ResidencyRouter.from_settings(residency_session_settings) as router:
        yield router
