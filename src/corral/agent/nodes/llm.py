"""Model nodes: `llm` (generate, streaming tokens), `router` (the mixture-of-experts choice as a
node) and `tool_choice` (ask the model for one tool call or the final answer)."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Literal

from pydantic import Field

from corral.agent.grammar import tool_call_grammar
from corral.agent.llm import LLMClient, LLMRequest
from corral.agent.nodes.base import NodeContext, NodeFailure, NodeParams, NodeResult, NodeType, Port, register
from corral.agent.tools.base import ToolSpec


def _llm(ctx: NodeContext) -> LLMClient:
    if ctx.services.llm is None:
        raise NodeFailure("no LLM is configured for the agent; start it with `corral up`")
    return ctx.services.llm


def last_user_text(value: Any) -> str:
    """The text of a string, or of the last user message of a messages list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for message in reversed(value):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
    return ""


def role_prompt(ctx: NodeContext, role: str | None, seed: str) -> str:
    """The prompt for a `prompt_role`: this run's override, else the promoted one, else `seed`."""
    if not role:
        return seed
    overrides = ctx.extra.get("prompts") or {}
    if isinstance(overrides.get(role), str):
        return str(overrides[role])
    book = ctx.services.prompts
    return book.get(role, seed) if book is not None else seed


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class LlmParams(NodeParams):
    model: str | None = Field(None, description="an expert, an alias or auto; default agent.model")
    max_tokens: int = Field(256, ge=1, le=32768)
    temperature: float = Field(0.7, ge=0, le=2)
    stop: list[str] = Field(default_factory=list, max_length=4)
    json_schema: dict[str, Any] | None = Field(None, description="constrain the answer to this JSON schema")
    prompt_role: str | None = Field(
        None, description="an evolvable prompt role (corral evolve): its promoted prompt replaces `system`"
    )
    grammar: str | None = Field(
        None, description="a GBNF grammar (llama-server) for a JSON answer; wins over json_schema"
    )


@register
class LlmNode(NodeType):
    name = "llm"
    title = "LLM"
    description = "Generates text with a model (any expert, or auto); streams its tokens."
    category = "model"
    inputs = (
        Port("prompt", "string", "a user prompt", required=False),
        Port("messages", "messages", "a chat history (OpenAI messages)", required=False),
        Port("system", "string", "a system prompt", required=False),
        Port("model", "string", "the expert to use, overriding params.model", required=False),
    )
    outputs = (
        Port("text", "string", "the generated text"),
        Port("expert", "string", "the expert that answered"),
        Port("replica", "string", "the replica that generated it (expert/index)"),
        Port("json", "any", "the parsed answer when json_schema is set"),
    )
    Params = LlmParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: LlmParams) -> NodeResult:
        messages: list[dict[str, Any]] = []
        system = role_prompt(ctx, params.prompt_role, str(inputs.get("system") or ""))
        if system:
            messages.append({"role": "system", "content": system})
        messages.extend(m for m in inputs.get("messages") or [] if isinstance(m, dict))
        if inputs.get("prompt"):
            messages.append({"role": "user", "content": inputs["prompt"]})
        if not any(m.get("role") == "user" for m in messages):
            raise NodeFailure("give the llm node a `prompt` or `messages` with a user message")
        request = LLMRequest(
            messages,
            model=inputs.get("model") or params.model or ctx.services.settings.model,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            stop=list(params.stop),
            json_schema=params.json_schema,
            grammar=params.grammar,
        )
        result = await _llm(ctx).complete(request, ctx.token)
        parsed: Any = None
        if params.json_schema is not None or params.grammar is not None:
            parsed = parse_json(result.text)
        outputs = {"text": result.text.strip(), "expert": result.expert, "replica": result.replica}
        return NodeResult({**outputs, "json": parsed})


class RouterParams(NodeParams):
    experts: list[str] | None = Field(None, description="choose among these; default the auto pool")


