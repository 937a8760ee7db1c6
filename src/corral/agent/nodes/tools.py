"""Action nodes: `tool` (run one tool call under the approval policy) and `gate` (wait for a
person to approve; no answer in time means deny)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field

from corral.agent.gates import GateDecision
from corral.agent.nodes.base import NodeContext, NodeFailure, NodeParams, NodeResult, NodeType, Port, register
from corral.agent.tools.base import ToolContext, ToolError, ToolResult


@contextlib.asynccontextmanager
async def waiting(ctx: NodeContext) -> AsyncIterator[None]:
    """Mark the run `waiting` (for a person) while the block runs."""
    store = ctx.services.store
    store.set_status(ctx.run_id, "waiting")
    ctx.emit("run.waiting", {})
    try:
        yield
    finally:
        store.set_status(ctx.run_id, "running")


async def ask(ctx: NodeContext, title: str, details: Any, timeout_s: float | None) -> GateDecision:
    gates = ctx.services.gates
    assert gates is not None
    timeout = timeout_s or ctx.services.settings.gate_timeout_s
    async with waiting(ctx):
        return await gates.wait(
            ctx.run_id, ctx.node_id, title, details, timeout, root_run=str(ctx.extra.get("root_run", ""))
        )


class ToolParams(NodeParams):
    allow: list[str] | None = Field(None, description="only these tools may run here; default any")
    gate_timeout_s: float | None = Field(None, gt=0, description="default agent.gate_timeout_s")


@register
class ToolNode(NodeType):
    name = "tool"
    title = "Run tool"
    description = (
        "Runs one tool call under the approval policy (auto / ask / deny per tool); a wrong call, "
        "a denial or a failure is a result the model can read, not a crash."
    )
    category = "action"
    inputs = (Port("tool", "string"), Port("arguments", "object", required=False, default={}))
    outputs = (
        Port("ok", "boolean"),
        Port("content", "string", "the result as text"),
        Port("data", "any"),
        Port("decision", "string", "auto, approved, denied or refused"),
        Port("step", "object", "{tool, arguments, ok, content}: for the agent's transcript"),
    )
    branches = ("ok", "error", "denied")
    Params = ToolParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: ToolParams) -> NodeResult:
        registry = ctx.services.tools
        if registry is None:
            raise NodeFailure("no tools are configured for the agent")
        name, arguments = str(inputs.get("tool") or ""), inputs.get("arguments") or {}
        decision = "auto"
        try:
            if params.allow is not None and name not in params.allow:
                raise ToolError(f"tool {name!r} may not run here; allowed: {', '.join(params.allow)}")
            policy = registry.decide(name)
            registry.validate(name, arguments)
        except ToolError as exc:
            return self._result(name, arguments, ToolResult(False, str(exc)), "refused", "error")
        if policy == "deny":
            message = (
                f"the approval policy denies {name}; an admin can allow it under agent.tools.approval "
                "in corral.yaml"
            )
            return self._result(name, arguments, ToolResult(False, message), "denied", "denied")
        if policy == "ask":
            spec = registry.get(name).spec
            details = {
                "tool": name,
                "arguments": arguments,
                "risk": spec.risk,
                "description": spec.description,
            }
            verdict = await ask(ctx, f"Run {name}?", details, params.gate_timeout_s)
            if not verdict.approved:
                message = f"{name} was not approved ({verdict.by}: {verdict.reason}); do without it"
                return self._result(name, arguments, ToolResult(False, message), "denied", "denied")
            decision = "approved"
        workdir = None
        if ctx.services.workdir_root is not None:
            workdir = ctx.services.workdir_root / ctx.run_id
            workdir.mkdir(parents=True, exist_ok=True)
        tool_ctx = ToolContext(ctx.run_id, ctx.node_id, ctx.session, workdir, ctx.services.llm)
        result = await registry.invoke(name, arguments, tool_ctx)
        return self._result(name, arguments, result, decision, "ok" if result.ok else "error")

    def _result(
        self, name: str, arguments: Any, result: ToolResult, decision: str, branch: str
    ) -> NodeResult:
        step = {
            "tool": name, "arguments": arguments, "ok": result.ok, "content": result.content,
            "decision": decision,
        }  # fmt: skip
        outputs = {
            "ok": result.ok,
            "content": result.content,
            "data": result.data,
            "decision": decision,
            "step": step,
        }
        return NodeResult(outputs, branch)


class GateParams(NodeParams):
    title: str = Field("Approve?", description="what the person is asked")
    timeout_s: float | None = Field(None, gt=0, description="default agent.gate_timeout_s; then deny")


@register
class GateNode(NodeType):
    name = "gate"
    title = "Approval gate"
    description = "Waits for a person to approve or deny (API, UI or voice); no answer in time means deny."
    category = "action"
    inputs = (Port("details", "any", "what to show the person", required=False),)
    outputs = (Port("approved", "boolean"), Port("by", "string"), Port("reason", "string"))
    branches = ("approved", "denied")
    Params = GateParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: GateParams) -> NodeResult:
        verdict = await ask(ctx, params.title, inputs.get("details"), params.timeout_s)
        return NodeResult(verdict.to_json(), "approved" if verdict.approved else "denied")
