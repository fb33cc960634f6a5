"""A minimal S3 stub that answers at once, in its own process (``python -m benchmarks.stub_s3``).

It speaks just enough S3 for the router's put, get and multipart upload paths, keeps no
data (uploads are discarded, reads return a fixed body) and reports every object as
SSE-KMS under ``arn:aws:kms:<request's region>:123456789012:key/bench``. Reads carry the
``Last-Modified`` header S3 always sends (clients parse it; obstore reads a missing one as
1970). It prints its port on stdout and runs until stdin closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
import uuid

SCOPE = re.compile(rb"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")
BODY = bytes(range(256)) * 4  # 1 KiB
BODY_ETAG = hashlib.md5(BODY).hexdigest()
LAST_MODIFIED = "Tue, 01 Dec 2026 00:00:00 GMT"


def key_arn(region: str) -> str:
    return f"arn:aws:kms:{region}:123456789012:key/bench"


def respond(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Server: bench-stub"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            request_line, _, header_block = head.partition(b"\r\n")
            method, target = request_line.split(b" ")[:2]
            length = 0
            chunked = False
            expect = False
            for line in header_block.split(b"\r\n"):
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value.strip())
                elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif lowered == b"expect":
                    expect = True
            if expect:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await discard_body(reader, length, chunked)
            match = SCOPE.search(head)
            region = match.group(1).decode() if match else "us-east-1"
            writer.write(answer(method, target, region))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def discard_body(reader: asyncio.StreamReader, length: int, chunked: bool) -> None:
    if chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                return
    remaining = length
    while remaining:
        chunk = await reader.read(min(remaining, 1 << 20))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", remaining)
        remaining -= len(chunk)


def answer(method: bytes, target: bytes, region: str) -> bytes:
    sse = {
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": key_arn(region),
        "x-amz-server-side-encryption-bucket-key-enabled": "true",
        "x-amz-version-id": uuid.uuid4().hex,
    }
    query = target.partition(b"?")[2]
    if method == b"POST" and b"uploads" in query.split(b"&"):
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult>'
            b"<Bucket>b</Bucket><Key>k</Key><UploadId>"
            + uuid.uuid4().hex.encode()
            + b"</UploadId></InitiateMultipartUploadResult>"
        )
        return respond("200 OK", {"Content-Type": "application/xml", **sse}, body)
    if method == b"POST" and b"uploadId=" in query:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult>'
            b'<Bucket>b</Bucket><Key>k</Key><ETag>"abc-1"</ETag></CompleteMultipartUploadResult>'
        )
        return respond("200 OK", {"Content-Type": "application/xml", **sse}, body)
    if method == b"PUT" and b"partNumber=" in query:
        return respond("200 OK", {"ETag": f'"{uuid.uuid4().hex}"'})
    if method == b"PUT":
        return respond("200 OK", {"ETag": f'"{BODY_ETAG}"', **sse})
    if method == b"DELETE":
        return respond("204 No Content", {})
    if method == b"GET" and query.startswith(b"location"):
        body = b'<?xml version="1.0" encoding="UTF-8"?><LocationConstraint/>'
        return respond("200 OK", {"Content-Type": "application/xml"}, body)
    headers = {
        "ETag": f'"{BODY_ETAG}"',
        "Content-Type": "binary/octet-stream",
        "Last-Modified": LAST_MODIFIED,
        **sse,
    }
    if method == b"HEAD":
        lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(BODY)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()
    return respond("200 OK", headers, BODY)


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
