"""Regional clients: one S3 and one KMS client per AWS region, and the one way to call them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Self, TypeVar

from router._aws import (
    Transport,
    new_aio_session,
    open_aio_client,
    open_lean_http,
    redirect_guard,
    warm_loader,
)
from router._retry import RetryPolicy
from router._s3.errors import S3Errors
from router._s3.health import HealthBook
from router._s3.lean import LeanS3, bucket_url
from router.config import RouterSettings
from router.regions import RegionMap
from router.types import AwsRegion

if TYPE_CHECKING:
    from types_aiobotocore_kms import KMSClient
    from types_aiobotocore_s3 import S3Client

T = TypeVar("T")


class RegionClients:
    """One S3 and one KMS client per AWS region of the map, made on entry and reused.

    Every call goes through :meth:`run`: the health book admits it, the retry policy repeats
    it in the same region only, and :class:`~router._s3.errors.S3Errors` translates failures.
    """

    def __init__(self, region_map: RegionMap, settings: RouterSettings) -> None:
        self._map = region_map
        self._transport = Transport.from_settings(settings)
        self._lean_wanted = settings.transport == "lean"
        self._lean: dict[AwsRegion, LeanS3] = {}
        self._retry = RetryPolicy(settings.retry_max_attempts, settings.retry_deadline_s)
        self._stack = AsyncExitStack()
        self._s3: dict[AwsRegion, S3Client] = {}
        self._kms: dict[AwsRegion, KMSClient] = {}
        self.owner: dict[AwsRegion, dict[str, Any]] = {
            cfg.aws_region: ({"ExpectedBucketOwner": cfg.account_id} if cfg.account_id else {})
            for cfg in region_map
        }
        """Per region: ``ExpectedBucketOwner`` when the map names the account."""
        self.health = HealthBook(cfg.aws_region for cfg in region_map)
        self._cleanups: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        session = new_aio_session()
        # botocore reads its JSON data files synchronously; do it off the event loop.
        await warm_loader(session, ("s3", "kms"))
        transport = self._transport
        try:
            for cfg in self._map:
                self._s3[cfg.aws_region] = await self._stack.enter_async_context(
                    open_aio_client(session, "s3", cfg.aws_region, transport, bucket=cfg.bucket)
                )
                self._kms[cfg.aws_region] = await self._stack.enter_async_context(
                    open_aio_client(session, "kms", cfg.aws_region, transport)
                )
                # Making a client is a few ms of CPU and never yields: let others run
                # between regions instead of holding the loop for all of them.
                await asyncio.sleep(0)
            if self._lean_wanted:
                await self._open_lean(session)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _open_lean(self, session: Any) -> None:
        """Make the lean transport of every region: one aiohttp session, one resolved URL."""
        credentials = await session.get_credentials()  # resolved once already: cached
        ca_bundle = await asyncio.to_thread(session.get_config_variable, "ca_bundle")
        for cfg in self._map:
            client = self._s3[cfg.aws_region]
            http = await open_lean_http(self._transport, ca_bundle)
            self._stack.push_async_callback(http.aclose)
            self._lean[cfg.aws_region] = LeanS3(
                client,
                http,
                credentials,
                aws_region=cfg.aws_region,
                bucket=cfg.bucket,
                base_url=await bucket_url(client, cfg.bucket),
                guard=redirect_guard("s3", cfg.aws_region, cfg.bucket),
            )

    @property
    def transport(self) -> str:
        """``lean`` or ``botocore``: what :meth:`hot` hands out."""
        return "lean" if self._lean_wanted else "botocore"

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def clean_up(self, work: Coroutine[Any, Any, None]) -> None:
        """Finish ``work`` after its caller is gone (aborting an orphaned upload, say).

        The task is kept here, not fired and forgotten: closing the clients waits for it.
        """
        task = asyncio.get_running_loop().create_task(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def aclose(self) -> None:
        """Finish pending clean-ups (bounded by the retry deadline), then close every client."""
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=self._retry.deadline_s)
        self._s3.clear()
        self._kms.clear()
        self._lean.clear()
        await self._stack.aclose()

    def register(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Register a botocore event handler on every S3 client (tests, tracing)."""
        for client in self._s3.values():
            client.meta.events.register(event_name, handler)
        for lean in self._lean.values():
            lean.register(event_name, handler)

    def s3(self, aws_region: AwsRegion) -> S3Client:
        """Return the region's S3 client once the health book admits the region.

        Raises:
            ResidencyViolationError, StorageError, RegionUnavailableError: quarantined.
        """
        client = self._s3.get(aws_region)
        if client is None:
            raise RuntimeError("the router is closed or has no client for this region")
        self.health.admit(aws_region)
        return client

    def hot(self, aws_region: AwsRegion) -> S3Client:
        """Return what sends the region's single-request puts, gets and heads.

        The lean transport, or the S3 client, once the health book admits the region. Both
        take the client's arguments and return its answers (see :mod:`router._s3.lean`).

        Raises:
            ResidencyViolationError, StorageError, RegionUnavailableError: quarantined.
        """
        lean = self._lean.get(aws_region)
        if lean is None:
            return self.s3(aws_region)
        self.health.admit(aws_region)
        return lean  # type: ignore[return-value]

    def s3_unchecked(self, aws_region: AwsRegion) -> S3Client:
        """Return the region's S3 client even while quarantined (verification only)."""
        client = self._s3.get(aws_region)
        if client is None:
            raise RuntimeError("the router is closed or has no client for this region")
        return client

    def kms(self, aws_region: AwsRegion) -> KMSClient:
        """Return the region's KMS client (verification: no admission check)."""
        client = self._kms.get(aws_region)
        if client is None:
            raise RuntimeError("the router is closed or has no client for this region")
        return client

    async def run(
        self,
        aws_region: AwsRegion,
        what: str,
        operation: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = True,
        object_read: bool = False,
    ) -> T:
        """Run one S3/KMS call with retries in this region; translate failures.

        A non-idempotent call is repeated only when the failure proves AWS did not act.
        ``object_read``: a read of one object, whose refusals may be about that object alone.

        Raises:
            ObjectNotFoundError, StorageError, RegionUnavailableError,
            ResidencyViolationError: see :class:`~router._s3.errors.S3Errors`.
        """
        started = time.monotonic()
        try:  # the first attempt inline: the calls that succeed at once pay no more
            result = await operation()
        except Exception as exc:
            with S3Errors(self.health, aws_region, what, object_read):
                return await self._retry.after_first(operation, exc, started, idempotent=idempotent)
        self.health.success(aws_region)  # as S3Errors records the success of a retried call
        return result