@register
class RouterNode(NodeType):
    name = "router"
    title = "Expert router"
    description = "Chooses the expert for a text (mixture of experts); emits the expert's name as its branch."
    category = "model"
    inputs = (Port("text", "any", "a string or a messages list (its last user message is read)"),)
    outputs = (Port("expert", "string"), Port("method", "string"), Port("reason", "string"))
    Params = RouterParams

    def branch_labels(self, params: NodeParams) -> tuple[str, ...] | None:
        assert isinstance(params, RouterParams)
        return tuple(params.experts) if params.experts else None

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: RouterParams) -> NodeResult:
        route = _llm(ctx).route(last_user_text(inputs.get("text")), params.experts)
        return NodeResult(
            {"expert": route.expert, "method": route.method, "reason": route.reason}, route.expert
        )


FINAL_ANSWER = ToolSpec(
    "final_answer",
    "Give the final answer to the user and stop.",
    {"type": "object", "properties": {"answer": {"type": "string", "minLength": 1}}, "required": ["answer"]},
)

TOOL_SYSTEM = (
    "You are Corral, a helpful assistant running on the user's own computers. "
    "You may use tools. Reply with exactly one JSON object: "
    '{"tool": "<tool name>", "arguments": {...}}. '
    'When you can answer, reply {"tool": "final_answer", "arguments": {"answer": "<your answer>"}}.'
)


class ToolChoiceParams(NodeParams):
    model: str | None = Field(None, description="an expert, an alias or auto; default agent.model")
    tools: list[str] | None = Field(None, description="tools to offer; default every enabled tool")
    mode: Literal["grammar", "native"] = Field(
        "grammar",
        description="grammar: JSON-schema constrained decoding (any llama-server model, even a small base "
        "model); native: OpenAI tool calls (models trained for them)",
    )
    max_tokens: int = Field(256, ge=16, le=8192)
    temperature: float = Field(0.2, ge=0, le=2)
    system: str = TOOL_SYSTEM
    prompt_role: str | None = Field(
        None, description="an evolvable prompt role (corral evolve): its promoted prompt replaces `system`"
    )
    result_chars: int = Field(1200, ge=100, description="characters of each tool result shown to the model")
    offer_final: bool = Field(True, description="offer final_answer; false forces a tool call")
    max_steps_shown: int = Field(6, ge=1)


