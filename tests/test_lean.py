"""The lean transport (issue 15): signed as botocore signs, accepted where botocore is, guarded.

Three kinds of proof: the requests the lean path builds are compared, header by header and
signature by signature, with the ones aiobotocore builds for the same inputs (nothing is
sent); a moto server that verifies SigV4 accepts the lean requests and refuses a wrongly
signed one; and the lean path keeps the transport guarantees (redirects refused, failures
counted, connections released, bodies checked) against loopback servers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import enum
import hashlib
import json
import os
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.compat
import pytest
import pytest_asyncio
import yaml
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError
from botocore.utils import percent_encode
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from router._aws import (
    LeanHttp,
    Transport,
    boto3_client,
    new_aio_session,
    open_aio_client,
    open_lean_http,
    redirect_guard,
)
from router._s3 import sigv4
from router._s3.lean import LeanS3, _encoded_key, bucket_url
from router._s3.sigv4 import HeaderMap, LeanSigner, SigningCache, SigningRequest, sigv4_timestamp
from router.config import RouterSettings
from router.errors import RegionUnavailableError, ResidencyError, ResidencyViolationError
from router.regions import RegionMap
from router.routing import ResidencyRouter
from router.testing import LocalS3Process, ResidencyWorld, isolated_aws_environment
from router.types import AwsRegion, Region
from tests.conftest import ORG_BY_REGION, RequestLog, unverified
from tests.stubs import Reply, stub_server

ORG = ORG_BY_REGION[Region.EU]
EU = AwsRegion("eu-west-1")
BUCKET = "residency-example-eu"
OWNER = "123456789012"
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-4000-8000-000000000001"
FROZEN = datetime.datetime(2026, 3, 4, 5, 6, 7)  # naive UTC, as botocore's clock returns

# Keys whose encoding differs between naive quoting rules: space, plus, tilde (unreserved
# in SigV4), unicode, and a literal percent sign that must not be read as an escape.
KEYS = (
    "orgs/org-acme/files/plain.txt",
    "orgs/org-acme/files/with space.txt",
    "orgs/org-acme/files/a+b=c&d.txt",
    "orgs/org-acme/files/~tilde/x~y",
    "orgs/org-acme/files/unicodé/日本語-ü.txt",
    "orgs/org-acme/files/100%25 done%.txt",
    "orgs/org-acme/files/what?x=1&y#part",  # a query and a fragment, if left unencoded
    # The router refuses these segments; LeanS3 itself must still not normalise them away.
    "orgs/org-acme/files/a/./b/../c//d",
)
BODY = b"the body \x00\xff" * 50
BODY_SHA256 = base64.b64encode(hashlib.sha256(BODY).digest()).decode("ascii")


class Label(str, enum.Enum):  # noqa: UP042 (not StrEnum: its str() is its value)
    """Strings a caller may pass as metadata and content type: str() is not their value."""

    NAME = "origin"
    VALUE = "scanner-7"
    JSON = "application/json"


OPERATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "put": (
        "put_object",
        {
            "Body": BODY,
            "ContentType": "application/json",
            "Metadata": {"origin": "scanner-7", "trace": "a b", "spaced": "  x   y  z "},
            "Tagging": "residency-region=eu&data-class=files",
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": KMS_KEY,
            "BucketKeyEnabled": True,
            "ChecksumSHA256": BODY_SHA256,
            "ExpectedBucketOwner": OWNER,
        },
    ),
    # botocore sends a metadata name and value as their characters ("scanner-7") and a
    # content type as its str() ("Label.JSON"); the lean path must send and sign the same.
    "put-str-enums": (
        "put_object",
        {
            "Body": BODY,
            "ContentType": Label.JSON,
            "Metadata": {Label.NAME: Label.VALUE},
            "ServerSideEncryption": "aws:kms",
            "SSEKMSKeyId": KMS_KEY,
            "ChecksumSHA256": BODY_SHA256,
        },
    ),
    "get-range": (
        "get_object",
        {"Range": "bytes=10-99", "ExpectedBucketOwner": OWNER},
    ),
    "get-range-checksum": (
        "get_object",
        {"Range": "bytes=10-99", "ChecksumMode": "ENABLED", "ExpectedBucketOwner": OWNER},
    ),
    "get-checksum": (
        "get_object",
        {"ChecksumMode": "ENABLED", "ExpectedBucketOwner": OWNER},
    ),
    "head": (
        "head_object",
        {"ChecksumMode": "ENABLED", "ExpectedBucketOwner": OWNER},
    ),
}

# Where the lean path does not (yet) build botocore's request; strict: a fix makes them fail.
# (None today: a range read without ChecksumMode gets botocore's default ENABLED, and a put
# without ChecksumSHA256, where botocore would add a CRC32, is refused; see below.)
KNOWN_DIFFERENCES: dict[str, str] = {}

ENDPOINTS = {
    # endpoint_url, what the object URL must start with
    "http-loopback-path-style": ("http://127.0.0.1:9", f"http://127.0.0.1:9/{BUCKET}/"),
    "http-default-port": ("http://127.0.0.1:80", f"http://127.0.0.1/{BUCKET}/"),
    "https-loopback-path-style": ("https://127.0.0.1:8443", f"https://127.0.0.1:8443/{BUCKET}/"),
    "https-aws-virtual-hosted": (None, f"https://{BUCKET}.s3.eu-west-1.amazonaws.com/"),
}

CREDENTIALS = {
    "long-term": ("AKIDEXAMPLELONGTERM", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None),
    "session-token": ("ASIAEXAMPLESESSION", "session/secret+key", "FQoGZXIvYXdzEJr//token=="),
}


class NotSentError(BaseException):
    """Raised where a request would go on the wire: the tests send nothing.

    A BaseException, as a cancellation is: the lean transport wraps any Exception its send
    raises in botocore's HTTPClientError, as aiobotocore does.
    """


@dataclass(frozen=True)
class Captured:
    method: str
    url: str
    headers: dict[str, str]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _where(url: str) -> tuple[str, str | None, int | None, str, str]:
    parsed = URL(url, encoded=True)
    return parsed.scheme, parsed.raw_host, parsed.port, parsed.raw_path, parsed.raw_query_string


def _auth_field(authorization: str, name: str) -> str:
    return authorization.partition(f"{name}=")[2].partition(",")[0]


def recompute(captured: Captured, credentials: Credentials) -> tuple[str, str, str, list[str]]:
    """Canonical request, string to sign, signature and signed headers, by botocore itself.

    Built from the captured request as a server would (moto does the same): the headers the
    request says it signed, the URL it was sent to, its X-Amz-Date.
    """
    authorization = captured.headers["Authorization"]
    signed = _auth_field(authorization, "SignedHeaders").split(";")
    headers = {name: value for name, value in captured.headers.items() if name.lower() in signed}
    request = AWSRequest(method=captured.method, url=captured.url, headers=headers)
    request.context["timestamp"] = headers["X-Amz-Date"]
    scope = _auth_field(authorization, "Credential").split("/")
    signer = S3SigV4Auth(credentials, "s3", scope[2])
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    signature = signer.signature(string_to_sign, request)
    return canonical, string_to_sign, signature, sorted(signer.headers_to_sign(request))


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both sides sign through botocore.auth's module-level clock (the same name from
    # botocore 1.40.46, the oldest supported, to the newest): one patch freezes both.
    def now(remove_tzinfo: bool = True) -> datetime.datetime:
        return FROZEN if remove_tzinfo else FROZEN.replace(tzinfo=datetime.UTC)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", now)


@contextlib.asynccontextmanager
async def lean_beside(client: Any, session: Any, transport: Transport) -> AsyncIterator[LeanS3]:
    """The lean transport of the EU bucket, made as the router makes it, beside ``client``."""
    http = await open_lean_http(transport, None)
    try:
        yield LeanS3(
            client,
            http,
            await session.get_credentials(),
            aws_region=EU,
            bucket=BUCKET,
            base_url=await bucket_url(client, BUCKET),
            guard=redirect_guard("s3", EU, BUCKET),
        )
    finally:
        await http.aclose()


async def both_requests(
    monkeypatch: pytest.MonkeyPatch,
    endpoint_url: str | None,
    credentials: tuple[str, str, str | None],
    method_name: str,
    params: dict[str, Any],
    keys: tuple[str, ...],
) -> list[tuple[Captured, Captured]]:
    """(botocore's request, the lean request) per key: built, signed, never sent."""
    session = new_aio_session()
    session.set_credentials(*credentials)
    transport = Transport(endpoint_url=endpoint_url)
    sent_lean: list[Captured] = []

    def lean_wire(self: LeanHttp, method: str, url: Any, *, headers: Any, data: Any) -> Any:
        sent_lean.append(Captured(method, str(url), {k: _text(v) for k, v in headers.items()}))
        raise NotSentError

    monkeypatch.setattr(LeanHttp, "request", lean_wire)
    sent_botocore: list[Captured] = []

    def botocore_wire(request: Any, **_: Any) -> None:
        headers = {name: _text(value) for name, value in request.headers.items()}
        sent_botocore.append(Captured(request.method, request.url, headers))
        raise NotSentError

    pairs = []
    async with open_aio_client(session, "s3", EU, transport, bucket=BUCKET) as client:
        # Last in line: the router's own before-send handlers have run (as on the wire).
        client.meta.events.register("before-send.s3", botocore_wire)
        async with lean_beside(client, session, transport) as lean:
            for key in keys:
                with pytest.raises(NotSentError):
                    await getattr(client, method_name)(Bucket=BUCKET, Key=key, **params)
                with pytest.raises(NotSentError):
                    await getattr(lean, method_name)(Bucket=BUCKET, Key=key, **params)
                pairs.append((sent_botocore[-1], sent_lean[-1]))
    assert len(pairs) == len(keys)
    return pairs


# -- signed exactly as botocore signs ---------------------------------------------------


async def test_lean_put_without_a_sha256_is_refused_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # botocore would add a CRC32 of its own (request_checksum_calculation=when_supported):
    # rather than send a different request, the lean path refuses a put without ChecksumSHA256.
    params = {"Body": BODY, "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY}
    with pytest.raises(TypeError, match="ChecksumSHA256"):
        await both_requests(
            monkeypatch,
            ENDPOINTS["http-loopback-path-style"][0],
            CREDENTIALS["long-term"],
            "put_object",
            params,
            KEYS[:1],
        )


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("credentials", list(CREDENTIALS))
@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_DIFFERENCES[name], strict=True))
        if name in KNOWN_DIFFERENCES
        else name
        for name in OPERATIONS
    ],
)
async def test_lean_request_is_signed_exactly_as_botocore_signs_it(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, credentials: str, operation: str
) -> None:
    endpoint_url, url_prefix = ENDPOINTS[endpoint]
    access_key, secret_key, token = CREDENTIALS[credentials]
    method_name, params = OPERATIONS[operation]
    pairs = await both_requests(
        monkeypatch, endpoint_url, (access_key, secret_key, token), method_name, params, KEYS
    )
    signing = Credentials(access_key, secret_key, token)
    for botocore_request, lean_request in pairs:
        assert lean_request.method == botocore_request.method
        # Same host, path and (empty) query: virtual-hosted where botocore uses it.
        # (An explicit default port is the same place: the signed host drops it too.)
        assert _where(lean_request.url) == _where(botocore_request.url)
        assert str(URL(lean_request.url, encoded=True)).startswith(url_prefix)
        assert "?" not in lean_request.url
        # The same signature, over the same canonical request and string to sign.
        assert lean_request.headers["Authorization"] == botocore_request.headers["Authorization"]
        botocore_signed = recompute(botocore_request, signing)
        lean_signed = recompute(lean_request, signing)
        assert lean_signed == botocore_signed
        canonical, _, signature, signed_names = lean_signed
        assert _auth_field(lean_request.headers["Authorization"], "Signature") == signature
        # Every header botocore's signer would sign was listed as signed (none left out).
        assert signed_names == _auth_field(
            lean_request.headers["Authorization"], "SignedHeaders"
        ).split(";")
        assert canonical.startswith(f"{botocore_request.method}\n")
        # Same value of every signed header (host comes from the URL on both sides).
        for name in signed_names:
            if name == "host":
                continue
            lean_value = {k.lower(): v for k, v in lean_request.headers.items()}[name]
            botocore_value = {k.lower(): v for k, v in botocore_request.headers.items()}[name]
            assert lean_value == botocore_value, name
        assert lean_request.headers["X-Amz-Date"] == FROZEN.strftime("%Y%m%dT%H%M%SZ")
        # The client's config turns payload signing off; botocore then sends this over
        # http too, and so must the lean path.
        assert lean_request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
        assert lean_request.headers.get("X-Amz-Security-Token") == token
        assert ("x-amz-security-token" in signed_names) == (token is not None)


