"""The workflow file format (YAML, version 1): nodes, their input bindings and parameters, edges.

```yaml
version: 1
name: summarise
description: Summarise a document
inputs:
  text: {type: string}
nodes:
  summary:
    type: llm
    in: {prompt: $inputs.text}
    params: {max_tokens: 200}
  out:
    type: output
    in: {summary: $summary.text}
edges:                      # optional where data bindings already give the order
  - {from: summary, to: out}
```

A binding is a literal, or a reference: `$inputs.NAME`, `$vars.NAME`, `$NODE.PORT` or `$NODE` (all
of its outputs). `$$` at the start escapes a literal dollar. Edges carry control: `when` names a
branch the source node emits (a switch's case, a loop's `body`/`done`, `error` for error outputs).
A node with no incoming edge runs after the nodes its bindings read (pure dataflow, as in ComfyUI).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

WORKFLOW_VERSION = 1
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
REFERENCE = re.compile(r"^\$([A-Za-z][A-Za-z0-9_-]*)(?:\.([A-Za-z0-9_-]+))?$")

PortType = Literal["string", "number", "integer", "boolean", "list", "object", "messages", "any"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    type: PortType = "any"
    description: str = ""
    required: bool = True
    default: Any = None


class RetrySpec(_Strict):
    attempts: int = Field(1, ge=1, le=20, description="tries in all, the first included")
    backoff_s: float = Field(0.5, ge=0, le=600, description="wait before the second try; doubles after")


class NodeSpec(_Strict):
    type: str
    title: str = ""
    bindings: dict[str, Any] = Field(default_factory=dict, alias="in")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0, description="per attempt")
    retry: RetrySpec = RetrySpec()
    on_error: Literal["fail", "branch", "continue"] = Field(
        "fail",
        description="fail: the run fails; branch: emit the `error` branch with {error}; "
        "continue: carry on with {error} as the outputs",
    )
    set: dict[str, str] = Field(default_factory=dict, description="run variable <- output port, replaced")
    append: dict[str, str] = Field(default_factory=dict, description="run variable <- output port, appended")
    ui: dict[str, Any] = Field(default_factory=dict, description="editor hints (position, colour)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EdgeSpec(_Strict):
    source: str = Field(alias="from")
    target: str = Field(alias="to")
    when: str | None = Field(None, description="the source's branch this edge follows; none: always")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class WorkflowSpec(_Strict):
    version: int = WORKFLOW_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict, description="run variables and their initial values")
    nodes: dict[str, NodeSpec]
    edges: list[EdgeSpec] = Field(default_factory=list)
    max_steps: int = Field(1000, ge=1, le=1_000_000, description="node executions before the run stops")

    @field_validator("nodes")
    @classmethod
    def _node_ids(cls, nodes: dict[str, NodeSpec]) -> dict[str, NodeSpec]:
        if not nodes:
            raise ValueError("a workflow needs at least one node")
        for node_id in nodes:
            if not re.match(NAME_PATTERN, node_id) or node_id in ("inputs", "vars", "run"):
                raise ValueError(
                    f"node id {node_id!r} must start with a letter, use letters, digits, _ or -, "
                    "and not be `inputs`, `vars` or `run`"
                )
        return nodes


def parse_reference(value: Any) -> tuple[str, str | None] | None:
    """`$node.port` -> (node, port); `$node` -> (node, None); anything else -> None (a literal)."""
    if not isinstance(value, str) or not value.startswith("$") or value.startswith("$$"):
        return None
    match = REFERENCE.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a reference: write $inputs.NAME, $vars.NAME, $NODE.PORT or $NODE "
            "(start with $$ for a literal dollar)"
        )
    return match.group(1), match.group(2)


def literal(value: Any) -> Any:
    """A binding's literal value, with a leading `$$` unescaped."""
    if isinstance(value, str) and value.startswith("$$"):
        return value[1:]
    return value
