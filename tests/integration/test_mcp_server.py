"""Corral's MCP server against a real `corral up` (the bundled model), with the `mcp` package's
own client: streamable HTTP at /mcp and the stdio bridge `corral mcp`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.integration.conftest import RunningCorral

pytestmark = pytest.mark.slow


@asynccontextmanager
async def over_http(corral: RunningCorral) -> AsyncIterator[Client]:
    headers = {"authorization": f"Bearer {corral.key}"}
    http = create_mcp_http_client(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
    async with http:
        transport = streamable_http_client(corral.url + "/mcp", http_client=http)
        async with Client(transport, cache=None) as client:
            yield client


def _api(corral: RunningCorral) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {corral.key}"}
    return httpx.AsyncClient(base_url=corral.url, headers=headers, trust_env=False, timeout=30)


async def _deny_gates(corral: RunningCorral) -> None:
    async with _api(corral) as api:
        while True:
            for gate in (await api.get("/api/gates")).json()["gates"]:
                await api.post("/api/gate/deny", json={"gate_id": gate["id"], "reason": "test says no"})
            await asyncio.sleep(0.5)


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def _env(corral: RunningCorral, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "CORRAL_HOME": str(corral.home), **extra}


async def test_http_lists_and_calls_tools_and_ask_corral_answers(corral: RunningCorral) -> None:
    corral.wait_healthy("general/0")
    async with over_http(corral) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"ask_corral", "corral_status", "corral_experts", "cluster_status", "shell"} <= set(tools)
        assert tools["ask_corral"].input_schema["required"] == ["question"]

        experts = await client.call_tool("corral_experts", {})
        assert {e["name"] for e in experts.structured_content["experts"]} >= {"general", "fallback", "embed"}

        status = await client.call_tool("cluster_status", {})  # the agent's own tool, low risk
        assert not status.is_error and "general/0" in _text(status)

        refused = await client.call_tool("shell", {"command": "id"})  # medium risk: approval needed
        assert refused.is_error and "ask_corral" in _text(refused)

        # The small model may pick a risky tool: its run then waits on a gate like any other run,
        # and a person's "no" (here, the test's) lets it finish without the tool.
        denier = asyncio.create_task(_deny_gates(corral))
        try:
            answer = await client.call_tool("ask_corral", {"question": "Say hello in one short sentence."})
        finally:
            denier.cancel()
        assert not answer.is_error, _text(answer)
        assert answer.structured_content["answer"].strip() == _text(answer).strip() != ""
        run_id = answer.structured_content["run_id"]

    async with _api(corral) as api:
        run = (await api.get(f"/api/runs/{run_id}")).json()
    assert run["status"] == "succeeded"


def test_mcp_needs_an_api_key(corral: RunningCorral) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    with httpx.Client(base_url=corral.url, trust_env=False) as http:
        anonymous = http.post("/mcp", json=body)
        wrong = http.post("/mcp", json=body, headers={"authorization": "Bearer crl_00000000_wrong"})
    for response in (anonymous, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


async def test_the_stdio_bridge_serves_the_gateway_tools(corral: RunningCorral) -> None:
    bridge = StdioServerParameters(
        command=sys.executable,
        args=["-m", "corral.cli", "mcp", "--url", corral.url + "/mcp"],
        env=_env(corral, CORRAL_API_KEY=corral.key),
    )
    async with Client(bridge, cache=None) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"ask_corral", "corral_status", "cluster_status"} <= names
        experts = await client.call_tool("corral_experts", {})
        assert any(e["name"] == "general" for e in experts.structured_content["experts"])
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        assert "corral://status" in resources
