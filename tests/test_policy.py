from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from router.errors import (
    DirectoryUnavailableError,
    InvalidArgumentError,
    ProcessingNotEligibleError,
    RegionUnavailableError,
    ResidencyViolationError,
    StorageError,
)
from router.explain import explain
from router.policy import (
    VerifyMode,
    WriteDecision,
    decide_exchange,
    decide_processing,
    decide_put,
    erase_target,
    exchange_document,
    expiry_day_of,
    expiry_instant_of,
    is_expired,
    is_stale_exchange_upload,
    placement,
    purge_scope,
    startup_verdict,
    write_receipt,
)
from router.regions import RegionMap
from router.types import (
    DataClass,
    Operation,
    OrgId,
    OrgResidency,
    Placement,
    Problem,
    Region,
    WriteReceipt,
)
from tests.conftest import REGIONS_FILE


def placed(org: OrgResidency, region_map: RegionMap, arns: dict[Region, str]) -> Placement:
    found = placement(org, region_map, arns)
    assert found is not None
    return found


MAP = RegionMap.load(REGIONS_FILE)
ARNS: dict[Region, str] = {
    cfg.region: f"arn:aws:kms:{cfg.aws_region}:123456789012:key/{cfg.region}" for cfg in MAP
}


@pytest.mark.parametrize(
    ("org", "region", "aws_region", "bucket"),
    [
        pytest.param(
            OrgResidency(OrgId("a"), Region(code)), code, cfg.aws_region, cfg.bucket, id=code
        )
        for code, cfg in ((c.region.value, c) for c in MAP)
    ],
)
def test_placement_is_the_org_region(
    org: OrgResidency, region: str, aws_region: str, bucket: str
) -> None:
    place = placed(org, MAP, ARNS)
    assert (place.region, place.aws_region, place.bucket) == (region, aws_region, bucket)
    assert place.kms_key_arn == ARNS[Region(region)]
    assert f":{aws_region}:" in place.kms_key_arn


def test_placement_fails_closed_for_region_missing_from_map() -> None:
    arns: dict[Region, str] = {r: a for r, a in ARNS.items() if r is not Region.KR}
    assert placement(OrgResidency(OrgId("a"), Region.KR), MAP, arns) is None


@pytest.mark.parametrize(
    ("org", "data_class", "tags"),
    [
        pytest.param(
            OrgResidency(OrgId("o"), Region.EU),
            DataClass.FILES,
            {
                "residency-org": "o",
                "residency-class": "files",
                "residency-retention": "keep",
                "residency-training": "opt-out",
            },
            id="files-opt-out",
        ),
        pytest.param(
            OrgResidency(OrgId("o"), Region.CA, training_opt_in=True, retention_days=7),
            DataClass.FINE_TUNING,
            {
                "residency-org": "o",
                "residency-class": "fine_tuning",
                "residency-retention": "keep",
                "residency-training": "opt-in",
            },
            id="fine-tuning-opt-in",
        ),
    ],
)
def test_decide_put_tags_and_key(
    org: OrgResidency, data_class: DataClass, tags: dict[str, str]
) -> None:
    place = placed(org, MAP, ARNS)
    decision = decide_put(org, place, data_class, "d/k.txt")
    assert decision.store is True
    assert decision.key == f"orgs/o/{data_class.value}/d/k.txt"
    assert dict(decision.tags) == tags
    assert decision.placement == place
    encoded = decision.tagging()
    assert "residency-org=o" in encoded
    assert "&" in encoded


@pytest.mark.parametrize("store", [True, False])
def test_write_receipt_is_the_dataclass_its_constructor_makes(store: bool) -> None:
    org = OrgResidency(OrgId("o"), Region.EU)
    place = placed(org, MAP, ARNS)
    decision = decide_put(org, place, DataClass.FILES, "d/k.txt")
    decision.store, decision.reason = store, "why"
    receipt = write_receipt(decision, "v1", "ab" * 32)
    expected = WriteReceipt(
        org_id=place.org_id,
        region=place.region,
        aws_region=place.aws_region,
        bucket=place.bucket,
        key=decision.key if store else "",
        version_id="v1",
        sha256="ab" * 32,
        kms_key_arn=place.kms_key_arn,
        data_class=DataClass.FILES,
        stored=store,
        reason="why",
    )
    assert type(receipt) is WriteReceipt
    # Every field set, each to what the constructor sets it to.
    assert dataclasses.asdict(receipt) == dataclasses.asdict(expected)
    assert receipt == expected
    assert hash(receipt) == hash(expected)
    assert repr(receipt) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.key = "elsewhere"  # type: ignore[misc]
    assert dataclasses.replace(receipt, version_id="v2").version_id == "v2"


