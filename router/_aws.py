"""The one factory for every AWS client the project makes (aiobotocore and boto3).

Every client made here carries every transport guarantee, whatever the environment and
``~/.aws/config`` say:

* redirects are never followed: aiohttp is told not to (``allow_redirects=False``) and a
  ``needs-retry`` guard, first in line on every client, refuses any 3xx and any S3 answer
  naming another region (:mod:`router.guards` decides); botocore's S3 region redirector is
  removed;
* configured endpoint URLs (``AWS_ENDPOINT_URL*``, ``endpoint_url`` in config files) are
  ignored: only an explicit ``endpoint_url`` is used;
* environment proxies (``HTTP_PROXY``/``HTTPS_PROXY``) are ignored; a proxy is used only when
  ``proxy_url`` names one (https, or plain http on loopback);
* S3 Transfer Acceleration, dual-stack, FIPS endpoints, ARN regions and multi-region access
  points are pinned off (acceleration enters AWS at edge locations in other countries);
* TLS 1.2 or newer, certificates always verified (also through a proxy); botocore's own
  retries off (:mod:`router._retry` is the one retry layer); connect and read timeouts
  always set.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
import boto3
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session
from botocore.config import Config
from botocore.httpsession import get_cert_path
from botocore.utils import S3RegionRedirectorv2

from router._answers import ReadableAnswers, answer_violation
from router.config import RouterSettings, endpoint_url_problem, proxy_url_problem
from router.errors import ConfigError, StorageError
from router.guards import s3_head_probe
from router.types import AwsRegion

Service = Literal["s3", "kms", "dynamodb"]

USER_AGENT = "residency-router"
BOTO_RETRIES = {"total_max_attempts": 1, "mode": "standard"}


@dataclass(frozen=True, slots=True)
class Transport:
    """How the project's clients reach AWS: the parts of the settings that shape a client."""

    endpoint_url: str | None = None
    proxy_url: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_pool_connections: int = 10
    allow_plain_http: bool = False

    def __post_init__(self) -> None:
        # The rules hold for every client, not only for those made from RouterSettings.
        problems = [
            problem
            for problem in (
                self.endpoint_url
                and endpoint_url_problem(self.endpoint_url, allow_plain_http=self.allow_plain_http),
                self.proxy_url and proxy_url_problem(self.proxy_url),
            )
            if problem
        ]
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_settings(cls, settings: RouterSettings) -> Transport:
        """Return the transport that ``settings`` describe."""
        return cls(
            endpoint_url=settings.endpoint_url,
            proxy_url=settings.proxy_url,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_pool_connections=settings.max_pool_connections,
            allow_plain_http=settings.allow_plain_http,
        )


def _s3_options(transport: Transport) -> dict[str, Any]:
    # Explicit values win over ~/.aws/config's [s3] section and AWS_S3_* variables.
    return {
        "addressing_style": "path" if transport.endpoint_url else "virtual",
        "use_accelerate_endpoint": False,
        "use_dualstack_endpoint": False,
        "use_arn_region": False,
        "payload_signing_enabled": False,
        "us_east_1_regional_endpoint": "regional",
        "s3_disable_multiregion_access_points": True,
    }


def _proxies(transport: Transport) -> dict[str, str]:
    # An empty mapping (not None) keeps botocore from reading HTTP(S)_PROXY.
    if transport.proxy_url is None:
        return {}
    return {"http": transport.proxy_url, "https": transport.proxy_url}


def _config_options(transport: Transport) -> dict[str, Any]:
    return {
        "connect_timeout": transport.connect_timeout_s,
        "read_timeout": transport.read_timeout_s,
        "max_pool_connections": transport.max_pool_connections,
        "retries": dict(BOTO_RETRIES),
        "ignore_configured_endpoint_urls": True,
        "use_dualstack_endpoint": False,
        "use_fips_endpoint": False,
        "proxies": _proxies(transport),
        "s3": _s3_options(transport),
        "user_agent_extra": USER_AGENT,
    }