@pytest.mark.parametrize(
    "now",
    [
        FROZEN,
        datetime.datetime(2026, 12, 31, 23, 59, 59, 999999),
        datetime.datetime(2027, 1, 1, 0, 0, 0),
        datetime.datetime(2026, 3, 1, 7, 5, 9, tzinfo=datetime.UTC),  # an aware clock
        datetime.datetime(999, 1, 2, 3, 4, 5),  # a year of three digits
    ],
)
def test_lean_timestamp_is_botocores_format_of_the_same_clock(now: datetime.datetime) -> None:
    assert sigv4_timestamp(now) == now.strftime(botocore.auth.SIGV4_TIMESTAMP)


@settings(max_examples=500, deadline=None)
@given(
    key=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1)
    | st.text("abcXYZ019_.-~/", min_size=1)
    | st.text("abc/%?#+ =&:@!$'()*,;[]", min_size=1)
)
def test_a_lean_key_is_encoded_as_botocore_encodes_it(key: str) -> None:
    assert _encoded_key(key) == percent_encode(key, safe="/~")


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(min_value=0, max_value=2**34 * 10**9),
    steps=st.lists(st.integers(min_value=-2_500_000_000, max_value=2_500_000_000), max_size=12),
)
def test_the_kept_timestamp_is_botocores_clock_formatted_whatever_the_clock_does(
    start: int, steps: list[int]
) -> None:
    # One second's timestamp is kept: a real-time clock that moves back and forth by up to
    # a few seconds (a nanosecond apart, the same second) must still get each moment's own
    # second, as botocore's clock (datetime.now(UTC): that clock floored to microseconds)
    # formats it.
    assert sigv4._BOTOCORE_CLOCK is botocore.auth.get_current_datetime  # type: ignore[attr-defined,unused-ignore]
    cache = SigningCache()
    with pytest.MonkeyPatch.context() as patch:
        for step in [0, -1, 1, *steps]:
            moment = max(start + step, 0)
            patch.setattr(sigv4, "wall_clock", lambda moment=moment: moment)
            expected = EPOCH + datetime.timedelta(microseconds=moment // 1000)
            assert cache.timestamp() == expected.strftime(botocore.auth.SIGV4_TIMESTAMP), moment


EPOCH = datetime.datetime(1970, 1, 1)


def test_the_kept_timestamp_is_what_botocores_own_clock_says() -> None:
    # botocore's stock clock, unpatched: the kept timestamp is its reading of a moment
    # between two readings of botocore's own clock.
    cache = SigningCache()
    for _ in range(200):
        before = botocore.auth.get_current_datetime().replace(microsecond=0)  # type: ignore[attr-defined,unused-ignore]
        stamp = cache.timestamp()
        after = botocore.auth.get_current_datetime()  # type: ignore[attr-defined,unused-ignore]
        assert before <= datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ") <= after


def test_a_replaced_datetime_in_botocore_compat_is_read_as_botocore_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # botocore's own tests replace botocore.compat's datetime: its unchanged clock then
    # says what that datetime says, and so must the lean signer.
    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Frozen:
            return cls(2026, 3, 1, 7, 5, 9, tzinfo=tz)

    fake = type(datetime)("datetime")
    fake.datetime = Frozen  # type: ignore[attr-defined]
    fake.timezone = datetime.timezone  # type: ignore[attr-defined]
    cache = SigningCache()
    cache.timestamp()
    monkeypatch.setattr(botocore.compat, "datetime", fake)
    assert cache.timestamp() == "20260301T070509Z"


def test_a_clock_put_in_botocores_place_is_read_as_botocore_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = SigningCache()
    cache.timestamp()  # a second kept from the real clock
    for now in (FROZEN, datetime.datetime(999, 1, 2, 3, 4, 5), FROZEN.replace(tzinfo=datetime.UTC)):
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda now=now, **_: now)
        assert cache.timestamp() == now.strftime(botocore.auth.SIGV4_TIMESTAMP)


