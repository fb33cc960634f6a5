from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from router._retry import BASE_WAIT_S, THROTTLE_WAIT_S, RetryPolicy, is_transient, is_unprocessed


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "x"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "transient", "unprocessed"),
    [
        pytest.param(client_error("SlowDown", 503), True, True, id="503-slowdown"),
        pytest.param(client_error("InternalError", 500), True, True, id="500"),
        pytest.param(client_error("ThrottlingException", 400), True, True, id="throttling"),
        pytest.param(client_error("RequestTimeout", 400), True, True, id="request-timeout"),
        pytest.param(client_error("AccessDenied", 403), False, False, id="403"),
        pytest.param(client_error("NoSuchKey", 404), False, False, id="404"),
        pytest.param(client_error("KMS.DisabledException", 400), False, False, id="kms-disabled"),
        pytest.param(ConnectionClosedError(endpoint_url="u"), True, False, id="reset"),
        pytest.param(ReadTimeoutError(endpoint_url="u"), True, False, id="read-timeout"),
        pytest.param(EndpointConnectionError(endpoint_url="u"), True, True, id="refused"),
        pytest.param(ConnectTimeoutError(endpoint_url="u"), True, True, id="connect-timeout"),
        pytest.param(ValueError("bug"), False, False, id="bug"),
    ],
)
def test_retry_classification(error: BaseException, transient: bool, unprocessed: bool) -> None:
    assert is_transient(error) is transient
    assert is_unprocessed(error) is unprocessed


class Flaky:
    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


async def attempt(policy: RetryPolicy, operation: Flaky, idempotent: bool = True) -> str:
    """Run ``operation`` as the package does: the first attempt inline, then the policy."""
    started = time.monotonic()
    try:
        return await operation()
    except Exception as exc:
        return await policy.after_first(operation, exc, started, idempotent=idempotent)


async def test_retry_recovers_within_attempts() -> None:
    operation = Flaky([client_error("SlowDown", 503), ConnectionClosedError(endpoint_url="u")])
    assert (
        await attempt(RetryPolicy(4, 5.0, base_wait_s=0.001, throttle_wait_s=0.001), operation)
        == "ok"
    )
    assert operation.calls == 3


async def test_retry_gives_up_after_max_attempts_with_last_error() -> None:
    operation = Flaky([client_error("SlowDown", 503)] * 10)
    with pytest.raises(ClientError, match="SlowDown"):
        await attempt(RetryPolicy(3, 5.0, base_wait_s=0.001, throttle_wait_s=0.001), operation)
    assert operation.calls == 3


async def test_retry_never_repeats_permanent_errors() -> None:
    operation = Flaky([client_error("AccessDenied", 403), client_error("SlowDown", 503)])
    with pytest.raises(ClientError, match="AccessDenied"):
        await attempt(RetryPolicy(4, 5.0, base_wait_s=0.001, throttle_wait_s=0.001), operation)
    assert operation.calls == 1


async def test_non_idempotent_call_is_not_retried_after_ambiguous_failure() -> None:
    operation = Flaky([ReadTimeoutError(endpoint_url="u")])
    with pytest.raises(ReadTimeoutError):
        await attempt(
            RetryPolicy(4, 5.0, base_wait_s=0.001, throttle_wait_s=0.001),
            operation,
            idempotent=False,
        )
    assert operation.calls == 1
    operation = Flaky([client_error("SlowDown", 503)])
    assert (
        await attempt(
            RetryPolicy(4, 5.0, base_wait_s=0.001, throttle_wait_s=0.001),
            operation,
            idempotent=False,
        )
        == "ok"
    )


async def test_retry_stops_at_the_deadline() -> None:
    operation = Flaky([client_error("SlowDown", 503)] * 100)
    with pytest.raises(ClientError):
        await attempt(RetryPolicy(100, 0.3, base_wait_s=0.05, max_wait_s=0.1), operation)
    # 99 full-jitter waits from [0, 100 ms] add up to about 5 s: far more than 0.3 s.
    assert 2 <= operation.calls < 100


def throttled() -> ClientError:
    return client_error("SlowDown", 503)


def test_backoff_is_full_jitter_with_a_longer_base_for_throttling() -> None:
    policy = RetryPolicy(4, 20.0)
    transient = [policy.backoff_s(client_error("InternalError", 500), 1) for _ in range(4000)]
    throttling = [policy.backoff_s(throttled(), 1) for _ in range(4000)]
    second = [policy.backoff_s(throttled(), 2) for _ in range(4000)]
    assert 0.0 <= min(transient) < 0.02
    assert max(transient) <= BASE_WAIT_S
    assert max(throttling) <= THROTTLE_WAIT_S
    assert max(second) <= 2 * THROTTLE_WAIT_S
    assert 0.4 < sum(throttling) / len(throttling) < 0.6  # uniform over [0, 1 s]
    assert 0.9 < sum(second) / len(second) < 1.1


def test_a_300ms_burst_of_503s_is_survived_as_often_as_the_sdks_do() -> None:
    # With 3 attempts a write survives the burst when its two waits add up past 300 ms;
    # botocore's standard mode does about 98% of the time, the old 50 ms base never did.
    policy = RetryPolicy(3, 20.0)
    runs = 10_000
    survived = sum(
        policy.backoff_s(throttled(), 1) + policy.backoff_s(throttled(), 2) >= 0.3
        for _ in range(runs)
    )
    assert survived / runs >= 0.95
