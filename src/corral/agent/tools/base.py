"""The Tool seam: spec (name, JSON schema, risk, timeout), the call contract, the registry and
the approval policy that reads each tool's risk level.

A tool never raises to its caller: `ToolRegistry.invoke` validates the arguments against the
schema, applies the timeout and turns every failure into a `ToolResult(ok=False, ...)` whose
`content` tells the model (and the user reading the run) what went wrong and what to do.
The approval decision itself is taken by the workflow's `tool` node, which can wait on a gate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import jsonschema

if TYPE_CHECKING:
    from corral.agent.llm import LLMClient

Risk = Literal["low", "medium", "high"]  # reads only | changes a scratch area | changes the world
Decision = Literal["auto", "ask", "deny"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high")
DECISIONS: tuple[Decision, ...] = ("auto", "ask", "deny")

MAX_CONTENT_CHARS = 16_000  # what a result may put in front of a small model


class ToolError(Exception):
    """A tool failed in a way the caller should read: the message says what to do."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, Any]  # a JSON schema of type "object"
    risk: Risk = "low"
    timeout_s: float = 30.0

    def openai(self) -> dict[str, Any]:
        """The OpenAI `tools` entry for native tool calling."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
            "risk": self.risk,
            "timeout_s": self.timeout_s,
        }


@dataclass
class ToolResult:
    ok: bool
    content: str  # text for the model, trimmed to MAX_CONTENT_CHARS
    data: Any = None  # structured detail for the run history and the UI
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.content) > MAX_CONTENT_CHARS:
            cut = len(self.content) - MAX_CONTENT_CHARS
            self.content = self.content[:MAX_CONTENT_CHARS] + f"\n[... {cut} more characters cut]"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "content": self.content,
            "data": self.data,
            "elapsed_s": round(self.elapsed_s, 4),
        }


@dataclass
class ToolContext:
    """What a call may use besides its arguments."""

    run_id: str = ""
    node_id: str = ""
    session: str = ""
    workdir: Path | None = None  # a scratch directory of this run, when the tool needs one
    llm: LLMClient | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Tool(Protocol):
    spec: ToolSpec

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        """Do the work; raise ToolError (or return ok=False) with a message that says what to do."""
        ...


class ApprovalPolicy:
    """auto / ask / deny per tool: an explicit per-tool setting wins, else the risk level decides."""

    DEFAULTS: Mapping[Risk, Decision] = {"low": "auto", "medium": "ask", "high": "ask"}

    def __init__(
        self, per_tool: Mapping[str, Decision] | None = None, by_risk: Mapping[Risk, Decision] | None = None
    ):
        self.per_tool = dict(per_tool or {})
        self.by_risk: dict[Risk, Decision] = {**self.DEFAULTS, **(by_risk or {})}

    def decide(self, spec: ToolSpec) -> Decision:
        return self.per_tool.get(spec.name) or self.by_risk[spec.risk]


class UnknownToolError(ToolError):
    pass


class ToolArgumentError(ToolError):
    pass


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = (), policy: ApprovalPolicy | None = None) -> None:
        self._tools: dict[str, Tool] = {}
        self.policy = policy or ApprovalPolicy()
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        name = tool.spec.name
        if name in self._tools:
            raise ValueError(f"two tools are named {name!r}; tool names must be unique")
        jsonschema.Draft202012Validator.check_schema(dict(tool.spec.parameters))
        self._tools[name] = tool

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self, names: Iterable[str] | None = None) -> list[ToolSpec]:
        if names is None:
            return [t.spec for t in self._tools.values()]
        return [self.get(n).spec for n in names]

    def get(self, name: str) -> Tool:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self._tools)) or "none"
            raise UnknownToolError(f"there is no tool named {name!r}; the tools are: {known}")
        return tool

    def decide(self, name: str) -> Decision:
        return self.policy.decide(self.get(name).spec)

    def validate(self, name: str, args: Any) -> dict[str, Any]:
        spec = self.get(name).spec
        if not isinstance(args, dict):
            raise ToolArgumentError(f"arguments for {name} must be a JSON object, got {type(args).__name__}")
        validator = jsonschema.Draft202012Validator(dict(spec.parameters))
        errors = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(arguments)"
            raise ToolArgumentError(
                f"bad arguments for {name} at {where}: {first.message}; the schema is {dict(spec.parameters)}"
            )
        return args

    async def invoke(self, name: str, args: Any, ctx: ToolContext) -> ToolResult:
        """Validate, run under the tool's timeout, and never raise: failures become ok=False."""
        started = time.perf_counter()
        try:
            tool = self.get(name)
            checked = self.validate(name, args)
            result = await asyncio.wait_for(tool.call(checked, ctx), timeout=tool.spec.timeout_s)
        except TimeoutError:
            timeout = self._tools[name].spec.timeout_s
            result = ToolResult(
                False, f"{name} did not finish within {timeout:g} s and was stopped; try a smaller task"
            )
        except ToolError as exc:
            result = ToolResult(False, str(exc))
        except Exception as exc:  # a tool bug must not take the run down
            result = ToolResult(False, f"{name} failed: {type(exc).__name__}: {exc}")
        result.elapsed_s = time.perf_counter() - started
        return result
