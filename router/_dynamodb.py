"""The DynamoDB org directory: versioned records, strongly consistent reads, conditional writes."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from router._aws import Transport, new_aio_session, open_aio_client
from router._orgrecord import org_record
from router._retry import RetryPolicy, error_code
from router.errors import (
    DirectoryUnavailableError,
    OrgRecordConflictError,
    ResidencyError,
    UnknownOrgError,
)
from router.regions import RegionMap
from router.types import OrgId, OrgMove, OrgResidency, OrgValues, Region

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _values_item(values: OrgValues) -> dict[str, Any]:
    item: dict[str, Any] = {
        "region": {"S": values.region.value},
        "retention_days": {"N": str(values.retention_days)},
        "zero_data_retention": {"BOOL": values.zero_data_retention},
        "training_opt_in": {"BOOL": values.training_opt_in},
    }
    if values.processing_region is not None:
        item["processing_region"] = {"S": values.processing_region.value}
    return item


def _move_item(move: OrgMove) -> dict[str, Any]:
    item: dict[str, Any] = {
        "from_region": {"S": move.from_region.value},
        "to_region": {"S": move.to_region.value},
        "phase": {"S": move.phase},
        "started_at": {"S": _iso(move.started_at)},
        "objects_copied": {"N": str(move.objects_copied)},
        "bytes_copied": {"N": str(move.bytes_copied)},
    }
    for name, at in (("fence_at", move.fence_at), ("switch_at", move.switch_at)):
        if at is not None:
            item[name] = {"S": _iso(at)}
    return item


def dynamodb_item(record: OrgResidency) -> dict[str, Any]:
    """Return an org record as a DynamoDB item of ``DynamoDBOrgDirectory``'s schema.

    A version-0 record with nothing scheduled is the item schema from before versions.
    """
    item: dict[str, Any] = {"org_id": {"S": record.org_id}, **_values_item(record.values)}
    if record.version:
        item["version"] = {"N": str(record.version)}
    if record.effective_at is not None:
        item["effective_at"] = {"S": _iso(record.effective_at)}
    if record.previous is not None:
        item["previous"] = {"M": _values_item(record.previous)}
    if record.move is not None:
        item["move"] = {"M": _move_item(record.move)}
    if record.moved_from:
        item["moved_from"] = {"L": [{"S": region.value} for region in record.moved_from]}
    return item


_ITEM_TYPES = {
    "region": "S",
    "processing_region": "S",
    "retention_days": "N",
    "zero_data_retention": "BOOL",
    "training_opt_in": "BOOL",
    "version": "N",
    "effective_at": "S",
    "previous": "M",
    "move": "M",
    "moved_from": "L",
}


def _plain(kind: str, raw: Any, where: str, problems: list[str]) -> object:
    """One DynamoDB attribute value as a plain value (maps and lists recursively)."""
    if kind == "N":
        try:
            return int(str(raw), 10)
        except ValueError:
            problems.append(f"{where}: {raw!r} is not a whole number")
            return None
    if kind == "M" and isinstance(raw, Mapping):
        return {name: _attribute(value, f"{where}.{name}", problems) for name, value in raw.items()}
    if kind == "L" and isinstance(raw, list):
        return [_attribute(value, f"{where}[{i}]", problems) for i, value in enumerate(raw)]
    if kind in ("S", "BOOL", "NULL"):
        return None if kind == "NULL" else raw
    problems.append(f"{where}: malformed DynamoDB {kind}")
    return None


def _attribute(value: object, where: str, problems: list[str]) -> object:
    if not isinstance(value, Mapping) or len(value) != 1:
        problems.append(f"{where}: not a DynamoDB attribute value")
        return None
    ((kind, raw),) = value.items()
    return _plain(str(kind), raw, where, problems)


def _item_fields(item: Mapping[str, Any]) -> tuple[dict[str, object], list[str]]:
    """Turn a DynamoDB item's attributes into plain fields for the record validator."""
    fields: dict[str, object] = {}
    problems: list[str] = []
    for name, value in item.items():
        if name == "org_id":
            continue
        kind = _ITEM_TYPES.get(name)
        if kind is None:
            fields[name] = value  # the validator names unknown fields
            continue
        if not isinstance(value, Mapping) or set(value) != {kind}:
            problems.append(f".{name}: must be a DynamoDB {kind}")
            continue
        fields[name] = _plain(kind, value[kind], f".{name}", problems)
    return fields, problems


