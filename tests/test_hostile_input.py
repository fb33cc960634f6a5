from __future__ import annotations

import contextlib
import copy
import random
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import routing
from router.errors import ConfigError, InvalidKeyError, ResidencyError, UnknownOrgError
from router.inputs import (
    check_content_type,
    check_metadata,
    is_plain_key,
    object_key,
    parse_data_class,
    parse_org_id,
    slow_key_problem,
    split_object_key,
)
from router.policy import decide_put
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import DataClass, OrgId, OrgResidency, Region
from tests.conftest import REGIONS_FILE, RequestLog

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRAVERSAL = [
    "..",
    ".",
    "../",
    "./",
    "%2e%2e",
    "%2E%2E/",
    "..%2f",
    "a/./b",
    "a/../b",
    "a\\..\\b",
    "\\",
    "..\\",
    "\x00",
    "a\x00b",
    "\ufffe",
    "\uffff",
    "\ud800",
    "\udfff",
    "/",
    "//",
    "orgs/other-org/files/x",
    "../other-org/files/x",
    "",
    "\u202e",
    "\x7f",
    "\x85",
    "k" * 1100,
    "é" * 600,
]

any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF)
segment = st.one_of(st.sampled_from(TRAVERSAL), st.text(any_char, max_size=12))
hostile_key = st.one_of(
    st.sampled_from(TRAVERSAL),
    st.text(any_char, max_size=40),
    st.lists(segment, min_size=1, max_size=6).map("/".join),
    st.text(any_char, min_size=900, max_size=1200),
)
hostile_org = st.one_of(
    st.sampled_from(["", "..", "org/x", "org\\x", "org x", "org\x00", "ORG_ok-1", "o" * 129]),
    st.text(any_char, max_size=140),
    st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True),
)


@FUZZ
@given(org=hostile_org, key=hostile_key, data_class=st.sampled_from(list(DataClass)))
def test_keys_are_refused_or_parse_back_under_the_org(
    org: str, key: str, data_class: DataClass
) -> None:
    try:
        org_id = parse_org_id(org)
        full = object_key(org_id, data_class, key)
    except InvalidKeyError:
        return
    assert full.startswith(f"orgs/{org_id}/{data_class.value}/")
    assert split_object_key(full) == (org_id, data_class, key)
    segments = full.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert "" not in segments
    assert len(full.encode("utf-8")) <= 1024
    full.encode("utf-8")  # no lone surrogates


@FUZZ
@given(value=st.one_of(hostile_org, st.integers(), st.none(), st.binary(max_size=8)))
def test_org_ids_are_ascii_word_characters_or_refused(value: Any) -> None:
    try:
        org_id = parse_org_id(value)
    except InvalidKeyError:
        assert isinstance(value, str)
        return
    except TypeError:
        assert not isinstance(value, str)
        return
    assert isinstance(org_id, str)
    assert 1 <= len(org_id) <= 128
    assert org_id.isascii()
    assert all(c.isalnum() or c in "-_" for c in org_id)


BASE: dict[str, Any] = yaml.safe_load(REGIONS_FILE.read_text())
yaml_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
yaml_value = st.recursive(
    yaml_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


ALL_PATHS = paths(BASE)


def load_or_config_error(data: Any) -> None:
    problems: list[str] = []
    try:
        RegionMap.from_dict(data)
    except ConfigError as exc:
        problems = exc.problems or ["(no problems listed)"]
    assert all(isinstance(p, str) and p for p in problems)


@FUZZ
@given(
    mutations=st.lists(st.tuples(st.sampled_from(ALL_PATHS), yaml_value, st.booleans()), max_size=4)
)
def test_mutated_region_map_is_valid_or_one_config_error(
    mutations: list[tuple[tuple[Any, ...], Any, bool]],
) -> None:
    data = copy.deepcopy(BASE)
    for path, value, delete in mutations:
        node = data
        try:
            for part in path[:-1]:
                node = node[part]
            if delete and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    load_or_config_error(data)


@FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_yaml_text_is_valid_or_one_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        RegionMap.from_yaml(text)


@FUZZ
@given(line=st.integers(min_value=0, max_value=len(REGIONS_FILE.read_text().splitlines()) - 1))
def test_duplicated_line_is_valid_or_config_error(line: int) -> None:
    lines = REGIONS_FILE.read_text().splitlines()
    text = "\n".join([*lines[: line + 1], lines[line], *lines[line + 1 :]])
    try:
        RegionMap.from_yaml(text)
    except ConfigError:
        return
    # Only a blank or comment line can be repeated harmlessly.
    stripped = lines[line].strip()
    assert not stripped or stripped.startswith("#")


@FUZZ
@given(
    region=st.sampled_from(sorted(BASE["regions"])),
    aws_region=st.one_of(
        st.sampled_from(["eu-west-2", "eu-central-2", "us-gov-west-1", "cn-north-1", "me-south-1"]),
        st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[1-9]", fullmatch=True),
    ),
)
def test_foreign_aws_region_is_a_config_error_naming_the_field(
    region: str, aws_region: str
) -> None:
    data = copy.deepcopy(BASE)
    if aws_region == data["regions"][region]["aws_region"]:
        return
    data["regions"][region]["aws_region"] = aws_region
    with pytest.raises(ConfigError) as info:
        RegionMap.from_dict(data)
    assert any(p.startswith(f"regions.{region}.") for p in info.value.problems)


# -- end to end: hostile keys against the moto server ---------------------------------


async def test_hostile_keys_are_refused_unsent_or_stored_under_the_org(
    residency_router: ResidencyRouter,
    residency_world: ResidencyWorld,
    s3_requests: RequestLog,
) -> None:
    stored: dict[str, str] = {}
    for key in TRAVERSAL:
        sent_before = len(s3_requests)
        try:
            receipt = await residency_router.put("org-acme", key, f"payload {key!r}".encode())
        except InvalidKeyError:
            assert len(s3_requests) == sent_before, repr(key)
            continue
        assert receipt.key == f"orgs/org-acme/files/{key}"
        stored[receipt.key] = key
    assert stored, "every hostile key was refused: the test would prove nothing"
    assert {v["Key"] for v in residency_world.all_versions("eu")} == set(stored)
    for other in ("us", "jp", "ca", "kr", "sg", "in"):
        assert residency_world.all_versions(other) == []
    for key in stored.values():
        assert await residency_router.get("org-acme", key) == f"payload {key!r}".encode()


async def test_unknown_org_with_hostile_key_sends_nothing(
    residency_router: ResidencyRouter, s3_requests: RequestLog
) -> None:
    with pytest.raises((InvalidKeyError, UnknownOrgError)):
        await residency_router.put(OrgId("org-nobody"), "../org-acme/files/x", b"x")
    assert len(s3_requests) == 0


@FUZZ
@given(key=st.one_of(hostile_key, st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E))))
def test_key_fast_path_never_accepts_what_the_full_rules_refuse(key: str) -> None:
    if is_plain_key(key):
        assert slow_key_problem(key) is None, repr(key)


