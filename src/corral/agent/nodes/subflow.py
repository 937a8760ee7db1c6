"""The `workflow` node: runs another workflow as a child run and returns its outputs."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from corral.agent.nodes.base import NodeContext, NodeFailure, NodeParams, NodeResult, NodeType, register
from corral.errors import CorralError


class SubflowParams(NodeParams):
    workflow: str = Field(description="the workflow to run")
    version: int | None = Field(None, ge=1, description="a saved version; default the latest")


@register
class SubflowNode(NodeType):
    name = "workflow"
    title = "Sub-workflow"
    description = (
        "Runs another workflow with the bound inputs (a child run in the history); outputs its outputs."
    )
    category = "control"
    dynamic_inputs = True
    dynamic_outputs = True
    Params = SubflowParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: SubflowParams) -> NodeResult:
        services = ctx.services
        if services.workflows is None or services.runner is None:
            raise NodeFailure("sub-workflows need the workflow library")
        try:
            workflow, version = services.workflows.get(params.workflow, params.version)
            handle = services.runner.start(
                workflow, version, inputs, session=ctx.session, parent_id=ctx.run_id,
                root_run=str(ctx.extra.get("root_run", ctx.run_id)),
            )  # fmt: skip
        except CorralError as exc:
            raise NodeFailure(f"cannot start workflow {params.workflow!r}: {exc}") from None
        try:
            record = await handle.result()
        except BaseException:
            handle.cancel()
            raise
        if record.status != "succeeded":
            raise NodeFailure(
                f"sub-workflow {params.workflow!r} run {record.id} {record.status}: {record.error}"
            )
        return NodeResult(dict(record.outputs or {}))
