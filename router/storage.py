"""StoragePool: one S3 and KMS client per AWS region; SSE-KMS writes and key-checked reads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import ssl
import time
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
)
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol, Self, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.utils import S3RegionRedirectorv2

from router._retry import RetryPolicy, error_code, is_transient
from router.config import MAX_PARTS, RouterSettings
from router.errors import (
    InvalidKeyError,
    ObjectNotFoundError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
    first_error,
)
from router.regions import RegionConfig, RegionMap, parse_kms_arn
from router.types import AwsRegion, HealthState, Placement, RegionHealth

T = TypeVar("T")

SSE = "aws:kms"
STREAM_CHUNK = 1024 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_REDIRECT_CODES = frozenset({"PermanentRedirect", "TemporaryRedirect", "Redirect"})
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
_HEALTH_WINDOW = 100
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys

ProblemKind = Literal["violation", "unavailable", "storage"]


class _NoRedirectClientSession:
    """Wraps aiohttp's session so that no request follows a redirect."""

    __slots__ = ("_session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(self, method: str, **kwargs: Any) -> Any:
        # aiohttp follows any 3xx with a Location header, body included, before botocore
        # sees the response; a redirect must reach the residency guard instead.
        return self._session.request(method, allow_redirects=False, **kwargs)


class NoRedirectAIOHTTPSession(AIOHTTPSession):
    """aiobotocore's aiohttp session that never follows redirects and requires TLS >= 1.2.

    Relies on ``AIOHTTPSession._get_session`` of the pinned aiobotocore (3.10.0).
    """

    def _get_ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = super()._get_ssl_context()  # type: ignore[misc]
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _get_session(self, proxy_url: str | None) -> Any:
        session = await super()._get_session(proxy_url)  # type: ignore[misc]
        return _NoRedirectClientSession(session)


def _drop_expect_continue(request: Any, **_: Any) -> None:
    """Send bodies at once instead of waiting for ``100 Continue``.

    aiohttp applies no timeout while it waits for ``100 Continue``: an endpoint that accepts
    the connection and never answers would hold a PUT forever. Without the header the read
    timeout covers the wait. SigV4 never signs ``Expect``, so dropping it is safe.
    """
    if "Expect" in request.headers:
        del request.headers["Expect"]


def _redirect_guard(aws_region: AwsRegion, bucket: str) -> Callable[..., None]:
    """Return a ``needs-retry.s3`` handler that stops botocore's S3 region redirector."""

    def guard(response: Any = None, operation: Any = None, **_: Any) -> None:
        if response is None:
            return
        http, parsed = response
        status = getattr(http, "status_code", None)
        if not isinstance(parsed, dict):
            parsed = {}
        metadata = parsed.get("ResponseMetadata", {})
        headers = metadata.get("HTTPHeaders", {}) or {}
        if status is not None and status < 300 and "Error" not in parsed:
            # The common case, a success, costs one header check. (A 200 can still carry an
            # error: S3 answers a failed CompleteMultipartUpload that way.)
            reported = headers.get("x-amz-bucket-region")
            if not reported or reported == aws_region:
                return
        error = parsed.get("Error", {})
        code = error.get("Code")
        bucket_region = headers.get("x-amz-bucket-region")
        wrong_region = bool(bucket_region) and bucket_region != aws_region
        signing = code == "AuthorizationHeaderMalformed" and "Region" in error
        if (
            status in _REDIRECT_STATUSES
            or code in _REDIRECT_CODES
            or wrong_region
            or signing
            or code == "IllegalLocationConstraintException"
        ):
            where = f" (bucket reports region {bucket_region})" if bucket_region else ""
            raise ResidencyViolationError(
                f"S3 answered {status} {code or ''} for bucket {bucket} in {aws_region}{where}: "
                "redirects and region mismatches are refused, never followed"
            )
        name = getattr(operation, "name", "")
        if status == 400 and name in ("HeadObject", "HeadBucket"):
            # botocore would probe the bucket's region here and re-send elsewhere.
            raise StorageError(f"S3 refused {name} on bucket {bucket} in {aws_region}", code="400")

    return guard


def _remove_region_redirector(client: Any) -> bool:
    """Unregister botocore's S3 region redirector from ``client``; True when it was there.

    The redirector exists to re-send a request to whatever region S3 names in an error,
    which residency forbids. It is not what keeps data in place (the redirect guard refuses
    such answers, and stays first in line); removing it spares every call its three
    handlers, which cost more than the router's own code per 1 KiB read (measured with
    callgrind, see README "Performance"). Finding it relies on botocore's emitter internals
    (``_emitter._handlers``): if they change, the redirector stays and the guard still
    stops it; a test notices on the pinned versions.
    """
    events = client.meta.events
    try:
        handlers = getattr(events, "_emitter", events)._handlers.prefix_search(
            "needs-retry.s3.GetObject"
        )
    except AttributeError:
        return False
    redirectors = {
        owner
        for owner in (getattr(handler, "__self__", None) for handler in handlers)
        if isinstance(owner, S3RegionRedirectorv2)
    }
    for redirector in redirectors:
        events.unregister("needs-retry.s3", redirector.redirect_from_error)
        events.unregister("before-parameter-build.s3", redirector.annotate_request_context)
        events.unregister("before-endpoint-resolution.s3", redirector.redirect_from_cache)
    return bool(redirectors)


class BucketRef(Protocol):
    """Anything that names one bucket in one AWS region (a Placement, a RegionConfig)."""

    @property
    def aws_region(self) -> AwsRegion:
        """The bucket's AWS region."""
        ...

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        ...


@dataclass(slots=True)
class _RegionState:
    outcomes: deque[bool] = field(default_factory=lambda: deque(maxlen=_HEALTH_WINDOW))
    last_success: float | None = None  # time.time(): converted only when health() is read
    quarantine: tuple[ProblemKind, str] | None = None


@dataclass(frozen=True, slots=True)
class RegionCheck:
    """Result of verifying one region: its resolved key ARN and any problems."""

    key_arn: str | None
    problems: list[tuple[ProblemKind, str]]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What S3 reports about one stored object."""

    key: str
    size: int
    version_id: str | None
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a write produced."""

    version_id: str | None
    sha256: str


class _Chunks:
    """Pulls a body into whole parts; never holds more than it was asked to fill."""

    __slots__ = ("_exhausted", "_hasher", "_pending", "_pending_bytes", "_source")

    def __init__(self, source: AsyncIterator[bytes] | None) -> None:
        self._source = source
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._exhausted = source is None
        self._hasher = hashlib.sha256()

    async def absorb(self, body: bytes) -> None:
        """Take a whole in-memory body (hashed off the event loop when large)."""
        if body:
            await _hash_into(self._hasher, body)
            self._pending.append(memoryview(body))
            self._pending_bytes += len(body)

    @property
    def pending(self) -> int:
        return self._pending_bytes

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def sha256(self) -> str:
        return self._hasher.hexdigest()

    async def fill(self, size: int) -> None:
        while self._pending_bytes < size and self._source is not None and not self._exhausted:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._exhausted = True
                break
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise InvalidKeyError(
                    f"body chunks must be bytes, got {type(chunk).__name__}; nothing was stored"
                )
            if chunk:
                view = memoryview(chunk).cast("B")
                self._hasher.update(view)
                self._pending.append(view)
                self._pending_bytes += len(view)

    def take(self, size: int) -> bytes:
        pieces: list[memoryview] = []
        taken = 0
        while self._pending and taken < size:
            head = self._pending[0]
            need = size - taken
            if len(head) <= need:
                pieces.append(self._pending.popleft())
                taken += len(head)
            else:
                pieces.append(head[:need])
                self._pending[0] = head[need:]
                taken += need
        self._pending_bytes -= taken
        return b"".join(pieces)  # one copy, whatever the number of chunks


def client_config(settings: RouterSettings) -> AioConfig:
    """The AioConfig of every regional client (benchmarks build raw clients from it too)."""
    s3_options: dict[str, Any] = {}
    if settings.endpoint_url:
        s3_options["addressing_style"] = "path"
    return AioConfig(
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_pool_connections=settings.max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        http_session_cls=NoRedirectAIOHTTPSession,
        ignore_configured_endpoint_urls=True,
        s3=s3_options,
        user_agent_extra="residency-router",
    )


class _PartStream(io.RawIOBase):
    """A read-only stream over a part's bytes that never copies more than one read.

    aiohttp copies a ``BytesIO`` body whole, and a ``bytes`` body the socket cannot take at
    once into its own buffer: either doubles the memory of every part in flight.
    """

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}
        self._position = max(0, min(len(self._view), base[whence] + offset))
        return self._position

    def readinto(self, buffer: Any) -> int:
        end = min(len(self._view), self._position + len(buffer))
        count = end - self._position
        buffer[:count] = self._view[self._position : end]
        self._position = end
        return count

    def __len__(self) -> int:
        return len(self._view)


