"""ResidencyRouter: resolve the org, decide with policy, carry it out in the org's region."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Self

from router.audit import AuditLog, Outcome
from router.config import RouterSettings
from router.errors import (
    InvalidKeyError,
    ObjectNotFoundError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
    UnknownOrgError,
    first_error,
)
from router.orgs import (
    CachedOrgDirectory,
    DynamoDBOrgDirectory,
    OrgDirectory,
    StaticOrgDirectory,
)
from router.policy import (
    KeptTags,
    WriteDecision,
    decide_exchange,
    decide_processing,
    decide_put,
    endpoint_rule,
    exchange_document,
    kept_tags,
    list_prefix,
    object_key,
    parse_data_class,
    parse_org_id,
    placement,
    plain_object_key,
    split_object_key,
)
from router.policy import explain as explain_decision
from router.regions import RegionMap
from router.retention import RetentionSweeper
from router.storage import ProblemKind, RegionCheck, StoragePool
from router.types import (
    TAG_ORG,
    TAG_TRAINING,
    TRAINING_OPT_IN,
    DataClass,
    DeleteReceipt,
    ErasureReceipt,
    Explanation,
    ObjectInfo,
    Operation,
    OrgId,
    OrgResidency,
    Placement,
    ProcessingRoute,
    PurgeReport,
    Region,
    RegionHealth,
    VerifyReport,
    WriteReceipt,
)

Body = bytes | bytearray | memoryview | AsyncIterable[bytes]
Clock = Callable[[], datetime]
TAG_READ_CONCURRENCY = 16


def utc_now() -> datetime:
    """The default clock: the current time in UTC."""
    return datetime.now(UTC)


class ResidencyRouter:
    """Routes every org's data to its residency region, and nowhere else.

    Make one with :meth:`from_settings` and use it as an async context manager; entering
    loads the region map, makes one client per AWS region, resolves KMS aliases and runs
    ``verify()`` as ``settings.verify_on_start`` says.
    """

    def __init__(
        self,
        settings: RouterSettings,
        directory: OrgDirectory | None = None,
        *,
        region_map: RegionMap | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._given_directory = directory
        self._map = region_map
        self._stack = AsyncExitStack()
        self._storage: StoragePool | None = None
        self._sweeper: RetentionSweeper | None = None
        self._directory: CachedOrgDirectory | None = None
        self._key_arns: dict[Region, str] = {}
        self._resolved: dict[str, _Resolved] = {}
        secret = settings.audit_hmac_secret
        self._audit = AuditLog(secret.get_secret_value().encode() if secret else None)
        self._state = "new"

    @classmethod
    def from_settings(
        cls,
        settings: RouterSettings,
        directory: OrgDirectory | None = None,
        *,
        clock: Clock = utc_now,
    ) -> ResidencyRouter:
        """Return a router for ``settings``; no I/O happens until it is entered.

        ``directory`` replaces the static/DynamoDB directory; it stays the caller's to close.
        ``clock`` returns the current UTC time (tests freeze it).
        """
        return cls(settings, directory, clock=clock)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a ResidencyRouter can be entered only once")
        self._state = "starting"
        try:
            await self._start()
        except BaseException:
            self._state = "closed"
            await self._stack.aclose()
            raise
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client and cancel directory lookups in flight."""
        if self._state == "closed":
            return
        self._state = "closed"
        await self._stack.aclose()

    async def _start(self) -> None:
        settings = self._settings
        if self._map is None:
            self._map = await asyncio.to_thread(RegionMap.load, settings.regions_file)
        region_map = self._map
        inner = self._given_directory
        if inner is None and settings.directory_table:
            default = region_map.processing.default_region
            aws_region = settings.directory_aws_region or region_map.region(default).aws_region
            inner = await self._stack.enter_async_context(
                DynamoDBOrgDirectory(
                    settings.directory_table,
                    aws_region=aws_region,
                    endpoint_url=settings.endpoint_url,
                    timeout_s=settings.directory_timeout_s,
                    default_retention_days=region_map.retention.inputs_outputs_days,
                )
            )
        elif inner is None:
            inner = StaticOrgDirectory.from_region_map(region_map)
        self._directory = CachedOrgDirectory(
            inner,
            ttl_s=settings.cache_ttl_s,
            negative_ttl_s=settings.negative_cache_ttl_s,
            max_orgs=settings.cache_max_orgs,
            timeout_s=settings.directory_timeout_s,
        )
        self._stack.push_async_callback(self._directory.aclose)
        self._storage = await self._stack.enter_async_context(StoragePool(region_map, settings))
        self._sweeper = RetentionSweeper(self._storage, region_map)
        await self._verify_on_start()

    async def _verify_on_start(self) -> None:
        assert self._map is not None
        assert self._storage is not None
        mode = self._settings.verify_on_start
        if mode == "off":
            await self._resolve_keys_only()
            return
        checks = await self._check_all()
        violations: list[str] = []
        others: list[str] = []
        for cfg in self._map:
            check = checks[cfg.region]
            # A quarantined region keeps its configured ARN: placement still resolves and
            # the storage pool refuses its operations.
            self._key_arns[cfg.region] = check.key_arn or cfg.kms_key
            for kind, problem in check.problems:
                (violations if kind == "violation" else others).append(problem)
            if check.problems and mode == "quarantine":
                kind, problem = _worst(check)
                self._storage.quarantine(cfg.aws_region, kind, problem)
        if mode == "strict" and (violations or others):
            message = "verify_on_start=strict: " + "; ".join(violations + others)
            if violations:
                raise ResidencyViolationError(message)
            if all(k == "unavailable" for c in checks.values() for k, _ in c.problems):
                raise RegionUnavailableError(message)
            raise StorageError(message)

    async def _resolve_keys_only(self) -> None:
        # Without verification the router still needs full key ARNs (writes name them,
        # reads compare with them). A region whose alias cannot be resolved is refused.
        assert self._map is not None
        assert self._storage is not None
        storage = self._storage
        configs = list(self._map)
        results = await asyncio.gather(
            *(storage.resolve_key(cfg) for cfg in configs), return_exceptions=True
        )
        for cfg, result in zip(configs, results, strict=True):
            if isinstance(result, str):
                self._key_arns[cfg.region] = result
            elif isinstance(result, Exception):
                self._key_arns[cfg.region] = cfg.kms_key
                kind: ProblemKind = (
                    "violation" if isinstance(result, ResidencyViolationError) else "unavailable"
                )
                storage.quarantine(cfg.aws_region, kind, f"KMS alias not resolved ({result})")
            else:
                raise result

    async def _check_all(self) -> dict[Region, RegionCheck]:
        assert self._map is not None
        assert self._storage is not None
        storage = self._storage
        configs = list(self._map)
        results = await asyncio.gather(*(storage.verify_region(cfg) for cfg in configs))
        return {cfg.region: check for cfg, check in zip(configs, results, strict=True)}

    def _open(self) -> tuple[StoragePool, CachedOrgDirectory, RegionMap]:
        if self._state != "open":
            state = "closed" if self._state == "closed" else "not started (use 'async with')"
            raise RuntimeError(f"this ResidencyRouter is {state}")
        assert self._storage is not None
        assert self._directory is not None
        assert self._map is not None
        return self._storage, self._directory, self._map

    @property
    def region_map(self) -> RegionMap:
        """The validated region map in use."""
        self._open()
        assert self._map is not None
        return self._map

    @property
    def storage(self) -> StoragePool:
        """The pool of regional clients (for event hooks in tests and tracing)."""
        return self._open()[0]

    @property
    def directory(self) -> CachedOrgDirectory:
        """The cached org directory in use."""
        return self._open()[1]

    # -- resolution ---------------------------------------------------------------------

    async def _org(self, org_id: str) -> tuple[OrgResidency, Placement]:
        resolved = await self._resolve_org(parse_org_id(org_id))
        return resolved.record, resolved.place

    async def _resolve_org(self, org: OrgId) -> _Resolved:
        directory = self._directory
        if directory is None or self._state != "open":
            self._open()  # raises the right RuntimeError
            raise AssertionError("unreachable")  # pragma: no cover
        record = directory.cached(org)
        if record is None:
            record = await directory.lookup(org)
        resolved = self._resolved.get(org)
        # The directory hands out one record object per lookup: identity says "unchanged".
        if resolved is None or resolved.record is not record:
            assert self._map is not None
            resolved = _Resolved(record, placement(record, self._map, self._key_arns))
            if len(self._resolved) >= self._settings.cache_max_orgs:
                self._resolved.clear()
            self._resolved[org] = resolved
        return resolved

    async def verify(self) -> VerifyReport:
        """Check every region now: bucket location and owner, KMS key region and state.

        The report lists problems per region; it does not raise for them.
        """
        self._open()
        checks = await self._check_all()
        by_region = {region: [p for _, p in check.problems] for region, check in checks.items()}
        return VerifyReport(ok=not any(by_region.values()), by_region=MappingProxyType(by_region))

    async def resolve(self, org_id: str) -> Placement:
        """Return where ``org_id``'s data lives.

        Raises:
            InvalidKeyError: the org id is malformed.
            UnknownOrgError: the org is not in the directory.
            DirectoryUnavailableError: the directory failed; retry later.
            ConfigError: the org's region is not in the region map.
        """
        return (await self._org(org_id))[1]

    # -- objects ------------------------------------------------------------------------

    async def put(
        self,
        org_id: str,
        key: str,
        body: Body,
        *,
        data_class: DataClass | str = DataClass.FILES,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> WriteReceipt:
        """Store ``body`` for ``org_id`` in its residency region under the region's KMS key.

        ``body`` is bytes, or an async iterable of bytes streamed through multipart upload.

        Raises:
            InvalidKeyError: bad org id, key, data class (``inputs_outputs`` included) or body.
            UnknownOrgError: the org is not in the directory; nothing was sent.
            DirectoryUnavailableError: the directory failed; nothing was sent.
            ResidencyViolationError: a redirect or a foreign KMS key; nothing kept.
            StorageError: S3 or KMS refused for good.
            RegionUnavailableError: the region failed after retries; retry there later.
        """
        started = time.perf_counter()
        storage = self._open()[0]
        decision = await self._plan_put(org_id, key, data_class, metadata)
        place, cls = decision.placement, decision.data_class
        try:
            result = await storage.put(
                place,
                decision.key,
                body,
                tagging=decision.tagging(),
                content_type=content_type,
                metadata=metadata,
            )
        except ResidencyError as exc:
            self._emit("put", place, cls, decision.key, started, exc)
            raise
        self._emit("put", place, cls, decision.key, started)
        return _receipt(decision, result.version_id, result.sha256)

    async def _plan_put(
        self,
        org_id: str,
        key: str,
        data_class: DataClass | str,
        metadata: Mapping[str, str] | None,
    ) -> WriteDecision:
        """The routing decision of one put, everything before I/O (the benchmarked path)."""
        org, cls, full_key = _checked_key(org_id, key, data_class)
        if metadata:
            _check_metadata(metadata)
        resolved = self._warm(org) or await self._resolve_org(org)
        kept = resolved.kept.get(cls)
        if kept is None and cls is not DataClass.INPUTS_OUTPUTS:
            kept = resolved.kept[cls] = kept_tags(resolved.record, cls)
        return decide_put(resolved.record, resolved.place, cls, key, full_key, kept)

    def _located(
        self, org_id: str, key: str, data_class: DataClass | str
    ) -> tuple[StoragePool, Placement, DataClass, str] | None:
        """Where an object operation goes when the org is cached (no await), else None."""
        storage = self._open()[0]
        org, cls, full = _checked_key(org_id, key, data_class)
        resolved = self._warm(org)
        return None if resolved is None else (storage, resolved.place, cls, full)

    async def _locate(
        self, org_id: str, key: str, data_class: DataClass | str
    ) -> tuple[StoragePool, Placement, DataClass, str]:
        """The cold path of :meth:`_located`: look the org up in the directory first."""
        storage = self._open()[0]
        org, cls, full = _checked_key(org_id, key, data_class)
        return storage, (await self._resolve_org(org)).place, cls, full

    def _warm(self, org: OrgId) -> _Resolved | None:
        """The org's derived record when the cache holds it unchanged (no await)."""
        resolved = self._resolved.get(org)
        directory = self._directory
        if resolved is None or directory is None:
            return None
        return resolved if directory.cached(org) is resolved.record else None

    async def get(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> bytes:
        """Return an object's bytes after checking it is under the region's KMS key.

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        started = time.perf_counter()
        storage, place, cls, full = self._located(org_id, key, data_class) or await self._locate(
            org_id, key, data_class
        )
        try:
            data = await storage.get(place, full)
        except ResidencyError as exc:
            self._emit("get", place, cls, full, started, exc)
            raise
        self._emit("get", place, cls, full, started)
        return data

    async def stream(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> AsyncIterator[bytes]:
        """Yield an object's bytes in chunks (not awaited: ``async for c in router.stream(...)``).

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed, before or during the transfer.
        """
        started = time.perf_counter()
        storage, place, cls, full = self._located(org_id, key, data_class) or await self._locate(
            org_id, key, data_class
        )
        chunks = storage.stream(place, full)
        try:
            async for chunk in chunks:
                yield chunk
        except ResidencyError as exc:
            self._emit("get", place, cls, full, started, exc)
            raise
        finally:
            await chunks.aclose()
        self._emit("get", place, cls, full, started)

    async def head(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> ObjectInfo:
        """Return an object's size, version and time after checking its KMS key.

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        started = time.perf_counter()
        storage, place, cls, full = self._located(org_id, key, data_class) or await self._locate(
            org_id, key, data_class
        )
        try:
            found = await storage.head(place, full)
        except ResidencyError as exc:
            self._emit("head", place, cls, full, started, exc)
            raise
        self._emit("head", place, cls, full, started)
        return ObjectInfo(place.org_id, cls, key, found.size, found.version_id, found.last_modified)

    async def delete(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> DeleteReceipt:
        """Delete every version and delete marker of one object; deleting again is a no-op.

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        started = time.perf_counter()
        storage, place, cls, full = self._located(org_id, key, data_class) or await self._locate(
            org_id, key, data_class
        )
        try:
            count = await storage.delete_object(place, full)
        except ResidencyError as exc:
            self._emit("delete", place, cls, full, started, exc)
            raise
        self._emit("delete", place, cls, full, started)
        return DeleteReceipt(place.org_id, place.region, key, count)

    async def list(
        self,
        org_id: str,
        *,
        data_class: DataClass | str | None = None,
        prefix: str = "",
    ) -> AsyncIterator[ObjectInfo]:
        """Yield the org's current objects (one class, or all), named by the caller's keys.

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        storage = self._open()[0]
        org = parse_org_id(org_id)
        classes = list(DataClass) if data_class is None else [parse_data_class(data_class)]
        prefixes = [list_prefix(org, cls, prefix) for cls in classes]
        _, place = await self._org(org)
        started = time.perf_counter()
        listed_class = classes[0] if len(classes) == 1 else DataClass.FILES
        self._emit("list", place, listed_class, None, started)
        for s3_prefix in prefixes:
            async for found in storage.list_objects(place, s3_prefix):
                parsed = split_object_key(found.key)
                if parsed is None or parsed[0] != org:
                    continue  # never surface anything outside orgs/{org_id}/
                yield ObjectInfo(
                    org, parsed[1], parsed[2], found.size, found.version_id, found.last_modified
                )

    # -- processing, retention, training, explain -------------------------------------

    async def route_processing(self, org_id: str, endpoint: str) -> ProcessingRoute:
        """Return where a processing call for ``endpoint`` must go; sends no S3 request.

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            ProcessingNotEligibleError: the endpoint is not listed, or not regional for an
                org that pins its processing.
        """
        started = time.perf_counter()
        _, _, region_map = self._open()
        org = parse_org_id(org_id)
        record, _ = await self._org(org)
        try:
            route = decide_processing(record, region_map, endpoint)
        except ResidencyError as exc:
            self._audit.emit(
                "route_processing",
                org_id=org,
                region=None,
                outcome="refused",
                latency_ms=(time.perf_counter() - started) * 1000.0,
                error=type(exc).__name__,
            )
            raise
        self._audit.emit(
            "route_processing",
            org_id=org,
            region=route.region.value,
            outcome="ok",
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )
        return route

    async def record_exchange(
        self, org_id: str, endpoint: str, *, request: bytes, response: bytes
    ) -> WriteReceipt:
        """Record one API exchange as ``inputs_outputs`` in the org's storage region.

        Zero-data-retention orgs and endpoints with ``retains_data: false`` get a receipt with
        ``stored=False`` and the reason; nothing at all is sent to S3 for them.

        Raises:
            InvalidKeyError: bad org id, or a body that is not bytes.
            ProcessingNotEligibleError: the endpoint is not listed.
            UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            ResidencyViolationError, StorageError, RegionUnavailableError: as for ``put``.
        """
        started = time.perf_counter()
        storage, _, region_map = self._open()
        org = parse_org_id(org_id)
        for name, body in (("request", request), ("response", response)):
            if not isinstance(body, bytes | bytearray | memoryview):
                raise InvalidKeyError(f"{name} must be bytes, got {type(body).__name__}")
        endpoint_rule(region_map, endpoint)  # refuse unlisted endpoints before any lookup
        record, place = await self._org(org)
        now = self._clock()
        decision = decide_exchange(record, place, region_map, endpoint, now, uuid.uuid4().hex)
        cls = DataClass.INPUTS_OUTPUTS
        if not decision.store:
            self._emit("record_exchange", place, cls, None, started, outcome="skipped")
            return _receipt(decision, None, "")
        document = exchange_document(endpoint, now, bytes(request), bytes(response))
        try:
            result = await storage.put(
                place,
                decision.key,
                document,
                tagging=decision.tagging(),
                content_type="application/json",
            )
        except ResidencyError as exc:
            self._emit("record_exchange", place, cls, decision.key, started, exc)
            raise
        self._emit("record_exchange", place, cls, decision.key, started)
        return _receipt(decision, result.version_id, result.sha256)

    async def purge_expired(self, *, now: datetime | None = None) -> PurgeReport:
        """Delete every version of inputs/outputs whose expiry day is on or before ``now``.

        Sweeps every region's bucket (not the directory), and aborts inputs/outputs
        multipart uploads started more than a day before ``now``. ``now`` defaults to the
        router's clock and must be timezone-aware.

        Raises:
            InvalidKeyError: ``now`` has no timezone.
            ResidencyError: a region failed; every region was attempted first.
        """
        self._open()
        assert self._sweeper is not None
        moment = self._clock() if now is None else now
        if moment.tzinfo is None:
            raise InvalidKeyError("purge_expired(now=...) needs a timezone-aware datetime (UTC)")
        started = time.perf_counter()
        report = await self._sweeper.purge(moment.astimezone(UTC))
        for region in report.by_region:
            self._audit.emit(
                "purge",
                org_id="*",
                region=region.value,
                data_class=DataClass.INPUTS_OUTPUTS.value,
                outcome="ok",
                latency_ms=(time.perf_counter() - started) * 1000.0,
            )
        return report

    async def erase_org(
        self,
        org_id: str,
        *,
        data_class: DataClass | str | None = None,
        region: Region | str | None = None,
    ) -> ErasureReceipt:
        """Delete all of an org's data (or one class), every version, and abort its uploads.

        Runs in the org's region only. ``region`` names it for an org no longer in the
        directory; for a known org it must agree with the directory. Erasing twice is safe.

        Raises:
            InvalidKeyError: bad org id, data class or region code.
            UnknownOrgError: the org is not in the directory and no ``region`` was given.
            ResidencyViolationError: ``region`` contradicts the directory.
            DirectoryUnavailableError: the directory failed; nothing was deleted.
            StorageError, RegionUnavailableError: S3 refused or failed.
        """
        started = time.perf_counter()
        _, directory, region_map = self._open()
        assert self._sweeper is not None
        org = parse_org_id(org_id)
        cls = None if data_class is None else parse_data_class(data_class)
        named = _parse_region(region)
        try:
            record = await directory.lookup(org)
        except UnknownOrgError:
            if named is None:
                raise
            target = named
        else:
            if named is not None and named is not record.region:
                raise ResidencyViolationError(
                    f"erase_org: org {org} lives in {record.region.value}, not {named.value}; "
                    "nothing was deleted"
                ) from None
            target = record.region
        cfg = region_map.region(target)
        try:
            receipt = await self._sweeper.erase(cfg, org, target, cls)
        except ResidencyError as exc:
            self._audit.emit(
                "erase",
                org_id=org,
                region=target.value,
                outcome="error",
                data_class=None if cls is None else cls.value,
                error=type(exc).__name__,
            )
            raise
        self._audit.emit(
            "erase",
            org_id=org,
            region=target.value,
            data_class=None if cls is None else cls.value,
            outcome="ok",
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )
        return receipt

    async def list_training_eligible(self, org_id: str) -> AsyncIterator[ObjectInfo]:
        """Yield the org's objects that may be used for training.

        An object is yielded only if the org is opted in now and the object's own
        ``residency-training`` tag (set at write time) says ``opt-in``; one tag read per
        object, with bounded concurrency.

        Raises:
            InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            StorageError, RegionUnavailableError: S3 refused or failed.
        """
        storage = self._open()[0]
        record, place = await self._org(org_id)
        if not record.training_opt_in:
            return
        limit = asyncio.Semaphore(TAG_READ_CONCURRENCY)

        async def eligible(info: ObjectInfo) -> bool:
            async with limit:
                try:
                    tags = await storage.tags(
                        place, object_key(info.org_id, info.data_class, info.key)
                    )
                except ObjectNotFoundError:
                    return False  # deleted since it was listed
            return tags.get(TAG_TRAINING) == TRAINING_OPT_IN and tags.get(TAG_ORG) == record.org_id

        batch: list[ObjectInfo] = []
        async for info in self.list(record.org_id):
            batch.append(info)
            if len(batch) >= TAG_READ_CONCURRENCY * 4:
                for item in await _filter(batch, eligible):
                    yield item
                batch = []
        for item in await _filter(batch, eligible):
            yield item

    async def explain(
        self,
        org_id: str,
        *,
        operation: Operation | str,
        data_class: DataClass | str | None = None,
        endpoint: str | None = None,
    ) -> Explanation:
        """Return the decision the router would take, with the rule behind each part.

        Sends no S3 request (it reads the org directory, through the cache).

        Raises:
            InvalidKeyError: bad org id, operation or data class, or a missing endpoint.
            UnknownOrgError, DirectoryUnavailableError: as for ``put``.
        """
        _, _, region_map = self._open()
        org = parse_org_id(org_id)
        try:
            op = Operation(operation)
        except ValueError:
            allowed = ", ".join(o.value for o in Operation)
            raise InvalidKeyError(f"unknown operation {operation!r} (one of {allowed})") from None
        cls = None if data_class is None else parse_data_class(data_class)
        record, place = await self._org(org)
        return explain_decision(record, place, region_map, op, cls, endpoint, self._clock())

    # -- health and cache ---------------------------------------------------------------

    def health(self) -> Mapping[Region, RegionHealth]:
        """Return each region's recent health (not awaited)."""
        storage, _, region_map = self._open()
        return MappingProxyType({cfg.region: storage.health(cfg.aws_region) for cfg in region_map})

    def invalidate(self, org_id: str) -> None:
        """Drop one org from the cache so its next lookup reads the directory (not awaited)."""
        _, directory, _ = self._open()
        directory.invalidate(org_id)
        self._resolved.pop(org_id, None)

    def _emit(
        self,
        operation: str,
        place: Placement,
        data_class: DataClass,
        key: str | None,
        started: float,
        error: BaseException | None = None,
        *,
        outcome: Outcome = "ok",
    ) -> None:
        if not self._audit.enabled(error is not None):
            return
        self._audit.emit(
            operation,
            org_id=place.org_id,
            region=place.region.value,
            data_class=data_class.value,
            key=key,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            outcome=outcome if error is None else "error",
            error=None if error is None else type(error).__name__,
        )


@dataclass(slots=True)
class _Resolved:
    """An org's record with what the hot path derives from it, computed once per record."""

    record: OrgResidency
    place: Placement
    kept: dict[DataClass, KeptTags] = field(default_factory=dict)


def _checked_key(
    org_id: str, key: str, data_class: DataClass | str
) -> tuple[OrgId, DataClass, str]:
    """Apply the id, class and key rules before any lookup; return the full S3 key.

    The common case stays on one fast path (a set hit or one regex for the id, str methods
    for the key); anything else falls back to the full validators, which name the problem.
    """
    cls = data_class if data_class.__class__ is DataClass else parse_data_class(data_class)
    full = plain_object_key(org_id, cls, key)
    if full is not None:
        return OrgId(org_id), cls, full
    org = parse_org_id(org_id)
    return org, cls, object_key(org, cls, key)


def _receipt(decision: WriteDecision, version_id: str | None, sha256: str) -> WriteReceipt:
    place = decision.placement
    return WriteReceipt(
        org_id=place.org_id,
        region=place.region,
        aws_region=place.aws_region,
        bucket=place.bucket,
        key=decision.key if decision.store else "",
        version_id=version_id,
        sha256=sha256,
        kms_key_arn=place.kms_key_arn,
        data_class=decision.data_class,
        stored=decision.store,
        reason=decision.reason,
    )


def _worst(check: RegionCheck) -> tuple[ProblemKind, str]:
    for kind, problem in check.problems:
        if kind == "violation":
            return kind, problem
    return check.problems[0]


def _check_metadata(metadata: Mapping[str, str] | None) -> None:
    if metadata is None:
        return
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidKeyError("metadata names and values must be strings; nothing was sent")
        if not name or not name.isascii() or not all(c.isalnum() or c in "-_" for c in name):
            raise InvalidKeyError(
                f"metadata name {name!r}: use ASCII letters, digits, '-' and '_'; nothing was sent"
            )
        if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise InvalidKeyError(
                f"metadata value of {name!r} must be printable ASCII; nothing was sent"
            )


def _parse_region(value: Region | str | None) -> Region | None:
    if value is None:
        return None
    try:
        return Region(value)
    except ValueError:
        allowed = ", ".join(r.value for r in Region)
        raise InvalidKeyError(f"unknown residency region {value!r} (one of {allowed})") from None


async def _filter(
    items: list[ObjectInfo], keep: Callable[[ObjectInfo], Coroutine[Any, Any, bool]]
) -> list[ObjectInfo]:
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(keep(item)) for item in items]
    except BaseExceptionGroup as exc:
        raise first_error(exc) from None
    return [item for item, task in zip(items, tasks, strict=True) if task.result()]
