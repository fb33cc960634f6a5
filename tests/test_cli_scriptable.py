"""The scriptable CLI, through subprocesses: --version, --json, exit codes, purge and erase.

Each command runs as ``python -m router.cli`` with the environment a script would give it;
the world is the test's moto server, reached over loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from router.routing import ResidencyRouter
from router.testing import ResidencyWorld

HEAVY = ("aiobotocore", "boto3", "botocore", "moto", "aiohttp")


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``residency-router ARGS`` in a subprocess with ``env`` (default: this one's)."""
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ) if env is None else env,
        cwd=cwd,
        check=False,
    )


def document(result: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a --json command printed on stdout."""
    return json.loads(result.stdout)


def without_credentials(tmp_path: Path) -> dict[str, str]:
    """This environment with every AWS credential source hidden."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- without a world ---------------------------------------------------------------------


def test_version_comes_from_the_installed_package() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"residency-router {version('residency-router')}"


def test_help_documents_exit_codes_and_imports_no_aws_sdk() -> None:
    # -X importtime lists every module imported; --help must not load the SDKs or moto.
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "router.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "router.cli" in imported
    loaded = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert loaded == []
    for line in ("exit status:", "0  fine", "1  a violation or drift", "2  usage error"):
        assert line in result.stdout
    assert "could not check" in result.stdout


def test_parsing_any_command_imports_no_aws_sdk() -> None:
    script = (
        "import sys, json\n"
        "from router.cli import build_parser\n"
        "for argv in (['verify'], ['check', '--json'], ['orgs', 'list'], ['explain', 'o'],\n"
        "             ['purge'], ['erase', 'o', '--yes'], ['audit'], ['local'], ['init']):\n"
        "    build_parser().parse_args(argv)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    "command",
    [
        ["verify"],
        ["check"],
        ["explain", "org-acme"],
        ["purge"],
        ["erase", "org-acme"],
        ["audit"],
        ["orgs", "list"],
        ["orgs", "show", "org-acme"],
        ["orgs", "set", "org-acme"],
        ["orgs", "move", "org-acme"],
        ["demo"],
        ["local"],
        ["infra", "render"],
    ],
)
def test_every_command_that_reads_the_map_takes_regions(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0
    assert "--regions FILE" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert cli("no-such-command").returncode == 2
    assert cli("check", "--skip", "nonsense").returncode == 2
    assert "known:" in cli("check", "--skip", "nonsense").stderr


def test_a_bad_region_map_exits_2_with_a_json_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    for command in (["verify"], ["explain", "org-acme"], ["purge"], ["orgs", "list"]):
        result = cli(*command, "--regions", missing, "--json")
        assert result.returncode == 2, (command, result.stderr)
        error = document(result)
        assert error["ok"] is False
        assert error["exit_code"] == 2
        assert error["error"]["type"] == "ConfigError"
        assert "cannot read the region map" in result.stderr
    check = cli("check", "--regions", missing)
    assert check.returncode == 2
    assert "cannot read the region map" in check.stderr


# -- could not check -----------------------------------------------------------------------


def test_without_credentials_every_check_exits_2_not_drift(
    world_environment: ResidencyWorld, tmp_path: Path
) -> None:
    env = without_credentials(tmp_path)
    result = cli("check", env=env)
    assert result.returncode == 2
    assert "no AWS credentials" in result.stderr
    assert "drifted" not in result.stdout  # not "91 checks, 91 drifted"
    for command in (["check"], ["verify"], ["purge"], ["audit"], ["erase", "org-acme", "--yes"]):
        result = cli(*command, "--json", env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        error = document(result)
        assert error["error"]["kind"] == "unchecked"
        assert "no AWS credentials" in error["error"]["message"]


def test_an_unreachable_endpoint_exits_2(world_environment: ResidencyWorld) -> None:
    env = dict(os.environ, RESIDENCY_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}")
    for command in (["check"], ["verify"], ["purge"], ["audit"]):
        result = cli(*command, "--json", env=env)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "unreachable" in document(result)["error"]["message"]
        assert "is 'residency-router local' running?" in result.stderr


# -- on a world ------------------------------------------------------------------------------


def test_verify_and_check_json_and_drift_exits_1(world_environment: ResidencyWorld) -> None:
    verify = cli("verify", "--json")
    assert verify.returncode == 0, verify.stderr
    report = document(verify)
    assert report["ok"] is True
    assert sorted(report["regions"]) == sorted(c.region.value for c in world_environment.region_map)
    assert all(
        r == {"ok": True, "checked": True, "problems": []} for r in report["regions"].values()
    )
    assert report["unchecked"] == []

    check = cli("check", "--skip", "policy", "--json")
    assert check.returncode == 0, check.stderr
    clean = document(check)
    assert clean["ok"] is True
    assert clean["drifted"] == 0
    assert clean["unchecked"] == {}
    assert len(clean["checks"]) == 7 * 12
    assert set(clean["checks"][0]) == {"region", "check", "ok", "detail"}

    world_environment.s3("eu").delete_bucket_encryption(Bucket=world_environment.bucket("eu"))
    drift = cli("check", "--skip", "policy", "--json")
    assert drift.returncode == 1
    drifted = document(drift)
    assert drifted["ok"] is False
    assert drifted["drifted"] >= 1
    assert {c["region"] for c in drifted["checks"] if not c["ok"]} == {"eu"}
    text = cli("check", "--skip", "policy")
    assert text.returncode == 1
    assert "drifted" in text.stdout

    # A bucket gone: the region answered (its key), so this is found, not "could not check".
    world_environment.s3("eu").delete_bucket(Bucket=world_environment.bucket("eu"))
    failed = cli("verify", "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    eu = document(failed)["regions"]["eu"]
    assert eu["ok"] is False
    assert eu["checked"] is True
    assert "residency-example-eu" in eu["problems"][0]


def test_explain_json_and_an_unknown_org_exits_2(world_environment: ResidencyWorld) -> None:
    result = cli(
        "explain", "org-lark", "--operation", "record_exchange", "--endpoint",
        "/v1/chat/completions", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    decision = document(result)
    assert decision["org_id"] == "org-lark"
    assert decision["operation"] == "record_exchange"
    assert decision["placement"]["region"] == "ca"
    assert decision["placement"]["bucket"] == "residency-example-ca"
    assert decision["store"] is True
    assert decision["key"].startswith("orgs/org-lark/inputs_outputs/")
    assert decision["tags"]["residency-retention"] == "7d"
    assert "store" in decision["rules"]

    unknown = cli("explain", "org-nobody", "--json")
    assert unknown.returncode == 2
    assert document(unknown)["error"]["type"] == "UnknownOrgError"


def test_orgs_json_from_the_static_directory(world_environment: ResidencyWorld) -> None:
    listing = cli("orgs", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    orgs = document(listing)
    assert orgs["ok"] is True
    assert [o["org_id"] for o in orgs["orgs"]] == sorted(world_environment.region_map.orgs)
    show = cli("orgs", "show", "org-kiku", "--json")
    assert show.returncode == 0
    kiku = document(show)["org"]
    assert kiku["region"] == "jp"
    assert kiku["zero_data_retention"] is True
    refused = cli("orgs", "set", "org-kiku", "--retention-days", "7", "--json")
    assert refused.returncode == 2  # a static directory cannot change: a usage error
    assert "RESIDENCY_DIRECTORY_TABLE" in document(refused)["error"]["message"]


async def test_purge_deletes_expired_exchanges_as_of_now(
    world_environment: ResidencyWorld, residency_router: ResidencyRouter
) -> None:
    receipt = await residency_router.record_exchange(
        "org-lark", "/v1/chat/completions", request=b'{"q": 1}', response=b'{"a": 2}'
    )
    assert receipt.stored

    today = cli("purge", "--json")
    assert today.returncode == 0, today.stderr
    assert document(today)["totals"]["objects"] == 0

    later = (datetime.now(UTC) + timedelta(days=8)).isoformat()
    purged = cli("purge", "--now", later, "--json")
    assert purged.returncode == 0, purged.stderr
    report = document(purged)
    assert report["ok"] is True
    assert report["regions"]["ca"]["objects"] == 1
    assert report["totals"]["objects"] == 1
    assert datetime.fromisoformat(report["now"]) == datetime.fromisoformat(later)
    assert world_environment.regions_holding(receipt.key) == []

    text = cli("purge", "--now", later)
    assert text.returncode == 0
    assert "purged as of" in text.stdout


def test_purge_now_must_be_an_instant_with_a_timezone(world_environment: ResidencyWorld) -> None:
    for bad in ("2026-13-01", "tomorrow", "2026-01-31T00:00:00"):
        result = cli("purge", "--now", bad, "--json")
        assert result.returncode == 2, bad
        assert "timezone" in document(result)["error"]["message"]


async def test_erase_needs_yes_and_erases_every_version(
    world_environment: ResidencyWorld, residency_router: ResidencyRouter
) -> None:
    for n in range(2):
        await residency_router.put("org-acme", "report.pdf", f"version {n}".encode())
    await residency_router.put("org-acme", "other.txt", b"x")
    await residency_router.put("org-stars", "keep.txt", b"kept")

    refused = cli("erase", "org-acme", "--json")
    assert refused.returncode == 2
    assert "--yes" in document(refused)["error"]["message"]
    assert len(world_environment.all_versions("eu")) == 3

    wrong = cli("erase", "org-acme", "--region", "us", "--yes", "--json")
    assert wrong.returncode == 1  # a residency refusal: acme never lived in us
    assert document(wrong)["error"]["type"] == "ResidencyViolationError"

    erased = cli("erase", "org-acme", "--yes", "--json")
    assert erased.returncode == 0, erased.stderr
    receipt = document(erased)
    assert receipt["ok"] is True
    assert receipt["org_id"] == "org-acme"
    assert receipt["region"] == "eu"
    assert receipt["data_class"] is None
    assert receipt["versions_deleted"] == 3
    assert world_environment.all_versions("eu") == []
    assert len(world_environment.all_versions("us")) == 1

    again = cli("erase", "org-acme", "--data-class", "files", "--yes")
    assert again.returncode == 0
    assert "erased files of org-acme in eu: 0 objects" in again.stdout


def test_an_endpoint_that_hangs_up_is_not_checked_not_drift(
    world_environment: ResidencyWorld,
) -> None:
    # Reachable (the connection opens) but no answer: every region is "not checked".
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)

    def hang_up() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    env = dict(
        os.environ,
        RESIDENCY_ENDPOINT_URL=f"http://127.0.0.1:{listener.getsockname()[1]}",
        RESIDENCY_RETRY_DEADLINE_S="0.5",
        RESIDENCY_RETRY_MAX_ATTEMPTS="1",
    )
    try:
        verify = cli("verify", "--json", env=env)
        check = cli("check", "--json", env=env)
        text = cli("check", env=env)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert verify.returncode == 2, verify.stdout + verify.stderr
    report = document(verify)
    assert sorted(report["unchecked"]) == sorted(report["regions"])
    assert not any(r["checked"] for r in report["regions"].values())
    assert check.returncode == 2, check.stdout + check.stderr
    assert document(check)["drifted"] == 0
    assert len(document(check)["unchecked"]) == 7
    assert text.returncode == 2
    assert "0 drifted, 7 regions not checked" in text.stdout
