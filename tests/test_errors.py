"""The error contract: bad input is InvalidArgumentError, wrong types TypeError."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

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


class Sneaky(str):
    """A str whose formatting and printing say something else than its characters."""

    def __str__(self) -> str:
        return "org-stars"

    def __format__(self, spec: str) -> str:
        return "ok/\x01ctrl\ufffe"


async def test_str_subclasses_are_used_for_their_characters_only(
    residency_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    receipt = await residency_router.put(Sneaky("org-acme"), Sneaky("doc.txt"), b"x")
    assert receipt.region is Region.EU
    assert receipt.key == "orgs/org-acme/files/doc.txt"
    residency_world.assert_stored_in("org-acme", "doc.txt", "eu")
    assert residency_world.all_versions("us") == []


@pytest.mark.parametrize(
    "now",
    [
        pytest.param(datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))), id="max-west"),
        pytest.param(datetime.min.replace(tzinfo=timezone(timedelta(hours=1))), id="min-east"),
        pytest.param(datetime.min.replace(tzinfo=UTC), id="min-utc"),
    ],
)
async def test_instants_out_of_range_are_invalid_arguments(
    residency_router: ResidencyRouter, now: datetime
) -> None:
    with pytest.raises(InvalidArgumentError, match="between"):
        await residency_router.purge_expired(now=now)


@pytest.mark.parametrize("endpoint", [123, b"/v1/chat/completions", None, ["/v1/x"]])
async def test_endpoints_of_the_wrong_type_are_type_errors(
    residency_router: ResidencyRouter, endpoint: object
) -> None:
    with pytest.raises(TypeError, match="endpoint"):
        await residency_router.route_processing("org-acme", endpoint)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="endpoint"):
        await residency_router.record_exchange(
            "org-acme",
            endpoint,  # type: ignore[arg-type]
            request=b"q",
            response=b"a",
        )
    if endpoint is not None:
        with pytest.raises(TypeError, match="endpoint"):
            await residency_router.explain(
                "org-acme",
                operation="route_processing",
                endpoint=endpoint,  # type: ignore[arg-type]
            )


async def test_erasing_in_a_region_the_map_does_not_have_is_an_invalid_argument(
    residency_world: ResidencyWorld, tmp_path: Path
) -> None:
    data = yaml.safe_load(residency_world.regions_file.read_text())
    del data["regions"]["kr"]
    data["orgs"] = {k: v for k, v in data.get("orgs", {}).items() if v["region"] != "kr"}
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(data))
    async with ResidencyRouter.from_settings(residency_world.settings(regions_file=path)) as router:
        with pytest.raises(InvalidArgumentError, match="not in the region map"):
            await router.erase_org("org-gone", region="kr")
