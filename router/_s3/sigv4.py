"""The lean transport's SigV4: botocore's ``S3SigV4Auth``, with less work per request.

The signing is botocore's own (its steps, its rules, its clock); what changes is what each
request costs: the headers to sign are selected once per set of names, the URL is not split
again, and what stays the same from one request to the next (the signing key, the second's
timestamp, the scope) is kept in a :class:`SigningCache`. ``tests/test_lean.py`` compares the
canonical request and the signature with botocore's for the same inputs, over http and https.
"""

from __future__ import annotations

import hashlib
import hmac
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from botocore import auth as botocore_auth
from botocore import compat as botocore_compat
from botocore.auth import SIGNED_HEADERS_BLACKLIST, S3SigV4Auth
from botocore.exceptions import NoCredentialsError
from multidict import CIMultiDict

# botocore's own host rule (default ports dropped); a botocore internal, checked by
# tests/test_deps.py so that an upgrade that moves it fails there, not in production.
HOST_FROM_URL: Callable[[str], str] = botocore_auth._host_from_url  # type: ignore[attr-defined]


# The headers botocore never signs (its list, as a set).
_NOT_SIGNED = frozenset(SIGNED_HEADERS_BLACKLIST)


class HeaderMap:
    """The headers to sign, as botocore's signer reads them (``get_all``).

    Made once per request, once every header is set: ``pairs`` are the lowercase names and
    their values, and ``names`` the names, in SigV4's order (sorted).
    """

    __slots__ = ("names", "pairs")

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.names = [name for name, _ in pairs]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


# How a request's header names (as set, in order) become the signed ones: for each lowercase
# name but botocore's blacklisted, in sorted order, the position of its last value (-1:
# ``host``, from the URL).
_Selection = list[tuple[str, int]]


def _selection(names: tuple[str, ...]) -> _Selection:
    """The headers botocore signs, as positions in ``names`` (see :data:`_Selection`)."""
    last: dict[str, int] = {}
    for position, name in enumerate(names):
        lname = name.lower()
        if lname not in _NOT_SIGNED:
            # Lean requests carry each name once (CIMultiDict replaces a case variant); were
            # one repeated, its last value would be signed, not botocore's comma-joined list.
            last[lname] = position
    last.setdefault("host", -1)
    return sorted(last.items())


class SigningCache:
    """What the signing of one bucket's requests can keep from one request to the next.

    * the signing key (four HMACs of the secret, the day, the region and the service, by
      botocore's own steps), per secret and day, as the other AWS SDKs keep it: as an HMAC
      already keyed with it, so only the last HMAC, of the string to sign, is made per request;
    * the SigV4 timestamp of the current second, while botocore's clock is botocore's own;
    * the credential scope of the day;
    * botocore's selection and order of the headers to sign for each set of header names
      seen (a request's names are the last one's but for its metadata), bounded.
    """

    __slots__ = ("_scoped", "_stamped", "keys", "selections")

    MAX_SELECTIONS = 256

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], hmac.HMAC] = {}
        self.selections: dict[tuple[str, ...], _Selection] = {}
        # Each pair is replaced whole, so a reader never sees one's key with another's value.
        self._stamped: tuple[int, str] = (-1, "")
        self._scoped: tuple[tuple[str, str, str], str] = (("", "", ""), "")

    def timestamp(self) -> str:
        """The SigV4 timestamp of botocore's clock now (``botocore.auth.get_current_datetime``).

        botocore's own clock reads the system's real-time clock, as ``time.time_ns`` does,
        and the timestamp keeps its whole seconds: while it is botocore's, the second is read
        there (in integer nanoseconds, so floored exactly as ``datetime.now`` floors it; a
        float would round up in the last fraction of a microsecond) and formatted once. A
        clock put in its place (a test's, or botocore.compat's ``datetime`` replaced) is read as
        botocore reads it, on every request.
        """
        clock = botocore_auth.get_current_datetime  # type: ignore[attr-defined]
        stock = getattr(botocore_compat, "datetime", None) is _DATETIME_MODULE
        if clock is not _BOTOCORE_CLOCK or not stock:
            return sigv4_timestamp(clock())
        second = wall_clock() // 1_000_000_000  # floored, as datetime.now floors it
        stamped = self._stamped
        if stamped[0] == second:
            return stamped[1]
        stamp = sigv4_timestamp(datetime.fromtimestamp(second, UTC).replace(tzinfo=None))
        self._stamped = (second, stamp)
        return stamp

    def scope(self, day: str, aws_region: str, service: str) -> str:
        """The credential scope as botocore makes it: ``{day}/{region}/{service}/aws4_request``."""
        key = (day, aws_region, service)
        scoped = self._scoped
        if scoped[0] == key:
            return scoped[1]
        scope = f"{day}/{aws_region}/{service}/aws4_request"
        self._scoped = (key, scope)
        return scope

    def selection(self, names: tuple[str, ...]) -> _Selection:
        """:func:`_selection` of ``names``, kept for the next request with the same names."""
        selection = self.selections.get(names)
        if selection is None:
            if len(self.selections) >= self.MAX_SELECTIONS:
                self.selections.clear()
            selection = self.selections[names] = _selection(names)
        return selection


