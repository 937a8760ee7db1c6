"""Forwarding one OpenAI request to a backend: validation, retries, streaming, cancellation.

The body is parsed once (to route, validate and add the expert's stop strings), then sent as
bytes. Connect errors and 5xx answers before the first byte move the request to the next
candidate; when every candidate failed for a reason that passes (a killed replica, the rest
restarting), the request waits up to `server.failover_wait_s` for one to come back instead of
failing. After the first byte the stream belongs to the client. A client that goes away
cancels the backend request (closing the connection stops llama-server's generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from corral.backends import Backend, BackendResponse
from corral.errors import (
    BadRequestError,
    ContextOverflowError,
    CorralError,
    NoBackendError,
    QueueFullError,
    TooLargeError,
)
from corral.gateway.errors import error_response
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.router import Admission, Candidate, Router

FAILOVER_POLL_S = 0.5  # how often a request whose replicas all failed looks for one back
DEFAULT_MAX_TOKENS = 256  # expected completion length when the client does not say
PROMPT_TOKEN_WEIGHT = 0.1  # prefill costs about a tenth of a decoded token per token on CPU


@dataclass(frozen=True)
class Endpoint:
    name: str  # chat | completions | embeddings
    path: str
    kind: str  # the expert kind that serves it


CHAT = Endpoint("chat", "/v1/chat/completions", "chat")
COMPLETIONS = Endpoint("completions", "/v1/completions", "chat")
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings", "embedding")


class ClientGone(Exception):
    """The client closed its connection before the answer was ready."""


@dataclass
class Failures:
    """Why a request's passes over its candidates failed: the last error, and whether any of
    them passes by itself (a dead or restarting replica) so another pass is worth waiting for."""

    last: str = ""
    transient: bool = False

    def note(self, error: str, transient: bool) -> None:
        self.last = error
        self.transient = self.transient or transient


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (declared or chunked)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> TooLargeError:
    return TooLargeError(
        f"request body is larger than {limit} bytes; send a smaller request or raise "
        "server.max_body_bytes in corral.yaml"
    )


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "send a JSON object with Content-Type: application/json"
        ) from None
    except UnicodeDecodeError:
        raise BadRequestError("request body is not UTF-8 text; send UTF-8 encoded JSON") from None
    if not isinstance(body, dict):
        raise BadRequestError('request body must be a JSON object like {"model": ..., ...}')
    return body


def validate(endpoint: Endpoint, body: dict[str, Any]) -> None:
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise BadRequestError(f"`{key}` must be a positive integer, got {value!r}", param=key)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequestError("`stream` must be true or false", param="stream")
    if endpoint is CHAT:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError(
                '`messages` must be a non-empty list of {"role": ..., "content": ...}',
                param="messages",
            )
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequestError(
                    f"messages[{i}] must be an object with a string `role`", param="messages"
                )
    elif endpoint is COMPLETIONS and not isinstance(body.get("prompt"), str | list):
        raise BadRequestError("`prompt` must be a string or a list of strings", param="prompt")
    elif endpoint is EMBEDDINGS and (
        not isinstance(body.get("input"), str | list) or body.get("input") in ("", [])
    ):
        raise BadRequestError("`input` must be a non-empty string or list", param="input")


def routing_text(body: dict[str, Any]) -> str:
    """The text the `auto` router reads: the last user message, the prompt, or the input."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_text(message.get("content"))
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return " ".join(v for v in value if isinstance(v, str))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def estimate_cost(body: dict[str, Any], raw_size: int) -> float:
    """Expected work in decoded-token equivalents: completion tokens + weighted prompt tokens."""
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    prompt_tokens = raw_size / 4  # ~4 bytes of JSON per token: cheap and good enough to rank
    return float(completion) + PROMPT_TOKEN_WEIGHT * prompt_tokens


