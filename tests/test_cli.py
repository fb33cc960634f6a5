from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.cli import main
from router.testing import ResidencyWorld


def test_demo_prints_all_seven_regions_and_a_refusal(tmp_path: Path) -> None:
    # A subprocess: moto's backends are global to a process, and the demo runs its own server.
    # Run outside the checkout with no --regions: the map shipped in the package is used.
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
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
    assert "org-acme     -> https://eu.example.invalid/v1/chat/completions" in out
    assert "refused: ProcessingNotEligibleError" in out
    assert "org-kiku     skipped  (org has zero data retention" in out
    assert "exchanges left: 0 of 6" in out
    assert "werkzeug" not in result.stderr.lower()
    assert '"PUT /' not in result.stderr


def test_demo_without_region_map_says_what_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--regions", "/nonexistent/regions.yaml"]) == 2  # a usage error
    assert "cannot read the region map" in capsys.readouterr().err


def test_explain_prints_decision_and_rules(
    world_environment: ResidencyWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(
        [
            "explain",
            "org-lark",
            "--operation",
            "record_exchange",
            "--endpoint",
            "/v1/chat/completions",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "placement:   ca (ca-central-1), bucket residency-example-ca" in out
    assert "store:       yes" in out
    assert "key:         orgs/org-lark/inputs_outputs/" in out
    assert "residency-retention=7d" in out
    assert "expires at:" in out
    assert "  store: inputs and outputs are kept 7 days" in out

    assert main(["explain", "org-acme"]) == 0
    out = capsys.readouterr().out
    assert "operation:   put" in out
    assert "key:         orgs/org-acme/files/{key}" in out

    assert main(["explain", "org-nobody"]) == 2  # a usage error, not a violation
    assert "UnknownOrgError" in capsys.readouterr().err


def test_verify_command_reports_each_region(
    world_environment: ResidencyWorld,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["verify"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") + out.count(" ok\n") >= 7
