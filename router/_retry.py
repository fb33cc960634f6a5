"""The one retry layer: which S3/KMS failures are transient and how long to keep trying."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

T = TypeVar("T")

TRANSIENT_CODES = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "KMSInternalException",
        "ProvisionedThroughputExceededException",
    }
)

TRANSIENT_TRANSPORT: tuple[type[BaseException], ...] = (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)


def error_code(exc: BaseException) -> str:
    """Return the AWS error code of a botocore ClientError, or '' for anything else."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else ""
    return ""


def is_transient(exc: BaseException) -> bool:
    """Return True for failures worth retrying in the same region (5xx, throttling, I/O)."""
    if isinstance(exc, TRANSIENT_TRANSPORT):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error_code(exc) in TRANSIENT_CODES or (isinstance(status, int) and status >= 500)
    return False


def is_unprocessed(exc: BaseException) -> bool:
    """Return True for transient failures that prove S3 did not act on the request.

    An error response (5xx, throttling) or a connection that never opened is safe to retry
    even for a request that is not idempotent; a timeout or a reset after sending is not.
    """
    if isinstance(exc, ClientError):
        return is_transient(exc)
    return isinstance(exc, EndpointConnectionError | ConnectTimeoutError)


class RetryPolicy:
    """Attempts and total time for one idempotent operation, in one region."""

    __slots__ = (
        "_base_wait_s",
        "_retry",
        "_retry_unprocessed",
        "_wait",
        "deadline_s",
        "max_attempts",
    )

    def __init__(
        self,
        max_attempts: int,
        deadline_s: float,
        *,
        base_wait_s: float = 0.05,
        max_wait_s: float = 2.0,
    ) -> None:
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self._base_wait_s = base_wait_s
        self._retry = retry_if_exception(is_transient)
        self._retry_unprocessed = retry_if_exception(is_unprocessed)
        # Full-range jitter on top of exponential backoff spreads out retry storms.
        self._wait = wait_exponential_jitter(
            multiplier=base_wait_s, max=max_wait_s, jitter=base_wait_s
        )

    async def after_first(
        self,
        operation: Callable[[], Awaitable[T]],
        error: Exception,
        started: float,
        *,
        idempotent: bool = True,
    ) -> T:
        """Go on after a failed first attempt: retry while allowed, else re-raise ``error``.

        ``started`` is the monotonic time the first attempt began; the deadline counts from
        there. For callers that run the first attempt themselves (one coroutine less).
        """
        retryable = is_transient(error) if idempotent else is_unprocessed(error)
        if not retryable or self.max_attempts <= 1:
            raise error
        await asyncio.sleep(self._first_wait_s())
        remaining = self.deadline_s - (time.monotonic() - started)
        if remaining <= 0:
            raise error
        controller = AsyncRetrying(
            retry=self._retry if idempotent else self._retry_unprocessed,
            stop=stop_after_attempt(self.max_attempts - 1) | stop_after_delay(remaining),
            wait=self._wait,
            reraise=True,
        )
        async for attempt in controller:
            with attempt:
                return await operation()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    def _first_wait_s(self) -> float:
        return random.uniform(self._base_wait_s, 2 * self._base_wait_s)
