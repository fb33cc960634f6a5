"""``residency-router local`` and ``init``, through subprocesses, from outside the checkout."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from queue import Empty, Queue

import pytest

from router.regions import RegionMap
from tests.conftest import REGIONS_FILE
from tests.test_cli_scriptable import cli, document

EXPORTED = (
    "RESIDENCY_ENDPOINT_URL",
    "RESIDENCY_REGIONS_FILE",
    "RESIDENCY_DIRECTORY_TABLE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def clean_environment(tmp_path: Path) -> dict[str, str]:
    """No RESIDENCY_* settings and no AWS credentials: only what 'local' prints may help."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RESIDENCY_"))}
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalWorld:
    """A running ``residency-router local`` and the variables it exported."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "local", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
        )
        self.lines: Queue[str | None] = Queue()
        threading.Thread(target=self._read, daemon=True).start()
        # stderr is drained as it comes: were it left in its pipe until the end, a full pipe
        # (64 KiB of server log) would block the process on its next write, and it would
        # never stop.
        self._said: list[str] = []
        self._said_all = threading.Thread(target=self._read_stderr, daemon=True)
        self._said_all.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._said.append(line)

    def stderr(self) -> str:
        """What the process wrote to stderr, all of it once it has ended."""
        if self.process.poll() is not None:
            self._said_all.join(timeout=60)
        return "".join(self._said)

    def exports(self) -> dict[str, str]:
        """The ``export NAME=value`` lines, once all of them are printed."""
        found: dict[str, str] = {}
        while set(found) != set(EXPORTED):
            try:
                line = self.lines.get(timeout=120)
            except Empty:
                pytest.fail("residency-router local printed no exports in 120 s")
            if line is None:
                self.process.wait(timeout=60)
                pytest.fail(f"residency-router local ended: {self.stderr()}")
            words = shlex.split(line)
            assert words[0] == "export", line
            name, value = words[1].split("=", 1)
            found[name] = value
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"residency-router local still running 60 s after SIGTERM: {self.stderr()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._said_all.join(timeout=60)  # the pipe ends with the process
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def test_local_serves_a_provisioned_world_until_terminated(tmp_path: Path) -> None:
    base = clean_environment(tmp_path)
    port = free_port()
    world = LocalWorld("--port", str(port), cwd=tmp_path, env=base)
    try:
        exports = world.exports()
        assert exports["RESIDENCY_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        assert exports["RESIDENCY_DIRECTORY_TABLE"] == "residency-orgs"
        shipped = RegionMap.load(exports["RESIDENCY_REGIONS_FILE"])
        assert sorted(shipped.regions) == sorted(RegionMap.load(REGIONS_FILE).regions)
        env = {**base, **exports}

        verify = cli("verify", "--json", env=env, cwd=tmp_path)
        assert verify.returncode == 0, verify.stderr
        assert document(verify)["ok"] is True
        check = cli("check", "--skip", "policy", "--json", env=env, cwd=tmp_path)
        assert check.returncode == 0, check.stdout
        assert document(check)["drifted"] == 0
        # The orgs come from the DynamoDB table 'local' filled from the map.
        listing = cli("orgs", "list", "--json", env=env, cwd=tmp_path)
        assert listing.returncode == 0, listing.stderr
        assert {o["org_id"] for o in document(listing)["orgs"]} == set(shipped.orgs)
        created = cli("orgs", "set", "org-new", "--region", "sg", "--json", env=env, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        assert document(created)["created"] is True

        # A router configured only by the exports writes where the map says.
        put = subprocess.run(
            [
                sys.executable,
                "-c",
                "import asyncio\n"
                "from router import ResidencyRouter, RouterSettings\n"
                "async def main():\n"
                "    async with ResidencyRouter.from_settings(RouterSettings()) as router:\n"
                "        receipt = await router.put('org-acme', 'hello.txt', b'hello')\n"
                "    print(receipt.region.value, receipt.bucket)\n"
                "asyncio.run(main())\n",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=tmp_path,
            check=False,
        )
        assert put.returncode == 0, put.stderr
        assert put.stdout.split() == ["eu", "residency-example-eu"]
        erased = cli("erase", "org-acme", "--yes", "--json", env=env, cwd=tmp_path)
        assert erased.returncode == 0, erased.stderr
        assert document(erased)["versions_deleted"] == 1

        assert world.stop() == 0
        assert "stopping" in world.stderr()
        gone = cli("verify", env=env, cwd=tmp_path)
        assert gone.returncode == 2
        assert "unreachable" in gone.stderr
    finally:
        world.kill()


def test_local_refuses_a_port_in_use_and_a_bad_map(tmp_path: Path) -> None:
    env = clean_environment(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("local", "--port", str(port), env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "in use" in result.stderr
    bad = cli("local", "--regions", str(tmp_path / "missing.yaml"), env=env, cwd=tmp_path)
    assert bad.returncode == 2
    assert "cannot read the region map" in bad.stderr


def test_local_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    world = LocalWorld(cwd=tmp_path, env=clean_environment(tmp_path))
    try:
        world.exports()
        world.process.send_signal(signal.SIGINT)
        assert world.process.wait(timeout=60) == 0
    finally:
        world.kill()


def test_init_writes_a_commented_map_that_loads(tmp_path: Path) -> None:
    result = cli("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "regions.yaml"
    text = written.read_text(encoding="utf-8")
    assert text.count("\n#") + text.count("  #") >= 10  # commented
    region_map = RegionMap.load(written)
    assert region_map.regions
    assert region_map.orgs

    written.write_text("# mine\n", encoding="utf-8")
    refused = cli("init", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--force" in refused.stderr
    assert written.read_text(encoding="utf-8") == "# mine\n"
    forced = cli("init", "--force", cwd=tmp_path)
    assert forced.returncode == 0
    assert written.read_text(encoding="utf-8") == text

    elsewhere = tmp_path / "config" / "residency.yaml"
    elsewhere.parent.mkdir()
    assert cli("init", str(elsewhere), cwd=tmp_path).returncode == 0
    RegionMap.load(elsewhere)


def test_the_packaged_map_is_the_repository_map() -> None:
    from router.cli._local import example_map

    with example_map() as path:
        assert path.read_bytes() == REGIONS_FILE.read_bytes()
