"""Control and data nodes: input, output, prompt template, switch, merge, loop, pass."""

from __future__ import annotations

import re
from typing import Any, Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.agent.nodes.base import NodeContext, NodeFailure, NodeParams, NodeResult, NodeType, Port, register

_TEMPLATES = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)


@register
class InputNode(NodeType):
    name = "input"
    title = "Input"
    description = "The workflow's inputs as outputs (the same values `$inputs.NAME` reads)."
    category = "io"
    dynamic_outputs = True

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: Any) -> NodeResult:
        return NodeResult(dict(ctx.extra.get("inputs", {})))


@register
class OutputNode(NodeType):
    name = "output"
    title = "Output"
    description = "Names the run's outputs: each bound input becomes an output of the run."
    category = "io"
    dynamic_inputs = True
    dynamic_outputs = True

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: Any) -> NodeResult:
        return NodeResult(dict(inputs))


class PromptParams(NodeParams):
    template: str = Field(description="a Jinja2 template; each bound input is a variable")

    @field_validator("template")
    @classmethod
    def _compiles(cls, template: str) -> str:
        try:
            _TEMPLATES.parse(template)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error at line {exc.lineno}: {exc.message}") from None
        return template


@register
class PromptNode(NodeType):
    name = "prompt"
    title = "Prompt template"
    description = "Renders a Jinja2 template from its inputs into text."
    category = "text"
    dynamic_inputs = True
    outputs = (Port("text", "string", "the rendered text"),)
    Params = PromptParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: PromptParams) -> NodeResult:
        try:
            text = _TEMPLATES.from_string(params.template).render(**inputs)
        except jinja2.TemplateError as exc:
            raise NodeFailure(f"the template failed: {exc}") from None
        return NodeResult({"text": text})


Op = Literal["equals", "not_equals", "contains", "matches", "gt", "lt", "exists", "empty", "truthy"]


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    branch: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    op: Op = "equals"
    value: Any = None
    field: str | None = Field(None, description="a dotted path into the input, e.g. `result.ok`")


class SwitchParams(NodeParams):
    cases: list[Case] = Field(min_length=1)
    default: str = Field("default", pattern=r"^[A-Za-z0-9_-]{1,64}$")

    @field_validator("cases")
    @classmethod
    def _regexes(cls, cases: list[Case]) -> list[Case]:
        for case in cases:
            if case.op == "matches":
                try:
                    re.compile(str(case.value))
                except re.error as exc:
                    raise ValueError(f"case {case.branch!r}: bad regular expression: {exc}") from None
        return cases


@register
class SwitchNode(NodeType):
    name = "switch"
    title = "Branch / switch"
    description = "Emits the branch of the first case that holds for its input, else the default branch."
    category = "control"
    inputs = (Port("value", "any", "the value the cases test", required=False),)
    outputs = (Port("value", "any"), Port("branch", "string"))
    Params = SwitchParams

    def branch_labels(self, params: NodeParams) -> tuple[str, ...]:
        assert isinstance(params, SwitchParams)
        return (*(c.branch for c in params.cases), params.default)

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: SwitchParams) -> NodeResult:
        value = inputs.get("value")
        for case in params.cases:
            if _holds(case, _dig(value, case.field)):
                return NodeResult({"value": value, "branch": case.branch}, case.branch)
        return NodeResult({"value": value, "branch": params.default}, params.default)


def _dig(value: Any, path: str | None) -> Any:
    for part in (path or "").split(".") if path else []:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _holds(case: Case, value: Any) -> bool:
    op, want = case.op, case.value
    try:
        if op == "equals":
            return bool(value == want)
        if op == "not_equals":
            return bool(value != want)
        if op == "contains":
            if isinstance(value, str):
                return str(want).lower() in value.lower()
            return value is not None and want in value
        if op == "matches":
            return value is not None and re.search(str(want), str(value)) is not None
        if op == "gt":
            return value is not None and value > want
        if op == "lt":
            return value is not None and value < want
        if op == "exists":
            return value is not None
        if op == "empty":
            return not value
        return bool(value)
    except TypeError:
        return False


@register
class MergeNode(NodeType):
    name = "merge"
    title = "Merge"
    description = "Waits for every branch that can still reach it, then runs once with what arrived."
    category = "control"
    outputs = (
        Port("results", "object", "each arrived node's outputs, by node id"),
        Port("count", "integer"),
        Port("texts", "list", "the `text` output of each arrived node, in arrival order"),
    )

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: Any) -> NodeResult:
        arrived: dict[str, dict[str, Any]] = ctx.extra.get("arrived", {})
        texts = [o["text"] for o in arrived.values() if isinstance(o, dict) and "text" in o]
        return NodeResult({"results": arrived, "count": len(arrived), "texts": texts})


class LoopParams(NodeParams):
    max_iterations: int = Field(ge=1, le=100_000, description="body runs at most this many times")


@register
class LoopNode(NodeType):
    name = "loop"
    title = "Loop"
    description = (
        "Bounds a cycle: edges `when: body` run each iteration, an edge back into the loop starts "
        "the next one, `when: done` runs after max_iterations."
    )
    category = "control"
    outputs = (Port("iteration", "integer", "0 on entry, counting back-edge arrivals"),)
    branches = ("body", "done")
    Params = LoopParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: LoopParams) -> NodeResult:
        iteration = int(ctx.extra.get("loop_iteration", 0))
        branch = "body" if iteration < params.max_iterations else "done"
        return NodeResult({"iteration": iteration}, branch)


@register
class PassNode(NodeType):
    name = "pass"
    title = "Pass"
    description = "Does nothing and passes its inputs on (a join point, or a placeholder)."
    category = "control"
    dynamic_inputs = True
    dynamic_outputs = True

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: Any) -> NodeResult:
        return NodeResult(inputs)