def test_decide_put_refuses_inputs_outputs() -> None:
    org = OrgResidency(OrgId("o"), Region.US)
    with pytest.raises(InvalidArgumentError, match="record_exchange"):
        decide_put(org, placed(org, MAP, ARNS), DataClass.INPUTS_OUTPUTS, "k")


# -- processing, exchanges, explain ---------------------------------------------------

NOW = datetime(2026, 11, 21, 22, 30, 5, tzinfo=UTC)
PINNED_EU = OrgResidency(OrgId("p"), Region.EU, processing_region=Region.EU)
PINNED_US = OrgResidency(OrgId("p"), Region.JP, processing_region=Region.US)
UNPINNED = OrgResidency(OrgId("u"), Region.KR)


@pytest.mark.parametrize(
    ("org", "endpoint", "region", "url"),
    [
        pytest.param(
            PINNED_EU,
            "/v1/chat/completions",
            Region.EU,
            "https://eu.example.invalid/v1/chat/completions",
            id="pinned-eu-regional",
        ),
        pytest.param(
            PINNED_US,
            "/v1/audio/transcriptions",
            Region.US,
            "https://us.example.invalid/v1/audio/transcriptions",
            id="pinned-us-regional",
        ),
        pytest.param(
            UNPINNED,
            "/v1/chat/completions",
            Region.US,
            "https://us.example.invalid/v1/chat/completions",
            id="unpinned-default",
        ),
        pytest.param(
            UNPINNED,
            "/v1/fine_tuning/jobs",
            Region.US,
            "https://us.example.invalid/v1/fine_tuning/jobs",
            id="unpinned-non-regional",
        ),
    ],
)
def test_decide_processing_routes(
    org: OrgResidency, endpoint: str, region: Region, url: str
) -> None:
    route = decide_processing(org, MAP, endpoint)
    assert route.region is region
    assert route.url == url
    assert type(route.url) is str
    assert endpoint in route.reason


@pytest.mark.parametrize(
    ("org", "endpoint", "message"),
    [
        pytest.param(PINNED_EU, "/v1/fine_tuning/jobs", "not regional", id="pinned-non-regional"),
        pytest.param(PINNED_EU, "/v1/embeddings", "not listed", id="pinned-unlisted"),
        pytest.param(UNPINNED, "/v1/embeddings", "not listed", id="unpinned-unlisted"),
        pytest.param(UNPINNED, "/v1/chat/completions/", "not listed", id="trailing-slash"),
        pytest.param(UNPINNED, "v1/chat/completions", "not listed", id="no-leading-slash"),
        pytest.param(UNPINNED, "/V1/chat/completions", "not listed", id="case"),
        pytest.param(UNPINNED, "/v1/chat/completions?x=1", "not listed", id="query"),
    ],
)
def test_decide_processing_refuses(org: OrgResidency, endpoint: object, message: str) -> None:
    with pytest.raises(ProcessingNotEligibleError, match=message):
        decide_processing(org, MAP, endpoint)


@pytest.mark.parametrize("endpoint", [None, 1, b"/v1/chat/completions"])
def test_decide_processing_refuses_non_str_endpoints_with_type_error(endpoint: object) -> None:
    with pytest.raises(TypeError, match="endpoint must be a str"):
        decide_processing(UNPINNED, MAP, endpoint)


def exchange(org: OrgResidency, endpoint: str) -> WriteDecision:
    return decide_exchange(org, placed(org, MAP, ARNS), MAP, endpoint, NOW, "abc123")


