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
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

T = TypeVar("T")

THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "503",
    }
)

TRANSIENT_CODES = THROTTLING_CODES | frozenset(
    {
        "500",
        "502",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "KMSInternalException",
    }
)
"""Answers worth retrying in the same region: throttling, and failures of the service."""

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


BASE_WAIT_S = 0.25
"""Transient failures wait a full-jitter draw from [0, 0.25 s x 2^(retry - 1)]."""
THROTTLE_WAIT_S = 1.0
"""Throttling (SlowDown, 503, Throttling*) waits [0, 1 s x 2^(retry - 1)], as botocore's
standard mode does for everything: a 300 ms burst of 503s is then survived about 98% of the
time with 3 attempts."""
MAX_WAIT_S = 20.0


def is_throttling(exc: BaseException) -> bool:
    """Return True for an answer that asks the client to slow down."""
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error_code(exc) in THROTTLING_CODES or status in (429, 503)


class RetryPolicy:
    """Attempts and total time for one idempotent operation, in one region."""

    __slots__ = (
        "_base_wait_s",
        "_max_wait_s",
        "_retry",
        "_retry_unprocessed",
        "_throttle_wait_s",
        "deadline_s",
        "max_attempts",
    )

    def __init__(
        self,
        max_attempts: int,
        deadline_s: float,
        *,
        base_wait_s: float = BASE_WAIT_S,
        throttle_wait_s: float = THROTTLE_WAIT_S,
        max_wait_s: float = MAX_WAIT_S,
    ) -> None:
        self.max_attempts = max_attempts
        self.deadline_s = deadline_s
        self._base_wait_s = base_wait_s
        self._throttle_wait_s = throttle_wait_s
        self._max_wait_s = max_wait_s
        self._retry = retry_if_exception(is_transient)
        self._retry_unprocessed = retry_if_exception(is_unprocessed)

    def backoff_s(self, error: BaseException, retry: int) -> float:
        """The wait before retry number ``retry`` (1 for the first) after ``error``.

        Full jitter, as the AWS SDKs do: a uniform draw from zero to the exponential bound,
        with a longer base for throttling.
        """
        base = self._throttle_wait_s if is_throttling(error) else self._base_wait_s
        return random.uniform(0.0, min(self._max_wait_s, base * 2 ** (retry - 1)))

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
        deadline = started + self.deadline_s
        await asyncio.sleep(min(self.backoff_s(error, 1), max(0.0, deadline - time.monotonic())))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error

        def wait(state: RetryCallState) -> float:
            # Within the controller, attempt n is the (n + 1)th retry overall; never past the
            # deadline, which is what stops the controller.
            failed = state.outcome.exception() if state.outcome else None
            drawn = self.backoff_s(failed or error, state.attempt_number + 1)
            return min(drawn, max(0.0, deadline - time.monotonic()))

        controller = AsyncRetrying(
            retry=self._retry if idempotent else self._retry_unprocessed,
            stop=stop_after_attempt(self.max_attempts - 1) | stop_after_delay(remaining),
            wait=wait,
            reraise=True,
        )
        async for attempt in controller:
            with attempt:
                return await operation()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
