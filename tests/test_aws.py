"""The one client factory: every AWS client the project makes carries every transport guarantee."""

from __future__ import annotations

import ast
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ClientError
from botocore.utils import S3RegionRedirectorv2

from router._aws import (
    NoRedirectAIOHTTPSession,
    Transport,
    aio_config,
    boto3_client,
    new_aio_session,
    open_aio_client,
    tls_context,
)
from router.config import RouterSettings
from router.drift import DriftChecker
from router.errors import (
    ConfigError,
    DirectoryUnavailableError,
    RegionUnavailableError,
    ResidencyViolationError,
)
from router.orgs import DynamoDBOrgDirectory
from router.routing import ResidencyRouter
from router.testing import ResidencyWorld
from router.types import OrgId
from tests.stubs import Reply, StubServer, stub_server

ROUTER = Path(__file__).resolve().parent.parent / "router"


# -- no client bypasses the factory -----------------------------------------------------

_SESSION_HINTS = ("session", "boto3", "botocore")


def client_constructions(source: str) -> list[int]:
    """Line numbers of every AWS client construction in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in (
            "aiobotocore.session",
            "botocore.session",
        ):
            found.append(node.lineno)
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        receiver = ast.unparse(node.func.value).lower()
        if name in ("create_client", "resource") or (
            name == "client" and any(hint in receiver for hint in _SESSION_HINTS)
        ):
            found.append(node.lineno)
    return found


def test_client_scan_notices_every_way_of_making_a_client() -> None:
    # The scan below can only prove something if it sees these.
    samples = [
        "session.create_client('s3')",
        "boto3.client('s3')",
        "boto3.Session().client('kms')",
        "self._session.client('s3')",
        "boto3.resource('s3')",
        "from aiobotocore.session import get_session",
    ]
    for sample in samples:
        assert client_constructions(sample), sample


def test_every_client_in_the_package_comes_from_the_factory() -> None:
    offenders = {}
    for path in sorted(ROUTER.rglob("*.py")):
        if path.name == "_aws.py":
            continue
        lines = client_constructions(path.read_text(encoding="utf-8"))
        if lines:
            offenders[str(path.relative_to(ROUTER.parent))] = lines
    assert offenders == {}, f"AWS clients made outside router/_aws.py: {offenders}"


# -- each guarantee, for each kind of client ---------------------------------------------


@pytest.fixture
def hostile_aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ~/.aws/config and environment asking for every option residency forbids."""
    config = tmp_path / "config"
    config.write_text(
        "[default]\n"
        "endpoint_url = http://127.0.0.1:9/configured\n"
        "use_dualstack_endpoint = true\n"
        "use_fips_endpoint = true\n"
        "s3 =\n"
        "  use_accelerate_endpoint = true\n"
        "  use_dualstack_endpoint = true\n"
        "  addressing_style = path\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/env")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9/env-s3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9/env-ddb")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_USE_DUALSTACK_ENDPOINT", "true")
    return config


