"""Mission Control's server side: the static UI at `/`, browser login (cookie sessions), the live
status and log streams. The UI's other calls are the ordinary API routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.gateway.auth import KeyRecord
from corral.gateway.auth import Scope as KeyScope
from corral.gateway.logins import COOKIE, Login
from corral.gateway.proxy import parse_body, read_body

if TYPE_CHECKING:
    from corral.gateway.app import Gateway

STATIC = Path(__file__).resolve().parent.parent / "ui" / "static"
Authorize = Callable[[Request, KeyScope], KeyRecord]

# The UI loads nothing from elsewhere and runs no inline script; frames and plugins are refused.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
UI_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), geolocation=(), microphone=(self)"),
]
STATUS_INTERVAL_S = 1.0


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=512)


class _SecurityHeaders:
    """Adds UI_HEADERS (and no-cache, so an upgrade is seen at once) to every response of `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                message["headers"] = [*headers, *UI_HEADERS, (b"cache-control", b"no-cache")]
            await send(message)

        await self.app(scope, receive, with_headers)


def _me(record: KeyRecord, login: Login | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"authenticated": True, "key_id": record.id, "name": record.name}
    out["scope"] = record.scope
    out["expires_at"] = login.expires if login else None
    return out


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _until_gone(request: Request, items: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Stop a server-sent event stream as soon as the browser has gone."""
    try:
        async for item in items:
            if await request.is_disconnected():
                break
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _event_stream(request: Request, items: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(_until_gone(request, items), media_type="text/event-stream", headers=headers)


def install_ui_routes(app: FastAPI, gateway: Gateway, authorize: Authorize) -> None:
    logins = gateway.logins

    @app.post("/api/login", tags=["ui"])
    async def login(request: Request) -> Response:
        """Trade an API key for a session cookie (HttpOnly, SameSite=Strict) for the browser UI."""
        raw = await read_body(request, 4096)
        body = LoginBody.model_validate(parse_body(raw)) if raw.strip() else None
        token, record, session = logins.login(body.key if body else None)
        response = JSONResponse(_me(record, session))
        response.set_cookie(
            COOKIE, token, max_age=int(logins.ttl_s), path="/", httponly=True, samesite="strict",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    @app.post("/api/logout", tags=["ui"])
    async def logout(request: Request) -> Response:
        logins.logout(request.cookies.get(COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @app.get("/api/me", tags=["ui"])
    async def me(request: Request) -> dict[str, Any]:
        """Who this session or key is: `{"authenticated": false}` when the request carries no
        credentials at all (a fresh browser), 401 when they are invalid or the session expired."""
        headers = request.headers
        has_key = headers.get("authorization") or headers.get("x-api-key")
        if COOKIE not in request.cookies and not has_key:
            return {"authenticated": False}
        record = authorize(request, "user")
        token = request.cookies.get(COOKIE)
        session = None
        if token and not request.headers.get("authorization"):
            session = logins.verify(token)[1]
        return _me(record, session)

    @app.get("/api/status/stream", tags=["corral"])
    async def status_stream(request: Request) -> Response:
        """/api/status as server-sent events (`event: status`), once a second."""
        authorize(request, "user")

        async def statuses() -> AsyncIterator[bytes]:
            while True:
                yield sse("status", gateway.status())
                await asyncio.sleep(STATUS_INTERVAL_S)

        return _event_stream(request, statuses())

    @app.get("/api/logs", tags=["corral"])
    async def logs(request: Request, after: int = 0, limit: int = 500) -> dict[str, Any]:
        """The live log's lines after `after` (admin scope: logs can hold prompts)."""
        authorize(request, "admin")
        return {"lines": gateway.logs.lines(after, max(1, min(limit, 2000)))}

    @app.get("/api/logs/stream", tags=["corral"])
    async def logs_stream(request: Request) -> Response:
        """The last 200 log lines, then new ones, as server-sent events (`event: log`)."""
        authorize(request, "admin")

        async def lines() -> AsyncIterator[bytes]:
            async for line in gateway.logs.follow():
                yield sse("log", line)

        return _event_stream(request, lines())

    index = STATIC / "index.html"
    if not gateway.ui or not index.is_file():
        return  # `ui: {enabled: false}`, or an install without the UI files: the API only

    static = _SecurityHeaders(GZipMiddleware(StaticFiles(directory=STATIC), minimum_size=512))
    app.mount("/ui", static, name="ui")

    page_headers = {k.decode(): v.decode() for k, v in UI_HEADERS} | {"cache-control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        """Mission Control (it shows its own login screen)."""
        return FileResponse(index, media_type="text/html", headers=page_headers)
