from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from router._aws import Transport
from router.config import RouterSettings
from router.errors import ConfigError


def test_settings_defaults_match_design() -> None:
    settings = RouterSettings()
    assert settings.regions_file == Path("regions.yaml")
    assert settings.endpoint_url is None
    assert settings.verify_on_start == "strict"
    assert (settings.connect_timeout_s, settings.read_timeout_s) == (5, 30)
    assert settings.max_pool_connections == 64
    assert (settings.cache_ttl_s, settings.negative_cache_ttl_s) == (60, 5)
    assert settings.cache_max_orgs == 100_000
    assert settings.directory_table is None
    assert settings.directory_timeout_s == 2
    assert (settings.retry_max_attempts, settings.retry_deadline_s) == (4, 20)
    assert settings.multipart_threshold == 16 * 1024 * 1024
    assert settings.multipart_part_size == 8 * 1024 * 1024
    assert settings.multipart_concurrency == 4
    assert settings.audit_hmac_secret is None


def test_settings_read_residency_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESIDENCY_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("RESIDENCY_VERIFY_ON_START", "quarantine")
    monkeypatch.setenv("RESIDENCY_MULTIPART_CONCURRENCY", "8")
    monkeypatch.setenv("RESIDENCY_AUDIT_HMAC_SECRET", "s3cret")
    settings = RouterSettings()
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    assert settings.verify_on_start == "quarantine"
    assert settings.multipart_concurrency == 8
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:5000", "http://localhost:4566", "http://[::1]:9000", "https://s3.example"],
)
def test_settings_accept_loopback_http_or_https(url: str) -> None:
    assert RouterSettings(endpoint_url=url).endpoint_url == url


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("endpoint_url", "http://10.0.0.5:9000", id="plain-http-not-loopback"),
        pytest.param("endpoint_url", "ftp://127.0.0.1", id="not-http"),
        pytest.param("endpoint_url", "http://user:pw@127.0.0.1:1", id="credentials"),
        pytest.param("verify_on_start", "sometimes", id="verify-mode"),
        pytest.param("connect_timeout_s", 0, id="zero-timeout"),
        pytest.param("multipart_part_size", 1024, id="part-below-5mib"),
        pytest.param("multipart_concurrency", 0, id="no-concurrency"),
        pytest.param("retry_max_attempts", 0, id="no-attempts"),
        pytest.param("cache_max_orgs", 0, id="empty-cache"),
        pytest.param("colour", "blue", id="unknown-field"),
    ],
)
def test_settings_name_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        RouterSettings(**{field: value})  # type: ignore[arg-type]


def test_settings_refuse_threshold_above_buffer_bound() -> None:
    with pytest.raises(ValidationError, match="multipart_threshold"):
        RouterSettings(
            multipart_threshold=64 * 1024 * 1024,
            multipart_part_size=8 * 1024 * 1024,
            multipart_concurrency=2,
        )


@pytest.mark.parametrize(
    "value",
    ["http://127.0.0.1:9000\n", "http://127.0.0.1:9000\t", "https://s3.internal\n/x"],
)
def test_endpoint_urls_with_control_characters_are_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="endpoint_url"):
        RouterSettings(endpoint_url=value)


@pytest.mark.parametrize(
    ("field", "value", "secret"),
    [
        pytest.param("endpoint_url", "http://admin:hunter2@127.0.0.1:9000", "hunter2", id="url"),
        pytest.param("proxy_url", "http://user:hunter2@proxy.example:3128", "hunter2", id="proxy"),
        pytest.param("endpoint_url", "ftp://key:hunter2@host", "hunter2", id="scheme"),
        pytest.param("audit_hmac_secret", 12345678901234, "12345678901234", id="hmac-wrong-type"),
    ],
)
def test_settings_errors_never_repeat_the_refused_value(
    field: str, value: object, secret: str
) -> None:
    with pytest.raises(ValidationError) as info:
        RouterSettings(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)
    assert secret not in str(info.value)
    assert secret not in repr(info.value.errors(include_input=False))


def test_plain_http_sidecar_is_refused_with_how_to_opt_in() -> None:
    with pytest.raises(ValidationError) as info:
        RouterSettings(endpoint_url="http://localstack:4566")
    assert "allow_plain_http" in str(info.value)
    assert "RESIDENCY_ALLOW_PLAIN_HTTP" in str(info.value)


@pytest.mark.parametrize("url", ["http://localstack:4566", "http://moto:5000", "http://10.0.0.5"])
def test_allow_plain_http_admits_a_sidecar(url: str) -> None:
    settings = RouterSettings(endpoint_url=url, allow_plain_http=True)
    assert settings.endpoint_url == url
    # The transport every client is made from accepts it too, and refuses it without.
    assert Transport.from_settings(settings).endpoint_url == url
    with pytest.raises(ConfigError, match="allow_plain_http"):
        Transport(endpoint_url=url)


def test_allow_plain_http_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESIDENCY_ALLOW_PLAIN_HTTP", "true")
    monkeypatch.setenv("RESIDENCY_ENDPOINT_URL", "http://moto:5000")
    assert RouterSettings().endpoint_url == "http://moto:5000"


def test_allow_plain_http_does_not_loosen_other_endpoint_rules() -> None:
    for bad in ("ftp://moto:5000", "http://user:pw@moto:5000", "http://moto:5000\n"):
        with pytest.raises(ValidationError, match="endpoint_url"):
            RouterSettings(endpoint_url=bad, allow_plain_http=True)
    with pytest.raises(ValidationError, match="proxy_url"):
        RouterSettings(proxy_url="http://proxy.example:3128", allow_plain_http=True)


SERVICE_ENV = """\
# the service's own variables, beside the router's
DATABASE_URL=postgres://app:pw@db/app
SERVICE_API_KEYS={"k1": "org-acme"}
RESIDENCY_CACHE_TTL_S=7
RESIDENCY_ENDPOINT_URL=http://127.0.0.1:4566
"""


def test_dotenv_file_is_read_beside_a_services_own_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(SERVICE_ENV)
    settings = RouterSettings()
    assert settings.cache_ttl_s == 7
    assert settings.endpoint_url == "http://127.0.0.1:4566"
    # The environment wins over the file, arguments over both.
    monkeypatch.setenv("RESIDENCY_CACHE_TTL_S", "9")
    assert RouterSettings().cache_ttl_s == 9
    assert RouterSettings(cache_ttl_s=11).cache_ttl_s == 11


def test_dotenv_file_can_be_named_or_disabled(tmp_path: Path) -> None:
    env = tmp_path / "router.env"
    env.write_text(SERVICE_ENV)
    assert RouterSettings(_env_file=env).cache_ttl_s == 7
    assert RouterSettings(_env_file=None).cache_ttl_s == 60


@pytest.mark.parametrize(
    ("line", "field"),
    [
        pytest.param("RESIDENCY_CACHE_TTLS=7", "residency_cache_ttls", id="misspelt"),
        pytest.param("RESIDENCY_CACHE_TTL_S=-1", "cache_ttl_s", id="invalid"),
        pytest.param("residency_verify_on_start=sometimes", "verify_on_start", id="lower-case"),
    ],
)
def test_dotenv_residency_entries_are_still_validated_strictly(
    tmp_path: Path, line: str, field: str
) -> None:
    env = tmp_path / ".env"
    env.write_text(SERVICE_ENV + line + "\n")
    with pytest.raises(ValidationError) as info:
        RouterSettings(_env_file=env)
    assert field in str(info.value)
