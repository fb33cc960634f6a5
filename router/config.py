"""RouterSettings: the router's settings, from arguments or RESIDENCY_* environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller parts (except the last one)
MAX_PARTS = 10_000

PositiveFloat = Annotated[float, Field(gt=0)]

VerifyMode = Literal["strict", "quarantine", "off"]
TransportMode = Literal["lean", "botocore"]


def is_loopback_host(host: str) -> bool:
    """Return True when ``host`` names this machine only (localhost or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def endpoint_url_problem(value: str, *, allow_plain_http: bool = False) -> str | None:
    """What is wrong with an endpoint URL for AWS clients, or None.

    https is always fine; plain http only for a loopback host, or for any host when
    ``allow_plain_http`` is set (a test sidecar such as ``http://moto:5000``).
    """
    if not value.isprintable() or any(c.isspace() for c in value):
        return "endpoint_url must not contain spaces, tabs, newlines or control characters"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "endpoint_url must be an http(s) URL with a host"
    if parts.username or parts.password:
        return "endpoint_url must not carry credentials"
    if parts.scheme == "http" and not allow_plain_http and not is_loopback_host(parts.hostname):
        return (
            "endpoint_url may use plain http only for a loopback host "
            f"(127.0.0.1, ::1, localhost); use https for {parts.hostname!r}, or, for a "
            "test sidecar only, opt in with allow_plain_http=True "
            "(RESIDENCY_ALLOW_PLAIN_HTTP=true)"
        )
    return None


def proxy_url_problem(value: str) -> str | None:
    """What is wrong with a proxy URL, or None (https, or plain http on loopback).

    The value may carry proxy credentials: the message never repeats it.
    """
    if not value.isprintable() or any(c.isspace() for c in value):
        return "proxy_url must not contain spaces, tabs, newlines or control characters"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "proxy_url must be an https URL with a host"
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        return (
            "proxy_url must use https (plain http only for a loopback proxy): a plain "
            "http proxy would read every request's headers and body"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "proxy_url must name only scheme, host and port"
    return None


ENV_PREFIX = "RESIDENCY_"


class _PrefixedDotEnv(PydanticBaseSettingsSource):
    """The ``.env`` source, keeping only this project's entries.

    A service's ``.env`` holds its own variables too (``DATABASE_URL``...): those are not
    ours and are ignored. Every ``RESIDENCY_`` entry is kept, so a misspelt one is still
    refused (``extra="forbid"``) instead of being silently dropped.
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        prefix = ENV_PREFIX.lower()
        return {
            name: value
            for name, value in self._inner().items()
            if name in fields or name.lower().startswith(prefix)
        }


class RouterSettings(BaseSettings):
    """Settings of one router; every field can come from a ``RESIDENCY_<FIELD>`` variable.

    Constructing it with a bad value raises pydantic's ``ValidationError``, which names the field.
    Values come, in this order of precedence, from arguments, the environment, then a
    ``.env`` file in the working directory (``_env_file=`` names another, ``None`` none);
    entries of the ``.env`` file without the ``RESIDENCY_`` prefix are ignored.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
        validate_default=True,
        # An error never repeats the value it refuses: a URL may carry credentials, and
        # audit_hmac_secret is a secret.
        hide_input_in_errors=True,
    )

    regions_file: Path = Path("regions.yaml")
    allow_plain_http: bool = False
    """Allow ``endpoint_url`` to be plain http to a host other than loopback (test sidecars)."""
    endpoint_url: str | None = None
    verify_on_start: VerifyMode = "strict"
    connect_timeout_s: PositiveFloat = 5.0
    read_timeout_s: PositiveFloat = 30.0
    max_pool_connections: Annotated[int, Field(ge=1, le=4096)] = 64
    cache_ttl_s: Annotated[float, Field(ge=0)] = 60.0
    negative_cache_ttl_s: Annotated[float, Field(ge=0)] = 5.0
    cache_max_orgs: Annotated[int, Field(ge=1)] = 100_000
    directory_table: str | None = None
    directory_aws_region: str | None = None  # default: the default processing region's
    directory_timeout_s: PositiveFloat = 2.0
    retry_max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    retry_deadline_s: PositiveFloat = 20.0
    multipart_threshold: Annotated[int, Field(ge=MIN_PART_SIZE)] = 16 * MiB
    multipart_part_size: Annotated[int, Field(ge=MIN_PART_SIZE, le=5 * 1024 * MiB)] = 8 * MiB
    multipart_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    audit_hmac_secret: SecretStr | None = None
    clock_skew_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """Margin added to ``cache_ttl_s`` before a scheduled org change takes effect."""
    move_concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    """Server-side copies (and checks) a move runs at once."""
    audit_concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    """Object checks a residency audit runs at once per region."""
    purge_interval_s: Annotated[float, Field(gt=0)] = 3600.0
    """How often ``purge_expired`` runs; the audit flags exchanges kept longer past expiry."""
    proxy_url: str | None = None
    """The only proxy the router's clients use (environment proxies are always ignored)."""
    transport: TransportMode = "lean"
    """How single-request puts, gets, streams and heads reach S3: ``lean`` (botocore's signer
    over one aiohttp session per region) or ``botocore`` (aiobotocore's client for all)."""

    @property
    def change_delay_s(self) -> float:
        """How far ahead a scheduled org change takes effect.

        ``cache_ttl_s + clock_skew_s``, plus the longest the conditional write of the
        record can take (two directory timeouts), since the instant is chosen before it.
        """
        return self.cache_ttl_s + self.clock_skew_s + 2 * self.directory_timeout_s

    @property
    def longest_request_s(self) -> float:
        """The longest one write or read can take.

        Every retry up to ``retry_deadline_s``, then a last attempt that connects and waits
        for its answer in full.
        """
        return self.retry_deadline_s + self.connect_timeout_s + self.read_timeout_s

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "":
            return None
        # allow_plain_http is declared before endpoint_url, so it is validated first.
        problem = endpoint_url_problem(
            value, allow_plain_http=info.data.get("allow_plain_http") is True
        )
        if problem is not None:
            raise ValueError(problem)
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the ``RESIDENCY_`` entries of ``.env``."""
        return (
            init_settings,
            env_settings,
            _PrefixedDotEnv(settings_cls, dotenv_settings),
            file_secret_settings,
        )

    @field_validator("proxy_url")
    @classmethod
    def _check_proxy_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        problem = proxy_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value.rstrip("/")

    @field_validator("directory_table")
    @classmethod
    def _check_table(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _check_multipart(self) -> Self:
        buffered = self.multipart_part_size * self.multipart_concurrency
        if self.multipart_threshold > buffered:
            raise ValueError(
                "multipart_threshold must be at most multipart_part_size x multipart_concurrency "
                f"({buffered} bytes) so a streamed upload never buffers more than that"
            )
        return self
