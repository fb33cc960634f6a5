"""Pure explanations: the decision the router would take, with the rule behind each part."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from router.errors import InvalidArgumentError, ProcessingNotEligibleError
from router.inputs import org_prefix
from router.policy import decide_exchange, decide_processing, object_tags
from router.regions import RegionMap
from router.types import (
    DataClass,
    Explanation,
    Operation,
    OrgResidency,
    Placement,
    ProcessingRoute,
)

_KEY_SHAPE = "{key}"
_TOKEN_SHAPE = "{uuid4 hex}"


def explain(
    org: OrgResidency,
    place: Placement,
    region_map: RegionMap,
    operation: Operation,
    data_class: DataClass | None,
    endpoint: str | None,
    now: datetime,
) -> Explanation:
    """Return the decision the router would take for one operation, with the rule behind each part.

    Raises:
        TypeError: an endpoint that is not a str.
        InvalidArgumentError: ``record_exchange`` or ``route_processing`` without an endpoint.
    """
    if endpoint is not None and not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, got {type(endpoint).__name__}")
    rules = {
        "placement": (
            f"org {org.org_id} has residency region {org.region.value}: its data lives only in "
            f"bucket {place.bucket} ({place.aws_region}) under that region's KMS key"
        )
    }
    store = False
    key: str | None = None
    tags: Mapping[str, str] = MappingProxyType({})
    expires_at: datetime | None = None
    route: ProcessingRoute | None = None
    if operation in (Operation.RECORD_EXCHANGE, Operation.ROUTE_PROCESSING) and not endpoint:
        raise InvalidArgumentError(f"explaining {operation.value} needs an endpoint")
    if operation is Operation.PUT:
        cls = data_class or DataClass.FILES
        key = f"{org_prefix(org.org_id, cls)}{_KEY_SHAPE}"
        if cls is DataClass.INPUTS_OUTPUTS:
            rules["store"] = "put refuses inputs_outputs: they are recorded by record_exchange"
        else:
            store = True
            tags = object_tags(org, cls, None)
            rules["store"] = f"{cls.value} are stored until the org deletes them"
            rules["tags"] = _tags_rule(org)
    elif operation is Operation.RECORD_EXCHANGE:
        decision = decide_exchange(org, place, region_map, endpoint, now, _TOKEN_SHAPE)
        store, key, tags, expires_at = (
            decision.store,
            decision.key,
            decision.tags,
            decision.expires_at,
        )
        rules["store"] = decision.reason
        rules["key"] = "the expiry day leads the key so the purge finds expired data by prefix"
        rules["tags"] = _tags_rule(org)
        rules["expires_at"] = (
            f"recorded now + {org.retention_days} days; the key carries that instant, and the "
            "purge deletes the exchange at its first sweep at or after it, never before"
        )
    elif operation is Operation.ROUTE_PROCESSING:
        try:
            route = decide_processing(org, region_map, endpoint)
            rules["processing"] = route.reason
        except ProcessingNotEligibleError as exc:
            rules["processing"] = f"refused (ProcessingNotEligibleError): {exc}"
        rules["store"] = "routing a call stores nothing"
    elif operation is Operation.ERASE:
        key = org_prefix(org.org_id, data_class)
        rules["store"] = (
            "erasure deletes every version and delete marker under this prefix in the org's "
            "region, and aborts its multipart uploads"
        )
    else:
        cls = data_class or DataClass.FILES
        key = f"{org_prefix(org.org_id, cls)}{_KEY_SHAPE}"
        verb = (
            "reads check the object's KMS key"
            if operation is Operation.GET
            else ("deletes remove every version and delete marker")
        )
        rules["store"] = f"{operation.value} stores nothing; {verb}, in the org's region only"
    return Explanation(
        org_id=org.org_id,
        operation=operation,
        placement=place,
        store=store,
        key=key,
        tags=tags,
        expires_at=expires_at,
        processing_route=route,
        rules=MappingProxyType(rules),
    )


def _tags_rule(org: OrgResidency) -> str:
    training = "opted in" if org.training_opt_in else "not opted in"
    return f"tags record the org, class, retention and training choice (org is {training})"