@pytest.mark.parametrize(
    ("org", "endpoint", "store", "reason"),
    [
        pytest.param(UNPINNED, "/v1/chat/completions", True, "30 days", id="default-window"),
        pytest.param(
            OrgResidency(OrgId("z"), Region.JP, zero_data_retention=True),
            "/v1/chat/completions",
            False,
            "zero data retention",
            id="zdr",
        ),
        pytest.param(UNPINNED, "/v1/audio/transcriptions", False, "never retains", id="no-retain"),
        pytest.param(PINNED_EU, "/v1/fine_tuning/jobs", True, "kept", id="pinned-non-regional"),
        pytest.param(
            OrgResidency(OrgId("w"), Region.CA, retention_days=7),
            "/v1/chat/completions",
            True,
            "7 days",
            id="seven-days",
        ),
    ],
)
def test_decide_exchange(org: OrgResidency, endpoint: str, store: bool, reason: str) -> None:
    decision = exchange(org, endpoint)
    assert decision.store is store
    assert reason in decision.reason
    assert decision.data_class is DataClass.INPUTS_OUTPUTS
    assert decision.placement.region is org.region  # storage region, never processing
    expires = NOW + timedelta(days=org.retention_days)
    assert decision.expires_at == expires
    when = expires.strftime("%Y-%m-%d/T%H%M%SZ")  # NOW has no fraction of a second
    assert decision.key == f"orgs/{org.org_id}/inputs_outputs/{when}{endpoint}/abc123.json"
    assert decision.tags["residency-retention"] == f"{org.retention_days}d"
    assert decision.tags["residency-expires"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert decision.tags["residency-class"] == "inputs_outputs"


def test_decide_exchange_refuses_window_outside_allowed_days() -> None:
    org = OrgResidency(OrgId("o"), Region.US, retention_days=14)
    with pytest.raises(DirectoryUnavailableError, match="allowed_days"):
        exchange(org, "/v1/chat/completions")


def test_decide_exchange_refuses_unlisted_endpoint() -> None:
    with pytest.raises(ProcessingNotEligibleError):
        exchange(UNPINNED, "/v1/embeddings")


@pytest.mark.parametrize(
    ("request_body", "response_body", "encoding"),
    [
        pytest.param(b'{"q": "hi"}', "réponse".encode(), "utf-8", id="utf8"),
        pytest.param(b"\xff\xfe\x00", b"ok", "base64", id="binary-request"),
        pytest.param(b"ok", b"\x80", "base64", id="binary-response"),
    ],
)
def test_exchange_document_encodes_bodies(
    request_body: bytes, response_body: bytes, encoding: str
) -> None:
    doc = json.loads(exchange_document("/v1/chat/completions", NOW, request_body, response_body))
    assert set(doc) == {"endpoint", "recorded_at", "encoding", "request", "response"}
    assert doc["encoding"] == encoding
    assert doc["recorded_at"] == "2026-11-21T22:30:05Z"
    decode = (lambda v: base64.b64decode(v)) if encoding == "base64" else (lambda v: v.encode())
    assert decode(doc["request"]) == request_body
    assert decode(doc["response"]) == response_body


@pytest.mark.parametrize(
    ("prefix", "day"),
    [
        ("orgs/o/inputs_outputs/2026-12-21/", date(2026, 12, 21)),
        ("orgs/o/inputs_outputs/2026-13-01/", None),
        ("orgs/o/files/2026-12-21/", None),
        ("orgs/o/inputs_outputs/latest/", None),
        ("other/o/inputs_outputs/2026-12-21/", None),
    ],
)
def test_expiry_day_of_prefix(prefix: str, day: date | None) -> None:
    assert expiry_day_of(prefix) == day


@pytest.mark.parametrize(
    ("day", "scope"),
    [
        (date(2026, 11, 20), "day"),
        (date(2026, 11, 21), "by-time"),
        (date(2026, 11, 22), "none"),
    ],
)
def test_purge_scope_by_utc_date(day: date, scope: str) -> None:
    assert purge_scope(day, NOW) == scope
    # 01:00 on the 22nd in UTC+3 is still the 21st in UTC.
    local = datetime(2026, 11, 22, 1, 0, tzinfo=timezone(timedelta(hours=3)))
    assert purge_scope(day, local) == scope


@pytest.mark.parametrize(
    ("prefix", "instant"),
    [
        ("orgs/o/inputs_outputs/2026-11-21/T235900Z/", datetime(2026, 11, 21, 23, 59, tzinfo=UTC)),
        ("orgs/o/inputs_outputs/2026-11-21/T000000Z/", datetime(2026, 11, 21, tzinfo=UTC)),
        ("orgs/o/inputs_outputs/2026-11-21/v1/", None),
        ("orgs/o/inputs_outputs/2026-11-21/T246000Z/", None),
        ("orgs/o/inputs_outputs/2026-11-21/T2359Z/", None),
        ("orgs/o/inputs_outputs/2026-11-21/T\u0662\u0663\u0665\u0669\u0660\u0660Z/", None),
    ],
)
def test_expiry_instant_of_time_prefix(prefix: str, instant: datetime | None) -> None:
    assert expiry_instant_of(date(2026, 11, 21), prefix) == instant


def test_exchange_expiring_at_23_59_is_kept_until_23_59() -> None:
    # Recorded 23:59:00Z with a 1-day window: the old day-granular purge deleted it at
    # 00:00:01Z, almost a day early (issue 12.2).
    org = OrgResidency(OrgId("o"), Region.US, retention_days=1)
    recorded = datetime(2026, 11, 20, 23, 59, 0, tzinfo=UTC)
    decision = decide_exchange(
        org, placed(org, MAP, ARNS), MAP, "/v1/chat/completions", recorded, "t"
    )
    assert decision.key.startswith("orgs/o/inputs_outputs/2026-11-21/T235900Z/v1/chat/completions/")
    rest = decision.key.split("/T", 1)[1]
    instant = expiry_instant_of(date(2026, 11, 21), "T" + rest.split("/", 1)[0])
    assert instant is not None
    assert instant == decision.expires_at
    assert not is_expired(instant, datetime(2026, 11, 21, 0, 0, 1, tzinfo=UTC))
    assert not is_expired(instant, datetime(2026, 11, 21, 23, 58, 59, tzinfo=UTC))
    assert is_expired(instant, datetime(2026, 11, 21, 23, 59, 0, tzinfo=UTC))


def test_exchange_key_rounds_the_expiry_up_to_the_next_second() -> None:
    org = OrgResidency(OrgId("o"), Region.US, retention_days=1)
    recorded = datetime(2026, 11, 20, 23, 59, 59, 500_000, tzinfo=UTC)
    decision = decide_exchange(
        org, placed(org, MAP, ARNS), MAP, "/v1/chat/completions", recorded, "t"
    )
    # 23:59:59.5 expires at 00:00:00 the next day at the earliest: the key says so.
    assert "/inputs_outputs/2026-11-22/T000000Z/" in decision.key


@pytest.mark.parametrize(
    ("operation", "data_class", "endpoint", "store", "key_start", "has_route"),
    [
        pytest.param(Operation.PUT, None, None, True, "orgs/p/files/", False, id="put"),
        pytest.param(
            Operation.PUT,
            DataClass.INPUTS_OUTPUTS,
            None,
            False,
            "orgs/p/inputs_outputs/",
            False,
            id="put-io",
        ),
        pytest.param(Operation.GET, None, None, False, "orgs/p/files/", False, id="get"),
        pytest.param(
            Operation.DELETE,
            DataClass.FINE_TUNING,
            None,
            False,
            "orgs/p/fine_tuning/",
            False,
            id="delete",
        ),
        pytest.param(
            Operation.RECORD_EXCHANGE,
            None,
            "/v1/chat/completions",
            True,
            "orgs/p/inputs_outputs/2026-12-21/T223005Z/v1/chat/completions/",
            False,
            id="record",
        ),
        pytest.param(
            Operation.ROUTE_PROCESSING,
            None,
            "/v1/chat/completions",
            False,
            None,
            True,
            id="route",
        ),
        pytest.param(Operation.ERASE, None, None, False, "orgs/p/", False, id="erase"),
    ],
)
def test_explain_describes_each_operation(
    operation: Operation,
    data_class: DataClass | None,
    endpoint: str | None,
    store: bool,
    key_start: str | None,
    has_route: bool,
) -> None:
    place = placed(PINNED_EU, MAP, ARNS)
    result = explain(PINNED_EU, place, MAP, operation, data_class, endpoint, NOW)
    assert result.operation is operation
    assert result.placement == place
    assert result.store is store
    if key_start is None:
        assert result.key is None
    else:
        assert result.key is not None
        assert result.key.startswith(key_start)
    assert (result.processing_route is not None) is has_route
    assert "placement" in result.rules
    assert "store" in result.rules
    if operation is Operation.RECORD_EXCHANGE:
        assert result.expires_at == NOW + timedelta(days=30)
        assert result.tags["residency-expires"] == "2026-12-21T22:30:05Z"


def test_explain_names_refusal_for_ineligible_endpoint() -> None:
    place = placed(PINNED_EU, MAP, ARNS)
    result = explain(
        PINNED_EU, place, MAP, Operation.ROUTE_PROCESSING, None, "/v1/fine_tuning/jobs", NOW
    )
    assert result.processing_route is None
    assert "ProcessingNotEligibleError" in result.rules["processing"]


def test_explain_zdr_record_is_a_skip() -> None:
    org = OrgResidency(OrgId("z"), Region.JP, zero_data_retention=True)
    result = explain(
        org,
        placed(org, MAP, ARNS),
        MAP,
        Operation.RECORD_EXCHANGE,
        None,
        "/v1/chat/completions",
        NOW,
    )
    assert result.store is False
    assert "zero data retention" in result.rules["store"]


@pytest.mark.parametrize(
    ("key", "initiated", "stale"),
    [
        pytest.param(
            "orgs/o/inputs_outputs/2026-12-21/v1/x/a.json",
            NOW - timedelta(days=2),
            True,
            id="two-days",
        ),
        pytest.param(
            "orgs/o/inputs_outputs/2026-12-21/v1/x/a.json",
            NOW - timedelta(hours=23),
            False,
            id="23-hours",
        ),
        pytest.param("orgs/o/inputs_outputs/2026-12-21/v1/x/a.json", None, True, id="no-time"),
        pytest.param("orgs/o/files/a.bin", NOW - timedelta(days=30), False, id="files"),
        pytest.param("orgs/o/fine_tuning/a.bin", NOW - timedelta(days=30), False, id="ft"),
        pytest.param("elsewhere/a.json", NOW - timedelta(days=30), False, id="not-ours"),
    ],
)
def test_stale_exchange_upload(key: str, initiated: datetime | None, stale: bool) -> None:
    assert is_stale_exchange_upload(key, initiated, NOW) is stale


V = Problem("violation", "regions.eu: redirect")
S = Problem("storage", "regions.jp: NoSuchBucket")
U = Problem("unavailable", "regions.kr: timed out")


@pytest.mark.parametrize(
    ("mode", "checks", "error", "quarantined"),
    [
        pytest.param("strict", {}, None, {}, id="strict-all-fine"),
        pytest.param(
            "strict", {Region.EU: [V], Region.JP: [S]}, ResidencyViolationError, {}, id="v-wins"
        ),
        pytest.param("strict", {Region.JP: [S], Region.KR: [U]}, StorageError, {}, id="storage"),
        pytest.param("strict", {Region.KR: [U]}, RegionUnavailableError, {}, id="unreachable"),
        pytest.param(
            "quarantine",
            {Region.EU: [S, V], Region.KR: [U], Region.US: []},
            None,
            {Region.EU: V, Region.KR: U},
            id="quarantine-worst-first",
        ),
        pytest.param("off", {Region.EU: [V]}, None, {Region.EU: V}, id="off-alias-failed"),
    ],
)
def test_startup_verdict(
    mode: VerifyMode,
    checks: dict[Region, list[Problem]],
    error: type[Exception] | None,
    quarantined: dict[Region, Problem],
) -> None:
    verdict = startup_verdict(mode, checks)
    if error is None:
        assert verdict.error is None
    else:
        assert isinstance(verdict.error, error)
        for problems in checks.values():
            for problem in problems:
                assert problem.message in str(verdict.error)
    assert dict(verdict.quarantine) == quarantined


def test_erase_target_follows_the_directory_or_the_named_region() -> None:
    record = OrgResidency(OrgId("o"), Region.CA)
    every = set(Region)
    assert erase_target(OrgId("o"), record, None, every) is Region.CA
    assert erase_target(OrgId("o"), record, Region.CA, every) is Region.CA
    assert erase_target(OrgId("o"), None, Region.JP, every) is Region.JP
    with pytest.raises(ResidencyViolationError, match="lives in ca"):
        erase_target(OrgId("o"), record, Region.US, every)
    with pytest.raises(InvalidArgumentError, match="not in the region map"):
        erase_target(OrgId("o"), None, Region.KR, every - {Region.KR})
