from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from router.errors import (
    InvalidArgumentError,
    ProcessingNotEligibleError,
    ResidencyViolationError,
    UnknownOrgError,
)
from router.orgs import StaticOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import DataClass, Operation, OrgId, OrgResidency, Region
from tests.conftest import RequestLog

T0 = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)


class FrozenClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def org(org_id: str, region: Region, **kwargs: Any) -> OrgResidency:
    return OrgResidency(OrgId(org_id), region, **kwargs)


ORGS = {
    "org-stars": org("org-stars", Region.US),
    "org-acme": org("org-acme", Region.EU, processing_region=Region.EU),
    "org-acme2": org("org-acme2", Region.EU),
    "org-kiku": org("org-kiku", Region.JP, zero_data_retention=True),
    "org-lark": org("org-lark", Region.CA, training_opt_in=True, retention_days=7),
    "org-split": org("org-split", Region.JP, processing_region=Region.EU),
}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def directory() -> StaticOrgDirectory:
    return StaticOrgDirectory(ORGS)


@pytest.fixture
async def router(
    residency_session_world: ResidencyWorld, directory: StaticOrgDirectory, clock: FrozenClock
) -> AsyncIterator[ResidencyRouter]:
    settings = residency_session_world.settings()
    async with ResidencyRouter.from_settings(settings, directory=directory, clock=clock) as r:
        yield r


@pytest.fixture
def requests_sent(router: ResidencyRouter) -> RequestLog:
    log = RequestLog()
    router.storage.register("before-send.s3", log)
    return log


def versions_under(world: ResidencyWorld, region: str, prefix: str) -> list[dict[str, Any]]:
    return [v for v in world.all_versions(region) if v["Key"].startswith(prefix)]


# -- processing -----------------------------------------------------------------------


async def test_route_processing_follows_pin_and_sends_nothing(
    router: ResidencyRouter, requests_sent: RequestLog
) -> None:
    route = await router.route_processing("org-acme", "/v1/chat/completions")
    assert (route.region, route.url) == (
        Region.EU,
        "https://eu.example.invalid/v1/chat/completions",
    )
    route = await router.route_processing("org-split", "/v1/audio/transcriptions")
    assert route.region is Region.EU
    route = await router.route_processing("org-stars", "/v1/fine_tuning/jobs")
    assert route.url == "https://us.example.invalid/v1/fine_tuning/jobs"
    assert len(requests_sent) == 0


async def test_route_processing_refuses_ineligible_calls(router: ResidencyRouter) -> None:
    with pytest.raises(ProcessingNotEligibleError, match="not regional"):
        await router.route_processing("org-acme", "/v1/fine_tuning/jobs")
    with pytest.raises(ProcessingNotEligibleError, match="not listed"):
        await router.route_processing("org-stars", "/v1/embeddings")
    with pytest.raises(UnknownOrgError):
        await router.route_processing("org-nobody", "/v1/chat/completions")


# -- recording exchanges --------------------------------------------------------------


