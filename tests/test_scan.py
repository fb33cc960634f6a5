from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest

from router.cli import main
from router.guards import audit_upload_findings, tag_problems
from router.orgs import StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import AuditReport, DataClass, OrgId, OrgMove, OrgResidency, Region

# Two days after the wall clock: an upload started by this test (moto dates every upload
# 2010, a faithful S3 dates it now) is then more than a day old for the router.
NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


class FrozenClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


ORGS = {
    "org-us": OrgResidency(OrgId("org-us"), Region.US),
    "org-eu": OrgResidency(OrgId("org-eu"), Region.EU),
    "org-moving": OrgResidency(
        OrgId("org-moving"),
        Region.EU,
        move=OrgMove(Region.EU, Region.US, "copying", NOW - timedelta(hours=1)),
    ),
}


@pytest.fixture
async def router(residency_world: ResidencyWorld) -> AsyncIterator[ResidencyRouter]:
    settings = residency_world.settings(verify_on_start="off")
    async with ResidencyRouter.from_settings(
        settings, directory=StaticOrgDirectory(ORGS), clock=FrozenClock(NOW)
    ) as r:
        yield r


def tags_of(
    org_id: str, data_class: str = "files", *, expires: datetime | None = None
) -> dict[str, str]:
    tags = {
        "residency-org": org_id,
        "residency-class": data_class,
        "residency-retention": "30d" if data_class == "inputs_outputs" else "keep",
        "residency-training": "opt-out",
    }
    if expires is not None:
        tags["residency-expires"] = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    return tags


def plant(
    world: ResidencyWorld,
    region: str,
    key: str,
    *,
    tags: dict[str, str] | None = None,
    encryption: str = "kms",
    kms_key: str | None = None,
) -> str:
    """Write an object with an independent boto3 client, bypassing the router; its version."""
    extra: dict[str, Any] = {}
    if tags:
        extra["Tagging"] = urlencode(tags)
    if encryption == "kms":
        extra["ServerSideEncryption"] = "aws:kms"
        extra["SSEKMSKeyId"] = kms_key or world.key_arn(region)
    else:  # explicit, so a bucket default cannot turn it into SSE-KMS
        extra["ServerSideEncryption"] = encryption
    response = world.s3(region).put_object(
        Bucket=world.bucket(region), Key=key, Body=b"planted", **extra
    )
    return str(response.get("VersionId"))


def found(report: AuditReport) -> set[tuple[str, str, str]]:
    return {(f.region.value, f.key, f.kind) for f in report.findings}


