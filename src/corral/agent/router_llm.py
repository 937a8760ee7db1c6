"""RouterLLM: the agent's LLMClient served in-process by the gateway's Proxy and Router, so LLM
nodes get the same expert choice, load balancing, failover and metrics as API clients without an
HTTP hop back into corral. Cancelling the node's task closes the upstream stream, which stops
llama-server's generation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.responses import Response

from corral.agent.llm import LLMRequest, LLMResult, Route, TokenSink, ToolCall
from corral.agent.nodes.base import NodeFailure
from corral.gateway.proxy import CHAT, EMBEDDINGS, Proxy, RelayResponse


class RouterLLM:
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.router = proxy.router

    async def complete(self, request: LLMRequest, on_token: TokenSink | None = None) -> LLMResult:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            **request.extra,
        }
        if request.stop:
            body["stop"] = request.stop
        if request.grammar is not None:
            body["grammar"] = request.grammar
        elif request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": request.json_schema},
            }
        if request.tools:
            body["tools"] = request.tools
        response = await self.proxy.call(CHAT, body)
        expert = response.headers.get("x-corral-expert", "")
        replica = response.headers.get("x-corral-replica", "")
        if not isinstance(response, RelayResponse):
            raise NodeFailure(f"the model call failed: {_error_text(response)}")
        stream = _StreamReader(on_token)
        try:
            async for chunk in response.relay.events():
                stream.feed(chunk)
        finally:
            await response.relay.close()
        if response.relay.status != 200:
            raise NodeFailure(f"the stream from {replica or 'the model'} broke off; the node can retry")
        return LLMResult(
            text="".join(stream.text),
            expert=expert,
            replica=replica,
            tool_calls=stream.tool_calls(),
            finish_reason=stream.finish_reason,
            usage=stream.usage,
        )

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        response = await self.proxy.call(EMBEDDINGS, {"model": model, "input": list(texts)})
        if response.status_code != 200:
            raise NodeFailure(f"embedding failed: {_error_text(response)}")
        data = json.loads(bytes(response.body))
        rows = sorted(data["data"], key=lambda d: d.get("index", 0))
        return [list(map(float, row["embedding"])) for row in rows]

    def route(self, text: str, experts: Sequence[str] | None = None) -> Route:
        if experts:
            unknown = [e for e in experts if e not in self.router.experts]
            if unknown:
                known = ", ".join(self.router.experts)
                raise NodeFailure(f"no expert {unknown[0]!r}; the experts are: {known}")
            pool = [self.router.experts[e] for e in experts]
        else:
            pool = self.router.auto_pool("chat")
        choice = self.router.chooser.choose(text, pool)
        return Route(choice.expert, choice.method, choice.reason)


def _error_text(response: Response) -> str:
    try:
        error = json.loads(bytes(response.body)).get("error", {})
        return str(error.get("message") or error)
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"


class _StreamReader:
    """Reassembles an OpenAI SSE chat stream: text deltas, tool-call deltas, finish and usage."""

    def __init__(self, on_token: TokenSink | None) -> None:
        self.on_token = on_token
        self.text: list[str] = []
        self.finish_reason = "stop"
        self.usage: dict[str, int] = {}
        self._calls: dict[int, dict[str, Any]] = {}
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        if isinstance(event.get("usage"), dict):
            self.usage = {k: v for k, v in event["usage"].items() if isinstance(v, int)}
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            if piece:
                self.text.append(piece)
                if self.on_token is not None:
                    self.on_token(piece)
            for call in delta.get("tool_calls") or []:
                slot = self._calls.setdefault(int(call.get("index", 0)), {"id": "", "name": "", "args": ""})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["args"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def tool_calls(self) -> list[ToolCall]:
        calls = []
        for _, slot in sorted(self._calls.items()):
            try:
                arguments = json.loads(slot["args"] or "{}")
            except ValueError:
                arguments = {"_unparsed": slot["args"]}
            calls.append(ToolCall(slot["name"], arguments if isinstance(arguments, dict) else {}, slot["id"]))
        return calls
