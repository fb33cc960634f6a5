"""Caller inputs, table-driven: org ids, keys and data classes (one rule each)."""

from __future__ import annotations

import pytest

from router.errors import InvalidArgumentError, InvalidKeyError
from router.inputs import key_problem, object_key, parse_data_class, parse_org_id, split_object_key
from router.types import DataClass, OrgId


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
    ],
)
def test_parse_org_id_rejects_invalid(org_id: object) -> None:
    with pytest.raises(InvalidKeyError):
        parse_org_id(org_id)


def test_parse_org_id_raises_type_error_for_non_str() -> None:
    with pytest.raises(TypeError, match="org id must be a str"):
        parse_org_id(42)


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


@pytest.mark.parametrize("value", ["file", ""])
def test_parse_data_class_rejects_unknown_names(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="data class") as info:
        parse_data_class(value)
    assert not isinstance(info.value, InvalidKeyError)  # a data class is not a key


@pytest.mark.parametrize("value", [None, 3])
def test_parse_data_class_raises_type_error_for_non_str(value: object) -> None:
    with pytest.raises(TypeError, match="data class"):
        parse_data_class(value)
