"""Request bodies: which bodies a write accepts, and each one as an async stream of chunks."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Protocol

STREAM_CHUNK = 1024 * 1024

BytesLike = bytes | bytearray | memoryview


class BinaryReadable(Protocol):
    """A binary file object: ``read(size)`` returns bytes (``b""`` at the end)."""

    def read(self, size: int, /) -> bytes:
        """Return up to ``size`` bytes."""
        ...


Body = BytesLike | BinaryReadable | Iterable[BytesLike] | AsyncIterable[BytesLike]


def check_body(body: object) -> None:
    """Refuse a body that is not bytes-like, a binary file, or an iterable of bytes.

    Raises:
        TypeError: a ``str``, a text file, a number, ... (chunks are checked as they come).
    """
    if isinstance(body, bytes | bytearray | memoryview | AsyncIterable):
        return
    if isinstance(body, str | io.TextIOBase) or not (
        callable(getattr(body, "read", None)) or isinstance(body, Iterable)
    ):
        raise TypeError(
            "body must be bytes-like, a binary file object, or a sync or async iterable of "
            f"bytes, got {type(body).__name__}"
        )
    if isinstance(body, list | tuple):  # items known now: refuse before anything else
        for item in body:
            if not isinstance(item, bytes | bytearray | memoryview):
                raise TypeError(f"body chunks must be bytes, got {type(item).__name__}")


def body_chunks(body: object, chunk_size: int = STREAM_CHUNK) -> AsyncIterator[BytesLike]:
    """The chunks of a streamed body: an async iterable, a binary file, or a sync iterable.

    A file is read ``chunk_size`` bytes at a time in a worker thread (a real file blocks),
    never whole; a sync iterable is iterated on the event loop, as the caller wrote it.

    Raises:
        TypeError: not one of those (see :func:`check_body`).
    """
    check_body(body)
    if isinstance(body, AsyncIterable):
        return aiter(body)
    read = getattr(body, "read", None)
    if callable(read):
        return _file_chunks(read, chunk_size, in_thread=not isinstance(body, io.BytesIO))
    return _iter_chunks(iter(body))  # type: ignore[call-overload]


async def _file_chunks(
    read: Callable[[int], object], chunk_size: int, *, in_thread: bool
) -> AsyncIterator[BytesLike]:
    while True:
        chunk = await asyncio.to_thread(read, chunk_size) if in_thread else read(chunk_size)
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(
                f"a file body must be opened in binary mode: read() returned "
                f"{type(chunk).__name__}; nothing was stored"
            )
        if not chunk:
            return
        yield chunk


async def _iter_chunks(chunks: Iterator[object]) -> AsyncIterator[BytesLike]:
    for chunk in chunks:
        yield chunk  # type: ignore[misc]  # Chunks.fill checks each chunk's type
