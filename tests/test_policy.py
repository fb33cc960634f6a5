from __future__ import annotations

import pytest

from router.errors import ConfigError, InvalidKeyError
from router.policy import (
    decide_put,
    key_problem,
    object_key,
    parse_data_class,
    parse_org_id,
    placement,
    split_object_key,
)
from router.regions import RegionMap
from router.types import DataClass, OrgId, OrgResidency, Region
from tests.conftest import REGIONS_FILE

MAP = RegionMap.load(REGIONS_FILE)
ARNS: dict[Region, str] = {
    cfg.region: f"arn:aws:kms:{cfg.aws_region}:123456789012:key/{cfg.region}" for cfg in MAP
}


@pytest.mark.parametrize(
    "org_id",
    ["a", "org-acme", "ORG_1", "x" * 128],
)
def test_parse_org_id_accepts_valid(org_id: str) -> None:
    assert parse_org_id(org_id) == org_id


@pytest.mark.parametrize(
    "org_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 129, id="too-long"),
        pytest.param("org/acme", id="slash"),
        pytest.param("org.acme", id="dot"),
        pytest.param("..", id="dotdot"),
        pytest.param("org acme", id="space"),
        pytest.param("orgé", id="non-ascii"),
        pytest.param("org\x00", id="nul"),
        pytest.param(42, id="not-str"),
    ],
)
def test_parse_org_id_rejects_invalid(org_id: object) -> None:
    with pytest.raises(InvalidKeyError):
        parse_org_id(org_id)


@pytest.mark.parametrize(
    "key",
    ["a.txt", "dir/sub/file.bin", "ünïcødé/文件.txt", "a..b", "%2e%2e/x", "back\\slash", "😀"],
)
def test_key_rules_accept(key: str) -> None:
    assert key_problem(key) is None
    full = object_key(OrgId("org-a"), DataClass.FILES, key)
    assert split_object_key(full) == ("org-a", DataClass.FILES, key)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("/abs", "start with '/'", id="leading-slash"),
        pytest.param("..", "'..' path segment", id="dotdot"),
        pytest.param("a/../b", "'..' path segment", id="dotdot-middle"),
        pytest.param("a/./b", "'.' path segment", id="dot"),
        pytest.param("a//b", "empty path segments", id="double-slash"),
        pytest.param("dir/", "empty path segments", id="trailing-slash"),
        pytest.param("a\x00b", "control character", id="nul"),
        pytest.param("a\nb", "control character", id="newline"),
        pytest.param("a\x7fb", "control character", id="del"),
        pytest.param("a\x85b", "control character", id="c1"),
        pytest.param("a\ufffeb", "U+FFFE", id="fffe"),
        pytest.param("a\uffffb", "U+FFFF", id="ffff"),
        pytest.param("a\ud800b", "U+D800", id="lone-surrogate"),
        pytest.param(b"bytes", "must be a string", id="bytes"),
    ],
)
def test_key_rules_reject_with_reason(key: object, message: str) -> None:
    with pytest.raises(InvalidKeyError, match=message.replace("+", r"\+")):
        object_key(OrgId("org-a"), DataClass.FILES, key)  # type: ignore[arg-type]


def test_full_key_limited_to_1024_bytes() -> None:
    prefix = len("orgs/org-a/files/")
    assert object_key(OrgId("org-a"), DataClass.FILES, "k" * (1024 - prefix))
    with pytest.raises(InvalidKeyError, match="1024"):
        object_key(OrgId("org-a"), DataClass.FILES, "k" * (1025 - prefix))
    with pytest.raises(InvalidKeyError, match="1024"):
        object_key(OrgId("org-a"), DataClass.FILES, "é" * 510)


@pytest.mark.parametrize("value", ["files", DataClass.FINE_TUNING, "inputs_outputs"])
def test_parse_data_class_accepts(value: str) -> None:
    assert parse_data_class(value) == DataClass(value)


@pytest.mark.parametrize("value", ["file", "", None, 3])
def test_parse_data_class_rejects(value: object) -> None:
    with pytest.raises(InvalidKeyError, match="data class"):
        parse_data_class(value)


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
    place = placement(org, MAP, ARNS)
    assert (place.region, place.aws_region, place.bucket) == (region, aws_region, bucket)
    assert place.kms_key_arn == ARNS[Region(region)]
    assert f":{aws_region}:" in place.kms_key_arn


def test_placement_fails_closed_for_region_missing_from_map() -> None:
    arns: dict[Region, str] = {r: a for r, a in ARNS.items() if r is not Region.KR}
    with pytest.raises(ConfigError, match="kr"):
        placement(OrgResidency(OrgId("a"), Region.KR), MAP, arns)


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
    place = placement(org, MAP, ARNS)
    decision = decide_put(org, place, data_class, "d/k.txt")
    assert decision.store is True
    assert decision.key == f"orgs/o/{data_class.value}/d/k.txt"
    assert dict(decision.tags) == tags
    assert decision.placement == place
    encoded = decision.tagging()
    assert "residency-org=o" in encoded
    assert "&" in encoded


def test_decide_put_refuses_inputs_outputs() -> None:
    org = OrgResidency(OrgId("o"), Region.US)
    with pytest.raises(InvalidKeyError, match="record_exchange"):
        decide_put(org, placement(org, MAP, ARNS), DataClass.INPUTS_OUTPUTS, "k")
