from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.testclient import TestClient

from examples.service import app as service_module
from examples.service.app import ApiKeys, ServiceSettings, create_app
from router.testing import ResidencyWorld

ACME_KEY = "acme-key-0123456789abcdef"  # org-acme: eu
KIKU_KEY = "kiku-key-0123456789abcdef"  # org-kiku: jp, zero data retention
ACME = {"Authorization": f"Bearer {ACME_KEY}"}
KIKU = {"X-API-Key": KIKU_KEY}
REGIONS = ("us", "eu", "jp", "ca", "kr", "sg", "in")


def service_settings() -> ServiceSettings:
    return ServiceSettings(api_keys={ACME_KEY: "org-acme", KIKU_KEY: "org-kiku"})


@pytest.fixture
def client(residency_world: ResidencyWorld) -> Iterator[TestClient]:
    with TestClient(create_app(residency_world.settings(), service_settings())) as test_client:
        yield test_client


def test_upload_lands_in_the_org_region_with_its_content_type(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    body = b"quarter,revenue\nq3,17\n" * 1000
    response = client.put(
        "/files/reports/q3.csv", content=body, headers={**ACME, "Content-Type": "text/csv"}
    )
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["region"] == "eu"
    assert receipt["key"] == "reports/q3.csv"
    assert receipt["sha256"] == hashlib.sha256(body).hexdigest()
    residency_world.assert_stored_in("org-acme", "reports/q3.csv", "eu")
    residency_world.assert_nothing_outside("eu")
    head = residency_world.s3("eu").head_object(
        Bucket=residency_world.bucket("eu"), Key="orgs/org-acme/files/reports/q3.csv"
    )
    assert head["ContentType"] == "text/csv"

    download = client.get("/files/reports/q3.csv", headers=ACME)
    assert download.status_code == 200
    assert download.content == body
    assert download.headers["x-content-type-options"] == "nosniff"

    deleted = client.delete("/files/reports/q3.csv", headers=ACME)
    assert deleted.json() == {"versions_deleted": 1}
    assert client.get("/files/reports/q3.csv", headers=ACME).status_code == 404


def test_download_answers_with_the_uploaded_content_type(client: TestClient) -> None:
    headers = {**ACME, "Content-Type": "text/csv; charset=utf-8"}
    assert client.put("/files/a.csv", content=b"a,b\n", headers=headers).status_code == 201
    download = client.get("/files/a.csv", headers=ACME)
    assert download.status_code == 200
    assert download.headers["content-type"] == "text/csv; charset=utf-8"


def test_download_of_an_upload_without_content_type_is_octet_stream(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    assert client.put("/files/blob", content=b"\x00\x01", headers=ACME).status_code == 201
    head = residency_world.s3("eu").head_object(
        Bucket=residency_world.bucket("eu"), Key="orgs/org-acme/files/blob"
    )
    assert head["ContentType"] == "application/octet-stream"  # not S3's binary/octet-stream
    download = client.get("/files/blob", headers=ACME)
    assert download.content == b"\x00\x01"
    assert download.headers["content-type"] == "application/octet-stream"


def test_requests_without_a_known_key_are_refused_and_write_nothing(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    refused = [
        {},
        {"Authorization": "Bearer not-a-key-of-this-service"},
        {"Authorization": f"Basic {ACME_KEY}"},
        {"Authorization": "Bearer "},
        {"X-API-Key": ACME_KEY[:-1]},
        {"X-API-Key": ""},
        {"Authorization": f"Bearer {ACME_KEY}", "X-API-Key": KIKU_KEY},
    ]
    for headers in refused:
        for method, path in [
            ("PUT", "/files/a.txt"),
            ("GET", "/files/a.txt"),
            ("GET", "/files"),
            ("DELETE", "/files/a.txt"),
            ("POST", "/chat"),
        ]:
            response = client.request(method, path, content=b"x", headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
            assert ACME_KEY not in response.text
            assert KIKU_KEY not in response.text
    for region in REGIONS:
        assert residency_world.all_versions(region) == []


def test_one_org_cannot_read_list_or_delete_another_orgs_files(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    assert client.put("/files/secret.txt", content=b"acme only", headers=ACME).status_code == 201
    # The same key in the other org is the other org's own file, which does not exist.
    assert client.get("/files/secret.txt", headers=KIKU).status_code == 404
    assert client.get("/files", headers=KIKU).json() == {"files": [], "truncated": False}
    assert client.delete("/files/secret.txt", headers=KIKU).json() == {"versions_deleted": 0}
    # Naming the other org in the path reaches nothing: no route takes an org.
    assert client.get("/orgs/org-acme/files/secret.txt", headers=KIKU).status_code == 404
    escaped = client.get("/files/..%2F..%2Forg-acme%2Ffiles%2Fsecret.txt", headers=KIKU)
    assert escaped.status_code in (400, 404)
    assert b"acme only" not in escaped.content

    listed = client.get("/files", headers=ACME).json()
    assert [f["key"] for f in listed["files"]] == ["secret.txt"]
    assert client.get("/files/secret.txt", headers=ACME).content == b"acme only"
    residency_world.assert_stored_in("org-acme", "secret.txt", "eu")
    assert residency_world.all_versions("jp") == []


def test_health_is_ok_with_every_region_ok(client: TestClient) -> None:
    response = client.get("/health")  # no key needed: load balancers ask
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["regions"]) == set(REGIONS)
    assert {r["state"] for r in body["regions"].values()} == {"ok"}


def test_health_is_503_with_the_quarantined_region_and_no_reason(
    residency_world: ResidencyWorld, tmp_path: Path
) -> None:
    # A map whose "in" bucket does not exist: verification quarantines that region at
    # start-up, and the world itself is left as it was.
    data = yaml.safe_load(residency_world.regions_file.read_text(encoding="utf-8"))
    data["regions"]["in"]["bucket"] = "residency-example-in-missing"
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    settings = residency_world.settings(regions_file=regions_file, verify_on_start="quarantine")
    with TestClient(create_app(settings, service_settings())) as client:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["regions"]["in"]["state"] == "quarantined"
    assert all(body["regions"][r]["state"] == "ok" for r in REGIONS if r != "in")
    assert "residency-example-in-missing" not in response.text
    assert residency_world.key_arn("in") not in response.text


def test_errors_map_to_statuses_and_write_nothing(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    nobody_key = "nobody-key-0123456789"
    settings = ServiceSettings(api_keys={nobody_key: "org-nobody"})
    with TestClient(create_app(residency_world.settings(), settings)) as nobody:
        unknown = nobody.put("/files/a.txt", content=b"x", headers={"X-API-Key": nobody_key})
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "UnknownOrgError"
    bad = client.put("/files/bad%00key.txt", content=b"x", headers=ACME)
    assert bad.status_code == 400
    assert bad.json()["error"] == "InvalidKeyError"
    bad_type = client.put(
        "/files/a.txt", content=b"x", headers={**ACME, "Content-Type": "text/plain\x7f"}
    )
    assert bad_type.status_code == 400
    for region in REGIONS:
        assert residency_world.all_versions(region) == []


def test_chat_is_routed_and_recorded_per_policy(
    client: TestClient, residency_world: ResidencyWorld
) -> None:
    pinned = client.post("/chat", content=b'{"prompt": "hi"}', headers=ACME)
    assert pinned.status_code == 200
    assert pinned.json()["route"] == "https://eu.example.invalid/v1/chat/completions"
    assert pinned.json()["recorded"] is True
    keys = [v["Key"] for v in residency_world.all_versions("eu")]
    assert any(k.startswith("orgs/org-acme/inputs_outputs/") for k in keys)

    zdr = client.post("/chat", content=b'{"prompt": "secret"}', headers=KIKU)
    assert zdr.json()["recorded"] is False
    assert residency_world.all_versions("jp") == []


def test_module_level_app_reads_its_settings_from_the_environment_at_start_up(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(service_module.app, Starlette)
    monkeypatch.setenv("RESIDENCY_REGIONS_FILE", str(residency_world.regions_file))
    monkeypatch.setenv("RESIDENCY_ENDPOINT_URL", residency_world.endpoint_url)
    monkeypatch.setenv("SERVICE_API_KEYS", json.dumps({ACME_KEY: "org-acme"}))
    with TestClient(service_module.app) as client:
        assert client.put("/files/env.txt", content=b"x", headers=ACME).status_code == 201
        assert client.get("/files/env.txt", headers=ACME).content == b"x"
        assert client.get("/files/env.txt", headers=KIKU).status_code == 401
    residency_world.assert_stored_in("org-acme", "env.txt", "eu")


@pytest.mark.parametrize(
    "table",
    [
        pytest.param({}, id="no-keys"),
        pytest.param({"short-secret": "org-acme"}, id="short-key"),
        pytest.param({ACME_KEY: "org acme/../x"}, id="bad-org-id"),
    ],
)
def test_service_settings_refuse_weak_tables_without_repeating_a_key(
    table: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_API_KEYS", json.dumps(table))
    with pytest.raises(ValidationError) as raised:
        ServiceSettings()
    for key in table:
        assert key not in str(raised.value)


def test_service_settings_ignore_other_variables_and_hide_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVICE_API_KEYS", json.dumps({ACME_KEY: "org-acme"}))
    monkeypatch.setenv("SERVICE_UNRELATED", "1")
    monkeypatch.setenv("RESIDENCY_CACHE_TTL_S", "1")
    settings = ServiceSettings()
    assert settings.api_keys == {ACME_KEY: "org-acme"}
    assert ACME_KEY not in repr(settings)
    assert ACME_KEY not in repr(ApiKeys(settings.api_keys))


def test_api_keys_find_each_org_and_no_other() -> None:
    keys = ApiKeys({ACME_KEY: "org-acme", KIKU_KEY: "org-kiku", "acme-second-key-0123": "org-acme"})
    assert keys.org_of(ACME_KEY) == "org-acme"
    assert keys.org_of("acme-second-key-0123") == "org-acme"
    assert keys.org_of(KIKU_KEY) == "org-kiku"
    assert keys.org_of(ACME_KEY + " ") is None
    assert keys.org_of("") is None