class Proxy:
    def __init__(
        self,
        router: Router,
        metrics: GatewayMetrics,
        stops: Callable[[str], tuple[str, ...]],
        max_body_bytes: int = 8 * 1024 * 1024,
        failover_wait_s: float = 10.0,
    ) -> None:
        self.router = router
        self.metrics = metrics
        self._stops = stops
        self.max_body_bytes = max_body_bytes
        self.failover_wait_s = failover_wait_s

    async def handle(self, request: Request, endpoint: Endpoint) -> Response:
        started = time.perf_counter()
        raw = await read_body(request, self.max_body_bytes)
        body = parse_body(raw)
        return await self.serve(endpoint, body, raw, request=request, started=started)

    async def call(self, endpoint: Endpoint, body: dict[str, Any]) -> Response:
        """The same routing, failover and accounting for a caller inside corral (the agent's
        LLM nodes): no HTTP hop back into the gateway. A streamed answer is a RelayResponse
        whose `relay` the caller iterates and closes."""
        return await self.serve(endpoint, body, json.dumps(body).encode())

    async def serve(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        *,
        request: Request | None = None,
        started: float | None = None,
    ) -> Response:
        started = time.perf_counter() if started is None else started
        validate(endpoint, body)
        choice = self.router.resolve(body.get("model"), endpoint.kind, lambda: routing_text(body))
        self.metrics.routes.labels(choice.method, choice.expert).inc()
        cost = estimate_cost(body, len(raw))
        await self.router.hold_for(choice.expert)  # a sleeping node's expert: wake it first
        candidates = self.router.candidates(choice.expert, cost)
        stream = bool(body.get("stream")) and endpoint is not EMBEDDINGS
        try:
            admission = self.router.admit(choice.expert, candidates)
        except QueueFullError:
            self.metrics.rejected.labels(choice.expert).inc()
            raise
        lease = Lease(admission, self.metrics.queue_depth.labels(choice.expert))
        try:
            response = await self._dispatch(
                request, endpoint, body, raw, candidates, choice.expert, choice.reason,
                int(cost), stream, started, lease,
            )  # fmt: skip
        except BaseException:
            lease.release()
            raise
        if not isinstance(response, RelayResponse):
            lease.release()  # a relay releases when its stream ends, however it ends
        return response

    def _payload(self, body: dict[str, Any], raw: bytes, backend: Backend, expert: str) -> bytes:
        stops = self._stops(expert)
        model = backend.upstream_model
        if not stops and model is None:
            return raw
        out = dict(body)
        if model is not None:
            out["model"] = model
        if stops:
            given = out.get("stop")
            given_list = [given] if isinstance(given, str) else list(given or [])
            out["stop"] = [*given_list, *(s for s in stops if s not in given_list)][:4]
        return json.dumps(out).encode()

    async def _dispatch(
        self,
        request: Request | None,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        candidates: list[Candidate],
        requested: str,
        reason: str,
        cost: int,
        stream: bool,
        started: float,
        lease: Lease,
    ) -> Response:
        failed = Failures()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_wait_s
        while True:
            response = await self._attempt(
                request, endpoint, body, raw, candidates, requested, reason, cost, stream, started, lease,
                failed,
            )  # fmt: skip
            if response is not None:
                return response
            if not failed.transient or loop.time() >= deadline:
                break
            # Every replica failed in a way that passes (one was killed, the others restarting):
            # wait for one to be healthy again rather than lose the request.
            await asyncio.sleep(FAILOVER_POLL_S)
            if request is not None and await request.is_disconnected():
                return Response(status_code=499)
            candidates = self.router.candidates(requested, cost)
            failed.transient = False
        self.metrics.requests.labels(endpoint.name, requested, "", "503").inc()
        raise NoBackendError(
            f"every replica for {requested!r} and its fallbacks failed ({failed.last or 'none healthy'}); "
            "retry shortly, or check `corral status` and the replica logs",
            retry_after_s=2.0,
        )

    async def _attempt(
        self,
        request: Request | None,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        candidates: list[Candidate],
        requested: str,
        reason: str,
        cost: int,
        stream: bool,
        started: float,
        lease: Lease,
        failed: Failures,
    ) -> Response | None:
        """One pass over the candidates: the answer, or None with `failed` saying why."""
        for candidate in candidates:
            backend, expert = candidate.backend, candidate.expert
            state = backend.state
            if not state.healthy:  # it may have failed for an earlier attempt of this request
                failed.transient = True
                continue
            lease.take(backend, cost)
            try:
                upstream = await self._open(request, backend, endpoint, body, raw, expert)
            except ClientGone:
                return Response(status_code=499)
            except httpx.TransportError as exc:
                lease.drop_backend()
                state.failures += 1
                state.set_status("unhealthy", error=f"{type(exc).__name__}: {exc}")
                failed.note(f"{backend.name}: {type(exc).__name__}", transient=True)
                self.metrics.retries.labels(requested, "connect").inc()
                continue
            if upstream.status_code >= 500:
                detail = (await upstream.aread())[:300].decode("utf-8", "replace")
                await upstream.aclose()
                lease.drop_backend()
                state.failures += 1
                # 503 is llama-server loading its model; other 5xx answers would come back again
                failed.note(
                    f"{backend.name}: HTTP {upstream.status_code} {detail}", upstream.status_code == 503
                )
                self.metrics.retries.labels(requested, "5xx").inc()
                continue
            headers = {
                "x-corral-expert": expert,
                "x-corral-replica": backend.name,
                "x-corral-route": reason if expert == requested else f"{reason}; fell back to {expert}",
            }
            if expert != requested:
                self.metrics.fallbacks.labels(requested, expert).inc()
            if upstream.status_code >= 400:
                return await self._client_error(upstream, endpoint, expert, backend, headers)
            if stream:
                relay = Relay(self, upstream, endpoint, backend, expert, started, lease)
                return RelayResponse(relay, headers)
            try:
                # No disconnect watcher here: llama-server sends a non-streamed answer's headers
                # only when it is complete, so the long wait was in _open (which watches).
                content = await upstream.aread()
            except httpx.TransportError as exc:  # the replica died while answering
                await upstream.aclose()
                lease.drop_backend()
                state.set_status("unhealthy", error=str(exc))
                failed.note(f"{backend.name}: {type(exc).__name__} while reading", transient=True)
                self.metrics.retries.labels(requested, "read").inc()
                continue
            await upstream.aclose()
            self.observe(content, backend, expert)
            self.count(endpoint, expert, backend, 200, started)
            return Response(content, status_code=200, media_type="application/json", headers=headers)
        return None

    async def _open(
        self,
        request: Request | None,
        backend: Backend,
        endpoint: Endpoint,
        body: dict[str, Any],
        raw: bytes,
        expert: str,
    ) -> BackendResponse:
        payload = self._payload(body, raw, backend, expert)
        if request is None:  # an in-process caller cancels by cancelling its task
            return await backend.open(endpoint.path, payload)
        response: BackendResponse = await _unless_disconnected(request, backend.open(endpoint.path, payload))
        return response

    async def _client_error(
        self,
        upstream: BackendResponse,
        endpoint: Endpoint,
        expert: str,
        backend: Backend,
        headers: dict[str, str],
    ) -> Response:
        content = await upstream.aread()
        await upstream.aclose()
        status = upstream.status_code
        self.metrics.requests.labels(endpoint.name, expert, backend.name, str(status)).inc()
        try:
            error = json.loads(content).get("error", {})
        except (ValueError, AttributeError):
            error = {}
        if isinstance(error, dict) and error.get("type") == "exceed_context_size_error":
            n_prompt, n_ctx = error.get("n_prompt_tokens", "?"), error.get("n_ctx", "?")
            err: CorralError = ContextOverflowError(
                f"the prompt has {n_prompt} tokens but expert {expert!r} holds {n_ctx} per "
                f"request: shorten the conversation, lower max_tokens, or raise `context` for "
                f"{expert} in corral.yaml",
                param="messages",
            )
            response = error_response(err)
            response.headers.update(headers)
            return response
        return Response(content, status_code=status, media_type="application/json", headers=headers)

    def observe(self, content: bytes, backend: Backend, expert: str) -> None:
        if b'"timings"' not in content and b'"usage"' not in content:
            return
        try:
            data = json.loads(content)
        except ValueError:
            return
        self._record_timings(data, backend, expert)

    def observe_stream(self, chunk: bytes, backend: Backend, expert: str) -> None:
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: ") and b'"timings"' in line:
                with contextlib.suppress(ValueError):
                    self._record_timings(json.loads(line[6:]), backend, expert)
                return

    def _record_timings(self, data: Any, backend: Backend, expert: str) -> None:
        timings = data.get("timings") if isinstance(data, dict) else None
        if isinstance(timings, dict) and timings.get("predicted_n"):
            tokens = int(timings["predicted_n"])
            backend.state.observe_speed(tokens, float(timings.get("predicted_ms", 0)) / 1000)
            self.metrics.generated_tokens.labels(expert).inc(tokens)
            self.metrics.tokens_per_second.labels(expert, backend.name).set(backend.state.tokens_per_second)

    def count(self, endpoint: Endpoint, expert: str, backend: Backend, status: int, started: float) -> None:
        backend.state.served += 1
        self.metrics.requests.labels(endpoint.name, expert, backend.name, str(status)).inc()
        self.metrics.latency.labels(endpoint.name, expert).observe(time.perf_counter() - started)


