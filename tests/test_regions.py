from __future__ import annotations

import contextlib
import copy
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.errors import ConfigError
from router.regions import RegionMap
from router.types import Region
from tests.conftest import REGIONS_FILE


def base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(REGIONS_FILE.read_text())
    return copy.deepcopy(data)


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        RegionMap.from_dict(data)
    return info.value.problems


def test_shipped_map_loads_with_all_seven_regions() -> None:
    region_map = RegionMap.load(REGIONS_FILE)
    assert set(region_map.regions) == set(Region)
    assert region_map.region(Region.EU).aws_region == "eu-west-1"
    assert region_map.processing.default_region is Region.US
    assert region_map.retention.allowed_days == (1, 7, 30)
    assert region_map.orgs["org-acme"].processing_region is Region.EU
    assert region_map.orgs["org-lark"].retention_days == 7
    assert region_map.orgs["org-stars"].retention_days == 30


def set_path(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        pytest.param(
            "regions.eu.aws_region",
            "eu-west-2",
            "regions.eu.aws_region: 'eu-west-2' is not allowed",
            id="london-is-not-eu",
        ),
        pytest.param(
            "regions.eu.aws_region", "eu-central-2", "not allowed for eu", id="zurich-is-not-eu"
        ),
        pytest.param(
            "regions.kr.kms_key",
            "arn:aws:kms:ap-northeast-1:123456789012:key/abc",
            "regions.kr.kms_key: key is in ap-northeast-1, bucket region is ap-northeast-2",
            id="key-in-another-region",
        ),
        pytest.param(
            "regions.jp.kms_key", "alias/jp", "regions.jp.kms_key: expected", id="not-arn"
        ),
        pytest.param("regions.sg.bucket", "Bad_Bucket", "regions.sg.bucket:", id="bucket-name"),
        pytest.param(
            "regions.sg.bucket", "residency-example-in", "already used by regions", id="dup-bucket"
        ),
        pytest.param(
            "regions.us.processing_endpoint",
            "http://us.example.invalid",
            "regions.us.processing_endpoint: must be an https",
            id="plain-http-endpoint",
        ),
        pytest.param(
            "regions.jp.processing_endpoint",
            "https://jp.example.invalid",
            "processing is offered only in",
            id="endpoint-outside-us-eu",
        ),
        pytest.param(
            "regions.us.account_id", 123456789012, "regions.us.account_id:", id="account-int"
        ),
        pytest.param("regions.us.account_id", "1234", "must be 12 digits", id="account-short"),
        pytest.param("regions.us.colour", "blue", "regions.us.colour: unknown field", id="unknown"),
        pytest.param("regions.xx", {"aws_region": "us-east-1"}, "regions.xx", id="unknown-region"),
        pytest.param("processing.default_region", "jp", "processing.default_region:", id="def-jp"),
        pytest.param(
            "processing.endpoints./v1/x",
            {"regional": "yes"},
            "processing.endpoints./v1/x.regional",
            id="regional-not-bool",
        ),
        pytest.param(
            "retention.inputs_outputs_days", 14, "retention.inputs_outputs_days: 14", id="window"
        ),
        pytest.param("retention.allowed_days", [0, 30], "retention.allowed_days.0", id="zero-day"),
        pytest.param("orgs.org-acme.region", "mars", "orgs.org-acme.region", id="org-region"),
        pytest.param(
            "orgs.org-acme.processing_region", "jp", "orgs.org-acme.processing_region", id="pin-jp"
        ),
        pytest.param("orgs.org-lark.retention_days", 5, "orgs.org-lark.retention_days", id="days"),
        pytest.param(
            "orgs.bad id", {"region": "us"}, "orgs.bad id: org id may contain", id="org-id"
        ),
        pytest.param("orgs.org-acme.tier", "gold", "orgs.org-acme.tier: unknown field", id="org-f"),
    ],
)
def test_region_map_names_the_field_when_invalid(path: str, value: object, expected: str) -> None:
    problems = problems_of(set_path(base(), path, value))
    assert any(expected in problem for problem in problems), problems


def test_region_map_reports_every_problem_at_once() -> None:
    data = base()
    data["regions"]["eu"]["aws_region"] = "eu-west-2"
    data["regions"]["kr"]["kms_key"] = "arn:aws:kms:ap-northeast-1:123456789012:key/abc"
    data["retention"]["inputs_outputs_days"] = 14
    problems = problems_of(data)
    assert len(problems) >= 3
    text = str(ConfigError(problems))
    assert "regions.eu.aws_region" in text
    assert "regions.kr.kms_key" in text
    assert "retention.inputs_outputs_days" in text


def test_region_map_rejects_duplicate_aws_regions() -> None:
    data = base()
    data["regions"]["us"]["aws_region"] = "us-east-2"
    data["regions"]["us"]["kms_key"] = "arn:aws:kms:us-east-2:123456789012:alias/a"
    data["regions"]["us"]["processing_endpoint"] = "https://us.example.invalid"
    assert not problems_of_ok(data)
    data["regions"]["us"]["aws_region"] = "us-east-1"
    data["regions"]["eu"]["aws_region"] = "us-east-1"
    assert any("eu" in p for p in problems_of(data))


