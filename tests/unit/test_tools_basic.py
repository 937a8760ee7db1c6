"""final_answer, summarise (map-reduce on FakeLLM), cluster_status, and the registry around them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from corral.agent.llm import LLMRequest
from corral.agent.settings import SandboxConfig, WebConfig
from corral.agent.tools.base import ApprovalPolicy, ToolContext, ToolRegistry
from corral.agent.tools.basic import (
    CHUNK_CHARS,
    MAX_CHUNKS,
    ClusterStatusTool,
    FinalAnswerTool,
    SummariseTool,
    chunk_text,
)
from corral.agent.tools.sandbox import PythonTool, ShellTool
from corral.agent.tools.web import WebFetchTool
from corral.testing import FakeLLM

STATUS: dict[str, Any] = {
    "experts": [
        {
            "name": "general",
            "kind": "chat",
            "model": "gemma3-270m",
            "replicas": [
                {"name": "general-0", "status": "ready", "healthy": True, "slots": 2, "in_flight": 1,
                 "tokens_per_second": 41.5, "served": 12, "last_error": ""},
                {"name": "general-1", "status": "failed", "healthy": False, "slots": 2, "in_flight": 0,
                 "tokens_per_second": 0.0, "served": 3, "last_error": "boom\nllama-server exited with 1"},
            ],
        },
        {
            "name": "embed",
            "kind": "embedding",
            "model": "minilm",
            "replicas": [
                {"name": "embed-0", "status": "ready", "healthy": True, "slots": 1, "in_flight": 0,
                 "tokens_per_second": 0.0, "served": 0, "last_error": ""},
            ],
        },
    ]
}  # fmt: skip


def paragraphs(n: int, size: int = 900) -> str:
    return "\n\n".join(f"Paragraph {i}. " + ("word " * (size // 5)).strip() + "." for i in range(n))


def last_user(request: LLMRequest) -> str:
    return str(request.messages[-1]["content"])


async def test_final_answer_returns_the_answer() -> None:
    result = await ToolRegistry([FinalAnswerTool()]).invoke(
        "final_answer", {"answer": "Paris."}, ToolContext()
    )
    assert result.ok
    assert result.content == "Paris."
    assert result.data == {"answer": "Paris.", "final": True}


async def test_summarise_short_text_is_one_request_with_a_few_shot_transcript() -> None:
    llm = FakeLLM(replies=["  The disk is full;\n backups fail.  "])
    tool = SummariseTool(model="general")
    result = await tool.call(
        {"text": "The disk is full, so backups fail.", "focus": "causes"}, ToolContext(llm=llm)
    )
    assert result.ok and result.content == "The disk is full; backups fail."
    assert len(llm.requests) == 1
    request = llm.requests[0]
    assert request.model == "general"
    roles = [m["role"] for m in request.messages]
    assert roles == ["system", "user", "assistant", "user"]  # one worked example, then the text
    assert "focusing on causes" in last_user(request)
    assert last_user(request).endswith("The disk is full, so backups fail.")
    assert "\nUser:" in request.stop


async def test_summarise_long_text_maps_each_chunk_then_reduces() -> None:
    text = paragraphs(12)  # about 11,000 characters: four chunks
    chunks = chunk_text(text)
    assert len(chunks) >= 3
    assert all(len(c) <= CHUNK_CHARS for c in chunks)
    assert "".join(chunks).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")

    def reply(request: LLMRequest) -> str:
        content = last_user(request)
        if "Partial" in content:
            return "Overall summary."
        return f"Partial {content.count('Paragraph')}."

    llm = FakeLLM(default="unused")
    llm.script([reply] * (len(chunks) + 1))
    result = await SummariseTool().call({"text": text}, ToolContext(llm=llm))
    assert result.ok, result.content
    assert result.content == "Overall summary."
    assert len(llm.requests) == len(chunks) + 1  # map over every chunk, then one reduce
    mapped = [last_user(r) for r in llm.requests[:-1]]
    assert sum(m.count("Paragraph") for m in mapped) == 12  # every paragraph went to the model
    reduce_input = last_user(llm.requests[-1])
    assert reduce_input.count("Partial") == len(chunks)
    assert result.data["requests"] == len(chunks) + 1
    assert all(len(last_user(r)) < 1500 * 3 for r in llm.requests)  # each fits ~1500 tokens


async def test_summarise_cuts_very_long_texts_and_says_so() -> None:
    llm = FakeLLM(default="Short.")
    result = await SummariseTool().call({"text": paragraphs(MAX_CHUNKS * 4)}, ToolContext(llm=llm))
    assert result.ok
    assert "only the first" in result.content
    assert result.data["chunks"] == MAX_CHUNKS and result.data["dropped_chunks"] > 0


async def test_summarise_needs_an_llm_and_a_non_empty_reply() -> None:
    registry = ToolRegistry([SummariseTool()])
    no_llm = await registry.invoke("summarise", {"text": "hello"}, ToolContext())
    assert not no_llm.ok and "language model" in no_llm.content
    empty = await registry.invoke("summarise", {"text": "hello"}, ToolContext(llm=FakeLLM(default="  ")))
    assert not empty.ok and "empty summary" in empty.content


async def test_cluster_status_renders_experts_replicas_health_speed_and_load() -> None:
    calls = 0

    def status() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return STATUS

    result = await ClusterStatusTool(status).call({}, ToolContext())
    assert calls == 1 and result.ok and result.data == STATUS
    text = result.content
    assert text.splitlines()[0] == "2 experts, 2/3 replicas healthy."
    assert "general (chat, gemma3-270m): 1/2 replicas healthy, 41.5 tokens/s, 1 in flight" in text
    assert "general-0: healthy, 41.5 tokens/s, 1/2 slots busy, served 12" in text
    assert "general-1: NOT healthy (failed)" in text
    assert "last error: llama-server exited with 1" in text
    assert "embed (embedding, minilm): 1/1 replicas healthy, 0 in flight" in text


async def test_cluster_status_takes_an_async_source_and_an_empty_cluster() -> None:
    async def status() -> dict[str, Any]:
        return {"experts": []}

    result = await ClusterStatusTool(status).call({}, ToolContext())
    assert result.content == "No experts are configured."


def all_tools() -> ToolRegistry:
    return ToolRegistry([
        FinalAnswerTool(),
        SummariseTool(),
        ClusterStatusTool(lambda: STATUS),
        ShellTool(SandboxConfig()),
        PythonTool(SandboxConfig()),
        WebFetchTool(WebConfig()),
    ])  # fmt: skip


def test_registry_accepts_every_schema_and_applies_risk_levels() -> None:
    registry = all_tools()
    assert registry.names() == ["final_answer", "summarise", "cluster_status", "shell", "python", "web_fetch"]
    assert registry.decide("shell") == "ask" and registry.decide("python") == "ask"
    assert registry.decide("web_fetch") == "auto" and registry.decide("final_answer") == "auto"
    strict = ToolRegistry([ShellTool()], policy=ApprovalPolicy(per_tool={"shell": "deny"}))
    assert strict.decide("shell") == "deny"
    for spec in registry.specs():
        assert spec.openai()["function"]["parameters"]["type"] == "object"


@pytest.mark.parametrize(
    ("name", "args", "field"),
    [
        ("final_answer", {}, "'answer' is a required property"),
        ("final_answer", {"answer": 42}, "answer"),
        ("shell", {"command": ["ls"]}, "command"),
        ("python", {"code": "print(1)", "extra": 1}, "'extra' was unexpected"),
        ("web_fetch", {"url": "https://example.org", "max_chars": "lots"}, "max_chars"),
        ("summarise", {"text": "x", "focus": 3}, "focus"),
        ("cluster_status", {"verbose": True}, "verbose"),
    ],
)
async def test_bad_arguments_become_a_message_naming_the_field(name: str, args: Any, field: str) -> None:
    result = await all_tools().invoke(name, args, ToolContext())
    assert not result.ok
    assert f"bad arguments for {name}" in result.content
    assert field in result.content


async def test_unknown_tool_and_non_object_arguments() -> None:
    registry = all_tools()
    unknown = await registry.invoke("rm_rf", {}, ToolContext())
    assert not unknown.ok and "no tool named 'rm_rf'" in unknown.content and "shell" in unknown.content
    not_object = await registry.invoke("final_answer", "Paris", ToolContext())
    assert not not_object.ok and "must be a JSON object" in not_object.content


async def test_a_hanging_tool_is_stopped_at_its_timeout() -> None:
    tool = SummariseTool()
    tool.spec = dataclasses.replace(tool.spec, timeout_s=0.2)
    slow = FakeLLM(default="never " * 100, delay_s=1.0)  # streams one word a second
    result = await ToolRegistry([tool]).invoke("summarise", {"text": "hello"}, ToolContext(llm=slow))
    assert not result.ok
    assert "summarise did not finish within 0.2 s" in result.content


def test_chunk_text_cuts_at_paragraphs_then_sentences_then_anywhere() -> None:
    assert chunk_text("  short  ") == ["short"]
    assert chunk_text("") == []
    by_paragraph = chunk_text("a" * 50 + "\n\n" + "b" * 50, size=80)
    assert by_paragraph == ["a" * 50, "b" * 50]
    by_sentence = chunk_text("First sentence here. Second sentence here. Third one.", size=30)
    assert by_sentence[0] == "First sentence here."
    unbroken = chunk_text("x" * 250, size=100)
    assert unbroken == ["x" * 100, "x" * 100, "x" * 50]
