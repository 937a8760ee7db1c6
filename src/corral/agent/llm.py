"""The LLM seam for workflow nodes: one request in, streamed tokens out, one result back.

`RouterLLM` (corral.agent.router_llm) serves it in-process through the gateway's Router, with no
HTTP hop back into corral; `corral.testing.FakeLLM` serves it from a script in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

TokenSink = Callable[[str], None]


@dataclass
class LLMRequest:
    messages: list[dict[str, Any]]
    model: str = "auto"  # an expert, an alias, or "auto" (mixture-of-experts choice)
    max_tokens: int = 256
    temperature: float = 0.7
    stop: list[str] = field(default_factory=list)
    json_schema: dict[str, Any] | None = None  # constrained decoding (llama-server grammar)
    grammar: str | None = None  # a GBNF grammar (llama-server); wins over json_schema
    tools: list[dict[str, Any]] | None = None  # native OpenAI tool definitions
    extra: dict[str, Any] = field(default_factory=dict)  # passed through in the request body


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass
class LLMResult:
    text: str
    expert: str = ""
    replica: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)


class LLMClient(Protocol):
    async def complete(self, request: LLMRequest, on_token: TokenSink | None = None) -> LLMResult:
        """Generate; `on_token` receives each streamed piece of text as it arrives."""
        ...

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        """One embedding vector per text from the embedding expert `model`."""
        ...

    def route(self, text: str, experts: Sequence[str] | None = None) -> Route:
        """The mixture-of-experts choice for `text` (among `experts`, default the auto pool)."""
        ...


@dataclass(frozen=True)
class Route:
    expert: str
    method: str
    reason: str