def aio_config(transport: Transport) -> AioConfig:
    """The AioConfig of every aiobotocore client (benchmarks build raw clients from it too)."""
    return AioConfig(http_session_cls=NoRedirectAIOHTTPSession, **_config_options(transport))


def boto3_config(transport: Transport) -> Config:
    """The botocore Config of every boto3 client (urllib3 never follows redirects there)."""
    return Config(**_config_options(transport))


def tls_context(verify: bool | str | None, client_cert: Any = None) -> ssl.SSLContext:
    """Return the TLS context of every aiohttp request: verified, TLS 1.2 or newer.

    ``verify`` is what botocore resolved (``True``, or a CA bundle from ``AWS_CA_BUNDLE`` or
    ``ca_bundle``). Verification cannot be turned off: ``False`` raises.

    Raises:
        ConfigError: ``verify`` is false.
    """
    if verify is False:
        raise ConfigError(["TLS certificate verification cannot be turned off"])
    cafile = verify if isinstance(verify, str) else get_cert_path(True)
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if isinstance(client_cert, str):
        context.load_cert_chain(client_cert)
    elif isinstance(client_cert, tuple):
        context.load_cert_chain(*client_cert)
    return context


# One context per CA bundle for the process: loading a bundle costs tens of milliseconds of
# CPU, and a router opens two clients per region. An SSLContext may be shared.
_shared_tls_context = functools.lru_cache(maxsize=8)(tls_context)


class _NoRedirectClientSession:
    """Wraps aiohttp's session so that no request follows a redirect or skips our TLS."""

    __slots__ = ("_session", "_ssl")

    def __init__(self, session: aiohttp.ClientSession, context: ssl.SSLContext) -> None:
        self._session = session
        self._ssl = context

    def request(self, method: str, **kwargs: Any) -> Any:
        # aiohttp follows any 3xx with a Location header, body and signature included,
        # before botocore sees the response; a redirect must reach the guard instead.
        # A per-request ``ssl`` wins over the connector's (aiobotocore 2.25 gives the
        # connector ``ssl=False`` whenever a proxy is set).
        return self._session.request(method, allow_redirects=False, ssl=self._ssl, **kwargs)


class NoRedirectAIOHTTPSession(AIOHTTPSession):
    """aiobotocore's aiohttp session that never follows redirects and requires TLS >= 1.2.

    Chosen through AioConfig's public ``http_session_cls``; the options reach aiohttp
    through public per-request arguments (``allow_redirects``, ``ssl``). One aiobotocore
    internal remains, ``_get_session`` (the only place the aiohttp session is reachable),
    and two aiohttp internals, ``ClientSession._retry_connection`` and ``_cookie_jar``:
    ``tests/test_aws.py`` and ``tests/test_lean.py`` fail at whichever versions are
    installed if any stops being used.
    """

    def __init__(self, **kwargs: Any) -> None:
        # aiobotocore passes every argument by keyword (a positional one would be missed
        # here, so none is accepted).
        super().__init__(**kwargs)
        self._residency_tls = (kwargs.get("verify", True), kwargs.get("client_cert"))
        self._residency_context: ssl.SSLContext | None = None

    async def _get_session(self, proxy_url: str | None) -> Any:
        if self._residency_context is None:
            # Reading the CA bundle is file I/O: off the event loop.
            self._residency_context = await asyncio.to_thread(
                _shared_tls_context, *self._residency_tls
            )
        session = await super()._get_session(proxy_url)  # type: ignore[misc]
        # aiohttp re-sends an idempotent request once, silently, when a connection drops:
        # the retry budget must count the requests actually sent (one retry layer).
        session._retry_connection = False
        # No cookie kept from one answer for the next request (another org's, perhaps), as
        # botocore (urllib3) keeps none. aiobotocore offers no cookie-jar option: the jar
        # is swapped before the first request (tests/test_lean.py sends a cookie to check).
        # (This runs for every request: the jar is made once per aiohttp session.)
        if not isinstance(session._cookie_jar, aiohttp.DummyCookieJar):
            session._cookie_jar = aiohttp.DummyCookieJar()
        return _NoRedirectClientSession(session, self._residency_context)


