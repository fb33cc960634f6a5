"""Wiring and lifecycle: directory, cache, clients, and the start-up verdict policy decides."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Self

from router._resolve import Resolved, Resolver
from router._s3.bulk import BulkStore
from router._s3.clients import RegionClients
from router._s3.objects import ObjectStore
from router._s3.presign import Presigner
from router._s3.verify import RegionCheck, resolve_key, verify_region
from router.audit import AuditLog
from router.config import RouterSettings
from router.errors import ResidencyViolationError
from router.orgs import CachedOrgDirectory, DynamoDBOrgDirectory, OrgDirectory, StaticOrgDirectory
from router.policy import startup_verdict
from router.regions import RegionMap
from router.retention import RetentionSweeper
from router.types import OrgId, Problem, ProblemKind, Region, RegionHealth, VerifyReport


@dataclass(frozen=True, slots=True)
class Wiring:
    """Everything a running router uses, made and verified by :func:`start`."""

    region_map: RegionMap
    clients: RegionClients
    objects: ObjectStore
    presigner: Presigner
    bulk: BulkStore
    resolver: Resolver
    sweeper: RetentionSweeper


async def start(
    settings: RouterSettings,
    given: OrgDirectory | None,
    stack: AsyncExitStack,
    clock: Callable[[], datetime],
) -> Wiring:
    """Load the map, open the directory and clients, resolve keys and verify the regions.

    Everything opened is pushed on ``stack``; the caller closes it (also on failure).

    Raises:
        ConfigError: regions.yaml is invalid.
        ResidencyViolationError, StorageError, RegionUnavailableError: verification failed
            and ``verify_on_start`` is ``strict``.
    """
    region_map = await asyncio.to_thread(RegionMap.load, settings.regions_file)
    inner = given
    if inner is None and settings.directory_table:
        default = region_map.processing.default_region
        aws_region = settings.directory_aws_region or region_map.region(default).aws_region
        inner = await stack.enter_async_context(
            DynamoDBOrgDirectory(
                settings.directory_table,
                aws_region=aws_region,
                endpoint_url=settings.endpoint_url,
                timeout_s=settings.directory_timeout_s,
                region_map=region_map,
                proxy_url=settings.proxy_url,
            )
        )
    elif inner is None:
        inner = StaticOrgDirectory.from_region_map(region_map)
    directory = CachedOrgDirectory(
        inner,
        ttl_s=settings.cache_ttl_s,
        negative_ttl_s=settings.negative_cache_ttl_s,
        max_orgs=settings.cache_max_orgs,
        timeout_s=settings.directory_timeout_s,
        check=region_map.check_org,
    )
    stack.push_async_callback(directory.aclose)
    clients = await stack.enter_async_context(RegionClients(region_map, settings))
    bulk = BulkStore(clients)
    objects = ObjectStore(clients, settings)
    wiring = Wiring(
        region_map,
        clients,
        objects,
        Presigner(clients, objects, settings),
        bulk,
        Resolver(directory, region_map, {}, clock),
        RetentionSweeper(bulk, region_map),
    )
    if settings.verify_on_start == "off":
        checks = await _resolve_keys(wiring)
    else:
        checks = await check_regions(wiring)
    apply_checks(wiring, checks, settings.verify_on_start)
    return wiring


async def check_regions(wiring: Wiring) -> dict[Region, RegionCheck]:
    """Verify every region concurrently."""
    configs = list(wiring.region_map)
    results = await asyncio.gather(*(verify_region(wiring.clients, cfg) for cfg in configs))
    return {cfg.region: check for cfg, check in zip(configs, results, strict=True)}


def apply_checks(
    wiring: Wiring, checks: Mapping[Region, RegionCheck], mode: str = "quarantine"
) -> None:
    """Carry out policy's verdict: raise, or quarantine failing regions and release the rest.

    A region only unreachable keeps its state (a passing check releases it later).

    Raises:
        ResidencyError: ``mode`` is ``strict`` and a region failed.
    """
    verdict = startup_verdict(
        "strict" if mode == "strict" else "quarantine",
        {region: check.problems for region, check in checks.items()},
    )
    if verdict.error is not None:
        raise verdict.error
    # Key ARNs as verification resolved them (an alias may point to a new key now). A region
    # whose key could not be resolved keeps its configured ARN: placement still resolves and
    # the health book refuses its operations.
    current = {cfg.region: wiring.resolver.key_arn(cfg.region) for cfg in wiring.region_map}
    wiring.resolver.rekey(
        {
            cfg.region: checks[cfg.region].key_arn or current[cfg.region] or cfg.kms_key
            for cfg in wiring.region_map
        }
    )
    health = wiring.clients.health
    for cfg in wiring.region_map:
        problem = verdict.quarantine.get(cfg.region)
        if problem is None:
            health.release(cfg.aws_region)
        elif problem.kind != "unavailable" or mode != "verify":
            health.quarantine(cfg.aws_region, problem.kind, problem.message)


def report(checks: Mapping[Region, RegionCheck]) -> VerifyReport:
    """The public report of a verification."""
    by_region = {region: [p.message for p in check.problems] for region, check in checks.items()}
    return VerifyReport(ok=not any(by_region.values()), by_region=MappingProxyType(by_region))


async def _resolve_keys(wiring: Wiring) -> dict[Region, RegionCheck]:
    # Without verification the router still needs full key ARNs (writes name them, reads
    # compare with them). A region whose alias cannot be resolved is quarantined.
    configs = list(wiring.region_map)
    results = await asyncio.gather(
        *(resolve_key(wiring.clients, cfg) for cfg in configs), return_exceptions=True
    )
    checks: dict[Region, RegionCheck] = {}
    for cfg, result in zip(configs, results, strict=True):
        if isinstance(result, str):
            checks[cfg.region] = RegionCheck(result, [])
        elif isinstance(result, Exception):
            kind: ProblemKind = (
                "violation" if isinstance(result, ResidencyViolationError) else "unavailable"
            )
            checks[cfg.region] = RegionCheck(
                None, [Problem(kind, f"KMS alias not resolved ({result})")]
            )
        else:
            raise result
    return checks


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The default clock: the current time in UTC."""
    return datetime.now(UTC)


class RouterLifecycle:
    """A router's life: made with settings, entered once (wiring, verification), closed.

    :class:`~router.routing.ResidencyRouter` adds the operations on top.
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
    ) -> Self:
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
            self._wiring = await start(
                self._settings, self._given_directory, self._stack, self._clock
            )
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
