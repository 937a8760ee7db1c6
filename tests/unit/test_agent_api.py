"""The agent's HTTP surface over FakeBackends and FakeLLM: corral-agent chat (plain and streamed),
workflows (list, get, validate, save, run), runs (history, get, resume, replay, fork, cancel),
gates over the API, the WebSocket, and the in-process RouterLLM."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from corral.agent.llm import LLMRequest
from corral.agent.router_llm import RouterLLM
from corral.testing import FakeLLM
from tests.unit.conftest import GATED, Harness


async def test_agent_model_is_listed_and_answers_through_the_default_workflow(harness: Harness) -> None:
    async with harness.client() as client:
        models = (await client.get("/v1/models")).json()["data"]
        assert "corral-agent" in [m["id"] for m in models]
        body = {"model": "corral-agent", "messages": [{"role": "user", "content": "say hello"}]}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "hello there"
    run = harness.service.store.run(data["corral"]["run_id"])
    assert run is not None and run.workflow == "agent" and run.status == "succeeded"


async def test_agent_model_streams_an_openai_sse_answer(harness: Harness) -> None:
    body = {"model": "corral-agent", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=body)
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "hello there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_workflow_routes_list_get_validate_save_and_node_types(harness: Harness) -> None:
    async with harness.client() as client:
        names = [w["name"] for w in (await client.get("/api/workflows")).json()["workflows"]]
        assert {"agent", "moe", "summarise"} <= set(names)
        agent = (await client.get("/api/workflows/agent")).json()
        assert agent["version"] >= 1 and "tool_choice" in agent["yaml"]
        assert any(e["back"] for e in agent["graph"]["edges"])
        types = {t["type"]: t for t in (await client.get("/api/workflows/node-types")).json()["node_types"]}
        assert {"llm", "tool_choice", "tool", "gate", "loop", "merge", "switch", "memory_read"} <= set(types)
        assert types["loop"]["params"]["properties"]["max_iterations"]
        bad = await client.post("/api/workflows/validate", content="name: x\nnodes:\n  a: {type: lmm}\n")
        assert bad.json()["valid"] is False and "did you mean 'llm'" in bad.json()["problems"][0]
        saved = await client.put("/api/workflows/gated", content=GATED)
        assert saved.status_code == 403  # saving needs admin
    async with harness.client(harness.admin) as admin:
        saved = await admin.put("/api/workflows/gated", content=GATED)
        assert saved.status_code == 200 and saved.json()["version"] == 1
        again = await admin.put("/api/workflows/gated", content=GATED.replace("Go?", "Really go?"))
        assert again.json()["version"] == 2
        invalid = await admin.put("/api/workflows/gated", content="name: gated\nnodes: {}\n")
        assert invalid.status_code == 400 and "at least one node" in invalid.json()["error"]["message"]
    assert (Path(harness.service.workflows_dir or ".") / "gated.yaml").read_text().count("Really go?") == 1


async def test_gate_is_approved_over_the_api_and_runs_are_listed(harness: Harness) -> None:
    harness.service.library.save(GATED)
    async with harness.client() as client:
        started = await client.post("/api/workflows/gated/run", json={"inputs": {}})
        assert started.status_code == 202
        run_id = started.json()["run_id"]
        for _ in range(200):
            gates = (await client.get("/api/gates")).json()["gates"]
            if gates:
                break
            await asyncio.sleep(0.01)
        assert gates[0]["run_id"] == run_id and gates[0]["title"] == "Go?"
        assert (await client.get(f"/api/runs/{run_id}")).json()["status"] == "waiting"
        missing = await client.post("/api/gate/approve", json={"gate_id": "g_nope"})
        assert missing.status_code == 404 and "pending gates" in missing.json()["error"]["message"]
        approved = await client.post("/api/gate/approve", json={"gate_id": gates[0]["id"], "reason": "ok"})
        assert approved.status_code == 200
        await harness.service.runner.active[
            run_id
        ].result() if run_id in harness.service.runner.active else None
        run = (await client.get(f"/api/runs/{run_id}")).json()
        assert run["status"] == "succeeded" and run["outputs"] == {"r": "approved"}
        assert run["gates"][0]["status"] == "approved"
        listed = (await client.get("/api/runs", params={"workflow": "gated"})).json()["runs"]
        assert [r["id"] for r in listed] == [run_id]


async def test_run_wait_replay_fork_cancel_and_bad_input(harness: Harness) -> None:
    harness.service.library.save(
        "name: echo\ninputs: {x: {type: string}}\nnodes:\n"
        "  p: {type: prompt, in: {x: $inputs.x}, params: {template: '<{{ x }}>'}}\n"
        "  o: {type: output, in: {y: $p.text}}\n"
    )
    async with harness.client() as client:
        done = await client.post("/api/workflows/echo/run", json={"inputs": {"x": "a"}, "wait": True})
        assert done.status_code == 200 and done.json()["outputs"] == {"y": "<a>"}
        run_id = done.json()["id"]
        assert [s["node"] for s in done.json()["steps"]] == ["p", "o"]
        replay = await client.post(f"/api/runs/{run_id}/replay?wait=1", json={"inputs": {"x": "b"}})
        assert replay.json()["outputs"] == {"y": "<b>"}
        fork = await client.post(f"/api/runs/{run_id}/fork?wait=1", json={"at_seq": 1, "inputs": {"x": "c"}})
        assert fork.json()["outputs"] == {"y": "<a>"} and fork.json()["forked_from"] == run_id
        wrong = await client.post("/api/workflows/echo/run", json={"inputs": {"x": 3}})
        assert wrong.status_code == 400 and "must be string" in wrong.json()["error"]["message"]
        nope = await client.post("/api/workflows/nope/run", json={})
        assert nope.status_code == 404
        garbage = await client.post("/api/workflows/echo/run", content=b"{not json")
        assert garbage.status_code == 400
        resumed = await client.post(f"/api/runs/{run_id}/resume")
        assert resumed.status_code == 400 and "replay" in resumed.json()["error"]["message"]
        assert (await client.post("/api/runs/r_missing/cancel")).status_code == 404


async def test_api_needs_a_key(harness: Harness) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=harness.app), base_url="http://c"
    ) as client:
        for path in ("/api/workflows", "/api/runs", "/api/gates"):
            assert (await client.get(path)).status_code == 401


def test_websocket_streams_events_and_takes_chat_and_approvals(tmp_path: Path) -> None:
    harness = Harness(tmp_path, FakeLLM(default='{"tool": "final_answer", "arguments": {"answer": "ws ok"}}'))
    with TestClient(harness.app) as client:
        client.portal.call(harness.service.start)  # type: ignore[union-attr]
        try:
            with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws") as socket:
                socket.receive_json()
            with client.websocket_connect(f"/ws?token={harness.key}") as socket:
                socket.send_json({"type": "chat", "text": "hi"})
                reply = socket.receive_json()
                assert reply["type"] == "run"
                seen = []
                while True:
                    message = socket.receive_json()
                    if message["type"] == "event":
                        seen.append(message["event"]["type"])
                        if (
                            message["event"]["type"] == "run.finished"
                            and message["event"]["run_id"] == reply["run_id"]
                        ):
                            assert message["event"]["data"]["outputs"]["answer"] == "ws ok"
                            break
                assert "node.started" in seen and "node.output" in seen
                socket.send_json({"type": "approve", "gate_id": "g_none"})
                while (message := socket.receive_json())["type"] == "event":
                    pass
                assert message["type"] == "error" and message["status"] == 404
                socket.send_json({"type": "dance"})
                while (message := socket.receive_json())["type"] == "event":
                    pass
                assert "unknown message type" in message["message"]
        finally:
            client.portal.call(harness.service.stop)  # type: ignore[union-attr]


async def test_router_llm_streams_through_the_proxy_and_routes(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    llm = harness.llm
    assert isinstance(llm, RouterLLM)
    tokens: list[str] = []
    result = await llm.complete(
        LLMRequest([{"role": "user", "content": "hi"}], model="general"), tokens.append
    )
    assert result.text == "routed answer" and "".join(tokens) == "routed answer"
    assert result.expert == "general" and result.replica == "general/0"
    assert llm.route("fix this python code bug").expert == "code"
    vectors = await llm.embed(["a"], "embed")  # FakeBackend answers one vector
    assert len(vectors) == 1 and len(vectors[0]) > 1


BOOM = """
name: boom
inputs:
  messages: {type: messages}
  session: {type: string, required: false, default: ""}
