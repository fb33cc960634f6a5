from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.errors import (
    DirectoryUnavailableError,
    ObjectNotFoundError,
    RegionUnavailableError,
    StorageError,
    UnknownOrgError,
)
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId, OrgResidency
from tests.conftest import REGIONS_FILE, RequestLog, unverified
from tests.stubs import stub_server

MiB = 1024 * 1024


async def test_cancelled_streams_release_their_connections(
    residency_world: ResidencyWorld,
) -> None:
    settings = residency_world.settings(max_pool_connections=4)
    body = bytes(range(256)) * (3 * MiB // 256)
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put("org-acme", "big.bin", body)

        async def read_first_chunk_then_stop() -> None:
            stream = router.stream("org-acme", "big.bin")
            async for _chunk in stream:
                break
            await stream.aclose()

        async def cancelled_mid_stream() -> None:
            started = asyncio.Event()

            async def consume() -> None:
                async for _chunk in router.stream("org-acme", "big.bin"):
                    started.set()
                    await asyncio.sleep(30)

            task = asyncio.create_task(consume())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        async with asyncio.timeout(120):
            for i in range(0, 500, 25):
                batch = [
                    read_first_chunk_then_stop() if (i + j) % 2 else cancelled_mid_stream()
                    for j in range(25)
                ]
                await asyncio.gather(*batch)
            # With 4 connections, one leak per read would have exhausted the pool long ago.
            results = await asyncio.gather(
                *(router.head("org-acme", "big.bin") for _ in range(250)),
                *(router.get("org-acme", "big.bin") for _ in range(10)),
                *(router.put("org-acme", f"after/{i}", b"x") for i in range(240)),
            )
    assert len(results) == 500
    assert all(r == body for r in results[250:260])


class MotoProcess:
    """moto in its own process, so its GIL use cannot look like the router blocking."""

    def __init__(self) -> None:
        code = (
            "import sys, logging\n"
            "from router.testing import LocalS3Server\n"
            "server = LocalS3Server(); print(server.start(), flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.endpoint_url = self.process.stdout.readline().strip()

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def moto_process() -> Iterator[MotoProcess]:
    process = MotoProcess()
    try:
        yield process
    finally:
        process.stop()


async def _exercise(router: ResidencyRouter, attempt: int) -> None:
    orgs = ["org-acme", "org-stars", "org-kiku", "org-lark", "org-hana", "org-lotus"]
    # One operation at a time: debug mode makes every task creation expensive, and a burst
    # of test-made tasks would measure the test, not the router.
    for org_id in orgs:
        for i in range(10):
            await router.put(org_id, f"k{attempt}-{i}", b"v" * 1000)
            assert await router.get(org_id, f"k{attempt}-{i}") == b"v" * 1000
    await router.put("org-acme", "big.bin", bytes(12 * MiB))
    assert len(await router.get("org-acme", "big.bin")) == 12 * MiB
    assert len([o async for o in router.list("org-acme", prefix=f"k{attempt}-")]) == 10
    await router.record_exchange("org-stars", "/v1/chat/completions", request=b"q", response=b"a")
    await router.purge_expired()
    await router.erase_org("org-acme")
    await router.verify()


# Blocking calls, as Python's audit events name them, made on the event loop's own thread
# while it is being watched. (Behaviour, not time: a loaded machine stretches every step,
# but an open() or a sleep on the loop thread is a block however fast the disk is.)
BLOCKING_EVENTS = frozenset(
    {"open", "time.sleep", "socket.getaddrinfo", "socket.gethostbyname", "subprocess.Popen"}
)


class BlockingCalls:
    def __init__(self) -> None:
        self.thread: int | None = None
        self.calls: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if (
            self.thread is not None
            and event in BLOCKING_EVENTS
            and threading.get_ident() == self.thread
        ):
            detail = args[0] if event == "open" and args else ""
            self.calls.append(f"{event} {detail}")


_BLOCKING = BlockingCalls()
sys.addaudithook(_BLOCKING)  # audit hooks cannot be removed: it records only while watching


async def test_router_never_blocks_the_event_loop(
    moto_process: MotoProcess, tmp_path: Path
) -> None:
    world = ResidencyWorld.provision(moto_process.endpoint_url, REGIONS_FILE, tmp_path)
    settings = world.settings(
        multipart_threshold=5 * MiB, multipart_part_size=5 * MiB, multipart_concurrency=2
    )
    async with ResidencyRouter.from_settings(settings) as router:
        # The first pass warms what a serving process has warmed (each client's first use of
        # each operation); the second pass is the one watched.
        for attempt in range(2):
            if attempt == 1:
                _BLOCKING.calls.clear()
                _BLOCKING.thread = threading.get_ident()
            try:
                await _exercise(router, attempt)
            finally:
                _BLOCKING.thread = None
    assert _BLOCKING.calls == []


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_logs_carry_no_credentials_bodies_or_keys(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    access_key, secret_key = "AKIACANARY0123456789", "canary/secret+value/9f8e7d6c5b4a"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    body = b"BODY-CANARY-7f3a-do-not-log"
    key = "canary/key-9d2e.txt"
    handler = Captured()
    router_logger = logging.getLogger("router")
    router_logger.addHandler(handler)
    previous_level = router_logger.level
    router_logger.setLevel(logging.DEBUG)
    botocore_logger = logging.getLogger("botocore")
    botocore_before = (botocore_logger.level, list(botocore_logger.handlers))
    try:
        settings = residency_world.settings(audit_hmac_secret="audit-canary-secret")
        async with ResidencyRouter.from_settings(settings) as router:
            await router.put("org-acme", key, body)
            await router.get("org-acme", key)
            await router.record_exchange(
                "org-stars", "/v1/chat/completions", request=body, response=body
            )
            with pytest.raises(ObjectNotFoundError):
                await router.get("org-acme", key + ".missing")
            with pytest.raises(UnknownOrgError):
                await router.put("org-nobody", key, body)
            await router.delete("org-acme", key)
    finally:
        router_logger.removeHandler(handler)
        router_logger.setLevel(previous_level)
    assert (botocore_logger.level, botocore_logger.handlers) == botocore_before
    assert botocore_logger.getEffectiveLevel() > logging.DEBUG or not botocore_logger.handlers
    assert any(r.name == "router.audit" for r in handler.records)
    forbidden = [
        access_key,
        secret_key,
        "audit-canary-secret",
        body.decode(),
        key,
        f"orgs/org-acme/files/{key}",
    ]
    for record in handler.records:
        text = record.getMessage() + repr(record.__dict__)
        for secret in forbidden:
            assert secret not in text, (secret, record.name, text[:200])
    puts = [r for r in handler.records if getattr(r, "audit", {}).get("operation") == "put"]
    assert puts
    assert all(len(r.audit["key_hash"]) == 32 for r in puts if "key_hash" in r.audit)  # type: ignore[attr-defined]


class BrokenDirectory:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        if self.mode == "slow":
            await asyncio.sleep(30)
        raise ConnectionError("directory backend down")


@pytest.mark.parametrize("mode", ["failing", "slow"])
async def test_failing_or_slow_directory_never_leads_to_s3_requests(
    residency_world: ResidencyWorld, mode: str
) -> None:
    settings = residency_world.settings(directory_timeout_s=0.2)
    async with ResidencyRouter.from_settings(settings, directory=BrokenDirectory(mode)) as router:
        log = RequestLog()
        router.storage.register("before-send.s3", log)
        calls: list[Any] = [
            router.put("org-acme", "k", b"x"),
            router.get("org-acme", "k"),
            router.head("org-acme", "k"),
            router.delete("org-acme", "k"),
            router.record_exchange("org-acme", "/v1/chat/completions", request=b"", response=b""),
            router.erase_org("org-acme"),
        ]
        for call in calls:
            with pytest.raises(DirectoryUnavailableError):
                await call
        with pytest.raises(DirectoryUnavailableError):
            async for _ in router.list("org-acme"):
                pass
        assert len(log) == 0
    for cfg in residency_world.region_map:
        assert residency_world.all_versions(cfg.region) == []


# Built at run time, so that the test's own source lines in a traceback do not spell it.
SECRET_KEY = "-".join(["very", "secret", "key", "name"]) + ".txt"


async def test_router_errors_carry_no_key_or_url_in_their_traceback(key_arn_map: Path) -> None:
    # Nothing listens on port 9: the connection error names the URL, and so the key.
    settings = unverified(key_arn_map, "http://127.0.0.1:9", retry_max_attempts=1)
    async with ResidencyRouter.from_settings(settings) as router:
        with pytest.raises(RegionUnavailableError) as info:
            await router.put("org-acme", SECRET_KEY, b"x")
    text = "".join(traceback.format_exception(info.value))
    assert "very-secret-key-name" not in text
    assert "127.0.0.1:9" not in text
    assert info.value.__cause__ is None


async def test_aws_code_and_request_id_are_kept_as_attributes(key_arn_map: Path) -> None:
    def refuse(method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        body = b"<Error><Code>InvalidArgument</Code><Message>no</Message></Error>"
        return 400, {"Content-Type": "application/xml", "x-amz-request-id": "REQ123"}, body

    with stub_server(refuse) as stub:
        async with ResidencyRouter.from_settings(unverified(key_arn_map, stub.url)) as router:
            with pytest.raises(StorageError) as info:
                await router.put("org-acme", SECRET_KEY, b"x")
    assert info.value.aws_code == "InvalidArgument"
    assert info.value.request_id == "REQ123"
    assert "very-secret-key-name" not in "".join(traceback.format_exception(info.value))


async def test_the_blocking_watch_sees_blocking_calls(tmp_path: Path) -> None:
    # The watch above can only prove something if it notices these.
    probe = tmp_path / "probe.txt"
    probe.write_text("x")
    _BLOCKING.calls.clear()
    _BLOCKING.thread = threading.get_ident()
    try:
        probe.open().close()
        socket.getaddrinfo("localhost", None)  # likewise (loopback: /etc/hosts)
    finally:
        _BLOCKING.thread = None
    assert any(call.startswith("open") for call in _BLOCKING.calls)
    assert "socket.getaddrinfo " in _BLOCKING.calls
