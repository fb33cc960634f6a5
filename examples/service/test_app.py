from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from examples.service.app import create_app
from router.testing import ResidencyWorld


@pytest.fixture
def client(residency_world: ResidencyWorld) -> Iterator[TestClient]:
    with TestClient(create_app(residency_world.settings())) as test_client:
        yield test_client


def test_upload_lands_in_the_org_region(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    body = b"quarterly numbers" * 1000
    response = client.put("/orgs/org-acme/files/reports/q3.txt", content=body)
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["region"] == "eu"
    assert receipt["sha256"] == hashlib.sha256(body).hexdigest()
    residency_world.assert_stored_in("org-acme", "reports/q3.txt", "eu")
    residency_world.assert_nothing_outside("eu")

    download = client.get("/orgs/org-acme/files/reports/q3.txt")
    assert download.status_code == 200
    assert download.content == body

    deleted = client.delete("/orgs/org-acme/files/reports/q3.txt")
    assert deleted.json() == {"versions_deleted": 1}
    assert client.get("/orgs/org-acme/files/reports/q3.txt").status_code == 404


def test_errors_map_to_statuses_and_write_nothing(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    unknown = client.put("/orgs/org-nobody/files/a.txt", content=b"x")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "UnknownOrgError"
    bad = client.put("/orgs/org-acme/files/bad%00key.txt", content=b"x")
    assert bad.status_code == 400
    assert bad.json()["error"] == "InvalidKeyError"
    for region in ("us", "eu", "jp", "ca", "kr", "sg", "in"):
        assert residency_world.all_versions(region) == []


def test_chat_is_routed_and_recorded_per_policy(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    pinned = client.post("/orgs/org-acme/chat", content=b'{"prompt": "hi"}')
    assert pinned.status_code == 200
    assert pinned.json()["route"] == "https://eu.example.invalid/v1/chat/completions"
    assert pinned.json()["recorded"] is True
    keys = [v["Key"] for v in residency_world.all_versions("eu")]
    assert any(k.startswith("orgs/org-acme/inputs_outputs/") for k in keys)

    zdr = client.post("/orgs/org-kiku/chat", content=b'{"prompt": "secret"}')
    assert zdr.json()["recorded"] is False
    assert residency_world.all_versions("jp") == []
