"""The agent's metrics, kept from the event bus of a real Runner: runs by workflow and status,
node durations by type, tool calls by tool and outcome (ok, error, denied, refused)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from corral.agent.library import WorkflowLibrary
from corral.agent.metrics import AgentMetrics
from corral.agent.runner import Runner
from corral.agent.services import AgentServices
from corral.agent.settings import AgentConfig
from corral.agent.store import RunStore
from corral.agent.tools.base import ApprovalPolicy, ToolContext, ToolError, ToolRegistry, ToolResult, ToolSpec
from corral.testing import FakeLLM


class Tool:
    def __init__(self, name: str, fail: bool = False) -> None:
        schema = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
        self.spec = ToolSpec(name, "test tool", schema)
        self.fail = fail

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        if self.fail:
            raise ToolError("broken on purpose")
        return ToolResult(True, args["x"])


CALL = """
name: call
inputs: {tool: {type: string}, args: {type: object}}
nodes:
  t: {type: tool, in: {tool: $inputs.tool, arguments: $inputs.args}}
  out: {type: output, in: {ok: $t.ok}}
"""
BROKEN = """
name: broken
nodes:
  t: {type: tool, in: {tool: nope}}
  out: {type: output, in: {x: $t.ok}}
"""


async def test_runs_nodes_and_tool_calls_are_counted_from_the_bus() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    tools = ToolRegistry(
        [Tool("good"), Tool("bad", fail=True), Tool("banned")], ApprovalPolicy({"banned": "deny"})
    )
    services = AgentServices(AgentConfig(), RunStore(":memory:"), llm=FakeLLM(), tools=tools)
    library = WorkflowLibrary(services.store, None, shipped=False)
    services.workflows = library
    runner = Runner(services)
    call, call_version = library.save(CALL)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    async with metrics.running(runner.bus):
        for tool, args in [("good", {"x": "a"}), ("good", {"x": "b"}), ("bad", {"x": "c"}),
                           ("banned", {"x": "d"}), ("good", {"y": 1})]:  # fmt: skip
            record = await runner.run(call, call_version, {"tool": tool, "args": args})
            assert record.status == "succeeded", record.error
        for _ in range(200):  # the reader task catches up with the bus
            if value("corral_agent_runs_total", workflow="call", status="succeeded") == 5:
                break
            await asyncio.sleep(0.01)

    assert value("corral_agent_runs_total", workflow="call", status="succeeded") == 5
    assert value("corral_tool_calls_total", tool="good", outcome="ok") == 2
    assert value("corral_tool_calls_total", tool="bad", outcome="error") == 1
    assert value("corral_tool_calls_total", tool="banned", outcome="denied") == 1
    assert value("corral_tool_calls_total", tool="good", outcome="refused") == 1
    assert value("corral_agent_node_seconds_count", type="tool") == 5
    assert value("corral_agent_node_seconds_count", type="output") == 5
    assert value("corral_agent_active_runs") == 0


async def test_failed_runs_and_nodes_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    services = AgentServices(
        AgentConfig(), RunStore(":memory:"), llm=FakeLLM(), tools=None
    )  # tool nodes fail
    library = WorkflowLibrary(services.store, None, shipped=False)
    services.workflows = library
    runner = Runner(services)
    workflow, version = library.save(BROKEN)
    async with metrics.running(runner.bus):
        record = await runner.run(workflow, version, {})
        for _ in range(200):
            if registry.get_sample_value(
                "corral_agent_runs_total", {"workflow": "broken", "status": "failed"}
            ):
                break
            await asyncio.sleep(0.01)
    assert record.status == "failed"
    assert (
        registry.get_sample_value("corral_agent_runs_total", {"workflow": "broken", "status": "failed"}) == 1
    )
    assert registry.get_sample_value("corral_agent_node_failures_total", {"type": "tool"}) == 1
