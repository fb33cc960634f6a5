from __future__ import annotations

import subprocess
import sys

import pytest

from router.cli import main
from tests.conftest import REGIONS_FILE, ROOT


def test_demo_prints_all_seven_regions_and_a_refusal() -> None:
    # A subprocess: moto's backends are global to a process, and the demo runs its own server.
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "demo", "--regions", str(REGIONS_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for aws_region in (
        "us-east-1",
        "eu-west-1",
        "ap-northeast-1",
        "ca-central-1",
        "ap-northeast-2",
        "ap-southeast-1",
        "ap-south-1",
    ):
        assert f" {aws_region} " in out
    assert out.count("yes (SSE-KMS, region key)") == 8
    assert "MISMATCH" not in out
    assert "WRONG" not in out
    assert "UnknownOrgError" in out
    assert "nothing was written" in out
    assert "werkzeug" not in result.stderr.lower()
    assert '"PUT /' not in result.stderr


def test_demo_without_region_map_says_what_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--regions", "/nonexistent/regions.yaml"]) == 1
    assert "cannot read the region map" in capsys.readouterr().err
