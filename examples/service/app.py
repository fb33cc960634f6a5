"""Example service: one ResidencyRouter per process, files per org behind API keys.

Run it with any ASGI server. ``app`` is a module-level instance that reads its settings from
the environment when it starts (not at import)::

    export RESIDENCY_REGIONS_FILE=regions.yaml           # and the other RESIDENCY_* settings
    export SERVICE_API_KEYS='{"<a long random key>": "org-acme"}'
    uvicorn examples.service.app:app

``create_app`` is the factory behind it; tests pass settings to it, and a server can call it
with none (they are then read from the environment at start-up, as for ``app``)::

    uvicorn --factory examples.service.app:create_app

Every route but ``GET /health`` needs an API key, sent as ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``. The key alone names the org (``SERVICE_API_KEYS`` maps keys to org ids):
no path or parameter names one, so a caller can only ever reach its own org's data.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router import (
    DataClass,
    DirectoryUnavailableError,
    InvalidArgumentError,
    ObjectInfo,
    ObjectNotFoundError,
    ProcessingNotEligibleError,
    RegionUnavailableError,
    ResidencyError,
    ResidencyRouter,
    ResidencyViolationError,
    RouterSettings,
    UnknownOrgError,
)

CHAT = "/v1/chat/completions"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MIN_API_KEY_LENGTH = 16
"""Shorter keys are refused at start-up: a guessable key is someone else's org's data."""
MAX_LISTED = 1000
"""The most objects one ``GET /files`` returns (the answer says when there were more)."""

_ORG_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

STATUS = {
    InvalidArgumentError: 400,  # and InvalidKeyError, its subclass
    UnknownOrgError: 404,
    ObjectNotFoundError: 404,
    ProcessingNotEligibleError: 403,
    ResidencyViolationError: 409,
    DirectoryUnavailableError: 503,
    RegionUnavailableError: 503,
}


class ServiceSettings(BaseSettings):
    """The service's own settings, from ``SERVICE_*`` variables (the router's are ``RESIDENCY_*``).

    ``SERVICE_API_KEYS`` is a JSON object mapping each API key to the org id it acts for; an org
    may have several keys (to rotate them). Errors never repeat a key.
    """

    model_config = SettingsConfigDict(
        env_prefix="SERVICE_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    api_keys: dict[str, str] = Field(min_length=1, repr=False)

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, table: dict[str, str]) -> dict[str, str]:
        # The messages name no key: a validation error may well end up in a log.
        if any(len(key) < MIN_API_KEY_LENGTH for key in table):
            raise ValueError(f"every API key must have at least {MIN_API_KEY_LENGTH} characters")
        if any(not _ORG_ID.fullmatch(org) for org in table.values()):
            raise ValueError("every org id must be 1-128 ASCII letters, digits, '-' or '_'")
        return table


class ApiKeys:
    """Which org an API key acts for, found in constant time; the keys themselves are not kept."""

    __slots__ = ("_digests",)

    def __init__(self, table: Mapping[str, str]) -> None:
        self._digests = [(_digest(key), org) for key, org in table.items()]

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._digests)} keys)"

    def org_of(self, presented: str) -> str | None:
        """Return the org of ``presented``, or None for an unknown key."""
        # Comparing fixed-length digests, and every one of them, takes as long for any key:
        # the time of an answer says nothing about how much of a key was right.
        digest = _digest(presented)
        found = None
        for known, org in self._digests:
            if hmac.compare_digest(digest, known):
                found = org
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class UnauthenticatedError(Exception):
    """The request carries no API key, or one the service does not know."""


def error_response(exc: ResidencyError) -> JSONResponse:
    """Map the router's errors to HTTP: the class name and message, never a traceback."""
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 500)
    headers = {"Retry-After": "5"} if exc.retryable else None
    body = {"error": type(exc).__name__, "message": str(exc)}
    return JSONResponse(body, status_code=status, headers=headers)


def router_of(request: Request) -> ResidencyRouter:
    """Return the process's router, made at start-up."""
    router: ResidencyRouter = request.app.state.router
    return router


def org_of(request: Request) -> str:
    """Return the org the request's API key acts for.

    Raises:
        UnauthenticatedError: no key, two different keys, or an unknown key.
    """
    bearer = None
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise UnauthenticatedError
        bearer = credentials.strip()
    header = request.headers.get("x-api-key")
    if bearer is not None and header is not None and bearer != header:
        raise UnauthenticatedError  # which of the two was meant is not for the service to guess
    presented = bearer if bearer is not None else header
    if not presented:
        raise UnauthenticatedError
    keys: ApiKeys = request.app.state.api_keys
    org = keys.org_of(presented)
    if org is None:
        raise UnauthenticatedError
    return org


def content_type_of(info: ObjectInfo) -> str:
    """Return the content type the object was stored with, or ``application/octet-stream``."""
    return info.content_type or DEFAULT_CONTENT_TYPE


