"""The router's listings, and the audit that every operation yielding items goes through.

:class:`~router.routing.ResidencyRouter` inherits them (its ``stream`` is relayed here too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

from router._startup import RouterLifecycle, Wiring
from router.audit import OperationAudit
from router.inputs import list_prefix, parse_data_class, parse_org_id, split_object_key
from router.retention import training_eligible
from router.types import DataClass, ObjectInfo

T = TypeVar("T")


class Listings(RouterLifecycle):
    """Listings of an org's objects, and the audit of every operation that yields."""

    async def _relay(
        self,
        name: str,
        org_id: object,
        produce: Callable[[OperationAudit], AsyncGenerator[T, None]],
    ) -> AsyncGenerator[T, None]:
        """Audit a streamed operation: one event when the iteration ends, however it ends."""
        with self._audit.operation(name, org_id, current=False) as op:
            source = produce(op)
            try:
                while (item := await _step(op, source)) is not None:
                    yield item
            except (GeneratorExit, asyncio.CancelledError):
                op.partial()
                raise
            finally:
                await source.aclose()

    def list(
        self,
        org_id: str,
        *,
        data_class: DataClass | str | None = None,
        prefix: str = "",
    ) -> AsyncGenerator[ObjectInfo, None]:
        """Yield the org's current objects (one class, or all), named by the caller's keys.

        Raises:
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        return self._relay(
            "list", org_id, lambda op: self._list(self._open(), op, org_id, data_class, prefix)
        )

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
                    org,
                    parsed[1],
                    parsed[2],
                    found.size,
                    found.version_id,
                    found.last_modified,
                    etag=found.etag,
                )

    def list_training_eligible(self, org_id: str) -> AsyncGenerator[ObjectInfo, None]:
        """Yield the org's objects that may be used for training.

        An object is yielded only if the org is opted in now and the object's own
        ``residency-training`` tag (set at write time) says ``opt-in``; one tag read per
        object, with bounded concurrency.

        Raises:
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        return self._relay("list_training_eligible", org_id, lambda op: self._training(op, org_id))

    async def _training(self, op: OperationAudit, org_id: str) -> AsyncGenerator[ObjectInfo, None]:
        wiring = self._open()
        resolved = await self._resolved(wiring, parse_org_id(org_id))
        record, place = resolved.record, resolved.place
        op.at(place.region.value)
        op.acting()
        op.items = 0
        listing = self._list(wiring, _Quiet(), record.org_id, None, "")
        async for item in training_eligible(wiring.objects, record, place, listing):
            op.items += 1
            yield item


class _Quiet:
    """An audit stand-in for a listing inside another audited operation."""

    items: int | None = None

    def at(self, *_: object) -> None: ...
    def acting(self) -> None: ...


async def _step(op: OperationAudit, source: AsyncIterator[T]) -> T | None:
    """The next item of ``source``, its work inside the operation's span; None at the end."""
    with op.active():
        return await anext(source, None)
