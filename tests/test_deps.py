"""Dependency declarations: ranges, the oldest set CI tests, and a lean ``testing`` extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
OLDEST = ROOT / ".ci" / "oldest.txt"

_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:\[(?P<extras>[^\]]*)\])?(?P<spec>.*)$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(lines: list[str]) -> dict[str, tuple[set[str], str]]:
    found: dict[str, list[tuple[set[str], str]]] = {}
    for line in lines:
        match = _REQUIREMENT.match(line.replace(" ", ""))
        assert match, line
        extras = {e for e in (match["extras"] or "").split(",") if e}
        found.setdefault(_normalize(match["name"]), []).append((extras, match["spec"]))
    return {
        name: (set().union(*(extras for extras, _ in each)), ",".join(spec for _, spec in each))
        for name, each in found.items()
    }


def oldest_pins() -> dict[str, str]:
    pins = {}
    for line in OLDEST.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normalize(name)] = version
    return pins


def test_runtime_dependencies_are_ranges_not_pins() -> None:
    for name, (_, spec) in requirements(PROJECT["dependencies"]).items():
        assert "==" not in spec, f"{name} is pinned: {spec}"
        assert ">=" in spec, f"{name} needs a floor: {spec}"
        assert "<" in spec, f"{name} needs a ceiling: {spec}"


def test_aiobotocore_range_reaches_from_aioboto3s_to_the_newest_3x() -> None:
    _, spec = requirements(PROJECT["dependencies"])["aiobotocore"]
    assert set(spec.split(",")) == {">=2.25.0", "<4"}


def test_oldest_constraints_pin_each_declared_floor() -> None:
    # .ci/run tests the floor of each range; a floor raised in pyproject.toml without the
    # constraints file (or the other way round) would test a set nobody declared.
    declared = requirements(PROJECT["dependencies"]) | requirements(
        PROJECT["optional-dependencies"]["testing"]
    )
    pins = oldest_pins()
    for name in ("aiobotocore", "botocore", "boto3", "aiohttp", "pydantic", "moto"):
        assert name in pins, name
    for name, version in pins.items():
        if name not in declared:
            continue
        floors = [part[2:] for part in declared[name][1].split(",") if part.startswith(">=")]
        assert floors, f"{name}: no floor declared"
        assert Version(version) == Version(floors[0]), f"{name}: pins {version}, floor {floors[0]}"


def test_testing_extra_installs_moto_without_server_or_cloudformation_extras() -> None:
    # moto's "server" and "cloudformation" extras pull in cfn-lint, sympy, networkx, docker:
    # the plugin needs S3, KMS and DynamoDB, and flask for ThreadedMotoServer.
    testing = requirements(PROJECT["optional-dependencies"]["testing"])
    extras, _ = testing["moto"]
    assert extras <= {"s3", "kms", "dynamodb"}, extras
    assert {"flask", "flask-cors"} <= testing.keys()
    dev = requirements(PROJECT["optional-dependencies"]["dev"])
    assert "cloudformation" in dev["moto"][0], "tests/test_infra.py needs moto's CloudFormation"


def test_the_plugin_does_not_use_cloudformation() -> None:
    source = (ROOT / "router" / "testing.py").read_text(encoding="utf-8").lower()
    assert "cloudformation" not in source
