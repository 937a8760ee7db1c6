"""The Backend seam: an endpoint that speaks the OpenAI wire format, with its live load.

A backend is a llama-server replica the engine runs, or any OpenAI-compatible URL (Ollama, vLLM,
a cloud API). The router reads `state` to pick one; the proxy calls `open`. The test double
`corral.testing.FakeBackend` implements the same protocol without a network.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import httpx

# Until a replica has served anything, assume this decode speed (tokens/s) for routing.
DEFAULT_TOKENS_PER_SECOND = 20.0
_EWMA_ALPHA = 0.3


@dataclass(slots=True)
class BackendState:
    """Live load and health of one backend. Mutated only from the event loop's thread."""

    slots: int = 1
    healthy: bool = False
    status: str = "starting"  # starting | ready | unhealthy | crashed | stopped | remote
    in_flight: int = 0
    queued_tokens: int = 0  # tokens the gateway expects the in-flight requests still to cost
    seconds_per_token: float = 1.0 / DEFAULT_TOKENS_PER_SECOND
    measured: bool = False
    served: int = 0
    failures: int = 0
    restarts: int = 0
    last_error: str = ""
    last_change: float = field(default_factory=time.monotonic)

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.seconds_per_token if self.seconds_per_token > 0 else 0.0

    @property
    def free_slots(self) -> int:
        return max(0, self.slots - self.in_flight)

    def observe_speed(self, tokens: int, seconds: float) -> None:
        """Fold a measured generation (tokens in seconds) into the time-per-token estimate."""
        if tokens <= 0 or seconds <= 0:
            return
        sample = seconds / tokens
        if not self.measured:
            self.seconds_per_token, self.measured = sample, True
        else:
            self.seconds_per_token += _EWMA_ALPHA * (sample - self.seconds_per_token)

    def set_status(self, status: str, *, error: str = "") -> None:
        self.status = status
        self.healthy = status in ("ready", "remote")
        self.last_change = time.monotonic()
        if error:
            self.last_error = error


class BackendResponse(Protocol):
    """The parts of httpx.Response the proxy uses; FakeBackend returns its own."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    name: str  # unique, e.g. "general/0"
    expert: str
    model_id: str  # what it serves, for status and metrics
    upstream_model: str | None  # the `model` to send upstream; None keeps the client's
    state: BackendState

    async def open(self, path: str, body: bytes) -> BackendResponse:
        """Send a POST with a JSON body; return once the status line and headers arrived.

        Raises httpx.TransportError (or a subclass) when the connection fails before that.
        """
        ...


class HttpBackend:
    """A backend reached over HTTP (a local llama-server replica or a remote OpenAI URL)."""

    def __init__(
        self,
        name: str,
        expert: str,
        model_id: str,
        base_url: str,
        client: httpx.AsyncClient,
        state: BackendState | None = None,
        api_key: str | None = None,
        upstream_model: str | None = None,
    ) -> None:
        self.name = name
        self.expert = expert
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.base_url = base_url.rstrip("/")
        self.state = state if state is not None else BackendState()
        self._client = client
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    async def open(self, path: str, body: bytes) -> BackendResponse:
        request = self._client.build_request(
            "POST", self.base_url + path, content=body, headers=self._headers
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.RemoteProtocolError:
            # A pooled keep-alive connection the server had already closed (llama-server closes
            # after each streamed answer though it advertises keep-alive): nothing was processed,
            # so send once more on a fresh connection before calling the backend failed.
            return await self._client.send(request, stream=True)

    async def get(self, path: str) -> httpx.Response:
        return await self._client.get(self.base_url + path, headers=self._headers, timeout=5.0)

    def __repr__(self) -> str:
        return f"HttpBackend({self.name!r}, {self.base_url!r})"