class SentUrls:
    """A before-send hook that records each URL and answers 503 without any network I/O."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, request: Any, **_: Any) -> AWSResponse:
        self.urls.append(request.url)
        return AWSResponse(request.url, 503, HTTPHeaders(), _Raw())

    def stop(self, request: Any, **_: Any) -> None:
        self.urls.append(request.url)
        raise NotSentError(request.url)


class NotSentError(Exception):
    """Raised by SentUrls.stop: the request was built, and never sent."""


class _Raw:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b"<Error><Code>ServiceUnavailable</Code><Message>stub</Message></Error>"


def test_boto3_clients_ignore_configured_endpoints_and_edge_options(
    hostile_aws_config: Path,
) -> None:
    sent = SentUrls()
    calls: list[tuple[str, Callable[[Any], Any]]] = [
        ("s3", lambda c: c.get_bucket_location(Bucket="residency-example-eu")),
        ("kms", lambda c: c.describe_key(KeyId="k")),
        ("dynamodb", lambda c: c.describe_table(TableName="t")),
    ]
    for service, call in calls:
        client = boto3_client(service, "eu-west-1", Transport())
        client.meta.events.register_first("before-send", sent)
        with pytest.raises(ClientError, match="ServiceUnavailable"):  # the stub's 503
            call(client)
        assert client.meta.config.retries["total_max_attempts"] == 1
        assert client.meta.config.connect_timeout == 5.0
        assert client.meta.config.proxies == {}
    assert len(sent.urls) == 3
    for url in sent.urls:
        assert "127.0.0.1" not in url, url
        for forbidden in ("accelerate", "dualstack", "fips"):
            assert forbidden not in url, url
        assert ".eu-west-1.amazonaws.com" in url, url


async def test_aio_clients_ignore_configured_endpoints_and_edge_options(
    hostile_aws_config: Path,
) -> None:
    sent = SentUrls()
    session = new_aio_session()
    for service in ("s3", "kms", "dynamodb"):
        async with open_aio_client(session, service, "eu-west-1", Transport()) as client:
            assert client.meta.config.retries["total_max_attempts"] == 1
            assert client.meta.config.proxies == {}
            url = client.meta.endpoint_url
            assert "127.0.0.1" not in url
            for forbidden in ("accelerate", "dualstack", "fips"):
                assert forbidden not in url, url
    async with open_aio_client(session, "s3", "eu-west-1", Transport()) as s3:
        s3.meta.events.register_first("before-send", sent.stop)
        with pytest.raises(NotSentError):
            await s3.put_object(Bucket="residency-example-eu", Key="k", Body=b"x")
    assert sent.urls == ["https://residency-example-eu.s3.eu-west-1.amazonaws.com/k"]


async def test_aio_requests_refuse_redirects_verify_tls_1_2_and_never_resend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # NoRedirectAIOHTTPSession overrides aiobotocore's internal ``_get_session``: if a
    # release stops calling it (or renames it), no request carries these options and this
    # fails, at whichever aiobotocore version is installed, instead of the guarantees
    # silently lapsing.
    import aiohttp

    seen: list[tuple[bool, dict[str, Any]]] = []
    original = aiohttp.ClientSession.request

    def spy(self: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any) -> Any:
        seen.append((self._retry_connection, kwargs))
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "request", spy)
    with stub_server(never) as endpoint:
        async with open_aio_client(
            new_aio_session(),
            "dynamodb",
            "us-east-1",
            Transport(endpoint_url=endpoint.url),
            credentials={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
        ) as client:
            await client.get_item(TableName="orgs", Key={"org_id": {"S": "org-acme"}})
        assert len(endpoint.requests) == 1
    assert len(seen) == 1
    retry_connection, kwargs = seen[0]
    assert retry_connection is False
    assert kwargs["allow_redirects"] is False
    context = kwargs["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_aio_http_session_is_chosen_through_the_public_config_hook() -> None:
    config = aio_config(Transport())
    assert getattr(config, "http_session_cls", None) is NoRedirectAIOHTTPSession


def test_tls_context_refuses_to_turn_verification_off() -> None:
    with pytest.raises(ConfigError, match="verification"):
        tls_context(False)
    assert tls_context(True).minimum_version >= ssl.TLSVersion.TLSv1_2


async def test_factory_removes_the_s3_region_redirector() -> None:
    # botocore internal (``_emitter._handlers``): if it changes, the redirector stays
    # registered and this fails (the guard still refuses what the redirector would follow).
    def redirector_handlers(client: Any) -> list[Any]:
        found = []
        for event in ("needs-retry.s3.GetObject", "before-parameter-build.s3.GetObject"):
            for handler in client.meta.events._emitter._handlers.prefix_search(event):
                if isinstance(getattr(handler, "__self__", None), S3RegionRedirectorv2):
                    found.append(handler)
        return found

    session = new_aio_session()
    async with session.create_client("s3", region_name="eu-west-1") as plain:
        assert redirector_handlers(plain), "the check must see a plain client's redirector"
    async with open_aio_client(session, "s3", "eu-west-1", Transport()) as hardened:
        assert redirector_handlers(hardened) == []
    assert redirector_handlers(boto3_client("s3", "eu-west-1", Transport())) == []
    assert redirector_handlers(boto3.client("s3", region_name="eu-west-1"))


# -- redirects: DynamoDB directory and drift check ---------------------------------------


def redirect_to(target: StubServer) -> Any:
    def reply(method: str, path: str) -> Reply:
        return 307, {"Location": target.url + "/stolen", "Content-Type": "text/plain"}, b""

    return reply


def never(method: str, path: str) -> Reply:
    return 200, {"Content-Type": "application/x-amz-json-1.0"}, b'{"Item": {}}'


async def test_dynamodb_directory_never_follows_a_redirect() -> None:
    with stub_server(never) as elsewhere, stub_server(redirect_to(elsewhere)) as endpoint:
        async with DynamoDBOrgDirectory(
            "orgs", aws_region="us-east-1", endpoint_url=endpoint.url, timeout_s=5
        ) as directory:
            with pytest.raises(DirectoryUnavailableError, match="refused"):
                await directory.lookup(OrgId("org-acme"))
        assert elsewhere.requests == []  # the signed GetItem never reached the Location
        assert [method for method, _ in endpoint.requests] == ["POST"]


async def test_router_with_redirecting_directory_sends_nothing_else(
    residency_world: ResidencyWorld,
) -> None:
    with stub_server(never) as elsewhere, stub_server(redirect_to(elsewhere)) as endpoint:
        settings = residency_world.settings(
            endpoint_url=endpoint.url, directory_table="orgs", verify_on_start="off"
        )
        async with ResidencyRouter.from_settings(settings) as router:
            with pytest.raises(DirectoryUnavailableError, match="307"):
                await router.put("org-acme", "a.txt", b"x")
        assert elsewhere.requests == []
        # The GetItem was answered 307 and refused: no S3 request was made, nothing re-sent.
        assert {method for method, _ in endpoint.requests} == {"POST"}


def test_drift_check_refuses_redirects_and_ignores_aws_endpoint_url(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stub_server(never) as elsewhere, stub_server(redirect_to(elsewhere)) as endpoint:
        checker = DriftChecker(residency_world.region_map, endpoint_url=endpoint.url)
        results = checker.check()
        assert elsewhere.requests == []
        assert results
        assert all(not r.ok for r in results if r.check == "location")
        assert any("redirect" in r.detail for r in results)
        # With AWS_ENDPOINT_URL naming a server that would say "all fine", the check still
        # asks the endpoint it was given (here: the real world on moto) and nothing else.
        monkeypatch.setenv("AWS_ENDPOINT_URL", elsewhere.url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", elsewhere.url)
        good = DriftChecker(residency_world.region_map, endpoint_url=residency_world.endpoint_url)
        assert [r for r in good.check() if r.check == "location" and not r.ok] == []
        assert elsewhere.requests == []


def test_drift_check_without_endpoint_never_asks_aws_endpoint_url(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = SentUrls()
    session = boto3.Session()
    session.events.register_first("before-send", sent)  # type: ignore[arg-type]
    with stub_server(never) as impostor:
        monkeypatch.setenv("AWS_ENDPOINT_URL", impostor.url)
        checker = DriftChecker(residency_world.region_map, session=session)
        results = checker.check()
        assert impostor.requests == []
    assert sent.urls
    assert all(".amazonaws.com" in url for url in sent.urls), sent.urls
    assert not [r for r in results if r.ok], "a stubbed AWS answering 503 is not 'no drift'"


# -- proxies ---------------------------------------------------------------------------


def unavailable(method: str, path: str) -> Reply:
    return 503, {"Content-Type": "application/xml"}, b"<Error><Code>SlowDown</Code></Error>"


async def test_environment_proxies_are_ignored(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    with stub_server(unavailable) as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        settings = residency_world.settings(directory_table=None)
        async with ResidencyRouter.from_settings(settings) as router:
            await router.put("org-acme", "a.txt", b"x")
            assert await router.get("org-acme", "a.txt") == b"x"
        checker = DriftChecker(
            residency_world.region_map, endpoint_url=residency_world.endpoint_url
        )
        checker.check()
        residency_world.create_directory_table("orgs", {})
        async with DynamoDBOrgDirectory(
            "orgs", aws_region="us-east-1", endpoint_url=residency_world.endpoint_url
        ) as directory:
            with pytest.raises(Exception, match="not in the org directory"):
                await directory.lookup(OrgId("org-acme"))
        assert proxy.requests == []


async def test_proxy_url_setting_is_the_only_proxy_used(residency_world: ResidencyWorld) -> None:
    with stub_server(unavailable) as proxy:
        settings = residency_world.settings(
            proxy_url=proxy.url, verify_on_start="off", retry_max_attempts=1
        )
        async with ResidencyRouter.from_settings(settings) as router:
            with pytest.raises(RegionUnavailableError):
                await router.put("org-acme", "a.txt", b"x")
        assert proxy.requests, "the named proxy must carry the request"
        assert all(path.startswith("http://127.0.0.1") for _, path in proxy.requests)
    assert residency_world.all_versions("eu") == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("http://proxy.internal:3128", id="plain-http-remote"),
        pytest.param("socks5://127.0.0.1:1080", id="socks"),
        pytest.param("https://proxy.internal:3128/path", id="path"),
    ],
)
def test_proxy_url_refuses_plain_http_beyond_loopback(value: str) -> None:
    with pytest.raises(ValueError, match="proxy_url") as info:
        RouterSettings(proxy_url=value)
    assert "proxy.internal" not in str(info.value).split("input_value")[0]


def test_redirect_guard_applies_to_every_service_client() -> None:
    for service in ("s3", "kms", "dynamodb"):
        client = boto3_client(service, "eu-west-1", Transport(endpoint_url="http://127.0.0.1:9"))
        event = f"needs-retry.{client.meta.service_model.service_id.hyphenize()}"
        handlers = list(client.meta.events._emitter._handlers.prefix_search(event))
        assert any(getattr(h, "__name__", "") == "guard" for h in handlers), service


def test_guard_refuses_a_redirect_answer_for_dynamodb() -> None:
    with stub_server(never) as elsewhere, stub_server(redirect_to(elsewhere)) as endpoint:
        client = boto3_client(
            "dynamodb",
            "us-east-1",
            Transport(endpoint_url=endpoint.url),
            credentials={"aws_access_key_id": "testing", "aws_secret_access_key": "testing"},
        )
        with pytest.raises(ResidencyViolationError, match="307"):
            client.get_item(TableName="orgs", Key={"org_id": {"S": "org-acme"}})
        assert elsewhere.requests == []
        assert len(endpoint.requests) == 1


@pytest.mark.parametrize(
    ("endpoint_url", "proxy_url"),
    [
        pytest.param("http://203.0.113.5", None, id="plain-http-remote-endpoint"),
        pytest.param(None, "http://10.1.2.3:3128", id="plain-http-remote-proxy"),
        pytest.param("ftp://127.0.0.1", None, id="not-http"),
    ],
)
def test_the_factory_itself_refuses_unsafe_endpoints_and_proxies(
    residency_world: ResidencyWorld, endpoint_url: str | None, proxy_url: str | None
) -> None:
    # Not only RouterSettings: every public way to a client goes through the same rules.
    with pytest.raises(ConfigError):
        Transport(endpoint_url=endpoint_url, proxy_url=proxy_url)
    with pytest.raises(ConfigError):
        DynamoDBOrgDirectory(
            "orgs", aws_region="us-east-1", endpoint_url=endpoint_url, proxy_url=proxy_url
        )
    with pytest.raises(ConfigError):
        DriftChecker(residency_world.region_map, endpoint_url=endpoint_url, proxy_url=proxy_url)


async def test_aiohttp_still_has_the_silent_resend_switch_the_factory_turns_off() -> None:
    # aiohttp internals (no public option exists): if a release renames the switch, the
    # budget test in test_faults.py fails, and this says why.
    import aiohttp

    async with aiohttp.ClientSession() as session:
        assert session._retry_connection is True