class StoragePool:
    """One S3 and one KMS client per AWS region of the map, made on entry and reused.

    Every S3 client refuses redirects at both layers (aiohttp and botocore's region
    redirector), ignores ``AWS_ENDPOINT_URL*`` variables, and has botocore's own retries off:
    :mod:`router._retry` retries whole idempotent operations in the same region only.
    """

    def __init__(self, region_map: RegionMap, settings: RouterSettings) -> None:
        self._map = region_map
        self._settings = settings
        self._retry = RetryPolicy(settings.retry_max_attempts, settings.retry_deadline_s)
        self._stack = AsyncExitStack()
        self._s3: dict[AwsRegion, Any] = {}
        self._kms: dict[AwsRegion, Any] = {}
        self._owner: dict[AwsRegion, dict[str, str]] = {}
        self._state: dict[AwsRegion, _RegionState] = {}
        for cfg in region_map:
            self._owner[cfg.aws_region] = (
                {"ExpectedBucketOwner": cfg.account_id} if cfg.account_id else {}
            )
            self._state[cfg.aws_region] = _RegionState()

    async def __aenter__(self) -> Self:
        session = get_session()
        # botocore reads its JSON data files synchronously; do it off the event loop.
        await asyncio.to_thread(_warm_loader, session)
        config = client_config(self._settings)
        endpoint = self._settings.endpoint_url
        try:
            for cfg in self._map:
                s3 = await self._stack.enter_async_context(
                    session.create_client(
                        "s3", region_name=cfg.aws_region, config=config, endpoint_url=endpoint
                    )
                )
                _remove_region_redirector(s3)
                s3.meta.events.register_first(
                    "needs-retry.s3", _redirect_guard(cfg.aws_region, cfg.bucket)
                )
                for operation in ("PutObject", "UploadPart"):  # the bodies botocore marks
                    s3.meta.events.register(f"before-send.s3.{operation}", _drop_expect_continue)
                self._s3[cfg.aws_region] = s3
                self._kms[cfg.aws_region] = await self._stack.enter_async_context(
                    session.create_client(
                        "kms", region_name=cfg.aws_region, config=config, endpoint_url=endpoint
                    )
                )
                # Making a client is a few ms of CPU and never yields: let others run
                # between regions instead of holding the loop for all of them.
                await asyncio.sleep(0)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client."""
        self._s3.clear()
        self._kms.clear()
        await self._stack.aclose()

    def register(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Register a botocore event handler on every S3 client (tests, tracing)."""
        for client in self._s3.values():
            client.meta.events.register(event_name, handler)

    # -- health -------------------------------------------------------------------------

    def quarantine(self, aws_region: AwsRegion, kind: ProblemKind, reason: str) -> None:
        """Refuse every later operation in ``aws_region`` (verify found it unsafe)."""
        self._state[aws_region].quarantine = (kind, reason)

    def health(self, aws_region: AwsRegion) -> RegionHealth:
        """Return one region's health as seen by this pool."""
        state = self._state[aws_region]
        outcomes = state.outcomes
        rate = (outcomes.count(False) / len(outcomes)) if outcomes else 0.0
        status: HealthState = "ok"
        reason = ""
        if state.quarantine is not None:
            status, reason = "quarantined", state.quarantine[1]
        elif rate >= 0.5 or (outcomes and not outcomes[-1]):
            status, reason = "degraded", f"{rate:.0%} of recent requests failed"
        last = state.last_success
        when = None if last is None else datetime.fromtimestamp(last, UTC)
        return RegionHealth(status, when, rate, reason)

    def _admit(self, aws_region: AwsRegion) -> Any:
        state = self._state.get(aws_region)
        client = self._s3.get(aws_region)
        if state is None or client is None:
            raise RuntimeError("the storage pool is closed or has no client for this region")
        if state.quarantine is not None:
            kind, reason = state.quarantine
            if kind == "violation":
                raise ResidencyViolationError(f"region {aws_region} is quarantined: {reason}")
            raise RegionUnavailableError(f"region {aws_region} is quarantined: {reason}")
        return client

    def _record(self, aws_region: AwsRegion, ok: bool) -> None:
        state = self._state[aws_region]
        state.outcomes.append(ok)
        if ok:
            state.last_success = time.time()

    async def _run(
        self,
        aws_region: AwsRegion,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = True,
    ) -> T:
        """Run one S3/KMS call with retries in this region; translate failures."""
        started = time.monotonic()
        try:
            try:  # the first attempt inline (RetryPolicy.call's fast path, one coroutine less)
                result = await operation()
            except Exception as exc:
                result = await self._retry.after_first(
                    operation, exc, started, idempotent=idempotent
                )
        except ResidencyError:
            self._record(aws_region, True)
            raise
        except ClientError as exc:
            code = error_code(exc)
            if is_transient(exc):
                self._record(aws_region, False)
                raise RegionUnavailableError(
                    f"{what} in {aws_region} failed after retries ({code}); "
                    "retry later in the same region"
                ) from exc
            self._record(aws_region, True)
            if code in _NOT_FOUND:
                raise ObjectNotFoundError(f"{what}: no such object in {aws_region}") from exc
            raise StorageError(f"{what} refused in {aws_region}", code=code) from exc
        except NoCredentialsError as exc:
            raise StorageError(
                f"{what} in {aws_region}: no AWS credentials were found; configure them",
                code="NoCredentialsError",
            ) from exc
        except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._record(aws_region, False)
            raise RegionUnavailableError(
                f"{what} in {aws_region} failed after retries ({type(exc).__name__}); "
                "retry later in the same region"
            ) from exc
        self._record(aws_region, True)
        return result

    # -- verification -------------------------------------------------------------------

    async def _describe_key(self, cfg: RegionConfig) -> Mapping[str, Any]:
        kms = self._kms[cfg.aws_region]
        response = await self._run(
            cfg.aws_region,
            f"describing the KMS key of regions.{cfg.region.value}",
            lambda: kms.describe_key(KeyId=cfg.kms_key),
        )
        meta: Mapping[str, Any] = response["KeyMetadata"]
        return meta

    async def resolve_key(self, cfg: RegionConfig) -> str:
        """Return the full key ARN behind a region's configured key or alias ARN.

        Raises:
            StorageError: KMS refused (no such key or alias, access denied).
            RegionUnavailableError: KMS failed after retries.
            ResidencyViolationError: the key lives in another AWS region.
        """
        parsed = parse_kms_arn(cfg.kms_key)
        if parsed is not None and not parsed.is_alias:
            return cfg.kms_key
        arn = parse_kms_arn(str((await self._describe_key(cfg)).get("Arn", "")))
        if arn is None or arn.aws_region != cfg.aws_region:
            raise ResidencyViolationError(
                f"regions.{cfg.region.value}.kms_key resolves to a key outside {cfg.aws_region}"
            )
        return arn.arn

    async def verify_region(self, cfg: RegionConfig) -> RegionCheck:
        """Check bucket location, bucket owner and the KMS key's region and state."""
        problems = await self._check_bucket(cfg)
        key_arn, key_problems = await self._check_key(cfg)
        return RegionCheck(key_arn, problems + key_problems)

    async def _check_bucket(self, cfg: RegionConfig) -> list[tuple[ProblemKind, str]]:
        s3 = self._s3[cfg.aws_region]
        where = f"regions.{cfg.region.value}"
        try:
            location = await self._run(
                cfg.aws_region,
                f"locating bucket {cfg.bucket}",
                lambda: s3.get_bucket_location(Bucket=cfg.bucket, **self._owner[cfg.aws_region]),
            )
        except ResidencyViolationError as exc:
            return [("violation", f"{where}: {exc}")]
        except StorageError as exc:
            # With ExpectedBucketOwner set, S3 answers AccessDenied for another owner's bucket.
            owned = bool(cfg.account_id) and exc.code == "AccessDenied"
            owner = f" (expected owner {cfg.account_id})" if cfg.account_id else ""
            kind: ProblemKind = "violation" if owned else "storage"
            return [(kind, f"{where}: bucket {cfg.bucket}: {exc}{owner}")]
        except RegionUnavailableError as exc:
            return [("unavailable", f"{where}: {exc}")]
        actual = location.get("LocationConstraint") or "us-east-1"
        actual = "eu-west-1" if actual == "EU" else actual
        if actual != cfg.aws_region:
            message = f"{where}: bucket {cfg.bucket} is in {actual}, not {cfg.aws_region}"
            return [("violation", message)]
        return []

    async def _check_key(
        self, cfg: RegionConfig
    ) -> tuple[str | None, list[tuple[ProblemKind, str]]]:
        where = f"regions.{cfg.region.value}.kms_key"
        try:
            meta = await self._describe_key(cfg)
        except StorageError as exc:
            return None, [("storage", f"{where}: {exc}")]
        except RegionUnavailableError as exc:
            return None, [("unavailable", f"{where}: {exc}")]
        arn = parse_kms_arn(str(meta.get("Arn", "")))
        if arn is None or arn.aws_region != cfg.aws_region:
            found = arn.aws_region if arn else "an unknown region"
            return None, [
                ("violation", f"{where}: key is in {found}, bucket region is {cfg.aws_region}")
            ]
        if meta.get("MultiRegion"):
            return None, [("violation", f"{where}: a multi-region key may be replicated elsewhere")]
        if cfg.account_id and arn.account != cfg.account_id:
            return None, [("violation", f"{where}: key belongs to account {arn.account}")]
        if meta.get("KeyState") != "Enabled":
            return None, [("storage", f"{where}: key state is {meta.get('KeyState')}")]
        return arn.arn, []

    # -- writes -------------------------------------------------------------------------

    def _encryption(self, place: Placement) -> dict[str, Any]:
        return {
            "Bucket": place.bucket,
            "ServerSideEncryption": SSE,
            "SSEKMSKeyId": place.kms_key_arn,
            "BucketKeyEnabled": True,
            **self._owner[place.aws_region],
        }

    async def put(
        self,
        place: Placement,
        key: str,
        body: bytes | bytearray | memoryview | AsyncIterable[bytes],
        *,
        tagging: str,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> PutResult:
        """Write one object under the placement's key; multipart above the threshold.

        Raises:
            ResidencyViolationError: S3 reports another key or a redirect; nothing kept.
            StorageError: S3 or KMS refused the write.
            RegionUnavailableError: the region failed after retries; nothing kept.
        """
        client = self._admit(place.aws_region)
        extra: dict[str, Any] = {"Tagging": tagging}
        if content_type:
            extra["ContentType"] = content_type
        if metadata:
            extra["Metadata"] = dict(metadata)
        threshold = self._settings.multipart_threshold
        if type(body) is bytes and len(body) <= min(threshold, HASH_OFF_LOOP_BYTES):
            # Small in-memory bodies (most of them): one hash, one PutObject.
            sha = hashlib.sha256(body).hexdigest()
            return await self._put_single(client, place, key, body, sha, extra)
        if isinstance(body, bytes | bytearray | memoryview):
            chunks = _Chunks(None)
            # A mutable buffer is copied so the caller cannot change it mid-upload.
            await chunks.absorb(body if isinstance(body, bytes) else bytes(body))
        elif isinstance(body, AsyncIterable):
            chunks = _Chunks(aiter(body))
            await chunks.fill(threshold + 1)
        else:
            raise InvalidKeyError(
                f"body must be bytes or an async iterable of bytes, got {type(body).__name__}"
            )
        if chunks.exhausted and chunks.pending <= threshold:
            data = chunks.take(chunks.pending)
            return await self._put_single(client, place, key, data, chunks.sha256(), extra)
        return await self._put_multipart(client, place, key, chunks, extra)

    async def _put_single(
        self,
        client: Any,
        place: Placement,
        key: str,
        data: bytes,
        sha256_hex: str,
        extra: dict[str, Any],
    ) -> PutResult:
        checksum = base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")
        response = await self._run(
            place.aws_region,
            f"writing to bucket {place.bucket}",
            lambda: client.put_object(
                Key=key, Body=data, ChecksumSHA256=checksum, **self._encryption(place), **extra
            ),
        )
        version = response.get("VersionId")
        await self._confirm_key(client, place, key, version, response)
        return PutResult(version, sha256_hex)

    async def _put_multipart(
        self,
        client: Any,
        place: Placement,
        key: str,
        chunks: _Chunks,
        extra: dict[str, Any],
    ) -> PutResult:
        part_size = self._settings.multipart_part_size
        where = f"multipart upload to bucket {place.bucket}"
        created = await self._run(
            place.aws_region,
            where,
            lambda: client.create_multipart_upload(
                Key=key, ChecksumAlgorithm="SHA256", **self._encryption(place), **extra
            ),
            # A retry after a lost answer would leave the first upload behind.
            idempotent=False,
        )
        upload_id = created["UploadId"]
        owner = self._owner[place.aws_region]
        parts: dict[int, dict[str, Any]] = {}
        slots = asyncio.Semaphore(self._settings.multipart_concurrency)

        async def upload(number: int, data: bytes) -> None:
            try:
                digest = hashlib.sha256()
                await _hash_into(digest, data)
                checksum = base64.b64encode(digest.digest()).decode("ascii")
                response = await self._run(
                    place.aws_region,
                    f"{where}, part {number}",
                    # A fresh stream per attempt: aiohttp then sends the part in small reads
                    # instead of copying what the socket cannot take into its own buffer.
                    lambda: client.upload_part(
                        Bucket=place.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=_PartStream(data),
                        ChecksumSHA256=checksum,
                        **owner,
                    ),
                )
                parts[number] = {
                    "PartNumber": number,
                    "ETag": response["ETag"],
                    "ChecksumSHA256": checksum,
                }
            finally:
                slots.release()

        try:
            async with asyncio.TaskGroup() as group:
                number = 0
                while True:
                    # The slot is taken before the part is read, so at most `concurrency`
                    # parts are held in memory, the one being filled included.
                    await slots.acquire()
                    try:
                        await chunks.fill(part_size)
                    except BaseException:
                        slots.release()
                        raise
                    if chunks.pending == 0:
                        slots.release()
                        break
                    number += 1
                    if number > MAX_PARTS:
                        slots.release()
                        raise StorageError(
                            f"{where}: body exceeds {MAX_PARTS} parts of {part_size} bytes; "
                            "raise multipart_part_size"
                        )
                    group.create_task(upload(number, chunks.take(part_size)))
            completed = await self._run(
                place.aws_region,
                where,
                partial(self._complete, client, place, key, upload_id, parts, attempts=[0]),
            )
        except BaseException as exc:
            await _shielded(self._abort(client, place, key, upload_id))
            error = first_error(exc)
            if error is exc:
                raise
            raise error from None
        version = completed.get("VersionId")
        await self._confirm_key(client, place, key, version, completed)
        return PutResult(version, chunks.sha256())

    async def _complete(
        self,
        client: Any,
        place: Placement,
        key: str,
        upload_id: str,
        parts: Mapping[int, Mapping[str, Any]],
        *,
        attempts: list[int],
    ) -> Mapping[str, Any]:
        attempts[0] += 1
        ordered = [parts[n] for n in sorted(parts)]
        owner = self._owner[place.aws_region]
        try:
            response: Mapping[str, Any] = await client.complete_multipart_upload(
                Bucket=place.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": ordered},
                **owner,
            )
        except ClientError as exc:
            # A retry after a completion whose answer was lost finds no upload: the object
            # is ours if its composite checksum is the one our parts make.
            if attempts[0] == 1 or error_code(exc) != "NoSuchUpload":
                raise
            head = await client.head_object(
                Bucket=place.bucket, Key=key, ChecksumMode="ENABLED", **owner
            )
            digests = b"".join(base64.b64decode(p["ChecksumSHA256"]) for p in ordered)
            composite = base64.b64encode(hashlib.sha256(digests).digest()).decode("ascii")
            if str(head.get("ChecksumSHA256", "")).split("-")[0] != composite:
                raise
            return dict(head)
        return response

    async def _abort(self, client: Any, place: Placement, key: str, upload_id: str) -> None:
        with contextlib.suppress(ResidencyError, RuntimeError):
            await self._run(
                place.aws_region,
                "aborting a multipart upload",
                lambda: client.abort_multipart_upload(
                    Bucket=place.bucket,
                    Key=key,
                    UploadId=upload_id,
                    **self._owner[place.aws_region],
                ),
            )

    async def _confirm_key(
        self,
        client: Any,
        place: Placement,
        key: str,
        version: str | None,
        response: Mapping[str, Any],
    ) -> None:
        if "SSEKMSKeyId" not in response:
            response = await self._run(
                place.aws_region,
                f"checking a write to bucket {place.bucket}",
                lambda: client.head_object(
                    Bucket=place.bucket,
                    Key=key,
                    **({"VersionId": version} if version else {}),
                    **self._owner[place.aws_region],
                ),
            )
        problem = _key_problem(place, response)
        if problem is None:
            return
        # Keep nothing written under a foreign key: remove exactly that version.
        with contextlib.suppress(ResidencyError):
            await self._run(
                place.aws_region,
                "removing a misencrypted write",
                lambda: client.delete_object(
                    Bucket=place.bucket,
                    Key=key,
                    **({"VersionId": version} if version else {}),
                    **self._owner[place.aws_region],
                ),
            )
        raise ResidencyViolationError(f"write to bucket {place.bucket} {problem}; removed")

    # -- reads --------------------------------------------------------------------------

    def get(self, place: Placement, key: str) -> Coroutine[Any, Any, bytes]:
        """Read a whole object after checking it is under the region's key (await the result).

        A plain function returning the retried read: one coroutine less in flight per read.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._admit(place.aws_region)
        return self._run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            partial(self._read, client, place, key),
        )

    async def _read(self, client: Any, place: Placement, key: str) -> bytes:
        response = await client.get_object(
            Bucket=place.bucket, Key=key, ChecksumMode="ENABLED", **self._owner[place.aws_region]
        )
        async with response["Body"] as body:
            problem = _key_problem(place, response)
            if problem is not None:
                raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
            data: bytes = await body.read()
            return data

    async def stream(
        self, place: Placement, key: str, chunk_size: int = STREAM_CHUNK
    ) -> AsyncGenerator[bytes, None]:
        """Yield an object's bytes after checking its key; the connection is released on exit.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed (before or during the transfer).
        """
        client = self._admit(place.aws_region)
        response = await self._run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            lambda: client.get_object(
                Bucket=place.bucket,
                Key=key,
                ChecksumMode="ENABLED",
                **self._owner[place.aws_region],
            ),
        )
        body = response["Body"]
        try:
            problem = _key_problem(place, response)
            if problem is not None:
                raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
            try:
                async for chunk in body.iter_chunks(chunk_size):
                    yield chunk
            except (BotoCoreError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._record(place.aws_region, False)
                raise RegionUnavailableError(
                    f"reading from bucket {place.bucket} in {place.aws_region} broke off "
                    f"({type(exc).__name__}); retry later in the same region"
                ) from exc
        finally:
            body.close()

    async def head(self, place: Placement, key: str) -> StoredObject:
        """Return an object's size, version and time after checking its key.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's KMS key.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._admit(place.aws_region)
        response = await self._run(
            place.aws_region,
            f"reading from bucket {place.bucket}",
            lambda: client.head_object(
                Bucket=place.bucket, Key=key, **self._owner[place.aws_region]
            ),
        )
        problem = _key_problem(place, response)
        if problem is not None:
            raise ResidencyViolationError(f"object in bucket {place.bucket} {problem}")
        return StoredObject(
            key, int(response["ContentLength"]), response.get("VersionId"), response["LastModified"]
        )

    async def tags(self, ref: BucketRef, key: str) -> dict[str, str]:
        """Return an object's tags.

        Raises:
            ObjectNotFoundError: no such object.
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._admit(ref.aws_region)
        response = await self._run(
            ref.aws_region,
            f"reading tags in bucket {ref.bucket}",
            lambda: client.get_object_tagging(
                Bucket=ref.bucket, Key=key, **self._owner[ref.aws_region]
            ),
        )
        return {tag["Key"]: tag["Value"] for tag in response.get("TagSet", [])}

    async def list_objects(self, ref: BucketRef, prefix: str) -> AsyncIterator[StoredObject]:
        """Yield the current objects under ``prefix``, a page at a time.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._admit(ref.aws_region)
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": ref.bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            page = await self._run(
                ref.aws_region,
                f"listing bucket {ref.bucket}",
                partial(client.list_objects_v2, **args, **self._owner[ref.aws_region]),
            )
            for item in page.get("Contents", []):
                yield StoredObject(item["Key"], int(item["Size"]), None, item["LastModified"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def _version_pages(
        self, ref: BucketRef, prefix: str, delimiter: str | None = None
    ) -> AsyncIterator[Mapping[str, Any]]:
        client = self._admit(ref.aws_region)
        markers: dict[str, str] = {}
        while True:
            args: dict[str, Any] = {"Bucket": ref.bucket, "Prefix": prefix, **markers}
            if delimiter:
                args["Delimiter"] = delimiter
            page: Mapping[str, Any] = await self._run(
                ref.aws_region,
                f"listing versions in bucket {ref.bucket}",
                partial(client.list_object_versions, **args, **self._owner[ref.aws_region]),
            )
            yield page
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page["NextKeyMarker"]}
            if page.get("NextVersionIdMarker"):
                markers["VersionIdMarker"] = page["NextVersionIdMarker"]

    async def list_versions(
        self, ref: BucketRef, prefix: str
    ) -> AsyncIterator[tuple[str, str | None, bool]]:
        """Yield (key, version id, is delete marker) for every version under ``prefix``.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._version_pages(ref, prefix):
            for item in page.get("Versions", []):
                yield item["Key"], item.get("VersionId"), False
            for item in page.get("DeleteMarkers", []):
                yield item["Key"], item.get("VersionId"), True

    async def list_prefixes(self, ref: BucketRef, prefix: str) -> AsyncIterator[str]:
        """Yield the next-level ``/`` prefixes under ``prefix`` that hold any version.

        Version listings are used so that a prefix whose objects are all delete-marked is
        still found.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        async for page in self._version_pages(ref, prefix, "/"):
            for item in page.get("CommonPrefixes", []):
                yield item["Prefix"]

    async def delete_versions(self, ref: BucketRef, targets: list[tuple[str, str | None]]) -> int:
        """Delete the given (key, version id) pairs, 1000 a request; return how many went.

        Raises:
            StorageError: S3 refused any of them.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._admit(ref.aws_region)
        deleted = 0
        for start in range(0, len(targets), DELETE_BATCH):
            batch = [
                {"Key": key, **({"VersionId": version} if version else {})}
                for key, version in targets[start : start + DELETE_BATCH]
            ]
            response = await self._run(
                ref.aws_region,
                f"deleting from bucket {ref.bucket}",
                partial(
                    client.delete_objects,
                    Bucket=ref.bucket,
                    Delete={"Objects": batch, "Quiet": True},
                    **self._owner[ref.aws_region],
                ),
            )
            errors = response.get("Errors", [])
            if errors:
                raise StorageError(
                    f"S3 kept {len(errors)} versions in bucket {ref.bucket}",
                    code=str(errors[0].get("Code", "")),
                )
            deleted += len(batch)
        return deleted

    async def delete_object(self, ref: BucketRef, key: str) -> int:
        """Delete every version and delete marker of one key; return how many went.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        targets = [
            (found, version)
            async for found, version, _ in self.list_versions(ref, key)
            if found == key
        ]
        return await self.delete_versions(ref, targets)

    async def delete_prefix(self, ref: BucketRef, prefix: str) -> tuple[int, int]:
        """Delete every version and delete marker under ``prefix``.

        Deletes in batches while listing, so memory stays flat however much is there.

        Returns:
            (distinct keys, versions and delete markers) deleted.

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        keys: set[str] = set()
        versions = 0
        batch: list[tuple[str, str | None]] = []
        async for key, version, _ in self.list_versions(ref, prefix):
            keys.add(key)
            batch.append((key, version))
            if len(batch) == DELETE_BATCH:
                versions += await self.delete_versions(ref, batch)
                batch = []
        if batch:
            versions += await self.delete_versions(ref, batch)
        return len(keys), versions

    async def abort_uploads(
        self,
        ref: BucketRef,
        prefix: str,
        *,
        select: Callable[[str, datetime | None], bool] | None = None,
    ) -> int:
        """Abort multipart uploads under ``prefix`` (those ``select(key, initiated)`` picks).

        Raises:
            StorageError: S3 refused.
            RegionUnavailableError: the region failed after retries.
        """
        client = self._admit(ref.aws_region)
        owner = self._owner[ref.aws_region]
        targets: list[tuple[str, str]] = []
        markers: dict[str, str] = {}
        while True:
            page = await self._run(
                ref.aws_region,
                f"listing multipart uploads in bucket {ref.bucket}",
                partial(
                    client.list_multipart_uploads,
                    Bucket=ref.bucket,
                    Prefix=prefix,
                    **markers,
                    **owner,
                ),
            )
            for upload in page.get("Uploads", []):
                key, initiated = upload["Key"], upload.get("Initiated")
                if select is not None and not select(key, initiated):
                    continue
                targets.append((key, upload["UploadId"]))
            if not page.get("IsTruncated"):
                break
            markers = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }
        aborted = 0
        for key, upload_id in targets:
            try:
                await self._run(
                    ref.aws_region,
                    f"aborting a multipart upload in bucket {ref.bucket}",
                    partial(
                        client.abort_multipart_upload,
                        Bucket=ref.bucket,
                        Key=key,
                        UploadId=upload_id,
                        **owner,
                    ),
                )
            except ObjectNotFoundError:
                continue
            except StorageError as exc:
                if exc.code != "NoSuchUpload":
                    raise
                continue  # finished or aborted meanwhile: idempotent
            aborted += 1
        return aborted


HASH_OFF_LOOP_BYTES = 256 * 1024


async def _hash_into(hasher: Any, data: bytes | memoryview) -> None:
    """Hash ``data``; above 256 KiB in a worker thread (hashlib releases the GIL there)."""
    if len(data) < HASH_OFF_LOOP_BYTES:
        hasher.update(data)
    else:
        await asyncio.to_thread(hasher.update, data)


def _key_problem(place: Placement, response: Mapping[str, Any]) -> str | None:
    algorithm = response.get("ServerSideEncryption")
    key = response.get("SSEKMSKeyId")
    if algorithm != SSE:
        return f"is not SSE-KMS encrypted (found {algorithm or 'none'})"
    if key != place.kms_key_arn:
        return "is encrypted under a KMS key other than the region's"
    return None


async def _shielded(coro: Awaitable[None]) -> None:
    """Finish clean-up even if the caller is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _warm_loader(session: AioSession) -> None:
    loader = session.get_component("data_loader")
    for service in ("s3", "kms"):
        loader.load_service_model(service, "service-2")
        loader.load_service_model(service, "endpoint-rule-set-1")
    loader.load_data("endpoints")
    loader.load_data("partitions")
    loader.load_data("sdk-default-configuration")
