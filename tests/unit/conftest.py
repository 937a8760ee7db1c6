"""The agent's HTTP harness for unit tests: a Gateway over FakeBackends with keys, an
AgentService and the app, plus the `harness` fixture (started and stopped around each test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.agent.router_llm import RouterLLM
from corral.agent.service import AgentService
from corral.agent.settings import AgentConfig
from corral.config import ExpertConfig
from corral.gateway.app import Gateway, create_app
from corral.gateway.auth import KeyStore
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router
from corral.testing import FakeBackend, FakeLLM

EXPERTS = [
    ExpertConfig(name="general", model="m", description="general chat questions"),
    ExpertConfig(name="code", model="m", description="python code programming bugs"),
    ExpertConfig(name="embed", model="m", kind="embedding", description="embeddings"),
]

GATED = """
name: gated
inputs: {x: {type: string, required: false, default: ""}}
nodes:
  ask: {type: gate, params: {title: "Go?", timeout_s: 30}}
  go: {type: output, in: {r: approved}}
  stop: {type: output, in: {r: denied}}
edges:
  - {from: ask, to: go, when: approved}
  - {from: ask, to: stop, when: denied}
"""


class Harness:
    def __init__(self, tmp_path: Path, llm: Any = None) -> None:
        registry = LocalRegistry()
        registry.add(FakeBackend("general/0", "general", reply="routed answer"))
        registry.add(FakeBackend("code/0", "code", reply="code answer"))
        registry.add(FakeBackend("embed/0", "embed"))
        self.keys = KeyStore(tmp_path / "keys.json")
        _, self.key = self.keys.create("test", "user")
        _, self.admin = self.keys.create("admin", "admin")
        self.gateway = Gateway(router=Router(EXPERTS, registry), keys=self.keys)
        self.llm = llm or RouterLLM(self.gateway.proxy)
        self.service = AgentService(
            AgentConfig(), tmp_path / "agent", self.llm, workflows_dir=tmp_path / "wf"
        )
        self.gateway.agent = self.service
        self.app = create_app(self.gateway)

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://corral",
            headers={"authorization": f"Bearer {key or self.key}"},
            timeout=30,
        )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path, FakeLLM(default='{"tool": "final_answer", "arguments": {"answer": "hello there"}}'))
    await h.service.start()
    try:
        yield h
    finally:
        await h.service.stop()