_HEADER_VALUES = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40
) | st.sampled_from(["", " ", "a  b", " a\tb ", "a\u00a0b", "a\u2028b", "x\x1fy", "a\x85b"])


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(st.from_regex(r"x-amz-meta-[a-z]{1,8}", fullmatch=True), _HEADER_VALUES)
)
def test_lean_canonical_headers_are_botocores_for_any_value(headers: dict[str, str]) -> None:
    signer = LeanSigner(Credentials("AKID", "secret"), "eu-west-1", "h", SigningCache())
    for values in (headers, {name: _Shown(value) for name, value in headers.items()}):
        signing_map = HeaderMap(sorted(values.items()))
        botocores = botocore.auth.SigV4Auth.canonical_headers(signer, signing_map)
        assert signer.canonical_headers(signing_map) == botocores


class _Shown(str):
    """A str whose formatting is not its characters (as a ``(str, Enum)`` member's is)."""

    def __format__(self, spec: str) -> str:
        return "not the value"

    __str__ = __repr__ = lambda self: "not the value"


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(
        st.sampled_from(["Host", "X-Amz-Date", "User-Agent", "Expect", "X-A", "B", "x-amz-meta-c"]),
        max_size=7,
        unique=True,
    )
)
def test_the_kept_selection_of_headers_to_sign_is_botocores(names: list[str]) -> None:
    # botocore's own selection (its blacklist, names lowercased, host from the URL when
    # absent) over the same headers (each once, as lean requests carry them), made and kept.
    cache = SigningCache()
    signer = LeanSigner(Credentials("AKID", "secret"), "eu-west-1", "the-host", cache)
    headers = CIMultiDict((name, f"value {at}") for at, name in enumerate(names))
    request = AWSRequest(method="PUT", url="http://the-host/b/k", headers=dict(headers))
    botocores = botocore.auth.SigV4Auth.headers_to_sign(signer, request)
    # The same names in every order, through one cache: each order is its own selection.
    for order in [names, names[::-1], names[1:] + names[:1], names]:
        shuffled = CIMultiDict((name, headers[name]) for name in order)
        ours = signer.headers_to_sign(SigningRequest("PUT", "u", "/b/k", shuffled, None))
        assert ours.names == sorted(set(botocores))
        assert ours.pairs == [(name, botocores[name]) for name in ours.names]


