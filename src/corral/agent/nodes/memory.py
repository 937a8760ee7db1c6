"""Memory nodes: `memory_read` (recall long-term memories, with citations, and the session's recent
messages) and `memory_write` (remember a fact for later)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from corral.agent.nodes.base import NodeContext, NodeParams, NodeResult, NodeType, Port, register
from corral.agent.nodes.llm import last_user_text

log = logging.getLogger("corral.agent.memory")


class MemoryReadParams(NodeParams):
    k: int | None = Field(None, ge=0, le=50, description="memories to recall; default agent.memory.recall_k")
    min_score: float | None = Field(None, ge=-1, le=1)
    scope: str = Field("all", pattern="^(all|session)$", description="all sessions, or this session only")


@register
class MemoryReadNode(NodeType):
    name = "memory_read"
    title = "Recall"
    description = (
        "Recalls long-term memories relevant to a query (with [mN] citations) and the session's window."
    )
    category = "memory"
    inputs = (
        Port("query", "any", "a string, or messages (the last user message is the query)"),
        Port("session", "string", required=False, default=""),
    )
    outputs = (
        Port("text", "string", "recalled memories with citations, for a prompt"),
        Port("items", "list", "[{id, cite, text, score}]"),
        Port("window", "messages", "the session's recent messages"),
        Port("note", "string"),
    )
    Params = MemoryReadParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: MemoryReadParams) -> NodeResult:
        settings = ctx.services.settings.memory
        session = str(inputs.get("session") or ctx.session)
        query = last_user_text(inputs.get("query"))
        items: list[dict[str, Any]] = []
        note = ""
        memory = ctx.services.memory
        k = settings.recall_k if params.k is None else params.k
        if memory is not None and query and k:
            try:
                found = await memory.recall(
                    query,
                    k=k,
                    session=session if params.scope == "session" else None,
                    min_score=settings.min_score if params.min_score is None else params.min_score,
                )
                items = [
                    {"id": getattr(r, "id", None), "cite": r.cite, "text": r.text, "score": round(r.score, 4)}
                    for r in found
                ]
            except Exception as exc:  # memory is a help, not a requirement: answer without it
                log.warning("recall failed: %s", exc)
                note = f"memory unavailable: {exc}"
        elif memory is None:
            note = "no long-term memory configured"
        text = "\n".join(f"{i['cite']} {i['text']}" for i in items)
        window: list[dict[str, Any]] = []
        if ctx.services.window is not None and session:
            window = ctx.services.window.window(session, settings.window_messages, settings.window_chars)
        return NodeResult({"text": text, "items": items, "window": window, "note": note})


class MemoryWriteParams(NodeParams):
    source: str = Field("agent", description="where the memory came from (shown when recalled)")
    min_chars: int = Field(8, ge=0, description="shorter texts are not worth remembering")


@register
class MemoryWriteNode(NodeType):
    name = "memory_write"
    title = "Remember"
    description = "Stores a text in long-term memory (deduplicated) for later recall."
    category = "memory"
    inputs = (Port("text", "string"), Port("session", "string", required=False, default=""))
    outputs = (Port("stored", "boolean"), Port("id", "any"), Port("note", "string"))
    Params = MemoryWriteParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: MemoryWriteParams) -> NodeResult:
        text = str(inputs.get("text") or "").strip()
        memory = ctx.services.memory
        if memory is None:
            return NodeResult({"stored": False, "id": None, "note": "no long-term memory configured"})
        if len(text) < params.min_chars:
            return NodeResult({"stored": False, "id": None, "note": "too short to remember"})
        session = str(inputs.get("session") or ctx.session)
        try:
            record = await memory.remember(
                text, session=session, source=params.source, meta={"run": ctx.run_id}
            )
        except Exception as exc:
            log.warning("remember failed: %s", exc)
            return NodeResult({"stored": False, "id": None, "note": f"memory unavailable: {exc}"})
        return NodeResult({"stored": True, "id": getattr(record, "id", None), "note": ""})