nodes:
  fail: {type: llm, in: {system: "a system prompt and no user message: the node fails"}}
  out: {type: output, in: {answer: $fail.text}}
"""


async def test_a_failed_agent_run_is_a_502_the_openai_sdk_does_not_rerun(tmp_path: Path) -> None:
    import openai

    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "boom.yaml").write_text(BOOM)
    harness = Harness(tmp_path, FakeLLM())
    harness.service.settings = harness.service.settings.model_copy(update={"workflow": "boom"})
    await harness.service.start()
    try:
        transport = httpx.ASGITransport(app=harness.app)
        client = openai.AsyncOpenAI(
            base_url="http://corral/v1", api_key=harness.key,
            http_client=httpx.AsyncClient(transport=transport, base_url="http://corral"),
        )  # fmt: skip
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="corral-agent", messages=[{"role": "user", "content": "hi"}]
            )
        assert failed.value.status_code == 502
        assert failed.value.response.headers["x-should-retry"] == "false"
        assert "resume" in str(failed.value)
        assert len(harness.service.store.runs(workflow="boom")) == 1  # started once, not three times
    finally:
        await harness.service.stop()


async def test_a_final_answer_that_echoes_the_call_format_is_answered_in_plain_words(tmp_path: Path) -> None:
    """A small base model once answered "What is the capital of France?" with the answer
    'finaal_answer': the node refuses it, retries, and the workflow answers in plain words."""
    echo = '{"tool": "final_answer", "arguments": {"answer": "finaal_answer"}}'
    placeholder = '{"tool": "final_answer", "arguments": {"answer": "<your answer>"}}'
    harness = Harness(tmp_path, FakeLLM(default="Paris is the capital of France."))
    harness.llm.script([echo, placeholder])
    await harness.service.start()
    try:
        async with harness.client() as client:
            body = {"model": "corral-agent", "messages": [{"role": "user", "content": "Capital of France?"}]}
            response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "Paris is the capital of France."
        steps = harness.service.store.steps(response.json()["corral"]["run_id"])
        decide = next(s for s in steps if s.node == "decide")
        assert decide.attempts == 2 and "echoes the call format" in (decide.error or "")
    finally:
        await harness.service.stop()


def test_echoes_the_format_leaves_real_answers_alone() -> None:
    from corral.agent.nodes.llm import echoes_the_format

    tools = ["shell", "web_fetch", "final_answer"]
    for echo in ("finaal_answer", "final_answer", "<your answer>", "web_fech", "Answer."):
        assert echoes_the_format(echo, tools), echo
    for answer in ("Paris", "42", "A spider has eight legs.", "the final answer is 7", "webpage"):
        assert not echoes_the_format(answer, tools), answer