def test_the_kept_selections_of_headers_to_sign_are_bounded() -> None:
    cache = SigningCache()
    for n in range(SigningCache.MAX_SELECTIONS * 3):
        cache.selection((f"x-amz-meta-{n}", "X-Amz-Date"))
        assert len(cache.selections) <= SigningCache.MAX_SELECTIONS


@pytest.mark.usefixtures("frozen_clock")
async def test_lean_put_carries_the_body_and_checksum_botocore_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Checksums are signed headers: compared above. Here: the header is there at all, and
    # it is the body's digest, so S3 checks what it stores.
    method_name, params = OPERATIONS["put"]
    pairs = await both_requests(
        monkeypatch, None, CREDENTIALS["long-term"], method_name, params, KEYS[:1]
    )
    (botocore_request, lean_request) = pairs[0]
    assert lean_request.headers["x-amz-checksum-sha256"] == BODY_SHA256
    assert botocore_request.headers["x-amz-checksum-sha256"] == BODY_SHA256
    assert "x-amz-meta-origin" in lean_request.headers


async def test_lean_transport_reads_botocores_clock_for_every_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A signing time (or key) kept from an earlier request would be refused by S3 once it
    # is 15 minutes old: each lean request must ask the clock botocore asks.
    later = FROZEN + datetime.timedelta(hours=1)
    instants = iter([FROZEN, FROZEN, later, later])  # botocore, lean; botocore, lean
    monkeypatch.setattr(
        botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: next(instants)
    )
    method_name, params = OPERATIONS["head"]
    pairs = await both_requests(
        monkeypatch, None, CREDENTIALS["long-term"], method_name, params, KEYS[:1] * 2
    )
    assert [lean.headers["X-Amz-Date"] for _, lean in pairs] == [
        "20260304T050607Z",
        "20260304T060607Z",
    ]
    for botocore_request, lean_request in pairs:
        assert lean_request.headers["Authorization"] == botocore_request.headers["Authorization"]


