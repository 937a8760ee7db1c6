"""Browser-facing defences of the gateway: security headers on every response (UI and API),
CORS closed unless `server.cors_origins` names origins, and the non-root check of `corral up`."""

from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import AfterValidator
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Added to every response that does not set them itself (the UI's files set their own CSP and a
# Permissions-Policy that lets the voice page use the microphone).
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"permissions-policy", b"camera=(), geolocation=(), microphone=()"),
    # API answers are data, never a page: nothing in them may load or run, nor be framed.
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
CORS_HEADERS = ["authorization", "content-type", "x-api-key", "x-corral-session", "mcp-protocol-version"]
CORS_EXPOSED = ["x-corral-run", "retry-after", "x-request-id"]


def _origin(value: str) -> str:
    """An origin exactly as a browser sends it: scheme://host[:port], nothing more."""
    if value == "*":
        raise ValueError("'*' would let every web site call corral; list the origins you trust")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(
            f"{value!r} is not an origin; write it as scheme://host[:port], e.g. http://grafana.lan:3000"
        )
    return value


Origin = Annotated[str, AfterValidator(_origin)]


class SecurityHeaders:
    """Adds HEADERS to each HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def install_cors(app: FastAPI, origins: list[str]) -> None:
    """CORS for exactly `origins` (none: the default, and browsers refuse cross-origin reads).
    Credentials (cookies) stay same-origin: other sites call with an API key header."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=CORS_HEADERS,
        expose_headers=CORS_EXPOSED,
        allow_credentials=False,
        max_age=600,
    )


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


ROOT_WARNING = (
    "corral is running as root: a bug in a tool, model server or request parser would own the "
    "machine. Run it as its own user (docs/operations.md, 'Running as a service')."
)
