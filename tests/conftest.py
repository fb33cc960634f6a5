from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.routing import ResidencyRouter

pytest_plugins = ["router.testing"]

ROOT = Path(__file__).resolve().parent.parent
REGIONS_FILE = ROOT / "regions.yaml"


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
