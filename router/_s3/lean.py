"""The lean transport: PutObject, GetObject and HeadObject without botocore's per-request machinery.

aiobotocore spends about a millisecond of CPU on each small request in event hooks, endpoint
rule resolution, parameter validation and user-agent assembly. The hot operations here skip
that and keep everything that makes a request right, from the well-kept parts themselves:

* botocore's model says which header carries each parameter and which field each answer
  header is (read once at start-up, :mod:`router._s3.lean_model`);
* botocore's ``S3SigV4Auth`` signs (:mod:`router._s3.sigv4`), with the client's own config
  deciding the payload hash, and the credentials are the session's, refreshed as botocore
  refreshes them;
* the bucket's URL is botocore's endpoint resolution, done once per bucket at start-up;
* the aiohttp session comes from :func:`router._aws.open_lean_http` (redirects off, TLS 1.2+,
  no environment proxies, no silent re-sends) and aiohttp failures become the botocore
  exceptions aiobotocore raises for them (:mod:`router._s3.lean_failures`);
* error answers go through botocore's own parser and the client's exception classes, and every
  answer through the same redirect guard as the clients', so retries and translation do not
  change; a body is wrapped in aiobotocore's streaming body, with its checksum check.

A :class:`LeanS3` answers ``put_object``, ``get_object`` and ``head_object`` with the
arguments and the response dictionaries of an aiobotocore client, so callers do not know
which of the two they hold. Everything else (multipart, listings, deletes, tags, KMS) stays
on aiobotocore.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.httpchecksum import handle_checksum_body
from aiobotocore.response import StreamingBody
from botocore import UNSIGNED
from botocore import handlers as botocore_handlers
from botocore.awsrequest import AWSPreparedRequest
from botocore.exceptions import NoCredentialsError, ParamValidationError
from botocore.parsers import create_parser
from botocore.utils import percent_encode
from multidict import CIMultiDict
from yarl import URL

from router._answers import UNREADABLE, unreadable_answer
from router._aws import LeanHttp
from router._s3.errors import LeanMisuseError
from router._s3.lean_failures import reading_failed, sending_failed
from router._s3.lean_model import Operation
from router._s3.sigv4 import HOST_FROM_URL, LeanSigner, SigningCache, SigningRequest
from router.errors import ConfigError, ResidencyViolationError
from router.inputs import plain_str

HOT_OPERATIONS = ("PutObject", "GetObject", "HeadObject")
PROBE_KEY = "residency-router-endpoint-probe"


class _Status(NamedTuple):
    """What the redirect guard reads of an HTTP answer (botocore's ``status_code``)."""

    status_code: int


# One _Status a status code, kept (making a named tuple costs about 2,800 machine
# instructions; a hit in the cache about 600): the codes a server sends are few.
_status = functools.lru_cache(maxsize=1024)(_Status)


# botocore's check for an S3 error inside a 200 answer (registered on before-parse.s3.*);
# a botocore internal, checked by tests/test_deps.py.
_HANDLE_200_ERROR: Callable[..., None] = botocore_handlers._handle_200_error  # type: ignore[attr-defined]


class LeanS3:
    """Signed PutObject, GetObject and HeadObject on one bucket in one AWS region.

    Takes the keyword arguments of aiobotocore's ``put_object``, ``get_object`` and
    ``head_object`` (those the router uses: headers, not query parameters) and returns their
    response dictionaries; raises what the client would raise.
    """

    __slots__ = (
        "_base",
        "_base_path",
        "_base_url",
        "_bucket",
        "_client",
        "_config",
        "_credentials",
        "_guard",
        "_handlers",
        "_host",
        "_http",
        "_operations",
        "_parser",
        "_region",
        "_signer",
        "_signing",
    )

    def __init__(
        self,
        client: Any,
        http: LeanHttp,
        credentials: Any,
        *,
        aws_region: str,
        bucket: str,
        base_url: str,
        guard: Callable[..., None],
    ) -> None:
        self._client = client
        self._http = http
        self._credentials = credentials
        self._region = aws_region
        self._bucket = bucket
        self._base_url = base_url
        self._host: str = HOST_FROM_URL(base_url)
        self._base_path: str = urlsplit(base_url).path
        # The bucket's URL parsed once: each request's is made from it with its path, as sent
        # and signed (yarl parsing the whole URL cost about 20,000 machine instructions a
        # request, with_path about 6,000).
        self._base = URL(base_url, encoded=True)
        self._signing = SigningCache()
        self._signer: LeanSigner | None = None
        self._guard = guard
        self._config = client.meta.config
        model = client.meta.service_model
        self._operations = {
            name: Operation(model.operation_model(name), self._config) for name in HOT_OPERATIONS
        }
        self._parser = create_parser(model.metadata["protocol"])
        self._handlers: list[tuple[str, Callable[..., Any]]] = []

    def register(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Call ``handler(request=...)`` before each matching request.

        As botocore's ``before-send`` event does, for observers only: what a handler returns
        is ignored.
        """
        if event_name.split(".")[0] == "before-send":
            self._handlers.append((event_name, handler))

    # -- the three operations -------------------------------------------------------------

    async def put_object(self, *, Bucket: str, Key: str, Body: bytes, **params: Any) -> Any:  # noqa: N803
        operation = self._operations["PutObject"]
        if "ChecksumSHA256" not in params:
            # botocore would add a CRC32 checksum of its own (a header over http, a trailer
            # over https); the lean path sends only puts that carry their SHA-256.
            raise LeanMisuseError("the lean transport sends PutObject with ChecksumSHA256 only")
        headers = self._headers(operation, Bucket, params)
        encoded_key = _encoded_key(Key)  # an empty key is refused before anything else
        sending = self._signed(operation, "PUT", encoded_key, headers, Body, await self._frozen())
        try:
            response = await sending
        except Exception as exc:
            sending_failed(exc, self._base_url)
        async with response:
            try:
                body = await response.read()
            except Exception as exc:
                reading_failed(exc, self._base_url)
            return self._answer(operation, response, body)

    async def head_object(self, *, Bucket: str, Key: str, **params: Any) -> Any:  # noqa: N803
        operation = self._operations["HeadObject"]
        params = {**operation.defaults, **params}
        headers = self._headers(operation, Bucket, params)
        encoded_key = _encoded_key(Key)  # an empty key is refused before anything else
        sending = self._signed(operation, "HEAD", encoded_key, headers, None, await self._frozen())
        try:
            response = await sending
        except Exception as exc:
            sending_failed(exc, self._base_url)
        async with response:
            return self._answer(operation, response, b"")

    async def get_object(self, *, Bucket: str, Key: str, **params: Any) -> Any:  # noqa: N803
        operation = self._operations["GetObject"]
        params = {**operation.defaults, **params}
        headers = self._headers(operation, Bucket, params)
        encoded_key = _encoded_key(Key)  # an empty key is refused before anything else
        sending = self._signed(operation, "GET", encoded_key, headers, None, await self._frozen())
        try:
            response = await sending
        except Exception as exc:
            sending_failed(exc, self._base_url)
        try:
            if response.status >= 300:
                try:
                    body = await response.read()
                except Exception as exc:
                    reading_failed(exc, self._base_url)
                return self._answer(operation, response, body)
            parsed = self._answer(operation, response, None)
            raw: Any = response  # aiobotocore's bodies wrap the aiohttp response itself
            answer = {"headers": parsed["ResponseMetadata"]["HTTPHeaders"], "context": {}}
            answer["body"] = StreamingBody(raw, answer["headers"].get("content-length"))
            if params.get("ChecksumMode") == "ENABLED":
                http_response: Any = _Raw(response)
                await handle_checksum_body(
                    http_response, answer, operation.checksum_context, operation.model
                )
            parsed["Body"] = answer["body"]
            return parsed
        except BaseException:
            response.close()
            raise

    # -- one request ----------------------------------------------------------------------

    def _headers(
        self, operation: Operation, bucket: str, params: Mapping[str, Any]
    ) -> CIMultiDict[str]:
        if bucket != self._bucket:
            raise ConfigError([f"the lean transport of {self._region} serves one bucket only"])
        headers: CIMultiDict[str] = CIMultiDict()
        known = operation.headers_in
        for name, value in params.items():
            if name == "Metadata":
                for meta_key, meta_value in value.items():
                    # As botocore: the prefix and the name joined, the value sent as its own
                    # characters. A str subclass (a str Enum) is not its str(): aiohttp would
                    # send "Color.RED" where botocore sends "red", and the signature (made
                    # over "red") would not match what was sent.
                    headers[operation.meta_in + meta_key] = plain_str(meta_value)
                continue
            where = known.get(name)
            if where is None:
                raise LeanMisuseError(f"the lean transport does not send {name}")
            headers[where[0]] = where[1](value)
        return headers

    def _frozen(self) -> Awaitable[Any]:
        """The session's credentials as of now (await them; refreshed as botocore refreshes)."""
        credentials = self._credentials
        if credentials is None:
            raise NoCredentialsError()
        frozen: Awaitable[Any] = credentials.get_frozen_credentials()
        return frozen

    def _signed(
        self,
        operation: Operation,
        method: str,
        encoded_key: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        credentials: Any,
    ) -> Awaitable[aiohttp.ClientResponse]:
        """Sign one request and return aiohttp's request for it (see :func:`sending_failed`).

        A plain function, not a coroutine: the operation awaits aiohttp's request itself, one
        coroutine less in flight per request. ``encoded_key`` is :func:`_encoded_key`'s.
        """
        url = self._base_url + encoded_key
        path = self._base_path + encoded_key
        request: Any = SigningRequest(method, url, path, headers, body)
        request.context["client_config"] = self._config
        request.context["has_streaming_input"] = body is not None
        signer = self._signer
        # One signer while the credentials stay the same (a signer keeps nothing of a request).
        if signer is None or signer.credentials != credentials:
            signer = self._signer = LeanSigner(credentials, self._region, self._host, self._signing)
        signer.add_auth(request)
        signed = request.headers
        if self._handlers:
            self._emit(operation, method, url, signed, body)
        signed["User-Agent"] = self._http.user_agent
        signed["Accept-Encoding"] = "identity"
        sending: Awaitable[aiohttp.ClientResponse] = self._http.request(
            method, self._base.with_path(path, encoded=True), headers=signed, data=body
        )
        return sending

    def _emit(
        self, operation: Operation, method: str, url: str, headers: Any, body: bytes | None
    ) -> None:
        name = operation.model.name
        prepared = AWSPreparedRequest(method, url, headers, body, name == "GetObject")
        event = f"before-send.s3.{name}"
        for pattern, handler in tuple(self._handlers):
            if event == pattern or event.startswith(pattern + "."):
                handler(request=prepared, event_name=event)

    def _answer(
        self, operation: Operation, response: aiohttp.ClientResponse, body: bytes | None
    ) -> dict[str, Any]:
        """Parse an answer as the client would, guard it, and raise what the client raises.

        The headers are read as aiobotocore hands them to botocore: one dict, names
        lowercased, so of a repeated header the last value stands, for the redirect guard,
        the checksum check and every field alike. ``HTTPHeaders`` is that dict (botocore's
        is a lowercased copy of it). A success maps each header to the field the model names
        for it; an error is parsed by botocore.
        """
        status = response.status
        raw = response.raw_headers
        reading = operation.reading(tuple([name for name, _ in raw]))
        # Of a repeated name the last value stands, as in aiobotocore's dict.
        headers = dict(zip(reading.names, [value.decode("utf-8") for _, value in raw], strict=True))
        if status == 200 and body:
            # S3 can answer 200 with an <Error> body (or a body cut short): botocore turns
            # that into a 500 before parsing, so it is retried, not taken for a success.
            answer: dict[str, Any] = {"status_code": status, "body": body, "headers": {}}
            _HANDLE_200_ERROR(operation.model, answer)
            status = answer["status_code"]
        if status >= 300:
            try:
                error: dict[str, Any] = self._parser.parse(
                    {"headers": headers, "status_code": status, "body": body or b""},
                    operation.output_shape,
                )
            except UNREADABLE as exc:  # as the clients' parsers (router._answers) report it
                raise unreadable_answer(
                    exc, answer={"headers": headers, "status_code": status}
                ) from None
            self._guard(response=(_status(status), error), operation=operation.model)
            code = error.get("Error", {}).get("Code")
            raise self._client.exceptions.from_code(code)(error, operation.model.name)
        parsed: dict[str, Any] = {
            "ResponseMetadata": {
                "RequestId": headers.get("x-amz-request-id", ""),
                "HostId": headers.get("x-amz-id-2", ""),
                "HTTPStatusCode": status,
                "HTTPHeaders": headers,
                "RetryAttempts": 0,
            }
        }
        self._guard(response=(_status(status), parsed), operation=operation.model)
        # Only the headers that came and that the model names (about ten), not one lookup per
        # header the model names (over twenty).
        try:
            for name, field, parse in reading.fields:
                parsed[field] = parse(headers[name])
        except UNREADABLE as exc:  # a header that is not the number or date the model says
            raise unreadable_answer(
                exc, answer={"headers": headers, "status_code": status}
            ) from None
        if operation.meta_out:
            parsed["Metadata"] = {key: headers[name] for name, key in reading.metas}
        return parsed


def _encoded_key(key: str) -> str:
    """The key as it goes into the URL (and the signed path), refused first if empty.

    Raises:
        ParamValidationError: an empty key, as botocore's parameter validation refuses it
            (it would address the bucket), before credentials are even read.
    """
    if not key:
        raise ParamValidationError(
            report="Invalid length for parameter Key, value: 0, valid min length: 1"
        )
    if key.__class__ is str and not key.strip(_UNQUOTED):
        return key  # every character one that percent-encoding leaves as it is
    encoded: str = percent_encode(key, safe="/~")
    return encoded


# What percent-encoding with ``safe="/~"`` leaves as it is: urllib's always-safe characters
# (letters, digits, ``_.-~``) and ``/``.
_UNQUOTED = string.ascii_letters + string.digits + "_.-~/"


class _Raw:
    """What aiobotocore's checksum check reads of an answer: the aiohttp response."""

    __slots__ = ("raw",)

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        self.raw = raw


async def bucket_url(client: Any, bucket: str) -> str:
    """The URL prefix of ``bucket``'s objects, as botocore's endpoint resolution makes it.

    Resolved once per bucket: an unsigned presigned URL of a probe key, minus the key.

    Raises:
        ResidencyViolationError: botocore resolved a URL that does not end with the key.
    """
    event = "choose-signer.s3.GetObject"
    unique_id = f"residency-lean-probe-{id(client)}"

    def unsigned(**_: Any) -> Any:
        return UNSIGNED

    client.meta.events.register(event, unsigned, unique_id=unique_id)
    try:
        url = await client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": PROBE_KEY}
        )
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)
    base, _, query = str(url).partition("?")
    if query or "#" in base or not base.endswith("/" + PROBE_KEY):
        raise ResidencyViolationError(
            f"could not resolve the endpoint of bucket {bucket}; nothing was sent"
        )
    return base[: -len(PROBE_KEY)]
