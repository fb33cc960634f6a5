from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from router.audit import AUDIT_LOGGER, VERSION, AuditLog
from router.errors import (
    InvalidArgumentError,
    InvalidKeyError,
    ObjectNotFoundError,
    ProcessingNotEligibleError,
    ResidencyViolationError,
    UnknownOrgError,
)
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import Region
from tests.conftest import unverified

MiB = 1024 * 1024


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(dict(record.audit))  # type: ignore[attr-defined]


@pytest.fixture
def audit_events() -> Iterator[Events]:
    handler = Events()
    logger = logging.getLogger(AUDIT_LOGGER)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def keyed(secret: str, key: str) -> str:
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()[:32]


async def test_every_operation_emits_one_structured_event(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    settings = residency_world.settings(audit_hmac_secret="s3cret")
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put("org-acme", "doc.txt", b"content")
        await router.get("org-acme", "doc.txt")
        await router.delete("org-acme", "doc.txt")
        with pytest.raises(ObjectNotFoundError):
            await router.get("org-acme", "doc.txt")
        await router.route_processing("org-acme", "/v1/chat/completions")
        await router.record_exchange(
            "org-kiku", "/v1/chat/completions", request=b"q", response=b"a"
        )
    ops = [(e["operation"], e["outcome"]) for e in audit_events.events]
    assert ops == [
        ("put", "ok"),
        ("get", "ok"),
        ("delete", "ok"),
        ("get", "error"),
        ("route_processing", "ok"),
        ("record_exchange", "skipped"),
    ]
    put = audit_events.events[0]
    assert put["org_id"] == "org-acme"
    assert put["region"] == "eu"
    assert put["data_class"] == "files"
    # Plain strings, not the enum members the router hands over (a log or trace exporter
    # must not see a type of the router's).
    assert {type(event["region"]) for event in audit_events.events} == {str}
    assert type(put["data_class"]) is str
    assert type(audit_events.events[1]["data_class"]) is str  # a get's
    assert put["latency_ms"] >= 0
    assert put["key_hash"] == keyed("s3cret", "orgs/org-acme/files/doc.txt")
    assert audit_events.events[3]["error"] == "ObjectNotFoundError"
    for event in audit_events.events:
        assert "content" not in repr(event)
        assert "doc.txt" not in repr(event)


def test_key_hash_depends_on_the_secret() -> None:
    key = "orgs/org-acme/files/doc.txt"
    assert AuditLog(b"one").key_hash(key) == AuditLog(b"one").key_hash(key)
    assert AuditLog(b"one").key_hash(key) != AuditLog(b"two").key_hash(key)
    assert AuditLog().key_hash(key) != AuditLog().key_hash(key)  # random per process


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def test_operations_become_spans_when_opentelemetry_is_configured(
    residency_world: ResidencyWorld, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        await router.put("org-lark", "a.txt", b"x")
        with pytest.raises(ObjectNotFoundError):
            await router.head("org-lark", "missing.txt")
        with pytest.raises(ObjectNotFoundError):
            await router.get("org-lark", "missing.txt")
    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    assert names == ["residency.put", "residency.head", "residency.get"]
    put, _, failed = finished
    assert put.attributes is not None
    assert put.attributes["residency.org_id"] == "org-lark"
    assert put.attributes["residency.region"] == "ca"
    assert put.attributes["residency.outcome"] == "ok"
    assert "residency.key_hash" in put.attributes
    assert put.end_time is not None
    assert put.start_time is not None
    assert put.end_time >= put.start_time
    assert failed.status.status_code is StatusCode.ERROR


TRACING_PROBE = """
import os, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from router.audit import AuditLog, _tracer

audit = AuditLog(b"k")
if sys.argv[1] == "set-later":
    assert not audit.enabled(), "nothing configured yet"
    trace.set_tracer_provider(TracerProvider())
print("enabled" if audit.enabled() and _tracer() is not None else "disabled")
"""


@pytest.mark.parametrize(
    ("case", "env"),
    [
        ("none", {}),
        ("env", {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}),
        ("set-later", {}),
    ],
)
def test_tracing_is_noticed_however_the_provider_is_configured(
    case: str, env: dict[str, str]
) -> None:
    # The hot path reads the configured provider without calling into OpenTelemetry; a
    # provider named in the environment or set after the router started must still count.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", TRACING_PROBE, case],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == ("disabled" if case == "none" else "enabled")


async def test_every_refusal_emits_exactly_one_refused_event(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        refusals: list[tuple[str, type[BaseException], Any]] = [
            ("put", UnknownOrgError, router.put("org-nobody", "a.txt", b"x")),
            ("put", InvalidKeyError, router.put("org-acme", "../a.txt", b"x")),
            ("put", InvalidArgumentError, router.put("org-acme", "a", b"x", metadata={"a b": "v"})),
            ("put", TypeError, router.put("org-acme", "a.txt", "text")),  # type: ignore[arg-type]
            ("get", InvalidKeyError, router.get("bad id", "a.txt")),
            (
                "route_processing",
                ProcessingNotEligibleError,
                router.route_processing("org-acme", "/v1/unlisted"),
            ),
            (
                "record_exchange",
                ProcessingNotEligibleError,
                router.record_exchange("org-acme", "/v1/unlisted", request=b"q", response=b"a"),
            ),
            ("erase", ResidencyViolationError, router.erase_org("org-acme", region="us")),
            ("purge", TypeError, router.purge_expired(now=date(2026, 1, 1))),  # type: ignore[arg-type]
            ("explain", InvalidArgumentError, router.explain("org-acme", operation="fly")),
        ]
        for operation, error, call in refusals:
            audit_events.events.clear()
            with pytest.raises(error):
                await call
            assert [(e["operation"], e["outcome"], e["error"]) for e in audit_events.events] == [
                (operation, "refused", error.__name__)
            ], operation
    for region in Region:
        assert residency_world.all_versions(region) == []


async def test_stream_closed_early_emits_partial_with_the_bytes_read(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    settings = residency_world.settings(audit_hmac_secret="s3cret")
    async with ResidencyRouter.from_settings(settings) as router:
        await router.put("org-acme", "big.bin", b"z" * (3 * 1024 * 1024))
        audit_events.events.clear()
        stream = router.stream("org-acme", "big.bin")
        async for chunk in stream:
            first = len(chunk)
            break
        assert audit_events.events == [], "nothing is final while the stream is open"
        await stream.aclose()
        [event] = audit_events.events
        assert (event["operation"], event["outcome"]) == ("stream", "partial")
        assert event["bytes"] == first
        assert event["region"] == "eu"
        audit_events.events.clear()
        body = b"".join([c async for c in router.stream("org-acme", "big.bin")])
        [event] = audit_events.events
        assert (event["outcome"], event["bytes"]) == ("ok", len(body))


async def test_list_is_audited_once_after_it_has_listed(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        for i in range(3):
            await router.put("org-acme", f"l/{i}", b"x")
        audit_events.events.clear()
        listing = router.list("org-acme")
        await anext(listing)
        assert audit_events.events == [], "list must not report ok before it has listed"
        rest = [info async for info in listing]
        assert len(rest) == 2
        [event] = audit_events.events
        assert (event["operation"], event["outcome"], event["items"]) == ("list", "ok", 3)


async def test_cancelled_operation_emits_one_error_event(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        started = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b"x" * 1024
            started.set()
            await asyncio.sleep(3600)
            yield b"never"

        audit_events.events.clear()
        task = asyncio.create_task(router.put("org-acme", "slow.bin", slow_body()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [(e["operation"], e["outcome"], e["error"]) for e in audit_events.events] == [
            ("put", "error", "CancelledError")
        ]


async def test_span_encloses_the_operation_and_its_requests(
    residency_world: ResidencyWorld, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    seen: list[int] = []

    def current_span_id(request: Any, **_: Any) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)

    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        router.storage.register("before-send.s3", current_span_id)
        await router.put("org-lark", "a.txt", b"x")
        with pytest.raises(InvalidKeyError):
            await router.get("org-lark", "../x")
    finished = {s.name: s for s in spans.get_finished_spans()}
    put = finished["residency.put"]
    assert seen, "no request was seen"
    assert set(seen) == {put.context.span_id}, "requests must run inside the span"
    assert put.instrumentation_scope is not None
    assert put.instrumentation_scope.version == VERSION
    refused = finished["residency.get"]
    assert refused.attributes is not None
    assert refused.attributes["error.type"] == "InvalidKeyError"
    assert refused.attributes["residency.outcome"] == "refused"


async def test_streamed_operations_nest_their_requests_under_their_span(
    residency_world: ResidencyWorld, spans: InMemorySpanExporter
) -> None:
    spans.clear()
    seen: list[int] = []

    def current_span_id(request: Any, **_: Any) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)

    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        await router.put("org-lark", "a.txt", b"x")
        router.storage.register("before-send.s3", current_span_id)
        with trace.get_tracer("test").start_as_current_span("caller") as caller:
            async for _ in router.stream("org-lark", "a.txt"):
                # The caller's own work between chunks is not inside the stream's span.
                assert trace.get_current_span() is caller
            stream_requests = list(seen)
            seen.clear()
            async for _ in router.list("org-lark"):
                assert trace.get_current_span() is caller
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert stream_requests
    assert set(stream_requests) == {finished["residency.stream"].context.span_id}
    assert seen
    assert set(seen) == {finished["residency.list"].context.span_id}


async def test_stream_closed_by_a_cancelled_reader_is_partial(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        await router.put("org-acme", "big.bin", b"z" * (3 * 1024 * 1024))
        got_one = asyncio.Event()

        async def reader() -> None:
            async with contextlib.aclosing(router.stream("org-acme", "big.bin")) as chunks:
                async for _ in chunks:
                    got_one.set()
                    await asyncio.sleep(3600)

        audit_events.events.clear()
        task = asyncio.create_task(reader())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [event] = audit_events.events
        assert (event["operation"], event["outcome"]) == ("stream", "partial")
        assert 0 < event["bytes"] < 3 * 1024 * 1024


class StallingObject:
    """Answers GET with an SSE-KMS object, sends the first MiB of it, then stalls."""

    def __init__(self, key_arn: str) -> None:
        self.release = threading.Event()
        stalling = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(2 * MiB))
                self.send_header("x-amz-server-side-encryption", "aws:kms")
                self.send_header("x-amz-server-side-encryption-aws-kms-key-id", key_arn)
                self.end_headers()
                self.wfile.write(b"z" * MiB)
                self.wfile.flush()
                stalling.release.wait(30)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


async def test_stream_cancelled_while_waiting_for_s3_is_partial(
    key_arn_map: Path, audit_events: Events
) -> None:
    key_arn = yaml.safe_load(key_arn_map.read_text())["regions"]["eu"]["kms_key"]  # noqa: ASYNC240
    stub = StallingObject(key_arn)
    try:
        settings = unverified(key_arn_map, stub.url)
        async with ResidencyRouter.from_settings(settings) as router:
            got_one = asyncio.Event()

            async def reader() -> None:
                async for _ in router.stream("org-acme", "big.bin"):
                    got_one.set()  # then straight back to waiting for S3's next bytes

            audit_events.events.clear()
            task = asyncio.create_task(reader())
            await got_one.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            [event] = audit_events.events
            assert (event["operation"], event["outcome"]) == ("stream", "partial")
            assert 0 < event["bytes"] <= MiB
    finally:
        stub.stop()


async def test_a_closed_router_still_audits_the_refused_call(
    residency_world: ResidencyWorld, audit_events: Events
) -> None:
    router = ResidencyRouter.from_settings(residency_world.settings())
    async with router:
        pass
    audit_events.events.clear()
    with pytest.raises(RuntimeError, match="closed"):
        await router.put("org-acme", "a.txt", b"x")
    with pytest.raises(RuntimeError, match="closed"):
        async for _ in router.list("org-acme"):
            pass
    assert [(e["operation"], e["outcome"]) for e in audit_events.events] == [
        ("put", "refused"),
        ("list", "refused"),
    ]
