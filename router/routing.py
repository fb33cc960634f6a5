"""ResidencyRouter: the public facade; each operation is resolve, audit, act."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Self

from router import _startup
from router._resolve import Resolved, checked_key
from router._s3.clients import RegionClients
from router._startup import Wiring
from router.audit import AuditLog
from router.config import RouterSettings
from router.errors import (
    ObjectNotFoundError,
    ResidencyViolationError,
    UnknownOrgError,
    first_error,
)
from router.orgs import CachedOrgDirectory, OrgDirectory
from router.policy import (
    WriteDecision,
    check_content_type,
    check_metadata,
    decide_exchange,
    decide_processing,
    decide_put,
    endpoint_rule,
    exchange_document,
    list_prefix,
    object_key,
    parse_data_class,
    parse_now,
    parse_operation,
    parse_org_id,
    parse_region,
    split_object_key,
)
from router.policy import explain as explain_decision
from router.regions import RegionMap
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

    Every public operation emits exactly one audit event (``ok``, ``skipped``, ``refused``,
    ``error``, or ``partial`` for a stream closed early) and, with OpenTelemetry configured,
    one span around the whole operation.
    """

    def __init__(
        self,
        settings: RouterSettings,
        directory: OrgDirectory | None = None,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._given_directory = directory
        self._stack = AsyncExitStack()
        self._wiring: Wiring | None = None
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
            self._wiring = await _startup.start(self._settings, self._given_directory, self._stack)
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
        self._wiring = None
        await self._stack.aclose()

    def _open(self) -> Wiring:
        wiring = self._wiring
        if wiring is None:
            state = "closed" if self._state == "closed" else "not started (use 'async with')"
            raise RuntimeError(f"this ResidencyRouter is {state}")
        return wiring

    @property
    def region_map(self) -> RegionMap:
        """The validated region map in use."""
        return self._open().region_map

    @property
    def storage(self) -> RegionClients:
        """The regional clients (``register`` botocore event hooks for tests and tracing)."""
        return self._open().clients

    @property
    def directory(self) -> CachedOrgDirectory:
        """The cached org directory in use."""
        return self._open().resolver.directory

    async def _resolved(self, wiring: Wiring, org: OrgId) -> Resolved:
        return wiring.resolver.warm(org) or await wiring.resolver.resolve(org)

    # -- verification and resolution ----------------------------------------------------

    async def verify(self) -> VerifyReport:
        """Check every region now: bucket location and owner, KMS key region and state.

        The report lists problems per region; it does not raise for them. A region with a
        violation or a refusal is quarantined; one that passes is released.
        """
        wiring = self._open()
        with self._audit.operation("verify") as op:
            op.acting()
            checks = await _startup.check_regions(wiring)
            _startup.apply_checks(wiring, checks, "verify")
        return _startup.report(checks)

    async def resolve(self, org_id: str) -> Placement:
        """Return where ``org_id``'s data lives.

        Raises:
            InvalidKeyError: the org id is malformed.
            UnknownOrgError: the org is not in the directory.
            DirectoryUnavailableError: the directory failed or returned a bad record.
        """
        wiring = self._open()
        with self._audit.operation("resolve", org_id) as op:
            resolved = await self._resolved(wiring, parse_org_id(org_id))
            op.at(resolved.place.region.value)
        return resolved.place

    # -- objects ------------------------------------------------------------------------

    async def _plan_put(
        self,
        org_id: str,
        key: str,
        data_class: DataClass | str,
        metadata: Mapping[str, str] | None,
        content_type: str | None = None,
    ) -> WriteDecision:
        """The routing decision of one put, everything before I/O (the benchmarked path)."""
        wiring = self._open()
        org, cls, full = checked_key(org_id, key, data_class)
        if metadata is not None:
            check_metadata(metadata)
        if content_type is not None:
            check_content_type(content_type)
        resolved = await self._resolved(wiring, org)
        return decide_put(resolved.record, resolved.place, cls, key, full, resolved.tags_for(cls))

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

        ``body`` is bytes-like, or an async iterable of bytes streamed through multipart
        upload (chunks are copied: a producer may reuse its buffer).

        Raises:
            TypeError: an argument has the wrong Python type (a ``str`` body, say).
            InvalidKeyError: bad org id or key, or the ``inputs_outputs`` class.
            InvalidArgumentError: bad data class, content type or metadata.
            UnknownOrgError: the org is not in the directory; nothing was sent.
            DirectoryUnavailableError: the directory failed; nothing was sent.
            ResidencyViolationError: a redirect or a foreign KMS key; nothing kept.
            StorageError: S3 or KMS refused for good.
            RegionUnavailableError: the region failed after retries; retry there later.
        """
        wiring = self._open()
        with self._audit.operation("put", org_id) as op:
            if body.__class__ is not bytes:
                _check_body(body)
            decision = await self._plan_put(org_id, key, data_class, metadata, content_type)
            place = decision.placement
            op.at(place.region.value, decision.data_class.value, decision.key)
            op.acting()
            result = await wiring.objects.put(
                place,
                decision.key,
                body,
                tagging=decision.tagging(),
                content_type=content_type,
                metadata=metadata,
            )
        return _receipt(decision, result.version_id, result.sha256)

    async def get(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> bytes:
        """Return an object's bytes after checking it is under the region's KMS key.

        Raises:
            TypeError, InvalidKeyError, InvalidArgumentError, UnknownOrgError,
            DirectoryUnavailableError: as for ``put``.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        wiring = self._open()
        with self._audit.operation("get", org_id) as op:
            org, cls, full = checked_key(org_id, key, data_class)
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            place = resolved.place
            op.at(place.region.value, cls.value, full)
            op.acting()
            data = await wiring.objects.get(place, full)
            op.bytes = len(data)
        return data

    async def stream(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> AsyncGenerator[bytes, None]:
        """Yield an object's bytes in chunks (not awaited: ``async for c in router.stream(...)``).

        Closing the iteration early (``break``, an error, a cancelled request) releases the
        connection and is audited as ``partial`` with the bytes read.

        Raises:
            TypeError, InvalidKeyError, InvalidArgumentError, UnknownOrgError,
            DirectoryUnavailableError: as for ``put``.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed, before or during the transfer.
        """
        wiring = self._open()
        with self._audit.operation("stream", org_id, current=False) as op:
            org, cls, full = checked_key(org_id, key, data_class)
            resolved = await self._resolved(wiring, org)
            place = resolved.place
            op.at(place.region.value, cls.value, full)
            op.acting()
            op.bytes = 0
            chunks = wiring.objects.stream(place, full)
            try:
                async for chunk in chunks:
                    op.bytes += len(chunk)
                    try:
                        yield chunk
                    except GeneratorExit:
                        op.partial()
                        raise
            finally:
                await chunks.aclose()

    async def head(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> ObjectInfo:
        """Return an object's size, version and time after checking its KMS key.

        Raises:
            TypeError, InvalidKeyError, InvalidArgumentError, UnknownOrgError,
            DirectoryUnavailableError: as for ``put``.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        wiring = self._open()
        with self._audit.operation("head", org_id) as op:
            org, cls, full = checked_key(org_id, key, data_class)
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            place = resolved.place
            op.at(place.region.value, cls.value, full)
            op.acting()
            found = await wiring.objects.head(place, full)
        return ObjectInfo(place.org_id, cls, key, found.size, found.version_id, found.last_modified)

    async def delete(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> DeleteReceipt:
        """Delete every version and delete marker of one object; deleting again is a no-op.

        Raises:
            TypeError, InvalidKeyError, InvalidArgumentError, UnknownOrgError,
            DirectoryUnavailableError: as for ``put``.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        wiring = self._open()
        with self._audit.operation("delete", org_id) as op:
            org, cls, full = checked_key(org_id, key, data_class)
            place = (await self._resolved(wiring, org)).place
            op.at(place.region.value, cls.value, full)
            op.acting()
            count = await wiring.bulk.delete_object(place, full)
        return DeleteReceipt(place.org_id, place.region, key, count)

    async def list(
        self,
        org_id: str,
        *,
        data_class: DataClass | str | None = None,
        prefix: str = "",
    ) -> AsyncGenerator[ObjectInfo, None]:
        """Yield the org's current objects (one class, or all), named by the caller's keys.

        Raises:
            TypeError, InvalidKeyError, InvalidArgumentError, UnknownOrgError,
            DirectoryUnavailableError: as for ``put``.
            StorageError: S3 refused for good.
            RegionUnavailableError: the region failed after retries.
        """
        wiring = self._open()
        with self._audit.operation("list", org_id, current=False) as op:
            async for info in self._list(wiring, op, org_id, data_class, prefix):
                try:
                    yield info
                except GeneratorExit:
                    op.partial()
                    raise

    async def _list(
        self,
        wiring: Wiring,
        op: Any,
        org_id: str,
        data_class: DataClass | str | None,
        prefix: str,
    ) -> AsyncGenerator[ObjectInfo, None]:
        org = parse_org_id(org_id)
        classes = list(DataClass) if data_class is None else [parse_data_class(data_class)]
        prefixes = [list_prefix(org, cls, prefix) for cls in classes]
        place = (await self._resolved(wiring, org)).place
        op.at(place.region.value, classes[0].value if len(classes) == 1 else None)
        op.acting()
        op.items = 0
        for s3_prefix in prefixes:
            async for found in wiring.bulk.list_objects(place, s3_prefix):
                parsed = split_object_key(found.key)
                if parsed is None or parsed[0] != org:
                    continue  # never surface anything outside orgs/{org_id}/
                op.items += 1
                yield ObjectInfo(
                    org, parsed[1], parsed[2], found.size, found.version_id, found.last_modified
                )

    # -- processing, retention, training, explain -------------------------------------

    async def route_processing(self, org_id: str, endpoint: str) -> ProcessingRoute:
        """Return where a processing call for ``endpoint`` must go; sends no S3 request.

        Raises:
            TypeError, InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for
                ``put``.
            ProcessingNotEligibleError: the endpoint is not listed, or not regional for an
                org that pins its processing.
        """
        wiring = self._open()
        with self._audit.operation("route_processing", org_id) as op:
            resolved = await self._resolved(wiring, parse_org_id(org_id))
            route = decide_processing(resolved.record, wiring.region_map, endpoint)
            op.at(route.region.value)
        return route

    async def record_exchange(
        self, org_id: str, endpoint: str, *, request: bytes, response: bytes
    ) -> WriteReceipt:
        """Record one API exchange as ``inputs_outputs`` in the org's storage region.

        Zero-data-retention orgs and endpoints with ``retains_data: false`` get a receipt with
        ``stored=False`` and the reason; nothing at all is sent to S3 for them.

        Raises:
            TypeError: a body that is not bytes-like.
            InvalidKeyError: bad org id.
            ProcessingNotEligibleError: the endpoint is not listed.
            UnknownOrgError, DirectoryUnavailableError: as for ``put``.
            ResidencyViolationError, StorageError, RegionUnavailableError: as for ``put``.
        """
        wiring = self._open()
        with self._audit.operation("record_exchange", org_id) as op:
            org = parse_org_id(org_id)
            for name, body in (("request", request), ("response", response)):
                if not isinstance(body, bytes | bytearray | memoryview):
                    raise TypeError(f"{name} must be bytes, got {type(body).__name__}")
            endpoint_rule(wiring.region_map, endpoint)  # unlisted endpoints before any lookup
            resolved = await self._resolved(wiring, org)
            now = self._clock()
            decision = decide_exchange(
                resolved.record, resolved.place, wiring.region_map, endpoint, now, uuid.uuid4().hex
            )
            place = decision.placement
            op.at(place.region.value, DataClass.INPUTS_OUTPUTS.value)
            if not decision.store:
                op.skipped()
                return _receipt(decision, None, "")
            op.key = decision.key
            op.acting()
            document = exchange_document(endpoint, now, bytes(request), bytes(response))
            result = await wiring.objects.put(
                place,
                decision.key,
                document,
                tagging=decision.tagging(),
                content_type="application/json",
            )
        return _receipt(decision, result.version_id, result.sha256)

    async def purge_expired(self, *, now: datetime | None = None) -> PurgeReport:
        """Delete every version of inputs/outputs whose expiry day is on or before ``now``.

        Sweeps every region's bucket (not the directory), and aborts inputs/outputs
        multipart uploads started more than a day before ``now``. ``now`` defaults to the
        router's clock and must be timezone-aware.

        Raises:
            TypeError: ``now`` is not a datetime.
            InvalidArgumentError: ``now`` has no timezone.
            ResidencyError: a region failed; every region was attempted first.
        """
        wiring = self._open()
        with self._audit.operation("purge") as op:
            moment = parse_now(self._clock() if now is None else now)
            op.data_class = DataClass.INPUTS_OUTPUTS.value
            op.acting()
            report = await wiring.sweeper.purge(moment)
            op.items = sum(r.versions for r in report.by_region.values())
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
            TypeError: an argument has the wrong Python type.
            InvalidKeyError: bad org id.
            InvalidArgumentError: bad data class or region code.
            UnknownOrgError: the org is not in the directory and no ``region`` was given.
            ResidencyViolationError: ``region`` contradicts the directory.
            DirectoryUnavailableError: the directory failed; nothing was deleted.
            StorageError, RegionUnavailableError: S3 refused or failed.
        """
        wiring = self._open()
        with self._audit.operation("erase", org_id) as op:
            org = parse_org_id(org_id)
            cls = None if data_class is None else parse_data_class(data_class)
            named = None if region is None else parse_region(region)
            op.data_class = None if cls is None else cls.value
            try:
                record = (await wiring.resolver.resolve(org)).record
            except UnknownOrgError:
                if named is None:
                    raise
                target = named
            else:
                if named is not None and named is not record.region:
                    raise ResidencyViolationError(
                        f"erase_org: org {org} lives in {record.region.value}, not "
                        f"{named.value}; nothing was deleted"
                    ) from None
                target = record.region
            op.region = target.value
            op.acting()
            receipt = await wiring.sweeper.erase(wiring.region_map.region(target), org, target, cls)
            op.items = receipt.versions_deleted
        return receipt

    async def list_training_eligible(self, org_id: str) -> AsyncGenerator[ObjectInfo, None]:
        """Yield the org's objects that may be used for training.

        An object is yielded only if the org is opted in now and the object's own
        ``residency-training`` tag (set at write time) says ``opt-in``; one tag read per
        object, with bounded concurrency.

        Raises:
            TypeError, InvalidKeyError, UnknownOrgError, DirectoryUnavailableError: as for
                ``put``.
            StorageError, RegionUnavailableError: S3 refused or failed.
        """
        wiring = self._open()
        with self._audit.operation("list_training_eligible", org_id, current=False) as op:
            resolved = await self._resolved(wiring, parse_org_id(org_id))
            record, place = resolved.record, resolved.place
            op.at(place.region.value)
            op.acting()
            op.items = 0
            if not record.training_opt_in:
                return
            limit = asyncio.Semaphore(TAG_READ_CONCURRENCY)

            async def eligible(info: ObjectInfo) -> bool:
                async with limit:
                    try:
                        tags = await wiring.objects.tags(
                            place, object_key(info.org_id, info.data_class, info.key)
                        )
                    except ObjectNotFoundError:
                        return False  # deleted since it was listed
                return (
                    tags.get(TAG_TRAINING) == TRAINING_OPT_IN and tags.get(TAG_ORG) == record.org_id
                )

            batch: list[ObjectInfo] = []
            async for info in self._list(wiring, _Quiet(), record.org_id, None, ""):
                batch.append(info)
                if len(batch) >= TAG_READ_CONCURRENCY * 4:
                    for item in await _filter(batch, eligible):
                        op.items += 1
                        try:
                            yield item
                        except GeneratorExit:
                            op.partial()
                            raise
                    batch = []
            for item in await _filter(batch, eligible):
                op.items += 1
                try:
                    yield item
                except GeneratorExit:
                    op.partial()
                    raise

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
            TypeError: an argument has the wrong Python type.
            InvalidKeyError: bad org id.
            InvalidArgumentError: bad operation or data class, or a missing endpoint.
            UnknownOrgError, DirectoryUnavailableError: as for ``put``.
        """
        wiring = self._open()
        with self._audit.operation("explain", org_id) as op:
            org = parse_org_id(org_id)
            op_kind = parse_operation(operation)
            cls = None if data_class is None else parse_data_class(data_class)
            resolved = await self._resolved(wiring, org)
            op.at(resolved.place.region.value, None if cls is None else cls.value)
            return explain_decision(
                resolved.record,
                resolved.place,
                wiring.region_map,
                op_kind,
                cls,
                endpoint,
                self._clock(),
            )

    # -- health and cache ---------------------------------------------------------------

    def health(self) -> Mapping[Region, RegionHealth]:
        """Return each region's recent health (not awaited)."""
        wiring = self._open()
        health = wiring.clients.health
        return MappingProxyType(
            {cfg.region: health.health(cfg.aws_region) for cfg in wiring.region_map}
        )

    def invalidate(self, org_id: str) -> None:
        """Drop one org from the cache so its next lookup reads the directory (not awaited)."""
        self._open().resolver.directory.invalidate(org_id)


class _Quiet:
    """An audit stand-in for a listing inside another audited operation."""

    items: int | None = None

    def at(self, *_: object) -> None:
        return None

    def acting(self) -> None:
        return None


def _check_body(body: object) -> None:
    if isinstance(body, bytes | bytearray | memoryview | AsyncIterable):
        return
    raise TypeError(
        "body must be bytes-like or an async iterable of bytes, got " + type(body).__name__
    )


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


async def _filter(
    items: list[ObjectInfo], keep: Callable[[ObjectInfo], Coroutine[Any, Any, bool]]
) -> list[ObjectInfo]:
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(keep(item)) for item in items]
    except BaseExceptionGroup as exc:
        raise first_error(exc) from None
    return [item for item, task in zip(items, tasks, strict=True) if task.result()]