class LeanHttp:
    """The aiohttp session of the lean transport in one AWS region (see :mod:`router._s3.lean`).

    Made only by :func:`open_lean_http`, with the guarantees of every other client: no
    redirect followed, TLS 1.2 or newer and always verified, no environment proxy (only
    ``proxy_url``), no silent re-send, connect and read timeouts set, a bounded pool, and
    no cookies kept between requests.
    """

    __slots__ = ("_proxy", "_session", "_ssl", "user_agent")

    def __init__(
        self, session: aiohttp.ClientSession, context: ssl.SSLContext, proxy: str | None
    ) -> None:
        self._session = session
        self._ssl = context
        self._proxy = proxy
        self.user_agent = f"{USER_AGENT} aiohttp/{aiohttp.__version__}"

    def request(self, method: str, url: Any, *, headers: Any, data: bytes | None) -> Any:
        """Send one request (await it for the response; ``async with`` it to release)."""
        return self._session.request(
            method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            ssl=self._ssl,
            proxy=self._proxy,
        )

    async def aclose(self) -> None:
        await self._session.close()


async def open_lean_http(transport: Transport, ca_bundle: str | None) -> LeanHttp:
    """Return the lean transport's aiohttp session for one AWS region.

    Close it with ``aclose``. ``ca_bundle`` is botocore's ``ca_bundle`` setting
    (``AWS_CA_BUNDLE``), as the aiobotocore clients use it.
    """
    context = await asyncio.to_thread(_shared_tls_context, ca_bundle or True)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=transport.max_pool_connections, ssl=context),
        timeout=aiohttp.ClientTimeout(
            sock_connect=transport.connect_timeout_s, sock_read=transport.read_timeout_s
        ),
        # As aiobotocore: no guessed Content-Type, bodies passed through as stored.
        skip_auto_headers={"Content-Type"},
        auto_decompress=False,
        trust_env=False,
        # No cookie kept from one answer for the next request (another org's, perhaps), as
        # botocore keeps none; it also spares every request a cookie-jar lookup.
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    # As for the aiobotocore clients: the retry budget counts the requests actually sent.
    session._retry_connection = False
    return LeanHttp(session, context, transport.proxy_url)


def _drop_expect_continue(request: Any, **_: Any) -> None:
    """Send bodies at once instead of waiting for ``100 Continue``.

    aiohttp applies no timeout while it waits for ``100 Continue``: an endpoint that accepts
    the connection and never answers would hold a PUT forever. Without the header the read
    timeout covers the wait. SigV4 never signs ``Expect``, so dropping it is safe.
    """
    if "Expect" in request.headers:
        del request.headers["Expect"]


def redirect_guard(service: str, aws_region: str, bucket: str | None = None) -> Callable[..., None]:
    """Return the ``needs-retry`` handler that refuses redirects and foreign regions."""
    where = f"bucket {bucket} in {aws_region}" if bucket else f"{service} in {aws_region}"
    is_s3 = service == "s3"

    def guard(response: Any = None, operation: Any = None, **_: Any) -> None:
        if response is None:
            return
        http, parsed = response
        status = getattr(http, "status_code", None)
        if not isinstance(parsed, dict):
            parsed = {}
        if status is not None and status < 300 and "Error" not in parsed:
            if not is_s3:
                return
            # The common case, a success, costs one header check. (A 200 can still carry an
            # error: S3 answers a failed CompleteMultipartUpload that way.)
            headers = parsed.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
            reported = headers.get("x-amz-bucket-region")
            if not reported or reported == aws_region:
                return
        error = answer_violation(service, aws_region, where, status, parsed)
        if error is not None:
            raise error
        name = getattr(operation, "name", "")
        if is_s3 and s3_head_probe(status, name):
            # botocore would probe the bucket's region here and re-send elsewhere.
            raise StorageError(f"S3 refused {name} on {where}", code="400")

    return guard