class Lease:
    """What one admitted request holds: its place in the expert's queue and, while dispatched,
    its share of a replica's load. Every path out of the gateway releases it exactly once."""

    def __init__(self, admission: Admission, depth: Any) -> None:
        self._admission = admission
        self._depth = depth
        self._backend: Backend | None = None
        self._cost = 0
        self._released = False
        depth.inc()

    def take(self, backend: Backend, cost: int) -> None:
        self.drop_backend()
        self._backend, self._cost = backend, cost
        backend.state.in_flight += 1
        backend.state.queued_tokens += cost

    def drop_backend(self) -> None:
        if self._backend is not None:
            self._backend.state.in_flight -= 1
            self._backend.state.queued_tokens -= self._cost
            self._backend = None

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.drop_backend()
        self._admission.release()
        self._depth.dec()


class Relay:
    """Streams one backend's SSE answer to the client and accounts for it when it ends."""

    def __init__(
        self,
        proxy: Proxy,
        upstream: BackendResponse,
        endpoint: Endpoint,
        backend: Backend,
        expert: str,
        started: float,
        lease: Lease,
    ) -> None:
        self.proxy, self.upstream, self.endpoint = proxy, upstream, endpoint
        self.backend, self.expert, self.started, self.lease = backend, expert, started, lease
        self.status = 499  # until the stream completes, a close means the client left
        self._closed = False

    async def events(self) -> AsyncIterator[bytes]:
        metrics = self.proxy.metrics
        first_at = 0.0
        events = 0
        timings: bytes | None = None
        try:
            async for chunk in self.upstream.aiter_raw():
                if not first_at:
                    first_at = time.perf_counter()
                    metrics.ttft.labels(self.expert).observe(first_at - self.started)
                events += chunk.count(b"data: ")
                if b'"timings"' in chunk:
                    timings = chunk
                yield chunk
            self.status = 200
        except httpx.TransportError:
            self.status = 502  # the replica died mid-stream: the client sees the stream end early
            self.backend.state.set_status("unhealthy", error="stream broken")
        if timings is not None:
            self.proxy.observe_stream(timings, self.backend, self.expert)
        elif first_at and events > 1:
            self.backend.state.observe_speed(events - 1, time.perf_counter() - first_at)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.lease.release()
        self.proxy.count(self.endpoint, self.expert, self.backend, self.status, self.started)
        await self.upstream.aclose()  # closing the connection makes llama-server stop generating


class RelayResponse(StreamingResponse):
    """A StreamingResponse that always closes its relay, even if the client left before the start."""

    def __init__(self, relay: Relay, headers: dict[str, str]) -> None:
        super().__init__(
            relay.events(),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        self.relay = relay

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.shield(self.relay.close())


async def _unless_disconnected(request: Request, awaitable: Any) -> Any:
    """Await `awaitable`, cancelling it (and raising ClientGone) if the client disconnects."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        watcher.cancel()
        raise
    if work in done:
        watcher.cancel()
        return work.result()
    work.cancel()
    raise ClientGone


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
