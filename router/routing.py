"""ResidencyRouter: the public facade; each operation is resolve, audit, act."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from functools import partial
from types import MappingProxyType

from router import _startup
from router._admin import OrgAdmin
from router._listing import Listings
from router._processing import ProcessingOps
from router._resolve import Resolved, checked_key
from router._s3.bodies import Body, check_body
from router._s3.objects import StoredObject as _Found
from router._s3.objects import http_range
from router.audit import OperationAudit
from router.inputs import (
    check_content_type,
    check_metadata,
    is_plain_key,
    parse_byte_range,
    parse_expires_in,
    parse_org_id,
    sha256_b64,
)
from router.policy import WriteDecision, write_receipt
from router.records import fence_error
from router.types import (
    DataClass,
    DeleteReceipt,
    ObjectInfo,
    OrgId,
    Placement,
    PresignedUpload,
    StoredObject,
    VerifyReport,
    WriteReceipt,
)

PRESIGN_DEFAULT_S = 900
PRESIGN_MAX_S = 7 * 24 * 3600  # SigV4's limit
DEFAULT_UPLOAD_TYPE = "application/octet-stream"


def _decided_put(resolved: Resolved, cls: DataClass, full: str) -> WriteDecision:
    """The decision of a put for an org's resolved record (refused while its writes are fenced)."""
    if resolved.fenced:
        resolved.check_writable()
    return resolved.kept_put(cls).decision(full)


