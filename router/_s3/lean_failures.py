"""The lean transport's failures, raised as aiobotocore raises them.

aiohttp raises its own exceptions when a request cannot be sent or its answer breaks off;
aiobotocore turns them into botocore's (``EndpointConnectionError``, ``ReadTimeoutError``,
...), which the retry classification and the error translation (:mod:`router._s3.errors`)
read. The lean transport (:mod:`router._s3.lean`) raises the same ones for the same failures.
A failure names the bucket's URL, never an object's key.
"""

from __future__ import annotations

import socket
from typing import NoReturn

import aiohttp
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)


def sending_failed(exc: Exception, where: str) -> NoReturn:
    """Raise what aiobotocore raises for what sending a request raised.

    ``where`` is the bucket's URL, never an object's key. Called in the ``except Exception``
    of the request's await: a cancellation and any other ``BaseException`` pass as they are.
    """
    raise sending_error(exc, where) from None


def reading_failed(exc: Exception, where: str) -> NoReturn:
    """Raise what aiobotocore raises when a short answer's body breaks off, else ``exc``.

    As :func:`sending_failed`, around the await of the body.
    """
    reading = reading_error(exc, where)
    if reading is None:
        raise exc
    raise reading from None


def reading_error(exc: Exception, where: str) -> Exception | None:
    """What aiobotocore raises when a short answer's body breaks off (None: leave it)."""
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return ReadTimeoutError(endpoint_url=where, error=exc)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return ConnectionClosedError(endpoint_url=where, error=exc)
    return None


def sending_error(exc: Exception, where: str) -> Exception:
    """What aiobotocore raises for what sending a request raised."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return SSLError(endpoint_url=where, error=exc)
    if isinstance(exc, aiohttp.ClientProxyConnectionError | aiohttp.ClientHttpProxyError):
        return ProxyConnectionError(proxy_url="(the configured proxy)", error=exc)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return ConnectionClosedError(endpoint_url=where, error=exc)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        if str(exc).lower().startswith("connect"):
            return ConnectTimeoutError(endpoint_url=where, error=exc)
        return ReadTimeoutError(endpoint_url=where, error=exc)
    if isinstance(exc, aiohttp.ClientConnectionError | socket.gaierror):
        return EndpointConnectionError(endpoint_url=where, error=exc)
    if isinstance(exc, TimeoutError):
        return ReadTimeoutError(endpoint_url=where, error=exc)
    # aiohttp.ClientError, and as aiobotocore: whatever else sending raised.
    return HTTPClientError(error=exc)
