"""A fault-injecting HTTP proxy (asyncio) between the router and the moto server.

It forwards one request per client connection and can add latency, answer 503 or 500
itself, reset the connection in the middle of the request body (nothing reaches S3) or in
the middle of the response body (S3 acted, the client never hears), or black-hole every
request of one AWS region, read from the SigV4 credential scope. It counts requests per
AWS region and per bucket so tests can prove where traffic went.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_SCOPE = re.compile(rb"Credential=[^/]+/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")

TRANSIENT = ("503", "500", "reset_request", "reset_response")
ERROR_BODIES = {
    "503": (b"503 Slow Down", b"SlowDown", b"Please reduce your request rate."),
    "500": (b"500 Internal Server Error", b"InternalError", b"We encountered an internal error."),
}


@dataclass
class FaultPlan:
    """What the proxy does to traffic; change it while tests run."""

    rate: float = 0.0
    kinds: tuple[str, ...] = TRANSIENT
    latency_s: float = 0.0
    answer_latency_s: float = 0.0  # after S3 has acted: the answer is late, the act is done
    blackhole: set[str] = field(default_factory=set)
    seed: int = 20261121


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    aws_region: str
    service: str
    method: str
    bucket: str
    fault: str


class FaultProxy:
    def __init__(self, upstream_url: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream_url)
        assert parts.hostname
        assert parts.port
        self._upstream = (parts.hostname, parts.port)
        self.plan = plan or FaultPlan()
        self._random = random.Random(self.plan.seed)
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with asyncio.timeout(5):
            await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def counts_by_region(self, service: str = "s3") -> Counter[str]:
        return Counter(s.aws_region for s in self.seen if s.service == service)

    def faults(self) -> Counter[str]:
        return Counter(s.fault for s in self.seen if s.fault)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._tasks.add(task)
        self._writers.add(writer)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self._writers.discard(writer))

    def _choose(self, aws_region: str) -> str:
        if aws_region in self.plan.blackhole:
            return "blackhole"
        if self.plan.rate and self._random.random() < self.plan.rate:
            return self._random.choice(self.plan.kinds)
        return ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, _, header_block = head.partition(b"\r\n")
        method, target = request_line.split(b" ")[:2]
        headers = [line for line in header_block.split(b"\r\n") if line]
        length = 0
        expects_continue = False
        for line in headers:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() == b"expect":
                expects_continue = value.strip().lower() == b"100-continue"
        # The proxy answers 100-continue itself and forwards the request without it.
        headers = [h for h in headers if h.split(b":")[0].strip().lower() != b"expect"]
        scope = _SCOPE.search(head)
        aws_region, service = (
            (scope.group(1).decode(), scope.group(2).decode()) if scope else ("", "")
        )
        bucket = target.split(b"?")[0].split(b"/")[1].decode() if service == "s3" else ""
        fault = self._choose(aws_region)
        self.seen.append(Seen(aws_region, service, method.decode(), bucket, fault))
        try:
            if fault == "blackhole":
                await reader.read()  # never answer; wait for the client to give up
                return
            if self.plan.latency_s:
                await asyncio.sleep(self.plan.latency_s)
            if expects_continue and fault not in ERROR_BODIES:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            if fault == "reset_request" and length > 1:
                await reader.readexactly(length // 2)
                writer.transport.abort()
                return
            if fault in ERROR_BODIES:
                # Answer before the body, as S3 does; an expecting client never sends it.
                writer.write(_error_response(fault))
                await writer.drain()
                return
            body = await reader.readexactly(length)
            response = await self._forward(head, headers, request_line, body)
            if self.plan.answer_latency_s:
                await asyncio.sleep(self.plan.answer_latency_s)
            if fault == "reset_response":
                writer.write(response[: max(1, len(response) * 2 // 3)])
                await writer.drain()
                writer.transport.abort()
                return
            writer.write(response)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _forward(
        self, head: bytes, headers: list[bytes], request_line: bytes, body: bytes
    ) -> bytes:
        kept = [h for h in headers if h.split(b":")[0].strip().lower() != b"connection"]
        upstream_head = b"\r\n".join([request_line, *kept, b"Connection: close"]) + b"\r\n\r\n"
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            up_writer.write(upstream_head + body)
            await up_writer.drain()
            response = await up_reader.read()
        finally:
            up_writer.close()
        # The client gets one response per connection.
        status_head, _, rest = response.partition(b"\r\n\r\n")
        lines = [
            line
            for line in status_head.split(b"\r\n")
            if line.split(b":")[0].strip().lower() != b"connection"
        ]
        return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + rest


def _error_response(kind: str) -> bytes:
    status, code, message = ERROR_BODIES[kind]
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>'
        + code
        + b"</Code><Message>"
        + message
        + b"</Message><RequestId>fault-proxy</RequestId></Error>"
    )
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/xml\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
