"""The router's processing operations: where a call goes, what is kept of it, and why.

:class:`~router.routing.ResidencyRouter` inherits them; each is resolve, audit, act.
"""

from __future__ import annotations

import uuid

from router._startup import RouterLifecycle
from router.explain import explain as explain_decision
from router.inputs import parse_data_class, parse_operation, parse_org_id
from router.policy import (
    decide_exchange,
    decide_processing,
    endpoint_rule,
    exchange_document,
    write_receipt,
)
from router.types import DataClass, Explanation, Operation, ProcessingRoute, WriteReceipt


class ProcessingOps(RouterLifecycle):
    """Processing calls: their route, their recorded exchanges, and explained decisions."""

    async def route_processing(self, org_id: str, endpoint: str) -> ProcessingRoute:
        """Return where a processing call for ``endpoint`` must go; sends no S3 request.

        Raises:
            ProcessingNotEligibleError: the endpoint is not listed, or not regional for an
                org that pins its processing.
            ResidencyError: as for ``put`` (bad input, unknown org, directory failures).
        """
        with self._audit.operation("route_processing", org_id) as op:
            wiring = self._open()
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
            ProcessingNotEligibleError: the endpoint is not listed.
            ResidencyError: as for ``put`` (input, directory, S3 refusals and failures).
        """
        with self._audit.operation("record_exchange", org_id) as op:
            wiring = self._open()
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
                return write_receipt(decision, None, "")
            op.key = decision.key
            resolved.check_writable()
            op.acting()
            document = exchange_document(endpoint, now, bytes(request), bytes(response))
            result = await wiring.objects.put(
                place,
                decision.key,
                document,
                tagging=decision.tagging(),
                content_type="application/json",
            )
        return write_receipt(decision, result.version_id, result.sha256)

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
            InvalidArgumentError: bad operation or data class, or a missing endpoint.
            ResidencyError: as for ``put`` (bad input, unknown org, directory failures).
        """
        with self._audit.operation("explain", org_id) as op:
            wiring = self._open()
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