@register
class ToolChoiceNode(NodeType):
    name = "tool_choice"
    title = "Tool call"
    description = (
        "Asks the model for one tool call or the final answer; `grammar` mode makes even a small base "
        "model emit a valid call."
    )
    category = "model"
    inputs = (
        Port("messages", "messages", "the conversation"),
        Port("memory", "string", "recalled memories to show the model", required=False),
        Port("steps", "list", "earlier tool calls and their results", required=False, default=[]),
    )
    outputs = (
        Port("tool", "string"),
        Port("arguments", "object"),
        Port("answer", "string", "the final answer (branch `final`)"),
        Port("text", "string", "the model's raw reply"),
        Port("expert", "string"),
        Port("replica", "string"),
    )
    branches = ("tool", "final")
    Params = ToolChoiceParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: ToolChoiceParams) -> NodeResult:
        denied = {
            s.get("tool")
            for s in inputs.get("steps") or []
            if isinstance(s, dict) and s.get("decision") == "denied"
        }
        specs = [s for s in self._specs(ctx, params) if s.name not in denied]  # do without them
        if not specs:
            raise NodeFailure("every tool offered here was denied in this run; nothing is left to call")
        messages = self._messages(inputs, params, specs, role_prompt(ctx, params.prompt_role, params.system))
        request = LLMRequest(
            messages,
            model=params.model or ctx.services.settings.model,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
        )
        if params.mode == "native":
            request.tools = [s.openai() for s in specs]
        else:
            request.grammar = tool_call_grammar([(s.name, s.parameters) for s in specs])
        result = await _llm(ctx).complete(request, ctx.token)
        if result.tool_calls:
            name, arguments = result.tool_calls[0].name, result.tool_calls[0].arguments
        elif params.mode == "native":
            name, arguments = "final_answer", {"answer": result.text.strip()}
        else:
            call = parse_json(result.text)
            if not isinstance(call, dict) or not isinstance(call.get("tool"), str):
                raise NodeFailure(
                    f"the model did not return a tool call (got {result.text[:200]!r}); grammar mode needs a "
                    "llama-server expert, use mode: native for remote models"
                )
            given = call.get("arguments")
            name, arguments = call["tool"], given if isinstance(given, dict) else {}
        outputs = {
            "tool": name,
            "arguments": arguments,
            "answer": "",
            "text": result.text,
            "expert": result.expert,
            "replica": result.replica,
        }
        if name == "final_answer":
            answer = str(arguments.get("answer", "")).strip()
            if not answer:
                raise NodeFailure("the model gave an empty final answer")
            if echoes_the_format(answer, [s.name for s in specs]):
                raise NodeFailure(
                    f"the model's final answer {answer!r} only echoes the call format (a tool name or "
                    "the placeholder), not an answer"
                )
            outputs["answer"] = answer
            return NodeResult(outputs, "final")
        return NodeResult(outputs, "tool")

    def _specs(self, ctx: NodeContext, params: ToolChoiceParams) -> list[ToolSpec]:
        registry = ctx.services.tools
        names = params.tools if params.tools is not None else (registry.names() if registry else [])
        specs: list[ToolSpec] = []
        for name in names:
            if name == "final_answer":
                continue
            if registry is None or name not in registry.names():
                continue  # a tool that is not configured on this machine is simply not offered
            specs.append(registry.get(name).spec)
        if not params.offer_final:
            if not specs:
                raise NodeFailure("offer_final is false but none of the tools is available here")
            return specs
        return [*specs, FINAL_ANSWER]

    def _messages(
        self, inputs: dict[str, Any], params: ToolChoiceParams, specs: list[ToolSpec], system: str
    ) -> list[dict[str, Any]]:
        lines = [system, "", "Tools:"]
        for spec in specs:
            args = json.dumps(spec.parameters.get("properties", {}), separators=(",", ":"))
            lines.append(f"- {spec.name}: {spec.description} Arguments: {args}")
        memory = inputs.get("memory")
        if memory:
            lines += ["", "What you remember (cite as [mN] when you use it):", str(memory)]
        messages: list[dict[str, Any]] = [{"role": "system", "content": "\n".join(lines)}]
        for message in inputs.get("messages") or []:
            if isinstance(message, dict) and message.get("role") in ("user", "assistant"):
                messages.append({"role": message["role"], "content": content_text(message.get("content"))})
        steps = [s for s in inputs.get("steps") or [] if isinstance(s, dict)][-params.max_steps_shown :]
        for step in steps:
            call = {"tool": step.get("tool"), "arguments": step.get("arguments", {})}
            messages.append({"role": "assistant", "content": json.dumps(call)})
            content = str(step.get("content", ""))[: params.result_chars]
            status = "result" if step.get("ok") else "error"
            messages.append({"role": "user", "content": f"Tool {step.get('tool')} {status}: {content}"})
        return messages


def echoes_the_format(answer: str, tool_names: list[str]) -> bool:
    """Whether a final answer is the call format echoed back rather than an answer: a tool's
    name, misspelt or not ("finaal_answer"), or the prompt's "<your answer>" placeholder. Small
    base models do this; the node then fails, so it is retried and then answered in plain words."""
    text = answer.strip().strip("\"'`.<>").lower()
    if text in ("your answer", "answer", ""):
        return True
    if " " in text:
        return False
    return bool(difflib.get_close_matches(text, [n.lower() for n in tool_names], n=1, cutoff=0.8))


def parse_json(text: str) -> Any:
    """The JSON value in a reply: the whole text, else its first {...} block; None if neither."""
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            return json.loads(match.group(0))
        except ValueError:
            return None
    return None
