"""A whole gateway (keys, limits, proxy, agent, MCP) over FakeBackends and a FakeLLM, served by
uvicorn on a free port: what the API fuzzing test and the fuzz and soak benches run against, so
that they measure corral's HTTP layer and not a model's speed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from corral.agent.service import AgentService
from corral.agent.settings import AgentConfig
from corral.backends import BackendResponse
from corral.config import ExpertConfig
from corral.gateway.app import Gateway, create_app
from corral.gateway.auth import KeyStore
from corral.gateway.limits import RateLimitConfig
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router
from corral.testing.fake_backend import FakeBackend
from corral.testing.fake_llm import FakeLLM

EXPERTS = [
    ExpertConfig(name="general", model="m", description="general chat questions", aliases=["gpt-4o-mini"]),
    ExpertConfig(name="code", model="m", description="python code programming bugs"),
    ExpertConfig(name="embed", model="m", kind="embedding", description="embeddings"),
]
ANSWER = '{"tool": "final_answer", "arguments": {"answer": "hello there"}}'


class QuietBackend(FakeBackend):
    """A FakeBackend that keeps no record of requests and responses (a long run must not grow
    the test double's lists: the soak measures the gateway's memory, not theirs)."""

    async def open(self, path: str, body: bytes) -> BackendResponse:
        response = await super().open(path, body)
        self.requests.clear()
        self.responses.clear()
        return response


@dataclass
class FakeGateway:
    gateway: Gateway
    key: str  # user scope
    admin: str


def fake_gateway(
    home: Path, *, rate_limit: RateLimitConfig | None = None, agent: bool = True, slots: int = 64
) -> FakeGateway:
    registry = LocalRegistry()
    registry.add(QuietBackend("general/0", "general", reply="routed answer", slots=slots))
    registry.add(QuietBackend("code/0", "code", reply="code answer", slots=slots))
    registry.add(QuietBackend("embed/0", "embed", slots=slots))
    keys = KeyStore(home / "keys.json")
    _, key = keys.create("user", "user")
    _, admin = keys.create("admin", "admin")
    gateway = Gateway(
        router=Router(EXPERTS, registry, max_queue=256),
        keys=keys,
        rate_limit=rate_limit or RateLimitConfig(),
        ui=False,
    )
    if agent:
        gateway.agent = AgentService(
            AgentConfig(),
            home / "agent",
            FakeLLM(default=ANSWER),
            workflows_dir=home / "workflows",
            memory=False,
        )
    return FakeGateway(gateway, key, admin)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_server(fake: FakeGateway, port: int) -> uvicorn.Server:
    agent = fake.gateway.agent

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        if agent is not None:
            await agent.start()
        try:
            yield
        finally:
            if agent is not None:
                await agent.stop()

    app = create_app(fake.gateway, lifespan)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    return uvicorn.Server(config)


@contextmanager
def serve_in_thread(fake: FakeGateway, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve on a free port in a background thread; yields the base URL, stops on exit."""
    server = uvicorn_server(fake, free_port())
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name="fake-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