class _Str(str):
    """A str subclass: the warm path must not take it for a plain str."""


class _Posing:
    """Not a str, yet hashes and compares as one: a dict lookup alone would accept it."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return True


def _outcome(decide: Any, *args: Any) -> tuple[Any, ...]:
    try:
        decision = decide(*args)
    except (TypeError, ResidencyError) as exc:
        return (type(exc), str(exc))
    return (decision, decision.tagging())


async def test_the_warm_put_decides_exactly_as_the_full_rules(
    residency_router: ResidencyRouter,
) -> None:
    # The cached fast path of put (one dict hit, is_plain_key, a length check) against the
    # policy's own decide_put after the full validators: same decision or same error.
    record = OrgResidency(OrgId("org-acme"), Region.EU)
    place = await residency_router.resolve("org-acme")
    prefix_room = 1024 - len("orgs/org-acme/files/")
    rng = random.Random(15)
    alphabet = "ab/.%\\~ \x00\x1f\x7f\u00e9\u20ac\U0001f600\ud800"
    keys = [
        *TRAVERSAL,
        "k" * prefix_room,
        "k" * (prefix_room + 1),
        "k" * (prefix_room - 1) + "\u00e9",
        "k" * (1024 - len("orgs/org-acme/fine_tuning/")),
        "k" * (1025 - len("orgs/org-acme/fine_tuning/")),
        *("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))) for _ in range(300)),
        _Str("docs/a.txt"),
    ]
    classes: list[Any] = [
        *DataClass,
        *(c.value for c in DataClass),
        _Str("files"),
        _Posing("files"),
        "nope",
        5,
    ]

    def full_rules(org: Any, key: Any, data_class: Any, metadata: Any, content_type: Any) -> Any:
        # The order put documents: class, id, key, metadata, content type, policy.
        cls = parse_data_class(data_class)
        object_key(parse_org_id(org), cls, key)
        if metadata is not None:
            check_metadata(metadata)
        if content_type is not None:
            check_content_type(content_type)
        return decide_put(record, place, cls, key)

    extras: list[tuple[Any, Any]] = [(None, None)]
    for at, key in enumerate(keys):
        if at == 40:
            extras = [(None, None)]
        elif at == 0:
            extras = [
                (metadata, content_type)
                for metadata in (None, {"a": "b"}, {"bad name": "v"})
                for content_type in (None, "text/plain", "bad\ntype")
            ]
        for data_class in classes:
            for org in ("org-acme", _Str("org-acme")):
                for metadata, content_type in extras:
                    args = (org, key, data_class, metadata, content_type)
                    warm = _outcome(residency_router._warm_put, *args)
                    assert warm == _outcome(full_rules, *args), args


async def test_a_cached_orgs_plain_put_takes_the_one_pass_path(
    residency_router: ResidencyRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proof that the test above compared the one-pass path, not the full one twice: once
    # the org's kept put is made, a plain put decides without the full validators.
    assert residency_router._warm_put("org-acme", "docs/a.txt", "files", None) is None
    await residency_router._plan_put("org-acme", "docs/a.txt", "files", None)  # cached now

    def full_path(*_: Any) -> Any:
        raise AssertionError("took the full validators")

    monkeypatch.setattr(routing, "checked_key", full_path)
    for data_class in ("files", DataClass.FILES):
        decision = residency_router._warm_put("org-acme", "docs/b.txt", data_class, {"a": "b"})
        assert decision is not None
        assert decision.key == "orgs/org-acme/files/docs/b.txt"
    with pytest.raises(AssertionError, match="full validators"):
        residency_router._warm_put("org-acme", "docs/../b.txt", "files", None)