class DynamoDBOrgDirectory:
    """Org records in a DynamoDB table; an async context manager (aiobotocore).

    Item schema (partition key ``org_id``, a string)::

        org_id               S     the org id (1-128 ASCII letters, digits, '-', '_')
        region               S     residency region: us, eu, jp, ca, kr, sg or in
        processing_region    S     optional: us or eu
        retention_days       N     optional: inputs/outputs window (default 30)
        zero_data_retention  BOOL  optional (default false)
        training_opt_in      BOOL  optional (default false)
        version              N     optional: the record's version (missing: 0)
        effective_at         S     with previous: when these values take effect (ISO 8601)
        previous             M     with effective_at: the values before that instant
        move                 M     a move in progress (from_region, to_region, phase, ...)
        moved_from           L     regions the org has left (S each)

    Lookups are strongly consistent reads; writes (:meth:`write`) are conditional on the
    version, so two writers cannot overwrite each other's change. Every client comes from
    the one factory (no redirects, no environment endpoints or proxies). Every item is
    checked by the one org-record validator (against ``region_map`` when given); a bad item
    is :class:`DirectoryUnavailableError`. The router puts its cache in front.
    """

    def __init__(
        self,
        table: str,
        *,
        aws_region: str,
        endpoint_url: str | None = None,
        timeout_s: float = 2.0,
        region_map: RegionMap | None = None,
        proxy_url: str | None = None,
    ) -> None:
        self.table = table
        self.aws_region = aws_region
        self._transport = Transport(
            endpoint_url=endpoint_url,
            proxy_url=proxy_url,
            connect_timeout_s=timeout_s,
            read_timeout_s=timeout_s,
        )
        self._retry = RetryPolicy(2, timeout_s)
        self._map = region_map
        self._stack = contextlib.AsyncExitStack()
        self._client: DynamoDBClient | None = None

    async def __aenter__(self) -> DynamoDBOrgDirectory:
        self._client = await self._stack.enter_async_context(
            open_aio_client(new_aio_session(), "dynamodb", self.aws_region, self._transport)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the DynamoDB client."""
        self._client = None
        await self._stack.aclose()

    def _require(self) -> DynamoDBClient:
        if self._client is None:
            raise RuntimeError("DynamoDBOrgDirectory is not open (use 'async with')")
        return self._client

    async def _call(
        self, what: str, operation: Callable[[], Any], *, conflict: str | None = None
    ) -> Any:
        started = time.monotonic()
        try:
            try:
                return await operation()
            except Exception as exc:
                return await self._retry.after_first(operation, exc, started)
        except ClientError as exc:
            if conflict is not None and error_code(exc) == "ConditionalCheckFailedException":
                raise OrgRecordConflictError(conflict) from None
            raise DirectoryUnavailableError(
                f"{what} DynamoDB org directory {self.table} in {self.aws_region} failed "
                f"({error_code(exc) or type(exc).__name__})"
            ) from None
        except ResidencyError as exc:
            raise DirectoryUnavailableError(
                f"{what} DynamoDB org directory {self.table} in {self.aws_region} was refused: "
                f"{exc}"
            ) from exc
        except Exception as exc:
            raise DirectoryUnavailableError(
                f"{what} DynamoDB org directory {self.table} in {self.aws_region} failed "
                f"({type(exc).__name__})"
            ) from exc

    async def lookup(self, org_id: OrgId) -> OrgResidency:
        """Return the org's record (a strongly consistent read).

        Raises:
            UnknownOrgError: no item for the org.
            DirectoryUnavailableError: DynamoDB failed, or the item breaks the schema (the
                message names the attribute).
        """
        client = self._require()
        response = await self._call(
            "reading",
            lambda: client.get_item(
                TableName=self.table, Key={"org_id": {"S": org_id}}, ConsistentRead=True
            ),
        )
        item = response.get("Item")
        if not item:
            raise UnknownOrgError(org_id)
        return self.record(item)

    async def write(self, record: OrgResidency, *, expected_version: int | None) -> None:
        """Write ``record`` if the stored version is ``expected_version`` (None: a new org).

        Raises:
            OrgRecordConflictError: the stored record is not at ``expected_version`` (another
                writer came first, or the org exists / does not exist); nothing was written.
            DirectoryUnavailableError: DynamoDB failed.
        """
        client = self._require()
        condition: dict[str, Any]
        if expected_version is None:
            condition = {"ConditionExpression": "attribute_not_exists(org_id)"}
            conflict = f"org {record.org_id} already exists in the directory; nothing was written"
        else:
            expression = "#v = :v"
            if expected_version == 0:  # items from before versions have no version attribute
                expression = "attribute_exists(org_id) AND (attribute_not_exists(#v) OR #v = :v)"
            condition = {
                "ConditionExpression": expression,
                "ExpressionAttributeNames": {"#v": "version"},
                "ExpressionAttributeValues": {":v": {"N": str(expected_version)}},
            }
            conflict = (
                f"org {record.org_id}'s record is no longer at version {expected_version} "
                "(another change was written first, or the org was removed); re-read it and "
                "retry; nothing was written"
            )
        try:
            await self._call(
                "writing to",
                lambda: client.put_item(
                    TableName=self.table, Item=dynamodb_item(record), **condition
                ),
                conflict=conflict,
            )
        except OrgRecordConflictError:
            # A retry after a write whose answer was lost fails its own condition: the
            # write happened if the table now holds exactly this record.
            try:
                if await self.lookup(record.org_id) == record:
                    return
            except UnknownOrgError:
                pass
            raise

    async def put(self, record: OrgResidency) -> None:
        """Write one org's record unconditionally (seeding a table; operators use ``write``).

        Raises:
            DirectoryUnavailableError: DynamoDB failed.
        """
        client = self._require()
        await self._call(
            "writing to", lambda: client.put_item(TableName=self.table, Item=dynamodb_item(record))
        )

    async def list(self) -> AsyncIterator[OrgResidency | DirectoryUnavailableError]:
        """Yield every org record, or the error of an item that breaks the schema.

        A full scan, for tooling: a malformed item is yielded as its error so that the rest
        can still be listed.

        Raises:
            DirectoryUnavailableError: DynamoDB failed.
        """
        client = self._require()
        start: dict[str, Any] = {}
        while True:
            page = await self._call(
                "scanning",
                lambda start=start: client.scan(  # type: ignore[misc]
                    TableName=self.table, ConsistentRead=True, **start
                ),
            )
            for item in page.get("Items", []):
                try:
                    yield self.record(item)
                except DirectoryUnavailableError as exc:
                    yield exc
            if "LastEvaluatedKey" not in page:
                return
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def record(self, item: Mapping[str, Any]) -> OrgResidency:
        """Validate one item with the one org-record validator.

        Raises:
            DirectoryUnavailableError: the item breaks the schema.
        """
        raw_id = item.get("org_id")
        org_id = raw_id.get("S") if isinstance(raw_id, Mapping) else None
        fields, problems = _item_fields(item)
        if self._map is not None:
            record, found = self._map.org_record(org_id, fields)
        else:
            record, found = org_record(
                org_id,
                fields,
                configured={region.value for region in Region},
                without_endpoint=(),
                default_days=30,
                allowed_days=None,
            )
        problems += found
        if problems or record is None:
            where = f"{self.table}[{org_id}]"
            raise DirectoryUnavailableError(
                "bad org record in the DynamoDB directory; nothing was sent: "
                + "; ".join(f"{where}{problem}" for problem in problems)
            )
        return record
