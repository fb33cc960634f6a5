from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from typing import Any

from router.errors import ObjectNotFoundError
from router.orgs import StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency, Region
from tests.conftest import without_bucket_default_encryption

OPERATIONS = 2000
TASKS = 200
ORG_COUNT = 50
MiB = 1024 * 1024
ORGS = {
    f"soak-{i:02d}": OrgResidency(
        OrgId(f"soak-{i:02d}"), list(Region)[i % 7], training_opt_in=i % 3 == 0
    )
    for i in range(ORG_COUNT)
}


async def chunks(seed: int, size: int) -> AsyncIterator[bytes]:
    block = hashlib.sha256(str(seed).encode()).digest() * 8192  # 256 KiB
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sent += len(piece)
        yield piece


async def test_soak_keeps_every_invariant(process_world: ResidencyWorld) -> None:
    # moto in a child process: 200 tasks' connections against the in-process server's
    # accept loop, which shares this process's GIL, once took over 5 s to connect.
    residency_world = process_world
    without_bucket_default_encryption(residency_world)
    settings = residency_world.settings(
        multipart_threshold=5 * MiB, multipart_part_size=5 * MiB, multipart_concurrency=2
    )
    expected: dict[tuple[str, str], str] = {}  # acknowledged, not deleted: sha256
    counts: dict[str, int] = {}
    budget = iter(range(OPERATIONS))

    async with ResidencyRouter.from_settings(
        settings, directory=StaticOrgDirectory(ORGS)
    ) as router:

        async def worker(task: int) -> None:
            rng = random.Random(task)
            mine: list[tuple[str, str]] = []
            for n in budget:
                org = rng.choice(list(ORGS))
                roll = rng.random()
                if roll < 0.45 or not mine:
                    key = f"soak/{task}/{n}.bin"
                    if n % 200 == 0:
                        body: Any = chunks(n, 6 * MiB)
                        sha = hashlib.sha256(
                            b"".join([c async for c in chunks(n, 6 * MiB)])
                        ).hexdigest()
                    else:
                        body = f"{org}:{key}:{rng.random()}".encode() * rng.randint(1, 50)
                        sha = hashlib.sha256(body).hexdigest()
                    receipt = await router.put(org, key, body)
                    assert receipt.sha256 == sha
                    expected[(org, key)] = sha
                    mine.append((org, key))
                    op = "put"
                elif roll < 0.70:
                    org, key = rng.choice(mine)
                    data = await router.get(org, key)
                    assert hashlib.sha256(data).hexdigest() == expected[(org, key)]
                    op = "get"
                elif roll < 0.80:
                    org, key = rng.choice(mine)
                    info = await router.head(org, key)
                    assert info.org_id == org
                    op = "head"
                elif roll < 0.88:
                    org, key = mine.pop(rng.randrange(len(mine)))
                    deleted = await router.delete(org, key)
                    assert deleted.versions_deleted == 1
                    del expected[(org, key)]
                    op = "delete"
                elif roll < 0.94:
                    listed = [o async for o in router.list(org, prefix=f"soak/{task}/")]
                    assert all(o.org_id == org for o in listed)
                    op = "list"
                else:
                    await router.record_exchange(
                        org, "/v1/chat/completions", request=b"q", response=b"a"
                    )
                    op = "record"
                counts[op] = counts.get(op, 0) + 1

        await asyncio.gather(*(worker(t) for t in range(TASKS)))
        for org_id, key in list(expected)[:5]:
            try:
                await router.get(org_id, key)
            except ObjectNotFoundError as exc:  # pragma: no cover - a lost write
                raise AssertionError(f"acknowledged write {org_id}/{key} is gone") from exc

    assert sum(counts.values()) == OPERATIONS
    assert {"put", "get", "head", "delete", "list", "record"} <= set(counts)

    # Independent full scan with boto3.
    found: dict[tuple[str, str], str] = {}
    for cfg in residency_world.region_map:
        s3 = residency_world.s3(cfg.region)
        key_arn = residency_world.key_arn(cfg.region)
        assert s3.list_multipart_uploads(Bucket=cfg.bucket).get("Uploads", []) == []
        for version in residency_world.all_versions(cfg.region):
            full = version["Key"]
            _, org_id, data_class, caller_key = full.split("/", 3)
            assert ORGS[org_id].region is cfg.region, f"{full} is in {cfg.region}"
            if "VersionId" in version and version.get("Size") is not None:
                head = s3.head_object(Bucket=cfg.bucket, Key=full, VersionId=version["VersionId"])
                assert head["ServerSideEncryption"] == "aws:kms"
                assert head["SSEKMSKeyId"] == key_arn
                tags = {
                    t["Key"]: t["Value"]
                    for t in s3.get_object_tagging(
                        Bucket=cfg.bucket, Key=full, VersionId=version["VersionId"]
                    )["TagSet"]
                }
                assert tags["residency-org"] == org_id
                assert tags["residency-class"] == data_class
                training = "opt-in" if ORGS[org_id].training_opt_in else "opt-out"
                assert tags["residency-training"] == training
                if data_class == "inputs_outputs":
                    assert tags["residency-retention"] == "30d"
                    assert "residency-expires" in tags
                else:
                    assert tags["residency-retention"] == "keep"
            if data_class == "files":
                found[(org_id, caller_key)] = full
    assert set(expected) == set(found)
    for (org_id, key), sha in expected.items():
        region = ORGS[org_id].region
        body = (
            residency_world.s3(region)
            .get_object(Bucket=residency_world.bucket(region), Key=found[(org_id, key)])["Body"]
            .read()
        )
        assert hashlib.sha256(body).hexdigest() == sha
