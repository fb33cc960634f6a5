"""Tiny loopback HTTP servers that answer every request the same way, and count them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple[int, dict[str, str] | list[tuple[str, str]], bytes]
"""Status, headers (a list of pairs may repeat a name), body."""


class StubServer:
    def __init__(self, reply: Callable[[str, str], Reply]) -> None:
        self.reply = reply
        self.requests: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []  # each request's headers, names lowercased
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append((self.command, self.path))
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, headers, body = stub.reply(self.command, self.path)
                self.send_response(status)
                pairs = headers.items() if isinstance(headers, dict) else headers
                for name, value in pairs:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def stub_server(reply: Callable[[str, str], Reply]) -> Iterator[StubServer]:
    server = StubServer(reply).start()
    try:
        yield server
    finally:
        server.stop()
