"""ResidencyRouter: resolve the org, decide with policy, carry it out in the org's region."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import AsyncExitStack
from types import MappingProxyType, TracebackType
from typing import Self

from router.audit import AuditLog
from router.config import RouterSettings
from router.errors import (
    ConfigError,
    InvalidKeyError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyViolationError,
    StorageError,
)
from router.orgs import CachedOrgDirectory, OrgDirectory, StaticOrgDirectory
from router.policy import (
    decide_put,
    list_prefix,
    object_key,
    parse_data_class,
    parse_org_id,
    placement,
    split_object_key,
)
from router.regions import RegionMap
from router.storage import ProblemKind, RegionCheck, StoragePool
from router.types import (
    DataClass,
    DeleteReceipt,
    ObjectInfo,
    OrgId,
    OrgResidency,
    Placement,
    Region,
    RegionHealth,
    VerifyReport,
    WriteReceipt,
)

Body = bytes | bytearray | memoryview | AsyncIterable[bytes]


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
    ) -> None:
        self._settings = settings
        self._given_directory = directory
        self._map = region_map
        self._stack = AsyncExitStack()
        self._storage: StoragePool | None = None
        self._directory: CachedOrgDirectory | None = None
        self._key_arns: dict[Region, str] = {}
        self._placements: dict[tuple[Region, OrgId], Placement] = {}
        secret = settings.audit_hmac_secret
        self._audit = AuditLog(secret.get_secret_value().encode() if secret else None)
        self._state = "new"

    @classmethod
    def from_settings(
        cls, settings: RouterSettings, directory: OrgDirectory | None = None
    ) -> ResidencyRouter:
        """Return a router for ``settings``; no I/O happens until it is entered.

        ``directory`` replaces the static/DynamoDB directory; it stays the caller's to close.
        """
        return cls(settings, directory)

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
        if inner is None:
            if settings.directory_table:
                raise ConfigError(
                    "directory_table: the DynamoDB org directory is not available in this "
                    "release; unset RESIDENCY_DIRECTORY_TABLE to use regions.yaml orgs"
                )
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
        _, directory, region_map = self._open()
        org = parse_org_id(org_id)
        record = directory.cached(org)
        if record is None:
            record = await directory.lookup(org)
        cache_key = (record.region, record.org_id)
        place = self._placements.get(cache_key)
        if place is None:
            place = placement(record, region_map, self._key_arns)
            if len(self._placements) >= self._settings.cache_max_orgs:
                self._placements.clear()
            self._placements[cache_key] = place
        return record, place

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
        cls = parse_data_class(data_class)
        org = parse_org_id(org_id)
        object_key(org, cls, key)  # key rules before any lookup
        _check_metadata(metadata)
        record, place = await self._org(org)
        decision = decide_put(record, place, cls, key)
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
        return WriteReceipt(
            org_id=place.org_id,
            region=place.region,
            aws_region=place.aws_region,
            bucket=place.bucket,
            key=decision.key,
            version_id=result.version_id,
            sha256=result.sha256,
            kms_key_arn=place.kms_key_arn,
            data_class=cls,
            stored=True,
            reason=decision.reason,
        )

    async def _locate(
        self, org_id: str, key: str, data_class: DataClass | str
    ) -> tuple[StoragePool, Placement, DataClass, str]:
        storage = self._open()[0]
        cls = parse_data_class(data_class)
        org = parse_org_id(org_id)
        full = object_key(org, cls, key)
        _, place = await self._org(org)
        return storage, place, cls, full

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
        storage, place, cls, full = await self._locate(org_id, key, data_class)
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
        storage, place, cls, full = await self._locate(org_id, key, data_class)
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
        storage, place, cls, full = await self._locate(org_id, key, data_class)
        found = await storage.head(place, full)
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
        storage, place, cls, full = await self._locate(org_id, key, data_class)
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
        for s3_prefix in prefixes:
            async for found in storage.list_objects(place, s3_prefix):
                parsed = split_object_key(found.key)
                if parsed is None or parsed[0] != org:
                    continue  # never surface anything outside orgs/{org_id}/
                yield ObjectInfo(
                    org, parsed[1], parsed[2], found.size, found.version_id, found.last_modified
                )

    # -- health and cache ---------------------------------------------------------------

    def health(self) -> Mapping[Region, RegionHealth]:
        """Return each region's recent health (not awaited)."""
        storage, _, region_map = self._open()
        return MappingProxyType({cfg.region: storage.health(cfg.aws_region) for cfg in region_map})

    def invalidate(self, org_id: str) -> None:
        """Drop one org from the cache so its next lookup reads the directory (not awaited)."""
        _, directory, _ = self._open()
        directory.invalidate(org_id)
        for cache_key in [k for k in self._placements if k[1] == org_id]:
            del self._placements[cache_key]

    def _emit(
        self,
        operation: str,
        place: Placement,
        data_class: DataClass,
        key: str,
        started: float,
        error: BaseException | None = None,
    ) -> None:
        self._audit.emit(
            operation,
            org_id=place.org_id,
            region=place.region.value,
            data_class=data_class.value,
            key=key,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            outcome="ok" if error is None else "error",
            error=None if error is None else type(error).__name__,
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
