"""The small built-in tools: `final_answer`, `summarise` (map-reduce over the LLM seam) and
`cluster_status` (the gateway's status as a few readable lines)."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Awaitable, Callable
from typing import Any

from corral.agent.llm import LLMClient, LLMRequest
from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec

StatusSource = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]


class FinalAnswerTool:
    """`final_answer`: the agent's answer to the user; the workflow ends the loop on it."""

    spec = ToolSpec(
        name="final_answer",
        description="Give the final answer to the user. Call this once, when you are done.",
        parameters={
            "type": "object",
            "properties": {"answer": {"type": "string", "description": "the complete answer"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
        risk="low",
        timeout_s=5.0,
    )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        answer = str(args["answer"])
        return ToolResult(True, answer, data={"answer": answer, "final": True})


# Each request must fit about 1500 tokens of context. The bundled tokenizer gives roughly 3.5 to 4
# characters of English per token; at a cautious 3.3, 3000 characters of text are about 900
# tokens, which leaves room for the prompt, the example and MAP_TOKENS of summary.
CHUNK_CHARS = 3000
MAP_TOKENS = 160
REDUCE_TOKENS = 256
MAX_CHUNKS = 24  # about 72,000 characters; more is cut (and the result says so)
PARALLEL = 3

# A base model continues text; it does not follow instructions. So the request is a short
# transcript (the chat template of the bundled model renders it as User:/Assistant: turns) with
# one worked example, and the model's next turn is the summary.
SYSTEM = "The following is a conversation with an assistant that writes short, accurate summaries."
EXAMPLE_TEXT = (
    "The backup job on the file server failed three nights in a row because the external disk was "
    "full. Old snapshots were never deleted. After removing snapshots older than 30 days the disk "
    "had 400 GB free and last night's backup finished in 42 minutes."
)
EXAMPLE_SUMMARY = (
    "Backups failed for three nights because the disk was full of old snapshots; deleting "
    "snapshots older than 30 days freed 400 GB and the backup works again."
)


def _ask(focus: str) -> str:
    about = f", focusing on {focus}" if focus else ""
    return f"Summarise this text in two or three sentences{about}.\n\nText:\n"


def summary_request(text: str, focus: str, model: str, max_tokens: int) -> LLMRequest:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": _ask("") + EXAMPLE_TEXT},
        {"role": "assistant", "content": EXAMPLE_SUMMARY},
        {"role": "user", "content": _ask(focus) + text},
    ]
    return LLMRequest(
        messages=messages,
        model=model,
        max_tokens=max_tokens,
        temperature=0.2,
        stop=["\nUser:", "\nText:"],
    )


def chunk_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Pieces of at most `size` characters, cut at paragraph, then sentence, then word ends."""
    chunks: list[str] = []
    rest = text.strip()
    while len(rest) > size:
        window = rest[:size]
        cut = -1
        for pattern in (r"\n\s*\n", r"[.!?]\s", r"\s"):
            ends = [m.end() for m in re.finditer(pattern, window)]
            if ends and ends[-1] > size // 3:
                cut = ends[-1]
                break
        if cut <= 0:
            cut = size
        chunks.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        chunks.append(rest)
    return chunks


class SummariseTool:
    """`summarise`: a few sentences about a text, from the LLM in ctx.llm.

    Long texts are summarised piece by piece (map), then the summaries together (reduce, again
    until they fit one request)."""

    def __init__(self, model: str = "auto") -> None:
        self.model = model
        self.spec = ToolSpec(
            name="summarise",
            description="Summarise a text in a few sentences, optionally focusing on one aspect.",
            parameters={
                "type": "object",
                "properties": {
                    "text": {"type": "string", "minLength": 1, "description": "the text to summarise"},
                    "focus": {"type": "string", "description": "what the summary should be about"},
                },
                "required": ["text"],
                "additionalProperties": False,
            },
            risk="low",
            timeout_s=300.0,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        llm = ctx.llm
        if llm is None:
            raise ToolError("summarise needs a language model, and this run has none; configure an expert")
        focus = str(args.get("focus") or "").strip()
        chunks = chunk_text(str(args["text"]))
        if not chunks:
            raise ToolError("the text to summarise is empty; pass the text itself")
        dropped = max(0, len(chunks) - MAX_CHUNKS)
        chunks = chunks[:MAX_CHUNKS]
        requests = len(chunks)
        summaries = await self._map(llm, chunks, focus, MAP_TOKENS)
        rounds = 0
        while len(summaries) > 1 and rounds < 5:  # each round shrinks the text at least 4 times
            pieces = chunk_text("\n\n".join(summaries))
            tokens = REDUCE_TOKENS if len(pieces) == 1 else MAP_TOKENS
            summaries = await self._map(llm, pieces, focus, tokens)
            requests += len(pieces)
            rounds += 1
        summary = " ".join(summaries).strip()
        if not summary:
            raise ToolError("the model returned an empty summary; try again, or use a larger expert")
        note = f"\n[only the first {MAX_CHUNKS * CHUNK_CHARS} or so characters were summarised]"
        content = summary + (note if dropped else "")
        data = {"chunks": len(chunks), "dropped_chunks": dropped, "requests": requests, "rounds": rounds}
        return ToolResult(True, content, data=data)

    async def _map(self, llm: LLMClient, pieces: list[str], focus: str, max_tokens: int) -> list[str]:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(piece: str) -> str:
            async with gate:
                result = await llm.complete(summary_request(piece, focus, self.model, max_tokens))
            return " ".join(result.text.split())

        done = await asyncio.gather(*(one(p) for p in pieces))
        return [s for s in done if s]


class ClusterStatusTool:
    """`cluster_status`: which experts and replicas run, whether they are healthy, how fast and how
    busy they are, from a function that returns the gateway's status (`Gateway.status`)."""

    spec = ToolSpec(
        name="cluster_status",
        description="Show the cluster's experts and replicas: health, speed and requests in flight.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
        risk="low",
        timeout_s=10.0,
    )

    def __init__(self, status: StatusSource) -> None:
        self.status = status

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        status = self.status()
        if inspect.isawaitable(status):
            status = await status
        return ToolResult(True, render_status(status), data=status)


def render_status(status: dict[str, Any]) -> str:
    experts = status.get("experts") or []
    if not experts:
        return "No experts are configured."
    lines = []
    for expert in experts:
        replicas = expert.get("replicas") or []
        healthy = sum(1 for r in replicas if r.get("healthy"))
        in_flight = sum(int(r.get("in_flight") or 0) for r in replicas)
        speeds = [float(r["tokens_per_second"]) for r in replicas if r.get("tokens_per_second")]
        speed = f", {sum(speeds) / len(speeds):.1f} tokens/s" if speeds else ""
        lines.append(
            f"{expert.get('name', '?')} ({expert.get('kind', 'chat')}, {expert.get('model', '?')}): "
            f"{healthy}/{len(replicas)} replicas healthy{speed}, {in_flight} in flight"
        )
        for r in replicas:
            state = "healthy" if r.get("healthy") else f"NOT healthy ({r.get('status', '?')})"
            tps = r.get("tokens_per_second") or 0
            detail = (
                f"  - {r.get('name', '?')}: {state}, {float(tps):.1f} tokens/s, "
                f"{r.get('in_flight', 0)}/{r.get('slots', '?')} slots busy, served {r.get('served', 0)}"
            )
            if not r.get("healthy") and r.get("last_error"):
                detail += f"; last error: {str(r['last_error']).strip().splitlines()[-1][:200]}"
            lines.append(detail)
    total = sum(len(e.get("replicas") or []) for e in experts)
    up = sum(1 for e in experts for r in e.get("replicas") or [] if r.get("healthy"))
    lines.insert(0, f"{len(experts)} experts, {up}/{total} replicas healthy.")
    return "\n".join(lines)
