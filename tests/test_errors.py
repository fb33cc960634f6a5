"""The error contract: bad input is InvalidArgumentError, wrong types TypeError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime

import pytest

from router.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidKeyError,
    ResidencyError,
)
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import Region
from tests.conftest import RequestLog

MiB = 1024 * 1024
Call = Callable[[ResidencyRouter], Awaitable[object]]


def test_invalid_argument_error_is_a_residency_error_and_a_value_error() -> None:
    assert issubclass(InvalidArgumentError, ResidencyError)
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InvalidKeyError, InvalidArgumentError)
    assert not issubclass(ConfigError, InvalidArgumentError)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        pytest.param(
            lambda r: r.purge_expired(now=datetime(2026, 1, 1)),
            InvalidArgumentError,
            "timezone",
            id="naive-now",
        ),
        pytest.param(
            lambda r: r.explain("org-acme", operation="fly"),
            InvalidArgumentError,
            "operation",
            id="operation",
        ),
        pytest.param(
            lambda r: r.erase_org("org-acme", region="mars"),
            InvalidArgumentError,
            "residency region",
            id="region",
        ),
        pytest.param(
            lambda r: r.put("org-acme", "k", b"x", data_class="nope"),
            InvalidArgumentError,
            "data class",
            id="data-class",
        ),
        pytest.param(
            lambda r: r.put("org-acme", "k", b"x", metadata={"a b": "v"}),
            InvalidArgumentError,
            "metadata",
            id="metadata-name",
        ),
        pytest.param(
            lambda r: r.put("org-acme", "k", b"x", content_type="a\r\nb"),
            InvalidArgumentError,
            "content_type",
            id="content-type",
        ),
    ],
)
async def test_bad_arguments_are_invalid_argument_errors_not_key_errors(
    residency_router: ResidencyRouter,
    s3_requests: RequestLog,
    call: Call,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match) as info:
        await call(residency_router)
    assert not isinstance(info.value, InvalidKeyError)
    assert len(s3_requests) == 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        pytest.param(lambda r: r.purge_expired(now=date(2026, 1, 1)), "datetime", id="date-now"),
        pytest.param(
            lambda r: r.put("org-acme", "k", b"x", metadata=[("a", "b")]), "metadata", id="pairs"
        ),
        pytest.param(lambda r: r.put("org-acme", "k", 123), "body", id="int-body"),
        pytest.param(lambda r: r.put("org-acme", "k", "text"), "body", id="str-body"),
        pytest.param(lambda r: r.put(42, "k", b"x"), "org id", id="int-org"),
        pytest.param(lambda r: r.get("org-acme", 42), "key", id="int-key"),
        pytest.param(
            lambda r: r.put("org-acme", "k", b"x", content_type=1), "content_type", id="ct"
        ),
        pytest.param(lambda r: r.put("org-acme", "k", b"x", data_class=3), "data class", id="dc"),
        pytest.param(lambda r: r.explain("org-acme", operation=None), "operation", id="op"),
        pytest.param(
            lambda r: r.record_exchange(
                "org-acme", "/v1/chat/completions", request="q", response=b""
            ),
            "request",
            id="str-request",
        ),
    ],
)
async def test_wrong_python_types_raise_type_error(
    residency_router: ResidencyRouter, s3_requests: RequestLog, call: Call, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        await call(residency_router)
    assert len(s3_requests) == 0


async def test_listing_with_a_non_str_prefix_is_a_type_error(
    residency_router: ResidencyRouter,
) -> None:
    with pytest.raises(TypeError, match="prefix"):
        async for _ in residency_router.list("org-acme", prefix=None):  # type: ignore[arg-type]
            pass


async def test_body_beyond_the_part_limit_is_invalid_argument_and_leaves_no_upload(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3's 10,000-part limit, lowered so that three 5 MiB parts cross it.
    monkeypatch.setattr("router._s3.multipart.MAX_PARTS", 2)
    settings = residency_world.settings(
        multipart_threshold=5 * MiB, multipart_part_size=5 * MiB, multipart_concurrency=1
    )

    async def three_parts() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"p" * (5 * MiB)

    async with ResidencyRouter.from_settings(settings) as router:
        with pytest.raises(InvalidArgumentError, match="multipart_part_size"):
            await router.put("org-acme", "huge.bin", three_parts())
    s3 = residency_world.s3("eu")
    assert s3.list_multipart_uploads(Bucket=residency_world.bucket("eu")).get("Uploads", []) == []
    for region in Region:
        assert residency_world.all_versions(region) == []