async def test_record_exchange_stores_json_in_storage_region_with_retention_tags(
    router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    receipt = await router.record_exchange(
        "org-split", "/v1/chat/completions", request=b'{"q": 1}', response=b'{"a": 2}'
    )
    # org-split stores in jp and processes in eu: recording is storage, so jp.
    assert receipt.stored is True
    assert receipt.region is Region.JP
    assert receipt.data_class is DataClass.INPUTS_OUTPUTS
    assert receipt.key.startswith(
        "orgs/org-split/inputs_outputs/2026-12-21/T100000Z/v1/chat/completions/"
    )
    assert receipt.key.endswith(".json")
    caller_key = receipt.key.split("/inputs_outputs/", 1)[1]
    head = residency_session_world.assert_stored_in(
        "org-split", caller_key, "jp", data_class="inputs_outputs"
    )
    assert head["ContentType"] == "application/json"
    residency_session_world.assert_nothing_outside("jp")
    s3 = residency_session_world.s3("jp")
    body = s3.get_object(Bucket=residency_session_world.bucket("jp"), Key=receipt.key)[
        "Body"
    ].read()
    assert json.loads(body) == {
        "endpoint": "/v1/chat/completions",
        "recorded_at": "2026-11-21T10:00:00Z",
        "encoding": "utf-8",
        "request": '{"q": 1}',
        "response": '{"a": 2}',
    }
    tags = s3.get_object_tagging(Bucket=residency_session_world.bucket("jp"), Key=receipt.key)[
        "TagSet"
    ]
    assert {t["Key"]: t["Value"] for t in tags} == {
        "residency-org": "org-split",
        "residency-class": "inputs_outputs",
        "residency-retention": "30d",
        "residency-expires": "2026-12-21T10:00:00Z",
        "residency-training": "opt-out",
    }


async def test_record_exchange_for_pinned_org_on_non_regional_endpoint_is_stored(
    router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    receipt = await router.record_exchange(
        "org-acme", "/v1/fine_tuning/jobs", request=b"\x00\xff", response=b"ok"
    )
    assert receipt.stored is True
    s3 = residency_session_world.s3("eu")
    doc = json.loads(
        s3.get_object(Bucket=residency_session_world.bucket("eu"), Key=receipt.key)["Body"].read()
    )
    assert doc["encoding"] == "base64"


async def test_zdr_exchange_never_reaches_s3(
    router: ResidencyRouter, residency_session_world: ResidencyWorld, requests_sent: RequestLog
) -> None:
    receipt = await router.record_exchange(
        "org-kiku", "/v1/chat/completions", request=b"secret prompt", response=b"answer"
    )
    assert receipt.stored is False
    assert "zero data retention" in receipt.reason
    assert receipt.version_id is None
    assert len(requests_sent) == 0
    assert residency_session_world.all_versions("jp") == []


async def test_zdr_exchange_skips_even_when_region_is_quarantined(
    residency_session_world: ResidencyWorld, directory: StaticOrgDirectory, clock: FrozenClock
) -> None:
    s3 = residency_session_world.s3("jp")
    s3.delete_bucket_lifecycle(Bucket=residency_session_world.bucket("jp"))
    s3.delete_bucket(Bucket=residency_session_world.bucket("jp"))
    settings = residency_session_world.settings(verify_on_start="quarantine")
    async with ResidencyRouter.from_settings(settings, directory=directory, clock=clock) as r:
        log = RequestLog()
        r.storage.register("before-send.s3", log)
        receipt = await r.record_exchange(
            "org-kiku", "/v1/chat/completions", request=b"p", response=b"r"
        )
        assert receipt.stored is False
        assert len(log) == 0


async def test_non_retaining_endpoint_is_never_stored(
    router: ResidencyRouter, residency_session_world: ResidencyWorld, requests_sent: RequestLog
) -> None:
    receipt = await router.record_exchange(
        "org-stars", "/v1/audio/transcriptions", request=b"audio", response=b"text"
    )
    assert receipt.stored is False
    assert "never retains data" in receipt.reason
    assert len(requests_sent) == 0


async def test_record_exchange_refuses_unlisted_endpoint_and_bad_bodies(
    router: ResidencyRouter, requests_sent: RequestLog
) -> None:
    with pytest.raises(ProcessingNotEligibleError):
        await router.record_exchange("org-stars", "/v1/embeddings", request=b"", response=b"")
    with pytest.raises(TypeError, match="request must be bytes"):
        await router.record_exchange(
            "org-stars",
            "/v1/chat/completions",
            request="text",  # type: ignore[arg-type]
            response=b"",
        )
    assert len(requests_sent) == 0


# -- purge ----------------------------------------------------------------------------


async def test_purge_deletes_expired_days_every_version_and_marker(
    router: ResidencyRouter, residency_session_world: ResidencyWorld, clock: FrozenClock
) -> None:
    lark = await router.record_exchange(
        "org-lark", "/v1/chat/completions", request=b"q", response=b"a"
    )  # 7 days: expires 2026-11-28
    lark2 = await router.record_exchange(
        "org-lark", "/v1/chat/completions", request=b"q2", response=b"a2"
    )
    stars = await router.record_exchange(
        "org-stars", "/v1/chat/completions", request=b"q", response=b"a"
    )  # 30 days: expires 2026-12-21
    await router.put("org-lark", "keep/me.txt", b"files are never purged by age")
    ca = residency_session_world.s3("ca")
    # A second version and a delete marker must go too.
    ca.put_object(
        Bucket=residency_session_world.bucket("ca"),
        Key=lark.key,
        Body=b"v2",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=residency_session_world.key_arn("ca"),
    )
    ca.delete_object(Bucket=residency_session_world.bucket("ca"), Key=lark2.key)

    report = await router.purge_expired(now=T0 + timedelta(days=6, hours=13))
    assert report.by_region[Region.CA].versions == 0
    assert versions_under(residency_session_world, "ca", "orgs/org-lark/inputs_outputs/")

    # Expiry is 2026-11-28T10:00:00Z: not a second earlier (issue 12.2), then at once.
    report = await router.purge_expired(now=datetime(2026, 11, 28, 0, 0, 1, tzinfo=UTC))
    assert report.by_region[Region.CA].versions == 0
    report = await router.purge_expired(now=datetime(2026, 11, 28, 9, 59, 59, tzinfo=UTC))
    assert report.by_region[Region.CA].versions == 0
    report = await router.purge_expired(now=datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC))
    assert report.by_region[Region.CA].objects == 2
    assert report.by_region[Region.CA].versions == 4  # 2 + 1 extra version + 1 marker
    assert versions_under(residency_session_world, "ca", "orgs/org-lark/inputs_outputs/") == []
    assert versions_under(residency_session_world, "ca", "orgs/org-lark/files/keep/me.txt")
    assert versions_under(residency_session_world, "us", stars.key)
    assert set(report.by_region) == set(Region)

    clock.now = datetime(2026, 12, 21, 23, 59, tzinfo=UTC)
    report = await router.purge_expired()
    assert report.by_region[Region.US].objects == 1
    assert versions_under(residency_session_world, "us", "orgs/org-stars/inputs_outputs/") == []
    assert versions_under(residency_session_world, "ca", "orgs/org-lark/files/keep/me.txt")


async def test_purge_finds_fully_delete_marked_days_and_departed_orgs(
    router: ResidencyRouter,
    residency_session_world: ResidencyWorld,
    residency_session_settings: Any,
) -> None:
    departed = await router.record_exchange(
        "org-acme2", "/v1/chat/completions", request=b"q", response=b"a"
    )
    eu = residency_session_world.s3("eu")
    eu.delete_object(
        Bucket=residency_session_world.bucket("eu"), Key=departed.key
    )  # only a marker now
    # A router whose directory no longer knows org-acme2 purges its data all the same.
    async with ResidencyRouter.from_settings(
        residency_session_settings, directory=StaticOrgDirectory({})
    ) as other:
        report = await other.purge_expired(now=T0 + timedelta(days=31))
    assert report.by_region[Region.EU].versions == 2
    assert versions_under(residency_session_world, "eu", "orgs/org-acme2/") == []


async def test_purge_aborts_stale_inputs_outputs_uploads_only(
    router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    s3 = residency_session_world.s3("us")
    bucket = residency_session_world.bucket("us")
    stale = s3.create_multipart_upload(
        Bucket=bucket, Key="orgs/org-stars/inputs_outputs/2099-01-01/v1/x/a.json"
    )["UploadId"]
    files = s3.create_multipart_upload(Bucket=bucket, Key="orgs/org-stars/files/big.bin")[
        "UploadId"
    ]
    # Measured from the upload's own start time, as S3 reports it (moto dates every upload
    # 2010; real S3 dates it now): the same test holds on both.
    initiated = max(u["Initiated"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"])
    young = await router.purge_expired(now=initiated + timedelta(hours=23))
    assert young.by_region[Region.US].uploads_aborted == 0
    report = await router.purge_expired(now=initiated + timedelta(days=1, minutes=1))
    assert report.by_region[Region.US].uploads_aborted == 1
    left = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == {files}
    assert stale not in left


async def test_purge_refuses_naive_time(router: ResidencyRouter) -> None:
    with pytest.raises(InvalidArgumentError, match="timezone"):
        await router.purge_expired(now=datetime(2026, 1, 1))


# -- erasure --------------------------------------------------------------------------


async def test_erase_org_removes_every_version_and_upload_and_nothing_else(
    router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    await router.put("org-acme", "a.txt", b"1")
    await router.put("org-acme", "a.txt", b"2")
    await router.put("org-acme", "ft/data.jsonl", b"3", data_class="fine_tuning")
    await router.record_exchange("org-acme", "/v1/chat/completions", request=b"q", response=b"a")
    await router.put("org-acme2", "a.txt", b"neighbour")
    eu = residency_session_world.s3("eu")
    bucket = residency_session_world.bucket("eu")
    eu.delete_object(Bucket=bucket, Key="orgs/org-acme/files/a.txt")
    eu.create_multipart_upload(Bucket=bucket, Key="orgs/org-acme/files/partial.bin")
    neighbour_upload = eu.create_multipart_upload(Bucket=bucket, Key="orgs/org-acme2/files/p.bin")

    receipt = await router.erase_org("org-acme", data_class="fine_tuning")
    assert (receipt.objects_deleted, receipt.versions_deleted) == (1, 1)
    assert versions_under(residency_session_world, "eu", "orgs/org-acme/fine_tuning/") == []
    assert versions_under(residency_session_world, "eu", "orgs/org-acme/files/a.txt")

    receipt = await router.erase_org("org-acme")
    assert receipt.region is Region.EU
    assert receipt.data_class is None
    assert receipt.objects_deleted == 2  # files/a.txt, one exchange
    assert receipt.versions_deleted == 4  # two versions + marker + exchange
    assert receipt.uploads_aborted == 1
    assert versions_under(residency_session_world, "eu", "orgs/org-acme/") == []
    assert versions_under(residency_session_world, "eu", "orgs/org-acme2/")
    uploads = eu.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [neighbour_upload["UploadId"]]

    again = await router.erase_org("org-acme")
    assert (again.objects_deleted, again.versions_deleted, again.uploads_aborted) == (0, 0, 0)


async def test_erase_org_deletes_more_than_one_listing_page_of_versions(
    router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    # DeleteObjects and ListObjectVersions both stop at 1000: the erasure must go on past
    # the first page (some S3 implementations end a listing early when its marker's version
    # has just been deleted, so each round lists from the start).
    eu = residency_session_world.s3("eu")
    bucket = residency_session_world.bucket("eu")
    for i in range(1003):
        eu.put_object(Bucket=bucket, Key=f"orgs/org-acme/files/many/{i:05d}", Body=b"x")
    receipt = await router.erase_org("org-acme")
    assert (receipt.objects_deleted, receipt.versions_deleted) == (1003, 1003)
    assert versions_under(residency_session_world, "eu", "orgs/org-acme/") == []


async def test_erase_org_for_departed_org_needs_its_region(
    residency_session_world: ResidencyWorld,
    router: ResidencyRouter,
    residency_session_settings: Any,
) -> None:
    await router.put("org-lark", "a.txt", b"1")
    async with ResidencyRouter.from_settings(
        residency_session_settings, directory=StaticOrgDirectory({})
    ) as other:
        with pytest.raises(UnknownOrgError):
            await other.erase_org("org-lark")
        receipt = await other.erase_org("org-lark", region="ca")
    assert receipt.versions_deleted == 1
    assert versions_under(residency_session_world, "ca", "orgs/org-lark/") == []


async def test_erase_org_refuses_region_contradicting_directory(
    router: ResidencyRouter, residency_session_world: ResidencyWorld, requests_sent: RequestLog
) -> None:
    await router.put("org-lark", "a.txt", b"1")
    requests_sent.requests.clear()
    with pytest.raises(ResidencyViolationError, match="lives in ca"):
        await router.erase_org("org-lark", region="us")
    with pytest.raises(InvalidArgumentError, match="residency region"):
        await router.erase_org("org-lark", region="mars")
    assert len(requests_sent) == 0
    assert versions_under(residency_session_world, "ca", "orgs/org-lark/")


# -- training -------------------------------------------------------------------------


async def test_non_opted_in_org_lists_nothing_for_training(
    router: ResidencyRouter, requests_sent: RequestLog
) -> None:
    await router.put("org-stars", "a.txt", b"1")
    requests_sent.requests.clear()
    assert [o async for o in router.list_training_eligible("org-stars")] == []
    assert len(requests_sent) == 0


async def test_abuse_monitoring_records_are_never_training_data(router: ResidencyRouter) -> None:
    # org-lark is opted in: its files and fine-tuning data may be listed, never the inputs
    # and outputs kept for abuse monitoring (issue 12.3).
    await router.put("org-lark", "doc.txt", b"f")
    await router.put("org-lark", "set.jsonl", b"t", data_class=DataClass.FINE_TUNING)
    receipt = await router.record_exchange(
        "org-lark", "/v1/chat/completions", request=b"q", response=b"a"
    )
    assert receipt.stored
    listed = {(o.data_class, o.key) async for o in router.list("org-lark")}
    assert DataClass.INPUTS_OUTPUTS in {cls for cls, _ in listed}
    eligible = [(o.data_class, o.key) async for o in router.list_training_eligible("org-lark")]
    assert sorted(eligible) == [(DataClass.FILES, "doc.txt"), (DataClass.FINE_TUNING, "set.jsonl")]


class EditableDirectory:
    """A caller's own directory whose records the test edits between calls."""

    def __init__(self, records: dict[str, OrgResidency]) -> None:
        self.records = records

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        try:
            return self.records[org_id]
        except KeyError:
            raise UnknownOrgError(org_id) from None


async def test_training_listing_checks_org_now_and_object_tag(
    residency_session_world: ResidencyWorld, clock: FrozenClock
) -> None:
    directory = EditableDirectory(dict(ORGS))
    async with ResidencyRouter.from_settings(
        residency_session_world.settings(), directory=directory, clock=clock
    ) as r:
        for i in range(3):
            await r.put("org-lark", f"in/{i}.txt", b"x")
        # Opt out: later writes carry opt-out, earlier objects stay opt-in on their tag.
        directory.records["org-lark"] = org(
            "org-lark", Region.CA, retention_days=7, training_opt_in=False
        )
        r.invalidate("org-lark")
        assert [o async for o in r.list_training_eligible("org-lark")] == []
        await r.put("org-lark", "out/written-opted-out.txt", b"x")
        directory.records["org-lark"] = ORGS["org-lark"]
        r.invalidate("org-lark")
        # Planted under org-lark's prefix with another org's tag: never listed.
        ca = residency_session_world.s3("ca")
        ca.put_object(
            Bucket=residency_session_world.bucket("ca"),
            Key="orgs/org-lark/files/planted.txt",
            Body=b"x",
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId=residency_session_world.key_arn("ca"),
            Tagging="residency-org=org-stars&residency-training=opt-in",
        )
        eligible = sorted([o.key async for o in r.list_training_eligible("org-lark")])
    assert eligible == ["in/0.txt", "in/1.txt", "in/2.txt"]


# -- explain --------------------------------------------------------------------------


async def test_explain_sends_no_s3_request(
    router: ResidencyRouter, requests_sent: RequestLog
) -> None:
    result = await router.explain(
        "org-lark", operation=Operation.RECORD_EXCHANGE, endpoint="/v1/chat/completions"
    )
    assert result.store is True
    assert result.expires_at == T0 + timedelta(days=7)
    assert result.key is not None
    assert result.key.startswith(
        "orgs/org-lark/inputs_outputs/2026-11-28/T100000Z/v1/chat/completions/"
    )
    assert result.tags["residency-training"] == "opt-in"
    assert result.placement.region is Region.CA
    zdr = await router.explain(
        "org-kiku", operation="record_exchange", endpoint="/v1/chat/completions"
    )
    assert zdr.store is False
    route = await router.explain(
        "org-acme", operation="route_processing", endpoint="/v1/chat/completions"
    )
    assert route.processing_route is not None
    assert route.processing_route.region is Region.EU
    with pytest.raises(InvalidArgumentError, match="operation"):
        await router.explain("org-acme", operation="fly")
    assert len(requests_sent) == 0


async def test_exchanges_stored_without_a_time_go_only_after_their_whole_day(
    router: ResidencyRouter, residency_session_world: ResidencyWorld
) -> None:
    # Keys written before the time segment existed: .../YYYY-MM-DD/{endpoint}/{uuid}.json.
    us = residency_session_world.s3("us")
    legacy = "orgs/org-stars/inputs_outputs/2026-12-21/v1/chat/completions/old.json"
    us.put_object(
        Bucket=residency_session_world.bucket("us"),
        Key=legacy,
        Body=b"{}",
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId=residency_session_world.key_arn("us"),
    )
    report = await router.purge_expired(now=datetime(2026, 12, 21, 23, 59, 59, tzinfo=UTC))
    assert report.by_region[Region.US].versions == 0
    assert versions_under(residency_session_world, "us", legacy)
    report = await router.purge_expired(now=datetime(2026, 12, 22, 0, 0, 0, tzinfo=UTC))
    assert report.by_region[Region.US].versions == 1
    assert versions_under(residency_session_world, "us", legacy) == []
