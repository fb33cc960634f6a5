"""The one retry layer: which S3/KMS failures are transient and how long to keep trying."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts and total time for one idempotent operation."""

    max_attempts: int
    deadline_s: float
    initial_wait_s: float = 0.05
    max_wait_s: float = 2.0

    def retrying(self) -> AsyncRetrying:
        """Return a tenacity controller that retries transient errors and re-raises the last."""
        return AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.deadline_s),
            wait=wait_exponential_jitter(initial=self.initial_wait_s, max=self.max_wait_s),
            reraise=True,
        )

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` (idempotent) until it succeeds or the budget is spent."""
        async for attempt in self.retrying():
            with attempt:
                return await operation()
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
