from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from router.config import RouterSettings
from router.routing import ResidencyRouter
from router.types import Region

if TYPE_CHECKING:
    from router.testing import LocalS3Process, ResidencyWorld

pytest_plugins = ["router.testing"]

ROOT = Path(__file__).resolve().parent.parent

# One static org per residency region in the shipped regions.yaml.
ORG_BY_REGION = {
    Region.US: "org-stars",
    Region.EU: "org-acme",
    Region.JP: "org-kiku",
    Region.CA: "org-lark",
    Region.KR: "org-hana",
    Region.SG: "org-merlion",
    Region.IN: "org-lotus",
}
REGIONS_FILE = ROOT / "regions.yaml"


def pytest_report_header(config: pytest.Config) -> str:
    # .ci/run runs the suite once per transport; the header says which run this is, and
    # tests/test_lean.py checks that the fixtures' router really uses it.
    chosen = os.environ.get("RESIDENCY_TRANSPORT")
    source = "RESIDENCY_TRANSPORT" if chosen else "default"
    return f"residency transport: {chosen or 'lean'} ({source})"


@pytest.fixture(scope="session")
def child_moto() -> Iterator[LocalS3Process]:
    """A moto server in a child process (one per xdist worker), for tests that time things.

    The in-process server's threads share this process's GIL with the test's event loop: on
    a busy machine, while moto copies a large object, the loop can stall for seconds, and a
    short timeout then fires on a loopback connect (CI saw 1.5 and 3 s), and the server's
    accept loop falls behind a soak's 200 tasks (a connect took over 5 s). Moves, scheduled
    changes and the soak run against this server instead.
    """
    from router.testing import LocalS3Process, isolated_aws_environment

    with isolated_aws_environment(), LocalS3Process() as server:
        yield server


@pytest.fixture
def process_world(child_moto: LocalS3Process, tmp_path: Path) -> ResidencyWorld:
    """A fresh seven-region world on the child-process moto server."""
    from router.testing import ResidencyWorld

    child_moto.reset()
    return ResidencyWorld.provision(child_moto.endpoint_url, REGIONS_FILE, tmp_path)


class RequestLog:
    """Counts the HTTP requests a router's S3 clients send (botocore before-send)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def __call__(self, request: Any, **_: Any) -> None:
        self.requests.append((request.method, request.url))

    def __len__(self) -> int:
        return len(self.requests)


@pytest.fixture
def s3_requests(residency_router: ResidencyRouter) -> RequestLog:
    log = RequestLog()
    residency_router.storage.register("before-send.s3", log)
    return log


@pytest.fixture
def world_environment(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> ResidencyWorld:
    """Point RESIDENCY_* settings (as the CLI reads them) at ``residency_world``."""
    monkeypatch.setenv("RESIDENCY_ENDPOINT_URL", residency_world.endpoint_url)
    monkeypatch.setenv("RESIDENCY_REGIONS_FILE", str(residency_world.regions_file))
    return residency_world


def without_bucket_default_encryption(world: ResidencyWorld, *regions: str) -> None:
    """Remove the buckets' default SSE-KMS, so only the router's own headers can encrypt.

    With the default in place an object written without SSE headers would still come out
    under the region key, and a test of the router's encryption would prove nothing.
    """
    for region in regions or tuple(cfg.region.value for cfg in world.region_map):
        world.s3(region).delete_bucket_encryption(Bucket=world.bucket(region))


@pytest.fixture
def key_arn_map(tmp_path: Path) -> Path:
    """The shipped map with key ARNs instead of aliases: nothing to resolve at start."""
    text = REGIONS_FILE.read_text().replace(":alias/residency-", ":key/00000000-0000-4000-8000-")
    path = tmp_path / "regions.yaml"
    path.write_text(text)
    return path


def unverified(regions_file: Path, endpoint_url: str, **overrides: Any) -> RouterSettings:
    """Settings for a router against a stub endpoint: no verification, short retries."""
    values: dict[str, Any] = {"verify_on_start": "off", "retry_deadline_s": 2}
    values.update(overrides)
    return RouterSettings(regions_file=regions_file, endpoint_url=endpoint_url, **values)