async def test_audit_names_each_planted_problem_and_nothing_written_by_the_router(
    router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    world = residency_world
    # Correctly written data, through the router: never a finding.
    await router.put("org-us", "docs/a.txt", b"one")
    await router.put("org-us", "docs/a.txt", b"two")  # a noncurrent version too
    await router.put("org-eu", "tune.jsonl", b"{}", data_class=DataClass.FINE_TUNING)
    await router.record_exchange("org-us", "/v1/chat/completions", request=b"q", response=b"a")
    deleted = await router.put("org-eu", "gone.txt", b"x")
    world.s3("eu").delete_object(Bucket=world.bucket("eu"), Key=deleted.key)  # a delete marker
    # An org mid-move may have data in both of its regions.
    for region in ("eu", "us"):
        plant(world, region, "orgs/org-moving/files/m.txt", tags=tags_of("org-moving"))

    other_us_key = world.client("kms", "us-east-1").create_key()["KeyMetadata"]["Arn"]
    expired_at = NOW - timedelta(days=3)
    expired_key = (
        f"orgs/org-us/inputs_outputs/{expired_at:%Y-%m-%d}/T{expired_at:%H%M%S}Z/"
        "v1/chat/completions/0123456789abcdef0123456789abcdef.json"
    )
    planted: dict[tuple[str, str, str], dict[str, Any]] = {
        ("us", "orgs/org-eu/files/strayed.txt", "wrong_region"): {"tags": tags_of("org-eu")},
        ("us", "orgs/org-us/files/plain.txt", "unencrypted"): {
            "tags": tags_of("org-us"),
            "encryption": "AES256",
        },
        ("us", "orgs/org-us/files/other-key.txt", "wrong_key"): {
            "tags": tags_of("org-us"),
            "kms_key": other_us_key,
        },
        ("us", "orgs/org-us/files/bad-tags.txt", "bad_tags"): {
            "tags": {**tags_of("org-eu"), "residency-retention": "30d", "residency-training": "x"},
        },
        ("us", "orgs/org-us/fine_tuning/untagged.jsonl", "bad_tags"): {},
        ("us", expired_key, "expired"): {
            "tags": tags_of("org-us", "inputs_outputs", expires=expired_at)
        },
        ("us", "orgs/org-ghost/files/a.txt", "unknown_org"): {"tags": tags_of("org-ghost")},
        ("us", "stray/notes.txt", "foreign_key"): {},
        ("jp", "orgs/org-moving/files/m.txt", "wrong_region"): {"tags": tags_of("org-moving")},
    }
    versions = {
        (region, key): plant(world, region, key, **options)
        for (region, key, _), options in planted.items()
    }
    upload = world.s3("us").create_multipart_upload(
        Bucket=world.bucket("us"),
        Key="orgs/org-us/files/big.bin",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=world.key_arn("us"),
    )

    report = await router.audit()

    expected = {where for where in planted} | {("us", "orgs/org-us/files/big.bin", "stale_upload")}
    assert found(report) == expected
    assert not report.ok
    assert report.unchecked == {}
    for finding in report.findings:
        if finding.kind == "stale_upload":
            assert finding.upload_id == upload["UploadId"]
            assert finding.version_id is None
        else:
            assert finding.version_id == versions[finding.region.value, finding.key]
        assert finding.bucket == world.bucket(finding.region)
    details = {f.key: f.detail for f in report.findings}
    assert "residency-org must be 'org-us'" in details["orgs/org-us/files/bad-tags.txt"]
    assert "residency-training" in details["orgs/org-us/files/bad-tags.txt"]
    assert "residency-org is missing" in details["orgs/org-us/fine_tuning/untagged.jsonl"]
    assert "AES256" in details["orgs/org-us/files/plain.txt"]
    assert details["orgs/org-moving/files/m.txt"].endswith("in eu or us, not jp")
    by_org = {f.key: f.org_id for f in report.findings}
    assert by_org["stray/notes.txt"] is None
    assert by_org["orgs/org-ghost/files/a.txt"] == "org-ghost"
    assert [f.region.value for f in report.findings] == sorted(
        f.region.value for f in report.findings
    )
    # Router writes: 2 + 1 + 1 + 1 (delete marker skipped); planted: 2 + 9.
    assert sum(report.versions_checked.values()) == 5 + 2 + len(planted)
    assert report.uploads_checked[Region.US] == 1
    assert (report.started_at, report.finished_at >= report.started_at) == (NOW, True)


async def test_audit_of_a_world_written_by_the_router_is_ok(
    router: ResidencyRouter,
) -> None:
    await router.put("org-us", "a.txt", b"a")
    await router.put("org-eu", "b.txt", b"b")
    await router.record_exchange("org-eu", "/v1/chat/completions", request=b"q", response=b"a")
    counts: list[int] = []

    report = await router.audit(progress=counts.append)

    assert report.ok, report.findings
    assert report.findings == ()
    assert report.unchecked == {}
    assert set(report.versions_checked) == set(Region)
    assert sum(report.versions_checked.values()) == 3
    assert sorted(counts) == [1, 2, 3]


async def test_audit_regions_limits_the_scan_to_those_regions(
    router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    plant(
        residency_world,
        "eu",
        "orgs/org-eu/files/p.txt",
        tags=tags_of("org-eu"),
        encryption="AES256",
    )
    plant(
        residency_world,
        "us",
        "orgs/org-us/files/p.txt",
        tags=tags_of("org-us"),
        encryption="AES256",
    )

    report = await router.audit(regions=["eu"])

    assert found(report) == {("eu", "orgs/org-eu/files/p.txt", "unencrypted")}
    assert set(report.versions_checked) == {Region.EU}
    assert set(report.uploads_checked) == {Region.EU}


async def test_audit_names_a_region_it_cannot_list_as_unchecked_and_checks_the_others(
    router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    residency_world.s3("jp").delete_bucket(Bucket=residency_world.bucket("jp"))
    plant(
        residency_world,
        "us",
        "orgs/org-us/files/p.txt",
        tags=tags_of("org-us"),
        encryption="AES256",
    )

    report = await router.audit()

    assert set(report.unchecked) == {Region.JP}
    assert residency_world.bucket("jp") in report.unchecked[Region.JP]
    assert found(report) == {("us", "orgs/org-us/files/p.txt", "unencrypted")}
    assert report.versions_checked[Region.US] == 1
    assert not report.ok


def test_audit_command_exits_0_clean_1_found_2_unchecked_and_prints_json(
    world_environment: ResidencyWorld, capsys: pytest.CaptureFixture[str]
) -> None:
    world = world_environment
    assert main(["audit"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("uploads checked; ok")

    key = "orgs/org-stars/files/plain.txt"
    plant(world, "us", key, tags=tags_of("org-stars"), encryption="AES256")
    assert main(["audit", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""  # no progress when stderr is not a terminal
    report = json.loads(captured.out)
    assert report["ok"] is False
    assert report["unchecked"] == {}
    assert [(f["region"], f["key"], f["kind"], f["org_id"]) for f in report["findings"]] == [
        ("us", key, "unencrypted", "org-stars")
    ]
    finding = report["findings"][0]
    assert set(finding) == {
        "region", "bucket", "key", "kind", "detail", "org_id", "version_id", "upload_id"
    }  # fmt: skip
    assert report["counts"]["versions_checked"]["us"] == 1
    assert report["counts"]["by_kind"] == {"unencrypted": 1}

    assert main(["audit", "--region", "eu", "--region", "jp"]) == 0
    assert "audit of eu, jp" in capsys.readouterr().out

    world.s3("kr").delete_bucket(Bucket=world.bucket("kr"))
    assert main(["audit", "--region", "kr", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert list(report["unchecked"]) == ["kr"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_audit_command_shows_progress_on_a_terminal_only(
    world_environment: ResidencyWorld,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plant(world_environment, "eu", "orgs/org-acme/files/a.txt", tags=tags_of("org-acme"))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    assert main(["audit", "--json"]) == 0

    assert "audit: 1 object versions checked" in terminal.getvalue()
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_audit_command_exits_2_when_the_router_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RESIDENCY_REGIONS_FILE", str(tmp_path / "missing.yaml"))
    assert main(["audit"]) == 2
    assert "could not audit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tags", "data_class", "problems"),
    [
        pytest.param(tags_of("org-a"), DataClass.FILES, [], id="files-right"),
        pytest.param(
            tags_of("org-a", "inputs_outputs", expires=NOW), DataClass.INPUTS_OUTPUTS, [], id="io"
        ),
        pytest.param(
            {**tags_of("org-a", "inputs_outputs"), "residency-retention": "5d"},
            DataClass.INPUTS_OUTPUTS,
            [
                "residency-retention must be <N>d with N one of 1, 7, 30",
                "residency-expires is missing",
            ],
            id="io-window-not-allowed-no-expiry",
        ),
        pytest.param(
            {**tags_of("org-a"), "residency-class": "fine_tuning"},
            DataClass.FILES,
            ["residency-class must be 'files'"],
            id="class-differs-from-key",
        ),
        pytest.param(
            {**tags_of("org-a", "inputs_outputs"), "residency-expires": "soon"},
            DataClass.INPUTS_OUTPUTS,
            ["residency-expires must be a UTC ISO 8601 instant"],
            id="expiry-malformed",
        ),
        pytest.param(
            {**tags_of("org-a"), "residency-retention": "30d", "residency-training": "yes"},
            DataClass.FILES,
            ["residency-retention must be 'keep'", "residency-training must be opt-in or opt-out"],
            id="files-with-a-window",
        ),
    ],
)
def test_tag_problems(tags: dict[str, str], data_class: DataClass, problems: list[str]) -> None:
    assert tag_problems(tags, "org-a", data_class, [1, 7, 30]) == problems


def test_audit_upload_findings_judges_place_and_age() -> None:
    fresh, old = NOW - timedelta(hours=1), NOW - timedelta(days=2)
    stale_before = NOW - timedelta(days=1)
    key = "orgs/org-a/files/big.bin"

    def judge(initiated: datetime | None, allowed: set[Region] | None) -> list[str]:
        kinds = audit_upload_findings(
            key, region=Region.US, allowed=allowed, initiated=initiated, stale_before=stale_before
        )
        return [kind for kind, _ in kinds]

    assert judge(fresh, {Region.US}) == []
    assert judge(old, {Region.US}) == ["stale_upload"]
    assert judge(None, {Region.US}) == ["stale_upload"]
    assert judge(fresh, {Region.EU}) == ["wrong_region"]
    assert judge(fresh, None) == ["unknown_org"]