def _stock_clock() -> Callable[..., datetime] | None:
    """The clock botocore ships (``botocore.compat``'s), or None if replaced before this import."""
    clock: Callable[..., datetime] | None = getattr(botocore_compat, "get_current_datetime", None)
    if clock is None or getattr(clock, "__module__", None) != "botocore.compat":
        return None
    return clock


# botocore's clock as botocore ships it (a test may put another in its place, in
# botocore.auth or botocore.compat), the datetime module it reads, and the real-time clock.
_BOTOCORE_CLOCK = _stock_clock()
_DATETIME_MODULE = sys.modules["datetime"]
wall_clock = time.time_ns


class LeanSigner(S3SigV4Auth):
    """botocore's S3 SigV4 signer, its steps kept, with less work per request.

    botocore keeps them in ``HTTPHeaders`` (an ``email.message.Message``), which costs about
    a third of a small request's CPU; the selection is botocore's own (every header but the
    blacklisted, names lowercased, ``host`` from the URL when absent). The lean requests
    carry each header once, so ``get_all`` has one value; every URL of one bucket has the
    same host, worked out once by botocore's rule (:func:`HOST_FROM_URL`); the signer asks
    for the map twice while the headers stay as they are, so it is made once per request.
    The map's names are lowercase and unique, so the canonical headers and the signed-header
    list are botocore's with the set and lowercasing left out, from names sorted once (the
    signer sorted them three times a request); each value goes through botocore's
    ``_header_value`` (trim, inner runs of spaces made one) unless it holds no whitespace,
    which that would leave as it is.
    What can be kept from one request to the next (the signing key, the second's timestamp,
    the credential scope, the selection of the headers) is kept in a :class:`SigningCache`;
    the string to sign and the scopes are botocore's, written as f-strings.
    ``tests/test_lean.py`` compares the canonical request and signature with botocore's for
    the same inputs.
    """

    def __init__(self, credentials: Any, aws_region: str, host: str, cache: SigningCache) -> None:
        super().__init__(credentials, "s3", aws_region)
        self._host = host
        self._cache = cache

    def signature(self, string_to_sign: str, request: Any) -> str:
        day: str = request.context["timestamp"][0:8]
        signer: Any = self  # botocore's attributes, not all in its type stubs
        secret: str = signer.credentials.secret_key
        keys = self._cache.keys
        keyed = keys.get((secret, day))
        if keyed is None:
            sign = signer._sign
            k_date = sign(f"AWS4{secret}".encode(), day)
            k_region = sign(k_date, signer._region_name)
            k_service = sign(k_region, signer._service_name)
            k_signing = sign(k_service, "aws4_request")
            keyed = hmac.new(k_signing, digestmod=hashlib.sha256)
            keys.clear()  # one secret and day at a time: rotated secrets do not pile up
            keys[(secret, day)] = keyed
        # botocore's last step, HMAC-SHA256 of the string to sign under the signing key,
        # from a copy of the HMAC already keyed (keying it is most of an HMAC's cost).
        mac = keyed.copy()
        mac.update(string_to_sign.encode("utf-8"))
        return mac.hexdigest()

    def add_auth(self, request: Any) -> None:
        """The steps of botocore's ``add_auth``, in its order, without its four debug-log calls.

        botocore logs the canonical request and the string to sign at DEBUG level: both name
        the object's key, which the router never logs. The clock is botocore's
        (``botocore.auth.get_current_datetime``), or the real-time clock it reads while it is
        botocore's own (:meth:`SigningCache.timestamp`).
        """
        if self.credentials is None:
            raise NoCredentialsError()
        signer: Any = self  # botocore's attributes, not all in its type stubs
        request.context["timestamp"] = self._cache.timestamp()
        signer._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        signature = self.signature(string_to_sign, request)
        signer._inject_signature_to_request(request, signature)

    def canonical_request(self, request: Any) -> str:
        """The canonical request as botocore builds it, with the path and query already known.

        botocore splits the URL twice per request (for the path, then for the query); a
        lean URL is the bucket's URL (no query, checked once by
        :func:`router._s3.lean.bucket_url`) plus a percent-encoded key (no ``?`` or ``#``
        left), so its path is the bucket's path plus that key, and its query is empty. The
        rest is botocore's own steps, in its order.
        """
        signer: Any = self  # botocore's attributes, not all in its type stubs
        headers_to_sign = self.headers_to_sign(request)
        headers = request.headers
        if "X-Amz-Content-SHA256" in headers:
            body_checksum = headers["X-Amz-Content-SHA256"]
        else:
            body_checksum = signer.payload(request)
        return "\n".join(
            [
                request.method.upper(),
                signer._normalize_url_path(request.path),
                "",
                self.canonical_headers(headers_to_sign) + "\n",
                self.signed_headers(headers_to_sign),
                body_checksum,
            ]
        )

    def canonical_headers(self, headers_to_sign: Any) -> str:
        header_map: HeaderMap = headers_to_sign
        signer: Any = self  # botocore's attributes, not all in its type stubs
        trim = signer._header_value  # botocore's trim: ends cut, inner runs of spaces made one
        # A plain str with no space that is printable holds no whitespace at all (str.split's
        # whitespace is spaces, separators and control characters): trim leaves it as it is.
        # A str subclass is trimmed: an f-string would format it by its own __format__.
        return "\n".join(
            [
                f"{name}:{value}"
                if value.__class__ is str and " " not in value and value.isprintable()
                else f"{name}:{trim(value)}"
                for name, value in header_map.pairs
            ]
        )

    def signed_headers(self, headers_to_sign: Any) -> str:
        header_map: HeaderMap = headers_to_sign
        return ";".join(header_map.names)

    def headers_to_sign(self, request: Any) -> Any:
        header_map: HeaderMap | None = request.header_map
        if header_map is not None:
            return header_map
        headers = request.headers
        values = list(headers.values())
        host = self._host
        selection = self._cache.selection(tuple(headers.keys()))
        header_map = request.header_map = HeaderMap(
            [(name, values[at] if at >= 0 else host) for name, at in selection]
        )
        return header_map

    def credential_scope(self, request: Any) -> str:
        signer: Any = self  # botocore's attributes, not all in its type stubs
        day: str = request.context["timestamp"][0:8]
        return self._cache.scope(day, signer._region_name, signer._service_name)

    def scope(self, request: Any) -> str:
        signer: Any = self  # botocore's attributes, not all in its type stubs
        return f"{signer.credentials.access_key}/{self.credential_scope(request)}"

    def string_to_sign(self, request: Any, canonical_request: str) -> str:
        """The string to sign as botocore makes it (algorithm, timestamp, scope, request hash)."""
        digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
        timestamp: str = request.context["timestamp"]
        return f"AWS4-HMAC-SHA256\n{timestamp}\n{self.credential_scope(request)}\n{digest}"


def sigv4_timestamp(now: datetime) -> str:
    """``now.strftime(botocore.auth.SIGV4_TIMESTAMP)``, ``20261201T042019Z``, without strftime.

    ``isoformat`` and two replaces take about 60% of strftime's time.
    """
    if now.tzinfo is not None or now.year < 1000:  # not botocore's clock: botocore's way
        formatted: str = now.strftime(botocore_auth.SIGV4_TIMESTAMP)
        return formatted
    # Naive, as botocore's clock returns it: 2026-12-01T04:20:19.
    return now.isoformat(timespec="seconds").replace("-", "").replace(":", "") + "Z"


class SigningRequest:
    """What botocore's signer reads and writes of a request (``AWSRequest``'s attributes)."""

    __slots__ = ("body", "context", "header_map", "headers", "method", "params", "path", "url")

    def __init__(
        self, method: str, url: str, path: str, headers: CIMultiDict[str], body: bytes | None
    ) -> None:
        self.method = method
        self.url = url
        self.path = path  # the URL's path (``urlsplit(url).path``), known when it was made
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        self.context: dict[str, Any] = {}
        self.header_map: HeaderMap | None = None