class ResidencyRouter(OrgAdmin, ProcessingOps, Listings):
    """Routes every org's data to its residency region, and nowhere else.

    Make one with :meth:`from_settings` and use it as an async context manager; entering
    loads the region map, makes one client per AWS region, resolves KMS aliases and runs
    ``verify()`` as ``settings.verify_on_start`` says.

    Each operation is resolve, audit, act: exactly one audit event per call (``ok``,
    ``skipped``, ``refused``, ``error``, ``partial``) and one span around the whole of it.
    """

    async def verify(self) -> VerifyReport:
        """Check every region now: bucket location and owner, KMS key region and state.

        The report lists problems per region; it does not raise for them. A region with a
        violation or a refusal is quarantined; one that passes is released.
        """
        with self._audit.operation("verify") as op:
            wiring = self._open()
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
        with self._audit.operation("resolve", org_id) as op:
            wiring = self._open()
            resolved = await self._resolved(wiring, parse_org_id(org_id))
            op.at(resolved.place.region.value)
        return resolved.place

    def _warm_put(
        self,
        org_id: str,
        key: str,
        data_class: DataClass | str,
        metadata: Mapping[str, str] | None,
        content_type: str | None = None,
    ) -> WriteDecision | None:
        """The routing decision of one put when the org's record is cached, else None.

        Everything before I/O, with no await: what ``put`` pays for a warm org (the
        benchmarked warm routing decision). Raises what :meth:`_plan_put` raises, but for
        the directory's errors (a cold org returns None instead).
        """
        wiring = self._wiring
        if wiring is None:
            wiring = self._open()  # raises: the router is not started, or closed
        # The common case in one pass: the cache holds only ids that passed the rules, the
        # org's shared part of a kept class's puts is computed once, and a printable-ASCII
        # key that fits needs no more than is_plain_key. Anything else takes the full path.
        if org_id.__class__ is str and key.__class__ is str:
            resolved = wiring.resolver.warm(org_id)
            if resolved is not None and (
                data_class.__class__ is DataClass or data_class.__class__ is str
            ):
                kept = resolved.puts.get(data_class)  # a member or its value
                if kept is not None and len(key) <= kept.key_room and is_plain_key(key):
                    if metadata is not None:
                        check_metadata(metadata)
                    if content_type is not None:
                        check_content_type(content_type)
                    if resolved.fenced:  # never so today (puts fill once writes pass); kept
                        resolved.check_writable()  # so that a fenced org cannot pass here
                    return kept.decision(kept.prefix + key)
        org, cls, full = checked_key(org_id, key, data_class)
        if metadata is not None:
            check_metadata(metadata)
        if content_type is not None:
            check_content_type(content_type)
        resolved = wiring.resolver.warm(org)
        if resolved is None:
            return None
        return _decided_put(resolved, cls, full)

    async def _plan_put(
        self,
        org_id: str,
        key: str,
        data_class: DataClass | str,
        metadata: Mapping[str, str] | None,
        content_type: str | None = None,
    ) -> WriteDecision:
        """The routing decision of one put, the org's record resolved when it is not cached."""
        decision = self._warm_put(org_id, key, data_class, metadata, content_type)
        if decision is not None:
            return decision
        return await self._cold_put(org_id, key, data_class)

    async def _cold_put(self, org_id: str, key: str, data_class: DataClass | str) -> WriteDecision:
        """The decision of a put whose :meth:`_warm_put` found no cached record.

        Its checks passed there; the record is resolved through the directory here.
        """
        org, cls, full = checked_key(org_id, key, data_class)
        return _decided_put(await self._open().resolver.resolve(org), cls, full)

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

        ``body`` is bytes-like, a binary file object (``open(path, "rb")``, ``BytesIO``:
        read in chunks, in a worker thread), or a sync or async iterable of bytes. Anything
        above ``multipart_threshold`` streams through multipart upload, never read whole;
        chunks are copied, so a producer may reuse its buffer. ``metadata`` is S3 user
        metadata (``x-amz-meta-*``): ASCII names and values, 2 KiB in all.

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
        with self._audit.operation("put", org_id) as op:
            wiring = self._open()
            if body.__class__ is not bytes:
                check_body(body)
            decision = self._warm_put(org_id, key, data_class, metadata, content_type)
            if decision is None:
                decision = await self._cold_put(org_id, key, data_class)
            place = decision.placement
            op.at(place.region, decision.data_class, decision.key)
            op.acting()
            result = await wiring.objects.put(
                place,
                decision.key,
                body,
                tagging=decision.tagging(),
                content_type=content_type,
                metadata=metadata,
                before_commit=partial(wiring.resolver.check_writable, place.org_id, place.region),
            )
        return write_receipt(decision, result.version_id, result.sha256)

    async def get(
        self,
        org_id: str,
        key: str,
        *,
        data_class: DataClass | str = DataClass.FILES,
        start: int | None = None,
        end: int | None = None,
    ) -> bytes:
        """Return an object's bytes after checking it is under the region's KMS key.

        ``start``/``end`` read a byte range as a slice does: ``start`` included, ``end``
        excluded (``get(..., start=0, end=10)`` is the first 10 bytes; an ``end`` past the
        object's end stops there). Use :meth:`get_object` for the content type, metadata
        and checksum too.

        Raises:
            TypeError: ``start`` or ``end`` is not an int.
            InvalidArgumentError: a negative offset, ``end <= start``, or a ``start`` at or
                past the end of the object.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        with self._audit.operation("get", org_id) as op:
            wiring = self._open()
            org, cls, full = checked_key(org_id, key, data_class)
            byte_range = http_range(*parse_byte_range(start, end))
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            place = _acting_on(op, resolved, cls, full)
            data = await wiring.objects.get(place, full, byte_range)
            op.bytes = len(data)
        return data

    async def get_object(
        self,
        org_id: str,
        key: str,
        *,
        data_class: DataClass | str = DataClass.FILES,
        start: int | None = None,
        end: int | None = None,
    ) -> StoredObject:
        """Return an object's bytes (or a range, as for :meth:`get`) and what S3 says of it.

        ``info`` holds the content type, user metadata, size (of the whole object), version
        id, SHA-256 checksum (as S3 reports it; none for a range) and ETag.

        Raises:
            As :meth:`get`.
        """
        with self._audit.operation("get_object", org_id) as op:
            wiring = self._open()
            org, cls, full = checked_key(org_id, key, data_class)
            byte_range = http_range(*parse_byte_range(start, end))
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            place = _acting_on(op, resolved, cls, full)
            data, found = await wiring.objects.get_object(place, full, byte_range)
            op.bytes = len(data)
        return StoredObject(data, _info(place.org_id, cls, key, found))

    def stream(
        self,
        org_id: str,
        key: str,
        *,
        data_class: DataClass | str = DataClass.FILES,
        start: int | None = None,
        end: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Yield an object's bytes in chunks (not awaited: ``async for c in router.stream(...)``).

        ``start``/``end`` stream a byte range, as for :meth:`get`. Closing the iteration
        early (``break``, an error, a cancelled request) releases the connection and is
        audited as ``partial`` with the bytes read.

        Raises:
            TypeError, InvalidArgumentError: a bad range, as for :meth:`get`.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        return self._relay(
            "stream", org_id, lambda op: self._stream(op, org_id, key, data_class, start, end)
        )

    async def _stream(
        self,
        op: OperationAudit,
        org_id: str,
        key: str,
        data_class: DataClass | str,
        start: int | None,
        end: int | None,
    ) -> AsyncGenerator[bytes, None]:
        wiring = self._open()
        org, cls, full = checked_key(org_id, key, data_class)
        byte_range = http_range(*parse_byte_range(start, end))
        resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
        place = _acting_on(op, resolved, cls, full)
        op.bytes = 0
        chunks = wiring.objects.stream(place, full, byte_range=byte_range)
        try:
            async for chunk in chunks:
                op.bytes += len(chunk)
                yield chunk
        finally:
            await chunks.aclose()

    async def head(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> ObjectInfo:
        """Return what S3 says of an object, after checking its KMS key.

        Size, version id, last modified, content type, user metadata, SHA-256 checksum (as
        S3 reports it) and ETag.

        Raises:
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        with self._audit.operation("head", org_id) as op:
            wiring = self._open()
            org, cls, full = checked_key(org_id, key, data_class)
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            place = _acting_on(op, resolved, cls, full)
            found = await wiring.objects.head(place, full)
        return _info(place.org_id, cls, key, found)

    async def presign_get(
        self,
        org_id: str,
        key: str,
        *,
        data_class: DataClass | str = DataClass.FILES,
        expires_in: int = PRESIGN_DEFAULT_S,
    ) -> str:
        """Return a URL that downloads the object from its region's bucket, no header needed.

        The object's KMS key is checked first, and the URL names the version checked (a
        later write is not served by it). ``expires_in``: seconds, 1 to 604800 (7 days).

        Raises:
            TypeError: ``expires_in`` is not an int.
            InvalidArgumentError: ``expires_in`` out of bounds.
            ObjectNotFoundError: no such object.
            ResidencyViolationError: the object is not under the region's key.
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        with self._audit.operation("presign_get", org_id) as op:
            wiring = self._open()
            org, cls, full = checked_key(org_id, key, data_class)
            seconds = parse_expires_in(expires_in, PRESIGN_MAX_S)
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            place = _acting_on(op, resolved, cls, full)
            url, _ = await wiring.presigner.presign_get(place, full, expires_in=seconds)
        return url

    async def presign_put(
        self,
        org_id: str,
        key: str,
        *,
        data_class: DataClass | str = DataClass.FILES,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        sha256: str | None = None,
        expires_in: int = PRESIGN_DEFAULT_S,
    ) -> PresignedUpload:
        """Return a presigned upload that lands exactly as :meth:`put` would write it.

        Send ``method`` to ``url`` with exactly ``headers``: the SSE-KMS algorithm, the
        region's key ARN, the bucket key, the residency tags and the content type
        (``application/octet-stream`` when none is given; the uploader cannot choose one),
        and the metadata and checksum when given, are all signed, so S3 refuses an upload that
        leaves one out or changes it. ``sha256`` (hex of the whole body) makes S3 refuse
        any other body. ``expires_in``: seconds, 1 to 604800 (7 days); the URL expires
        sooner if a scheduled change to the org takes effect first (see ``expires_at``).
        The URL cannot be revoked: a change or move started after it was issued does not
        stop it, so keep ``expires_in`` short.

        Raises:
            TypeError: an argument has the wrong Python type.
            InvalidKeyError: bad org id or key, or the ``inputs_outputs`` class.
            InvalidArgumentError: bad content type, metadata, checksum or ``expires_in``.
            OrgMovingError: the org is moving between regions; retry after the move.
            ResidencyError: as for ``put`` (directory, S3 refusals and failures).
        """
        with self._audit.operation("presign_put", org_id) as op:
            wiring = self._open()
            seconds = parse_expires_in(expires_in, PRESIGN_MAX_S)
            checksum = None if sha256 is None else sha256_b64(sha256)
            decision = await self._plan_put(org_id, key, data_class, metadata, content_type)
            resolved = await self._resolved(wiring, decision.placement.org_id)
            if resolved.raw.move is not None:
                # A URL outlives this check: one issued mid-move could write behind the copy.
                raise fence_error(resolved.raw)
            if resolved.until is not None:
                # Tags and placement may change then: the URL must not outlive the decision.
                left = int((resolved.until - self._clock()).total_seconds())
                seconds = max(1, min(seconds, left))
            place = decision.placement
            op.at(place.region.value, decision.data_class.value, decision.key)
            op.acting()
            url, headers, expires_at = await wiring.presigner.presign_put(
                place,
                decision.key,
                tagging=decision.tagging(),
                expires_in=seconds,
                # Always a signed type: the uploader must not choose one (text/html, say).
                content_type=content_type or DEFAULT_UPLOAD_TYPE,
                metadata=metadata,
                sha256_b64=checksum,
            )
        return PresignedUpload(url, MappingProxyType(headers), expires_at)

    async def delete(
        self, org_id: str, key: str, *, data_class: DataClass | str = DataClass.FILES
    ) -> DeleteReceipt:
        """Delete every version and delete marker of one object; deleting again is a no-op.

        Raises:
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        with self._audit.operation("delete", org_id) as op:
            wiring = self._open()
            org, cls, full = checked_key(org_id, key, data_class)
            resolved = wiring.resolver.warm(org) or await wiring.resolver.resolve(org)
            resolved.check_writable()
            place = _acting_on(op, resolved, cls, full)
            # One logical write: checked once, right before its first deletion request (a
            # check between requests could stop it halfway and make an old version current).
            count = await wiring.bulk.delete_object(
                place, full, first=partial(wiring.resolver.check_writable, org, place.region)
            )
        return DeleteReceipt(place.org_id, place.region, key, count)


def _acting_on(op: OperationAudit, resolved: Resolved, cls: DataClass, full: str) -> Placement:
    place = resolved.place
    op.at(place.region, cls, full)
    op.acting()
    return place


def _info(org: OrgId, cls: DataClass, key: str, found: _Found) -> ObjectInfo:
    return ObjectInfo(
        org,
        cls,
        key,
        found.size,
        found.version_id,
        found.last_modified,
        found.content_type,
        MappingProxyType(dict(found.metadata)),
        found.checksum_sha256,
        found.etag,
    )
