"""Example service: one ResidencyRouter per process, uploads per org, a routed processing call.

Run it with any ASGI server, for example ``uvicorn examples.service.app:app``; settings come
from ``RESIDENCY_*`` variables. Tests build it with ``create_app(settings)``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from router import (
    DirectoryUnavailableError,
    InvalidKeyError,
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

STATUS = {
    InvalidKeyError: 400,
    UnknownOrgError: 404,
    ObjectNotFoundError: 404,
    ProcessingNotEligibleError: 403,
    ResidencyViolationError: 409,
    DirectoryUnavailableError: 503,
    RegionUnavailableError: 503,
}


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


async def upload(request: Request) -> Response:
    """PUT /orgs/{org}/files/{key}: store the body in the org's residency region."""
    org, key = request.path_params["org_id"], request.path_params["key"]
    # The body is streamed through the router: large uploads use multipart with bounded
    # memory instead of being read whole.
    receipt = await router_of(request).put(
        org, key, request.stream(), content_type=request.headers.get("content-type")
    )
    return JSONResponse(
        {
            "region": receipt.region.value,
            "bucket": receipt.bucket,
            "key": receipt.key,
            "sha256": receipt.sha256,
            "version_id": receipt.version_id,
        },
        status_code=201,
    )


async def download(request: Request) -> Response:
    """GET /orgs/{org}/files/{key}: stream the object back (its KMS key checked)."""
    org, key = request.path_params["org_id"], request.path_params["key"]
    router = router_of(request)
    info = await router.head(org, key)  # errors become statuses before streaming starts
    return StreamingResponse(
        router.stream(org, key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(info.size)},
    )


async def delete(request: Request) -> Response:
    """DELETE /orgs/{org}/files/{key}: remove every version."""
    org, key = request.path_params["org_id"], request.path_params["key"]
    receipt = await router_of(request).delete(org, key)
    return JSONResponse({"versions_deleted": receipt.versions_deleted})


async def chat(request: Request) -> Response:
    """POST /orgs/{org}/chat: route the call per policy and record it per retention rules."""
    org = request.path_params["org_id"]
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


def create_app(settings: RouterSettings | None = None) -> Starlette:
    """Build the app; the router is made at start-up and closed on shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with ResidencyRouter.from_settings(settings or RouterSettings()) as router:
            app.state.router = router
            yield

    async def residency_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ResidencyError)
        return error_response(exc)

    routes = [
        Route("/orgs/{org_id}/files/{key:path}", upload, methods=["PUT"]),
        Route("/orgs/{org_id}/files/{key:path}", download, methods=["GET"]),
        Route("/orgs/{org_id}/files/{key:path}", delete, methods=["DELETE"]),
        Route("/orgs/{org_id}/chat", chat, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ResidencyError: residency_error},
    )


app = create_app
