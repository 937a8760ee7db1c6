"""The agent on a real `corral up` with the bundled model: a grammar-constrained tool call that the
tool answers, a gated tool approved over the API, the openai SDK on `corral-agent`, and a run that
survives `kill -9` of the server and resumes without losing or repeating a step."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import RunningCorral, start_corral, stop_corral

pytestmark = pytest.mark.slow

CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    description: general questions, conversation, explanations
    replicas: 1
    slots: 2
    context: 2048
  - name: embed
    model: all-minilm-l6-v2
    kind: embedding
    replicas: 1
    slots: 1
    context: 512
agent:
  gate_timeout_s: 30
  tools:
    enabled: [cluster_status, shell]
    approval: {shell: ask, cluster_status: auto}
"""

STATUS_REPORT = """
version: 1
name: status_report
description: The model must call cluster_status, then answers from its result.
inputs:
  question: {type: string}
nodes:
  ask:
    type: prompt
    in: {q: $inputs.question}
    params: {template: "{{ q }}"}
  decide:
    type: tool_choice
    in: {messages: [{role: user, content: $ask.text}]}
    params: {tools: [cluster_status], offer_final: false, max_tokens: 64, temperature: 0}
  act:
    type: tool
    in: {tool: $decide.tool, arguments: $decide.arguments}
  answer:
    type: llm
    in:
      prompt: $act.content
      system: "Say in one sentence how many replicas are healthy."
    params: {max_tokens: 40, temperature: 0}
  out:
    type: output
    in: {tool: $decide.tool, arguments: $decide.arguments, result: $act.content, answer: $answer.text}
"""

GATED_SHELL = """
version: 1
name: gated_shell
description: Runs a shell command only after a person approves it.
inputs:
  command: {type: string}
nodes:
  first:
    type: prompt
    in: {c: $inputs.command}
    params: {template: "about to run: {{ c }}"}
  shell:
    type: tool
    in: {tool: shell, arguments: {command: $inputs.command}}
  out:
    type: output
    in: {ok: $shell.ok, content: $shell.content, decision: $shell.decision, note: $first.text}
edges:
  - {from: first, to: shell}
"""


@pytest.fixture(scope="module")
def agent_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agent-home")


@pytest.fixture(scope="module")
def server(agent_home: Path) -> Iterator[RunningCorral]:
    running = start_corral(agent_home, CONFIG)
    running.wait_healthy("general/0")  # /ready is true once any replica is; these tests need general
    try:
        yield running
    finally:
        stop_corral(running)


def api(server: RunningCorral) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {server.key}"}, trust_env=False, timeout=120
    )


def wait_for_gate(client: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gate in client.get("/api/gates").json()["gates"]:
            if gate["run_id"] == run_id:
                return dict(gate)
        time.sleep(0.2)
    raise AssertionError(f"no gate for {run_id}: {client.get(f'/api/runs/{run_id}').json()}")


def wait_for_run(client: httpx.Client, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return dict(run)
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end: {client.get(f'/api/runs/{run_id}').json()}")


def test_the_bundled_base_model_emits_a_valid_tool_call_and_answers(server: RunningCorral) -> None:
    with api(server) as client:
        assert client.put("/api/workflows/status_report", content=STATUS_REPORT).status_code == 200
        response = client.post(
            "/api/workflows/status_report/run",
            json={"inputs": {"question": "How many replicas are healthy?"}, "wait": True},
        )
    run = response.json()
    assert run["status"] == "succeeded", (run["error"], run["steps"])
    outputs = run["outputs"]
    assert outputs["tool"] == "cluster_status" and outputs["arguments"] == {}
    assert "general/0" in outputs["result"]  # the tool really ran against this corral
    assert outputs["answer"].strip()
    steps = {s["node"]: s for s in run["steps"]}
    assert steps["act"]["outputs"]["decision"] == "auto"


def test_a_gated_tool_waits_for_approval_over_the_api(server: RunningCorral) -> None:
    with api(server) as client:
        assert client.put("/api/workflows/gated_shell", content=GATED_SHELL).status_code == 200
        run_id = client.post(
            "/api/workflows/gated_shell/run", json={"inputs": {"command": "echo approved-and-ran"}}
        ).json()["run_id"]
        gate = wait_for_gate(client, run_id)
        assert gate["details"]["tool"] == "shell" and gate["details"]["arguments"]["command"].startswith(
            "echo"
        )
        assert client.get(f"/api/runs/{run_id}").json()["status"] == "waiting"
        assert client.post("/api/gate/approve", json={"gate_id": gate["id"]}).status_code == 200
        run = wait_for_run(client, run_id)
        assert run["status"] == "succeeded", run
        assert run["outputs"]["ok"] is True and "approved-and-ran" in run["outputs"]["content"]
        assert run["outputs"]["decision"] == "approved"
        denied_id = client.post(
            "/api/workflows/gated_shell/run", json={"inputs": {"command": "echo never"}}
        ).json()["run_id"]
        gate = wait_for_gate(client, denied_id)
        client.post("/api/gate/deny", json={"gate_id": gate["id"], "reason": "not today"})
        run = wait_for_run(client, denied_id)
        assert run["outputs"]["ok"] is False and "not today" in run["outputs"]["content"]


def test_corral_agent_answers_through_the_openai_sdk(server: RunningCorral) -> None:
    client = OpenAI(base_url=server.url + "/v1", api_key=server.key, timeout=120, max_retries=0)
    completion = client.chat.completions.create(
        model="corral-agent",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        user="sdk-test",
    )
    assert completion.choices[0].message.content
    stream = client.chat.completions.create(
        model="corral-agent",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip()


def test_a_run_survives_kill_9_and_resumes_from_its_last_completed_step(
    server: RunningCorral, agent_home: Path
) -> None:
    with api(server) as client:
        client.put("/api/workflows/gated_shell", content=GATED_SHELL)
        run_id = client.post(
            "/api/workflows/gated_shell/run", json={"inputs": {"command": "echo after-restart"}}
        ).json()["run_id"]
        wait_for_gate(client, run_id)
        before = client.get(f"/api/runs/{run_id}").json()["steps"]
    assert [s["node"] for s in before] == ["first"]
    os.killpg(server.process.pid, signal.SIGKILL)  # corral and its replicas, no goodbye
    server.process.wait()
    restarted = start_corral(agent_home, CONFIG)
    restarted.wait_healthy("general/0")
    server.process, server.url = restarted.process, restarted.url
    with api(restarted) as client:
        run = client.get(f"/api/runs/{run_id}").json()
        assert run["status"] == "interrupted"
        assert run["gates"][0]["status"] == "expired"
        assert client.post(f"/api/runs/{run_id}/resume").status_code == 202
        gate = wait_for_gate(client, run_id)
        client.post("/api/gate/approve", json={"gate_id": gate["id"]})
        run = wait_for_run(client, run_id)
    assert run["status"] == "succeeded", run
    assert "after-restart" in run["outputs"]["content"]
    assert [s["node"] for s in run["steps"]] == ["first", "shell", "out"]
    assert run["steps"][0] == before[0]  # the step from before the crash, kept as it was