def problems_of_ok(data: dict[str, Any]) -> list[str]:
    try:
        RegionMap.from_dict(data)
    except ConfigError as exc:
        return exc.problems
    return []


def test_region_map_rejects_pin_to_region_without_endpoint() -> None:
    data = base()
    del data["regions"]["eu"]["processing_endpoint"]
    problems = problems_of(data)
    assert any(p.startswith("orgs.org-acme.processing_region") for p in problems), problems


def test_region_map_rejects_duplicate_yaml_keys_with_line() -> None:
    text = REGIONS_FILE.read_text().replace(
        "    bucket: residency-example-us\n",
        "    bucket: residency-example-us\n    bucket: residency-example-other\n",
    )
    with pytest.raises(ConfigError, match=r"line \d+: duplicate key 'bucket'"):
        RegionMap.from_yaml(text)


def test_region_map_rejects_duplicate_region_blocks() -> None:
    text = REGIONS_FILE.read_text() + "\nregions: {}\n"
    with pytest.raises(ConfigError, match="duplicate key 'regions'"):
        RegionMap.from_yaml(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("- a\n- b\n", id="list"),
        pytest.param("regions: [\n", id="broken-yaml"),
        pytest.param("regions: 5\n", id="regions-int"),
        pytest.param("regions: {us: {aws_region: us-east-1}}\n", id="missing-fields"),
        pytest.param("regions: {us: 7}\n", id="region-int"),
        pytest.param("!!python/object:os.system {}\n", id="unsafe-tag"),
        pytest.param("? [a, b]\n: c\n", id="unhashable-key"),
    ],
)
def test_region_map_raises_config_error_for_malformed_yaml(text: str) -> None:
    with pytest.raises(ConfigError):
        RegionMap.from_yaml(text)


def test_region_map_load_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the region map"):
        RegionMap.load(tmp_path / "nope.yaml")


def test_region_map_load_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_bytes(b"regions: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        RegionMap.load(path)


# -- issue 12.8: what the map must refuse ------------------------------------------------


def test_deeply_nested_yaml_is_a_config_error_not_a_recursion_error() -> None:
    with pytest.raises(ConfigError, match=r"nested too deeply|not valid YAML"):
        RegionMap.from_yaml("[" * 60_000)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param("regions.us.account_id", "123456789012\n", id="account-trailing-newline"),
        pytest.param("regions.us.account_id", "١٢٣٤٥٦٧٨٩٠١٢", id="arabic-indic-digits"),
        pytest.param("regions.us.bucket", "residency-example-us\n", id="bucket-newline"),
        pytest.param("regions.us.bucket", "residency-example-us\t", id="bucket-tab"),
        pytest.param(
            "regions.us.kms_key",
            "arn:aws:kms:us-east-1:123456789012:alias/residency-us\n",
            id="key-newline",
        ),
        pytest.param(
            "regions.us.kms_key",
            "arn:aws:kms:us-east-1:١٢٣٤٥٦٧٨٩٠١٢:alias/residency-us",
            id="key-unicode-account",
        ),
        pytest.param(
            "regions.us.processing_endpoint", "https://us.example.invalid\t", id="endpoint-tab"
        ),
        pytest.param(
            "regions.us.processing_endpoint", "https://us.example.invalid\n", id="endpoint-newline"
        ),
    ],
)
def test_values_with_trailing_newlines_tabs_or_non_ascii_digits_are_refused(
    path: str, value: str
) -> None:
    problems = problems_of(set_path(base(), path, value))
    assert any(problem.startswith(path) for problem in problems), problems


def test_size_limit_holds_while_reading_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "regions.yaml"
    os.mkfifo(fifo)
    chunk = ("# " + "x" * 1022 + "\n").encode()

    def write() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as stream:
            for _ in range(2 * 1024):  # 2 MiB of comments, then a valid map
                stream.write(chunk)
            stream.write(REGIONS_FILE.read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(ConfigError, match="bytes"):
        RegionMap.load(fifo)
    writer.join(timeout=30)


def test_merge_keys_are_named_as_unsupported() -> None:
    text = REGIONS_FILE.read_text().replace(
        "regions:\n", "defaults: &shared {aws_region: us-east-1}\nregions:\n", 1
    )
    text += "\nextra:\n  <<: *shared\n"
    with pytest.raises(ConfigError, match=r"merge keys \(<<\) are not supported"):
        RegionMap.from_yaml(text)


def test_a_data_bucket_may_not_be_another_regions_log_bucket() -> None:
    data = base()
    data["regions"]["eu"]["bucket"] = data["regions"]["us"]["bucket"][:58] + "-logs"
    problems = problems_of(data)
    assert any("access-log bucket" in problem for problem in problems), problems