async def health(request: Request) -> Response:
    """GET /health: 200 when every region is ok, else 503; each region's state either way.

    Reasons are left out (they name buckets and keys), as is anything else an unauthenticated
    caller should not learn: operators read reasons from ``router.health()`` in the process.
    No API key is needed (load balancers ask).
    """
    regions = router_of(request).health()
    body = {
        "status": "ok" if all(h.state == "ok" for h in regions.values()) else "unavailable",
        "regions": {
            region.value: {
                "state": h.state,
                "failure_rate": h.failure_rate,
                "last_success": None if h.last_success is None else h.last_success.isoformat(),
            }
            for region, h in sorted(regions.items())
        },
    }
    return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)


async def upload(request: Request) -> Response:
    """PUT /files/{key}: store the body, and its Content-Type, in the org's residency region."""
    org, key = org_of(request), request.path_params["key"]
    # Without one, S3 would store binary/octet-stream: the service's default is stored instead.
    content_type = request.headers.get("content-type") or DEFAULT_CONTENT_TYPE
    # The body is streamed through the router: large uploads use multipart with bounded
    # memory instead of being read whole.
    receipt = await router_of(request).put(org, key, request.stream(), content_type=content_type)
    return JSONResponse(
        {
            "region": receipt.region.value,
            "key": key,
            "sha256": receipt.sha256,
            "version_id": receipt.version_id,
        },
        status_code=201,
    )


async def download(request: Request) -> Response:
    """GET /files/{key}: stream the object back with its content type (its KMS key checked)."""
    org, key = org_of(request), request.path_params["key"]
    router = router_of(request)
    info = await router.head(org, key)  # errors become statuses before streaming starts
    return StreamingResponse(
        router.stream(org, key),
        headers={
            "Content-Type": content_type_of(info),
            "Content-Length": str(info.size),
            # The content type is the uploader's: a browser must neither sniff another one
            # nor render an uploaded page as this service's own.
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": "attachment",
        },
    )


async def listing(request: Request) -> Response:
    """GET /files?prefix=...: the org's files, at most ``MAX_LISTED`` of them."""
    org = org_of(request)
    files: list[dict[str, Any]] = []
    truncated = False
    objects = router_of(request).list(
        org, data_class=DataClass.FILES, prefix=request.query_params.get("prefix", "")
    )
    try:
        async for info in objects:
            if len(files) == MAX_LISTED:
                truncated = True
                break
            files.append(
                {
                    "key": info.key,
                    "size": info.size,
                    "version_id": info.version_id,
                    "last_modified": info.last_modified.isoformat(),
                }
            )
    finally:
        await objects.aclose()
    return JSONResponse({"files": files, "truncated": truncated})


async def delete(request: Request) -> Response:
    """DELETE /files/{key}: remove every version."""
    org, key = org_of(request), request.path_params["key"]
    receipt = await router_of(request).delete(org, key)
    return JSONResponse({"versions_deleted": receipt.versions_deleted})


async def chat(request: Request) -> Response:
    """POST /chat: route the call per policy and record it per retention rules."""
    org = org_of(request)
    router = router_of(request)
    prompt = await request.body()
    route = await router.route_processing(org, CHAT)
    # A real service would now call route.url; the example answers itself.
    reply = json.dumps({"reply": "hello", "processed_in": route.region.value}).encode()
    receipt = await router.record_exchange(org, CHAT, request=prompt, response=reply)
    return JSONResponse(
        {
            "route": route.url,
            "processed_in": route.region.value,
            "recorded": receipt.stored,
            "record_reason": receipt.reason,
        }
    )


def create_app(
    settings: RouterSettings | None = None, service: ServiceSettings | None = None
) -> Starlette:
    """Build the app; settings not given are read from the environment at start-up.

    The router is made at start-up and closed on shutdown. Start-up fails (and the server
    with it) when a setting is missing or bad: for instance no ``SERVICE_API_KEYS``.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.api_keys = ApiKeys((service or ServiceSettings()).api_keys)
        async with ResidencyRouter.from_settings(settings or RouterSettings()) as router:
            app.state.router = router
            yield

    async def residency_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ResidencyError)
        return error_response(exc)

    async def unauthenticated(request: Request, exc: Exception) -> Response:
        body = {"error": "Unauthenticated", "message": "a known API key is required"}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/files", listing, methods=["GET"]),
        Route("/files/{key:path}", upload, methods=["PUT"]),
        Route("/files/{key:path}", download, methods=["GET"]),
        Route("/files/{key:path}", delete, methods=["DELETE"]),
        Route("/chat", chat, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ResidencyError: residency_error, UnauthenticatedError: unauthenticated},
    )


app = create_app()
"""The app for ``uvicorn examples.service.app:app``: settings come from the environment."""