@pytest.mark.parametrize("operation", ["put", "get-checksum", "head"])
async def test_lean_refuses_an_empty_key_as_botocore_does_sending_nothing(
    monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    # An empty key would make the object URL the bucket's own: a PUT there is CreateBucket.
    sent: list[str] = []

    def wire(self: LeanHttp, method: str, url: Any, *, headers: Any, data: Any) -> Any:
        sent.append(method)
        raise NotSentError

    monkeypatch.setattr(LeanHttp, "request", wire)
    method_name, params = OPERATIONS[operation]
    session = new_aio_session()
    session.set_credentials(*CREDENTIALS["long-term"][:2])
    transport = Transport(endpoint_url="http://127.0.0.1:9")
    async with (
        open_aio_client(session, "s3", EU, transport, bucket=BUCKET) as client,
        lean_beside(client, session, transport) as lean,
    ):
        for sender in (client, lean):
            with pytest.raises(ParamValidationError, match="Key"):
                await getattr(sender, method_name)(Bucket=BUCKET, Key="", **params)
        # Refused before the credentials are read (a refresh could reach the network, or
        # fail and hide what was wrong): the same error with none to read.
        lean._credentials = None
        with pytest.raises(ParamValidationError, match="Key"):
            await getattr(lean, method_name)(Bucket=BUCKET, Key="", **params)
        with pytest.raises(NoCredentialsError):
            await getattr(lean, method_name)(Bucket=BUCKET, Key="k", **params)
    assert sent == []


# -- a server that verifies signatures --------------------------------------------------


def _moto_api(endpoint_url: str, path: str, data: bytes) -> None:
    # text/plain: moto reads the raw body (a form content type would leave it empty).
    request = urllib.request.Request(
        endpoint_url + path, data=data, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


@dataclass(frozen=True)
class SigningWorld:
    world: ResidencyWorld
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def s3(self) -> Any:
        """An independent boto3 client holding the IAM key moto checks signatures with."""
        return boto3_client(
            "s3",
            EU,
            Transport(endpoint_url=self.world.endpoint_url),
            credentials={
                "aws_access_key_id": self.access_key,
                "aws_secret_access_key": self.secret_key,
            },
        )


@pytest.fixture(scope="module")
def signing_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningWorld]:
    """A moto server of its own (a child process) that verifies every SigV4 signature.

    moto checks signatures once its ``INITIAL_NO_AUTH_ACTION_COUNT`` setting is reached
    (moto.core.authorization): the world and an IAM user are provisioned with checks off,
    then ``/moto-api/reset-auth`` sets the count to 0. Its own process, since the setting
    is global to a process and the suite's shared server must stay unchecked.
    """
    regions_file = Path(__file__).resolve().parent.parent / "regions.yaml"
    with isolated_aws_environment(), LocalS3Process() as server:
        world = ResidencyWorld.provision(
            server.endpoint_url, regions_file, tmp_path_factory.mktemp("signing-world")
        )
        iam = world.client("iam", "us-east-1")
        iam.create_user(UserName="residency-router")
        iam.put_user_policy(
            UserName="residency-router",
            PolicyName="everything",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="residency-router")["AccessKey"]
        _moto_api(server.endpoint_url, "/moto-api/reset-auth", b"0")
        yield SigningWorld(world, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture
def signing_env(signing_world: SigningWorld, monkeypatch: pytest.MonkeyPatch) -> SigningWorld:
    for name, value in signing_world.env().items():
        monkeypatch.setenv(name, value)
    return signing_world


def test_the_signing_server_refuses_an_unknown_access_key(signing_world: SigningWorld) -> None:
    # Without this, everything below could pass against a server that checks nothing.
    unknown = signing_world.world.s3("eu")  # the world's own dummy key, not in moto's IAM
    with pytest.raises(ClientError) as info:
        unknown.head_bucket(Bucket=BUCKET)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("transport", ["lean", "botocore"])
@pytest.mark.parametrize("key", KEYS[1:6], ids=["space", "plus", "tilde", "unicode", "percent"])
async def test_signature_checking_server_accepts_put_get_head_and_stream(
    signing_env: SigningWorld, transport: str, key: str
) -> None:
    world = signing_env.world
    user_key = key.removeprefix("orgs/org-acme/files/") + f"-{transport}"
    settings = world.settings(transport=transport)
    async with ResidencyRouter.from_settings(settings) as router:
        assert router.storage.transport == transport
        receipt = await router.put(
            ORG, user_key, BODY, content_type="text/csv", metadata={"origin": "scanner-7"}
        )
        assert await router.get(ORG, user_key) == BODY
        assert await router.get(ORG, user_key, start=3, end=40) == BODY[3:40]
        info = await router.head(ORG, user_key)
        assert (info.size, info.content_type) == (len(BODY), "text/csv")
        assert dict(info.metadata) == {"origin": "scanner-7"}
        streamed = [chunk async for chunk in router.stream(ORG, user_key)]
        assert b"".join(streamed) == BODY
    stored = signing_env.s3().head_object(Bucket=BUCKET, Key=receipt.key)
    assert stored["VersionId"] == receipt.version_id
    assert stored["SSEKMSKeyId"] == world.key_arn("eu")


async def lean_call(lean: LeanS3, operation: str) -> Any:
    if operation == "put":
        checksum = base64.b64encode(hashlib.sha256(b"w").digest()).decode()
        return await lean.put_object(
            Bucket=BUCKET, Key="orgs/org-acme/files/w.txt", Body=b"w", ChecksumSHA256=checksum
        )
    if operation == "get":
        return await lean.get_object(Bucket=BUCKET, Key="orgs/org-acme/files/kept.txt")
    return await lean.head_object(Bucket=BUCKET, Key="orgs/org-acme/files/kept.txt")


@pytest.mark.parametrize("operation", ["put", "get", "head"])
async def test_signature_checking_server_refuses_a_lean_request_signed_with_a_wrong_secret(
    signing_env: SigningWorld, operation: str
) -> None:
    world = signing_env.world
    s3 = signing_env.s3()
    s3.put_object(Bucket=BUCKET, Key="orgs/org-acme/files/kept.txt", Body=b"kept")
    session = new_aio_session()
    session.set_credentials(signing_env.access_key, "not-" + signing_env.secret_key)
    transport = Transport(endpoint_url=world.endpoint_url)
    async with (
        open_aio_client(session, "s3", EU, transport, bucket=BUCKET) as client,
        lean_beside(client, session, transport) as lean,
    ):
        with pytest.raises(ClientError) as info:
            await lean_call(lean, operation)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    if operation != "head":  # a HEAD answer has no body to name the code in
        assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix="orgs/org-acme/files/w.txt")
    assert listed.get("Versions", []) == []
    kept = s3.get_object(Bucket=BUCKET, Key="orgs/org-acme/files/kept.txt")
    assert kept["Body"].read() == b"kept"


async def test_signature_checking_server_refuses_a_signed_header_changed_after_signing(
    signing_env: SigningWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server recomputes over the headers as received: a change to any signed header
    # (here the metadata) breaks the signature. Shows the check covers the headers too.
    original = LeanHttp.request

    def tamper(self: LeanHttp, method: str, url: Any, *, headers: Any, data: Any) -> Any:
        headers["x-amz-meta-origin"] = "changed"
        return original(self, method, url, headers=headers, data=data)

    monkeypatch.setattr(LeanHttp, "request", tamper)
    world = signing_env.world
    settings = world.settings(transport="lean", retry_max_attempts=1)
    async with ResidencyRouter.from_settings(settings) as router:
        with pytest.raises(ResidencyError, match="SignatureDoesNotMatch"):
            await router.put(ORG, "tampered.txt", b"x", metadata={"origin": "scanner-7"})
    listed = signing_env.s3().list_object_versions(
        Bucket=BUCKET, Prefix="orgs/org-acme/files/tampered"
    )
    assert listed.get("Versions", []) == []


# -- the lean path in the router --------------------------------------------------------


async def test_lean_is_the_default_transport_and_what_hot_returns(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RESIDENCY_TRANSPORT", raising=False)
    async with ResidencyRouter.from_settings(residency_world.settings()) as router:
        assert router.storage.transport == "lean"
        assert isinstance(router.storage.hot(EU), LeanS3)
    async with ResidencyRouter.from_settings(
        residency_world.settings(transport="botocore")
    ) as router:
        assert router.storage.transport == "botocore"
        assert not isinstance(router.storage.hot(EU), LeanS3)


def test_the_environment_chooses_the_transport(
    residency_world: ResidencyWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESIDENCY_TRANSPORT", "botocore")
    assert residency_world.settings().transport == "botocore"
    monkeypatch.setenv("RESIDENCY_TRANSPORT", "lean")
    assert residency_world.settings().transport == "lean"
    monkeypatch.delenv("RESIDENCY_TRANSPORT")
    assert residency_world.settings().transport == "lean"


async def test_fixture_router_uses_the_transport_the_environment_asks_for(
    residency_router: ResidencyRouter,
) -> None:
    # .ci/run runs the suite twice, once with RESIDENCY_TRANSPORT=botocore: this fails if
    # the second run silently tested the lean path again.
    expected = os.environ.get("RESIDENCY_TRANSPORT", "lean")
    assert residency_router.storage.transport == expected
    assert isinstance(residency_router.storage.hot(EU), LeanS3) == (expected == "lean")


@pytest_asyncio.fixture
async def lean_router(residency_world: ResidencyWorld) -> AsyncIterator[ResidencyRouter]:
    async with ResidencyRouter.from_settings(residency_world.settings(transport="lean")) as router:
        yield router


async def test_lean_puts_gets_heads_skip_the_client_but_reach_storage_observers(
    lean_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    on_client = RequestLog()
    lean_router.storage.s3_unchecked(EU).meta.events.register("before-send.s3", on_client)
    observed = RequestLog()
    lean_router.storage.register("before-send.s3", observed)

    receipt = await lean_router.put(ORG, "seen.txt", b"seen", metadata={"origin": "x"})
    assert await lean_router.get(ORG, "seen.txt") == b"seen"
    assert await lean_router.get(ORG, "seen.txt", start=1, end=3) == b"ee"
    assert (await lean_router.head(ORG, "seen.txt")).size == 4
    assert b"".join([c async for c in lean_router.stream(ORG, "seen.txt")]) == b"seen"

    assert on_client.requests == []
    assert [method for method, _ in observed.requests] == ["PUT", "GET", "GET", "HEAD", "GET"]
    assert all(url.endswith("/orgs/org-acme/files/seen.txt") for _, url in observed.requests)
    stored = residency_world.s3("eu").head_object(Bucket=BUCKET, Key=receipt.key)
    assert stored["VersionId"] == receipt.version_id
    # The client observer is live: what stays on aiobotocore (deletes) still reaches it.
    await lean_router.delete(ORG, "seen.txt")
    assert on_client.requests
    assert residency_world.all_versions("eu") == []


async def test_lean_put_sends_the_body_checksum_and_region_key(
    lean_router: ResidencyRouter, residency_world: ResidencyWorld
) -> None:
    seen: list[Any] = []
    lean_router.storage.register(
        "before-send.s3.PutObject", lambda request, **_: seen.append(request)
    )
    await lean_router.put(ORG, "sum.bin", BODY)
    (request,) = seen
    headers = {name.lower(): _text(value) for name, value in request.headers.items()}
    assert headers["x-amz-checksum-sha256"] == BODY_SHA256
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == residency_world.key_arn("eu")
    head = residency_world.s3("eu").head_object(Bucket=BUCKET, Key=f"orgs/{ORG}/files/sum.bin")
    assert head["SSEKMSKeyId"] == residency_world.key_arn("eu")
    assert head["ContentLength"] == len(BODY)


async def test_put_whose_region_is_quarantined_while_it_runs_is_not_reported_written(
    lean_router: ResidencyRouter,
) -> None:
    # Another request finds a violation in the region while this put is on the wire: the
    # put's confirmation step admits the region again, and refuses.
    def quarantine(request: Any, **_: Any) -> None:
        lean_router.storage.health.quarantine(EU, "violation", "staged by this test")

    lean_router.storage.register("before-send.s3.PutObject", quarantine)
    with pytest.raises(ResidencyViolationError, match="quarantined"):
        await lean_router.put(ORG, "late.txt", b"late")


async def test_put_whose_router_closes_while_it_runs_is_not_reported_written(
    lean_router: ResidencyRouter,
) -> None:
    # The router is closed while this put is on the wire (aclose() lets go of its clients):
    # the put's confirmation step takes the region's client again, and refuses.
    clients = dict(lean_router.storage._s3)

    def close(request: Any, **_: Any) -> None:
        lean_router.storage._s3.clear()

    lean_router.storage.register("before-send.s3.PutObject", close)
    try:
        with pytest.raises(RuntimeError, match="closed"):
            await lean_router.put(ORG, "late.txt", b"late")
    finally:
        lean_router.storage._s3.update(clients)  # for the fixture's own close


def with_key_arns(world: ResidencyWorld, tmp_path: Path) -> Path:
    """The world's map naming its keys by ARN: a router that verifies nothing can use it."""
    data = yaml.safe_load(world.regions_file.read_text(encoding="utf-8"))
    for code, arn in world.key_arns.items():
        data["regions"][code.value]["kms_key"] = arn
    path = tmp_path / "regions.arns.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def test_lean_refused_connection_fails_the_region_after_the_budget_writing_nothing(
    residency_world: ResidencyWorld, tmp_path: Path
) -> None:
    with stub_server(lambda m, p: (500, {}, b"")) as closed:
        refused = closed.url  # a port that was listening and no longer is
    settings = RouterSettings(
        regions_file=with_key_arns(residency_world, tmp_path),
        endpoint_url=refused,
        verify_on_start="off",
        transport="lean",
        retry_max_attempts=3,
        retry_deadline_s=60,
    )
    async with ResidencyRouter.from_settings(settings) as router:
        attempts = RequestLog()
        router.storage.register("before-send.s3", attempts)
        with pytest.raises(RegionUnavailableError):
            await router.put(ORG, "a.txt", b"x")
        assert [method for method, _ in attempts.requests] == ["PUT"] * 3
        attempts.requests.clear()
        with pytest.raises(RegionUnavailableError):
            await router.get(ORG, "a.txt")
        assert [method for method, _ in attempts.requests] == ["GET"] * 3
        health = router.health()
        assert health[Region.EU].failure_rate == 1.0
        assert health[Region.EU].last_success is None
        assert health[Region.US].failure_rate == 0.0
    assert residency_world.all_versions("eu") == []


def _redirecting(status: int, elsewhere_url: str) -> Any:
    def reply(method: str, path: str) -> Reply:
        body = (
            b"<Error><Code>PermanentRedirect</Code><Message>elsewhere</Message>"
            b"<Endpoint>residency-example-eu.s3.us-west-2.amazonaws.com</Endpoint></Error>"
        )
        headers = {
            "Location": f"{elsewhere_url}{path}",
            "Content-Type": "application/xml",
            "x-amz-bucket-region": "us-west-2",
        }
        return status, headers, body if method != "HEAD" else b""

    return reply


async def router_call(router: ResidencyRouter, operation: str) -> Any:
    if operation == "put":
        return await router.put(ORG, "a.txt", b"secret")
    if operation == "get":
        return await router.get(ORG, "a.txt")
    if operation == "get_object":
        return await router.get_object(ORG, "a.txt")
    if operation == "head":
        return await router.head(ORG, "a.txt")
    return [chunk async for chunk in router.stream(ORG, "a.txt")]


@pytest.mark.parametrize("status", [301, 307])
@pytest.mark.parametrize("operation", ["put", "get", "get_object", "head", "stream"])
async def test_lean_redirect_is_refused_and_never_followed(
    key_arn_map: Path, status: int, operation: str
) -> None:
    with (
        stub_server(lambda m, p: (200, {}, b"")) as elsewhere,
        stub_server(_redirecting(status, elsewhere.url)) as stub,
    ):
        settings = unverified(key_arn_map, stub.url, transport="lean")
        async with ResidencyRouter.from_settings(settings) as router:
            stub.requests.clear()
            with pytest.raises(ResidencyViolationError, match=str(status)):
                await router_call(router, operation)
            assert len(stub.requests) == 1
            assert router.health()[Region.EU].state == "quarantined"
    assert elsewhere.requests == []


async def test_lean_cancelled_streams_release_their_connections(
    residency_world: ResidencyWorld,
) -> None:
    settings = residency_world.settings(transport="lean", max_pool_connections=2)
    body = os.urandom(8 * 1024 * 1024)  # more than socket buffers hold: streams stop midway
    # A connection kept by a stream would leave the pool of two empty and the next request
    # waiting for ever: the timeout turns that hang into a failure (it measures nothing).
    async with ResidencyRouter.from_settings(settings) as router, asyncio.timeout(300):
        await router.put(ORG, "big.bin", body)
        for _ in range(20):  # closed early by the caller (break)
            async with aclosing(router.stream(ORG, "big.bin")) as chunks:
                async for _chunk in chunks:
                    break
        for _ in range(20):  # the reading task cancelled midway
            started = asyncio.Event()

            async def read_on(done: asyncio.Event = started) -> None:
                async for _chunk in router.stream(ORG, "big.bin"):
                    done.set()
                    await asyncio.sleep(3600)

            task = asyncio.create_task(read_on())
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await router.get(ORG, "big.bin") == body
        assert (await router.head(ORG, "big.bin")).size == len(body)
        await router.put(ORG, "after.txt", b"after")
    after = residency_world.s3("eu").get_object(Bucket=BUCKET, Key=f"orgs/{ORG}/files/after.txt")
    assert after["Body"].read() == b"after"


async def test_lean_reads_an_answer_as_botocore_reads_it_repeated_headers_too() -> None:
    # aiobotocore hands botocore the headers as a dict: of a repeated header, the last value,
    # for the fields, the redirect guard (bucket region) and the checksum check alike.
    other_key = KMS_KEY.replace("0001", "0002")
    answer = [
        ("ETag", '"abc"'),
        ("Last-Modified", "Tue, 01 Dec 2026 04:20:19 GMT"),
        ("Content-Type", "text/plain"),
        ("x-amz-version-id", "v1"),
        ("x-amz-server-side-encryption", "aws:kms"),
        ("x-amz-server-side-encryption-aws-kms-key-id", other_key),
        ("x-amz-server-side-encryption-aws-kms-key-id", KMS_KEY),
        ("x-amz-server-side-encryption-bucket-key-enabled", "true"),
        ("x-amz-checksum-sha256", base64.b64encode(hashlib.sha256(b"other").digest()).decode()),
        ("x-amz-checksum-sha256", BODY_SHA256),
        ("x-amz-checksum-type", "FULL_OBJECT"),
        ("x-amz-meta-Note", "first"),
        ("x-amz-meta-note", "second"),
        ("x-amz-meta-other", "kept"),
        ("x-amz-tagging-count", "2"),
        ("x-amz-bucket-region", "us-east-1"),
        ("x-amz-bucket-region", EU),
        ("x-amz-request-id", "req-0"),
        ("x-amz-request-id", "req-1"),
    ]
    with stub_server(lambda method, path: (200, answer, BODY)) as stub:
        session = new_aio_session()
        session.set_credentials(*CREDENTIALS["long-term"][:2])
        transport = Transport(endpoint_url=stub.url)
        async with (
            open_aio_client(session, "s3", EU, transport, bucket=BUCKET) as client,
            lean_beside(client, session, transport) as lean,
        ):
            read: dict[str, list[dict[str, Any]]] = {}
            for name, sender in (("botocore", client), ("lean", lean)):
                head = await sender.head_object(Bucket=BUCKET, Key="k")
                got = await sender.get_object(Bucket=BUCKET, Key="k")
                assert await got.pop("Body").read() == BODY
                read[name] = [head, got]
                for parsed in read[name]:
                    # What both say of the answer (botocore adds its retry and checksum notes).
                    metadata = parsed["ResponseMetadata"]
                    parsed["ResponseMetadata"] = {
                        field: metadata[field]
                        for field in ("RequestId", "HostId", "HTTPStatusCode", "HTTPHeaders")
                    }
                    del metadata["HTTPHeaders"]["date"]  # the two answers may be a second apart
    assert read["lean"] == read["botocore"]
    assert read["lean"][0]["ResponseMetadata"]["RequestId"] == "req-1"
    assert read["lean"][0]["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == EU
    assert read["lean"][0]["SSEKMSKeyId"] == KMS_KEY
    assert read["lean"][0]["Metadata"] == {"note": "second", "other": "kept"}


async def test_the_kept_readings_of_answer_headers_are_bounded() -> None:
    session = new_aio_session()
    session.set_credentials(*CREDENTIALS["long-term"][:2])
    transport = Transport(endpoint_url="http://127.0.0.1:9")  # nothing is sent
    async with (
        open_aio_client(session, "s3", EU, transport, bucket=BUCKET) as client,
        lean_beside(client, session, transport) as lean,
    ):
        operation = lean._operations["GetObject"]
        for n in range(operation.MAX_READINGS * 3):
            reading = operation.reading((b"ETag", f"x-amz-meta-K{n}".encode()))
            assert reading.names == ("etag", f"x-amz-meta-k{n}")
            assert reading.metas == ((f"x-amz-meta-k{n}", f"k{n}"),)
            assert len(operation.readings) <= operation.MAX_READINGS


@pytest.mark.parametrize("content_type", [None, "text/csv"])
async def test_lean_put_sends_the_content_type_botocore_sends_and_no_other(
    content_type: str | None,
) -> None:
    # aiohttp would label a bytes body application/octet-stream; botocore sends what the
    # caller names, or no Content-Type at all (S3 then stores its default).
    with stub_server(lambda method, path: (200, {"ETag": '"abc"'}, b"")) as stub:
        session = new_aio_session()
        session.set_credentials(*CREDENTIALS["long-term"][:2])
        transport = Transport(endpoint_url=stub.url)
        named = {"ContentType": content_type} if content_type else {}
        async with (
            open_aio_client(session, "s3", EU, transport, bucket=BUCKET) as client,
            lean_beside(client, session, transport) as lean,
        ):
            for sender in (client, lean):
                await sender.put_object(
                    Bucket=BUCKET, Key="k", Body=BODY, ChecksumSHA256=BODY_SHA256, **named
                )
    botocore_sent, lean_sent = stub.headers
    assert lean_sent.get("content-type") == botocore_sent.get("content-type") == content_type
    assert lean_sent["content-length"] == botocore_sent["content-length"] == str(len(BODY))


def stored_object_headers(kms_key: str, sha256_b64: str) -> dict[str, str]:
    """What a stub answers of an object stored under ``kms_key`` with that SHA-256."""
    return {
        "ETag": '"abc"',
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": kms_key,
        "x-amz-checksum-sha256": sha256_b64,
        "x-amz-checksum-type": "FULL_OBJECT",
    }


@pytest.mark.parametrize("transport", ["lean", "botocore"])
async def test_get_whose_body_does_not_match_its_checksum_raises_and_returns_nothing(
    key_arn_map: Path, transport: str
) -> None:
    eu_key = RegionMap.load(key_arn_map).region(Region.EU).kms_key
    served = b"what the server sends"
    claimed = base64.b64encode(hashlib.sha256(b"what was stored").digest()).decode()

    def wrong_checksum(method: str, path: str) -> Reply:
        headers = stored_object_headers(eu_key, claimed)
        return 200, {**headers, "Content-Type": "application/octet-stream"}, served

    with stub_server(wrong_checksum) as stub:
        settings = unverified(key_arn_map, stub.url, transport=transport, retry_max_attempts=2)
        async with ResidencyRouter.from_settings(settings) as router:
            got: list[bytes] = []
            stub.requests.clear()
            with pytest.raises(RegionUnavailableError, match="FlexibleChecksumError"):
                got.append(await router.get(ORG, "a.txt"))
            with pytest.raises(RegionUnavailableError, match="FlexibleChecksumError"):
                got.append((await router.get_object(ORG, "a.txt")).body)
            assert got == []
            # One request per read, on both transports: the body came and was refused.
            assert [method for method, _ in stub.requests] == ["GET"] * 2


@pytest.mark.parametrize("transport", ["lean", "botocore"])
async def test_put_answered_200_with_an_error_body_is_retried_not_taken_for_a_write(
    key_arn_map: Path, transport: str
) -> None:
    # S3 can answer 200 and put an <Error> in the body; botocore treats that as a 500. A put
    # so answered must be retried and, if that is all S3 says, fail: never a success.
    error = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message>"
        b"</Error>"
    )

    def error_in_200(method: str, path: str) -> Reply:
        return 200, {"Content-Type": "application/xml"}, error

    with stub_server(error_in_200) as stub:
        settings = unverified(key_arn_map, stub.url, transport=transport, retry_max_attempts=2)
        async with ResidencyRouter.from_settings(settings) as router:
            stub.requests.clear()
            with pytest.raises(RegionUnavailableError, match="InternalError"):
                await router.put(ORG, "a.txt", b"never stored")
            assert [method for method, _ in stub.requests] == ["PUT"] * 2


@pytest.mark.parametrize("transport", ["lean", "botocore"])
async def test_a_cookie_set_by_one_answer_is_never_sent_with_a_later_request(
    key_arn_map: Path, transport: str
) -> None:
    # A load balancer or gateway in front of S3 may set cookies; the next request may be
    # another org's. botocore (urllib3) keeps no cookies; neither does the router.
    eu_key = RegionMap.load(key_arn_map).region(Region.EU).kms_key
    body = b"stored bytes"

    def with_cookie(method: str, path: str) -> Reply:
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        headers = stored_object_headers(eu_key, checksum)
        headers["Set-Cookie"] = "AWSALB=org-acme-sticky; Path=/"
        return 200, headers, b"" if method == "PUT" else body

    with stub_server(with_cookie) as stub:
        # A host name: aiohttp's default cookie jar would drop cookies from an IP address.
        endpoint = stub.url.replace("127.0.0.1", "localhost")
        settings = unverified(key_arn_map, endpoint, transport=transport, allow_plain_http=True)
        async with ResidencyRouter.from_settings(settings) as router:
            stub.headers.clear()
            await router.put(ORG, "a.txt", body)
            assert await router.get(ORG, "a.txt") == body
            await router.put(ORG, "b.txt", body)
    assert len(stub.headers) == 3
    assert [h for h in stub.headers if "cookie" in h] == []
