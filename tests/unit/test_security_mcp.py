"""The MCP server's handlers, in process with the SDK's own Client: what is listed, that the
approval policy holds for direct calls (ask and deny are refused), and ask_corral's run."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client, MCPError

from corral.mcp_server import ASK, EXPERTS, EXPERTS_URI, STATUS
from tests.unit.conftest import Harness


def _client(harness: Harness) -> Client:
    return Client(harness.app.state.mcp.server, cache=None)


def _text(result: Any) -> str:
    return "\n".join(block.text for block in result.content)


async def test_lists_corral_tools_with_their_schemas(harness: Harness) -> None:
    async with _client(harness) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    registry = harness.service.services.tools
    assert registry is not None
    assert {ASK, STATUS, EXPERTS} <= set(tools)
    assert "final_answer" not in tools
    for name in registry.names():
        if name != "final_answer":
            assert tools[name].input_schema == dict(registry.get(name).spec.parameters)
    assert "refused over MCP" in (tools["shell"].description or "")  # medium risk: ask
    annotations = tools[STATUS].annotations
    assert annotations is not None and annotations.read_only_hint


async def test_a_tool_that_needs_approval_is_refused_not_run(harness: Harness) -> None:
    async with _client(harness) as client:
        result = await client.call_tool("shell", {"command": "touch /tmp/should-not-exist"})
    assert result.is_error
    assert "needs a person's approval" in _text(result) and ASK in _text(result)


async def test_a_denied_tool_is_refused(harness: Harness) -> None:
    registry = harness.service.services.tools
    assert registry is not None
    registry.policy.per_tool["web_fetch"] = "deny"
    async with _client(harness) as client:
        result = await client.call_tool("web_fetch", {"url": "http://example.com/"})
    assert result.is_error and "denied" in _text(result)


async def test_an_auto_tool_runs_and_bad_arguments_say_why(harness: Harness) -> None:
    async with _client(harness) as client:
        ran = await client.call_tool("summarise", {"text": "a long text about sheep " * 20})
        bad = await client.call_tool("summarise", {"nope": 1})
        with pytest.raises(MCPError, match="unknown tool"):
            await client.call_tool("final_answer", {"answer": "x"})
    assert not ran.is_error and _text(ran)
    assert bad.is_error and "bad arguments for summarise" in _text(bad)


async def test_ask_corral_runs_the_agent_and_returns_the_run_id(harness: Harness) -> None:
    async with _client(harness) as client:
        result = await client.call_tool(ASK, {"question": "say hello", "session": "mcp-test"})
        empty = await client.call_tool(ASK, {"question": " "})
    assert not result.is_error
    assert result.structured_content["answer"] == "hello there" == _text(result)
    record = harness.service.store.run(result.structured_content["run_id"])
    assert record is not None and record.status == "succeeded"
    assert empty.is_error


async def test_read_only_tools_and_resources_describe_the_cluster(harness: Harness) -> None:
    async with _client(harness) as client:
        experts = await client.call_tool(EXPERTS, {})
        status = await client.call_tool(STATUS, {})
        resources = {str(r.uri) for r in (await client.list_resources()).resources}
        read = await client.read_resource(EXPERTS_URI)
        with pytest.raises(MCPError, match="no resource"):
            await client.read_resource("corral://nope")
    names = [e["name"] for e in experts.structured_content["experts"]]
    assert names == ["general", "code", "embed"]
    assert [e["name"] for e in status.structured_content["experts"]] == names
    assert resources == {"corral://status", EXPERTS_URI}
    assert '"general"' in read.contents[0].text  # type: ignore[union-attr]
