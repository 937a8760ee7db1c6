"""Per-caller rate limits (token buckets per API key, per client address for callers without
valid credentials) and the request size limit on every route, as one ASGI middleware.

Both answer in the OpenAI error format: 429 with Retry-After, 413 with the setting to raise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.errors import CorralError, RetryLaterError, TooLargeError
from corral.gateway.auth import KeyStore, bearer_token
from corral.gateway.errors import error_response
from corral.gateway.logins import COOKIE, LoginBook

EXEMPT_PATHS = frozenset({"/health", "/ready"})  # probes must always get an answer
MAX_BUCKETS = 10_000  # callers remembered at once; idle (full) buckets are dropped first


class RateLimitConfig(BaseModel):
    """`server.rate_limit`: token buckets; `per_s` refills, `burst` is the bucket's size."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    key_per_s: float = Field(20.0, gt=0, description="sustained requests per second per API key or login")
    key_burst: int = Field(200, ge=1, description="requests a key may make at once before slowing down")
    ip_per_s: float = Field(
        5.0, gt=0, description="requests per second per client address without valid credentials"
    )
    ip_burst: int = Field(60, ge=1, description="burst per client address (a page load is ~15 files)")


class RateLimitedError(RetryLaterError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


@dataclass
class _Bucket:
    tokens: float
    at: float
    per_s: float
    burst: int

    def full_at(self, now: float) -> bool:
        return self.tokens + (now - self.at) * self.per_s >= self.burst


class TokenBuckets:
    """Token buckets by caller id; `take` spends one token or says how long until one is back."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_buckets: int = MAX_BUCKETS) -> None:
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, caller: str, per_s: float, burst: int) -> float:
        """0.0 when a token was spent, else the seconds until the next one."""
        now = self.clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._prune(now)
            bucket = self._buckets[caller] = _Bucket(float(burst), now, per_s, burst)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * per_s)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / per_s

    def _prune(self, now: float) -> None:
        """Forget callers whose buckets have refilled (they lose nothing); if none has, the
        longest idle half."""
        full = [k for k, b in self._buckets.items() if b.full_at(now)]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_buckets:
            by_age = sorted(self._buckets, key=lambda k: self._buckets[k].at)
            for key in by_age[: len(by_age) // 2 + 1]:
                del self._buckets[key]


def too_large(limit: int) -> TooLargeError:
    return TooLargeError(
        f"request body is larger than {limit} bytes; send less, or raise server.max_body_bytes in corral.yaml"
    )


class Limits:
    """The middleware: the size limit first (no body is read past it), then the caller's bucket."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: RateLimitConfig,
        max_body_bytes: int,
        keys: KeyStore,
        logins: Callable[[], LoginBook],
        buckets: TokenBuckets | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.logins = logins
        self.buckets = buckets or TokenBuckets()

    def caller(self, conn: HTTPConnection) -> tuple[str, float, int]:
        """(bucket id, rate, burst): the key's id for valid credentials, else the address."""
        headers = conn.headers
        token = bearer_token(headers.get("authorization"), headers.get("x-api-key"))
        if token is None and conn.scope["type"] == "websocket":
            token = conn.query_params.get("token")  # how browsers authenticate a WebSocket
        config = self.config
        try:
            if token is not None:
                return f"key:{self.keys.verify(token).id}", config.key_per_s, config.key_burst
            cookie = conn.cookies.get(COOKIE)
            if cookie:
                record = self.logins().verify(cookie)[0]
                return f"key:{record.id}", config.key_per_s, config.key_burst
        except CorralError:
            pass  # wrong credentials: counted against the address, like no credentials
        host = conn.client.host if conn.client else "unknown"
        return f"ip:{host}", config.ip_per_s, config.ip_burst

    def _wait(self, conn: HTTPConnection) -> tuple[float, str]:
        caller, per_s, burst = self.caller(conn)
        return self.buckets.take(caller, per_s, burst), caller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = scope["type"] == "websocket" and self.config.enabled
        if limited and self._wait(HTTPConnection(scope))[0] > 0:
            await send({"type": "websocket.close", "code": 1013, "reason": "rate limited; retry later"})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        limit = self.max_body_bytes
        length = conn.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await error_response(too_large(limit))(scope, receive, send)
            return
        if self.config.enabled and scope["path"] not in EXEMPT_PATHS:
            wait, caller = self._wait(conn)
            if wait > 0:
                what = "this API key" if caller.startswith("key:") else "this address"
                err = RateLimitedError(
                    f"too many requests from {what}; retry after {math.ceil(wait)} s "
                    "(server.rate_limit in corral.yaml sets the limits)",
                    retry_after_s=wait,
                )
                await error_response(err)(scope, receive, send)
                return

        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(limit)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except TooLargeError as err:
            if started:
                raise
            await error_response(err)(scope, receive, send)