def _remove_region_redirector(client: Any) -> None:
    """Unregister botocore's S3 region redirector from ``client``.

    The redirector exists to re-send a request to whatever region S3 names in an error,
    which residency forbids. It is not what keeps data in place (the guard refuses such
    answers, and stays first in line); removing it spares every call its three handlers.
    Finding it relies on botocore's emitter internals (``_emitter._handlers``): if they
    change, the redirector stays and the guard still stops it; a test notices.
    """
    events = client.meta.events
    try:
        handlers = getattr(events, "_emitter", events)._handlers.prefix_search(
            "needs-retry.s3.GetObject"
        )
    except AttributeError:
        return
    redirectors = {
        owner
        for owner in (getattr(handler, "__self__", None) for handler in handlers)
        if isinstance(owner, S3RegionRedirectorv2)
    }
    for redirector in redirectors:
        events.unregister("needs-retry.s3", redirector.redirect_from_error)
        events.unregister("before-parameter-build.s3", redirector.annotate_request_context)
        events.unregister("before-endpoint-resolution.s3", redirector.redirect_from_cache)


def _harden(client: Any, service: str, aws_region: str, bucket: str | None) -> Any:
    if service == "s3":
        _remove_region_redirector(client)
        for operation in ("PutObject", "UploadPart"):  # the bodies botocore marks
            client.meta.events.register(f"before-send.s3.{operation}", _drop_expect_continue)
    client.meta.events.register_first(
        f"needs-retry.{client.meta.service_model.service_id.hyphenize()}",
        redirect_guard(service, aws_region, bucket),
    )
    return client


class AioClient:
    """An open aiobotocore client made by :func:`open_aio_client` (an async context)."""

    __slots__ = ("_bucket", "_context", "_region", "_service")

    def __init__(self, context: Any, service: str, aws_region: str, bucket: str | None) -> None:
        self._context = context
        self._service = service
        self._region = aws_region
        self._bucket = bucket

    async def __aenter__(self) -> Any:
        client = await self._context.__aenter__()
        return _harden(client, self._service, self._region, self._bucket)

    async def __aexit__(self, *exc: Any) -> None:
        await self._context.__aexit__(*exc)


def open_aio_client(
    session: AioSession,
    service: Service,
    aws_region: AwsRegion | str,
    transport: Transport,
    *,
    bucket: str | None = None,
    credentials: dict[str, str] | None = None,
) -> AioClient:
    """Return an async context that opens one hardened aiobotocore client.

    ``bucket`` names the one bucket an S3 client serves (its guard names it in errors).
    """
    context = session.create_client(  # type: ignore[call-overload]
        service,
        region_name=aws_region,
        config=aio_config(transport),
        endpoint_url=transport.endpoint_url,
        **(credentials or {}),
    )
    return AioClient(context, service, aws_region, bucket)


def new_aio_session() -> AioSession:
    """Return a fresh aiobotocore session (credentials resolved as botocore does).

    Its clients parse answers with botocore's parsers, but report an answer those cannot
    read as such (:mod:`router._answers`), never as a bad argument of the caller.
    """
    session = get_session()
    session.register_component("response_parser_factory", ReadableAnswers())
    return session


async def warm_loader(session: AioSession, services: tuple[str, ...]) -> None:
    """Read botocore's data files off the event loop (the first client reads them)."""
    await asyncio.to_thread(_warm_loader, session, services)


def _warm_loader(session: AioSession, services: tuple[str, ...]) -> None:
    loader = session.get_component("data_loader")
    for service in services:
        loader.load_service_model(service, "service-2")
        loader.load_service_model(service, "endpoint-rule-set-1")
    loader.load_data("endpoints")
    loader.load_data("partitions")
    loader.load_data("sdk-default-configuration")


def boto3_client(
    service: str,
    aws_region: str,
    transport: Transport,
    *,
    session: boto3.Session | None = None,
    credentials: dict[str, str] | None = None,
) -> Any:
    """Return one hardened boto3 client (CLI, drift check, local provisioner)."""
    client = (session or boto3.Session()).client(
        service,  # type: ignore[call-overload]
        region_name=aws_region,
        endpoint_url=transport.endpoint_url,
        config=boto3_config(transport),
        **(credentials or {}),
    )
    return _harden(client, service, aws_region, None)
