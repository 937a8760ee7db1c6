"""The gateway in front of real llama-server replicas, driven by the official openai SDK."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import RunningCorral

pytestmark = pytest.mark.slow


@pytest.fixture
def client(corral: RunningCorral) -> openai.OpenAI:
    return openai.OpenAI(base_url=corral.url + "/v1", api_key=corral.key, max_retries=0, timeout=120)


def ask(
    client: openai.OpenAI, model: str, question: str, max_tokens: int = 24
) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
    )


def test_chat_answers_with_the_bundled_model(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="general",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    completion = raw.parse()
    answer = completion.choices[0].message.content or ""
    assert "Paris" in answer
    assert "User:" not in answer  # the transcript's stop string ended the turn
    assert raw.headers["x-corral-expert"] == "general"
    assert raw.headers["x-corral-replica"].startswith("general/")
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_auto_routes_by_expert_description(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": "Fix the bug in my python function"}],
        max_tokens=8,
    )
    assert raw.headers["x-corral-expert"] == "coder"
    assert "python" in raw.headers["x-corral-route"]


def test_streaming_chat(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "How many legs does a cat have?"}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert len([p for p in pieces if p]) > 1  # really streamed, not one blob
    assert "".join(pieces).strip()
    assert finish in ("stop", "length")


def test_completions_and_models(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="general", prompt="One, two, three,", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text.strip()
    ids = {m.id for m in client.models.list().data}
    assert {"auto", "general", "coder", "fallback", "embed", "gpt-4o-mini"} <= ids


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="embed", input=["the cat sat on the mat", "quarterly tax report"])
    assert len(result.data) == 2
    first, second = (d.embedding for d in result.data)
    assert len(first) == len(second) > 100
    assert first != second


def test_tool_definitions_pass_through(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}]  # fmt: skip
    completion = client.chat.completions.create(
        model="general",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=tools,  # type: ignore[arg-type]
        max_tokens=24,
    )
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_bad_input_gets_clear_errors_and_server_keeps_serving(
    corral: RunningCorral, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        ask(client, "gpt-17", "hi")
    assert "GET /v1/models" in str(unknown.value)
    with pytest.raises(openai.BadRequestError) as negative:
        client.chat.completions.create(
            model="general", messages=[{"role": "user", "content": "hi"}], max_tokens=-3
        )
    assert "max_tokens" in str(negative.value)
    with pytest.raises(openai.BadRequestError) as overflow:
        ask(client, "general", "word " * 3000, max_tokens=4)
    assert overflow.value.code == "context_length_exceeded"
    assert "corral.yaml" in str(overflow.value)
    bad_key = openai.OpenAI(base_url=corral.url + "/v1", api_key="crl_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(bad_key, "general", "hi")
    malformed = httpx.post(
        corral.url + "/v1/chat/completions",
        content=b'{"model": "general",',
        headers={"authorization": f"Bearer {corral.key}"},
        trust_env=False,
    )
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["error"]["message"]
    assert ask(client, "general", "Say hello.").choices[0].message.content is not None


def test_metrics_and_status(corral: RunningCorral, client: openai.OpenAI) -> None:
    ask(client, "general", "Name a colour.")
    metrics = httpx.get(
        corral.url + "/metrics", headers={"authorization": f"Bearer {corral.key}"}, trust_env=False
    )
    assert metrics.status_code == 200
    for name in (
        "corral_requests_total",
        "corral_request_duration_seconds_bucket",
        "corral_tokens_per_second",
        "corral_queue_depth",
        "corral_route_decisions_total",
    ):
        assert name in metrics.text
    replica = corral.replica("general/0")
    assert replica["healthy"] and replica["pid"]
    assert httpx.get(corral.url + "/metrics", trust_env=False).status_code == 401


def retries(corral: RunningCorral, expert: str) -> float:
    text = httpx.get(
        corral.url + "/metrics", headers={"authorization": f"Bearer {corral.key}"}, trust_env=False
    ).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "corral_retries_total" and sample.labels.get("expert") == expert
    )


def test_killed_replica_mid_load_loses_no_request(corral: RunningCorral, client: openai.OpenAI) -> None:
    victim = corral.replica("general/0")
    retries_before = retries(corral, "general")
    restarts_before = int(victim["restarts"])  # type: ignore[call-overload]
    questions = [f"Tell me a fact about the number {n}." for n in range(10)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        futures = [pool.submit(ask, client, "general", q, 32) for q in questions]
        time.sleep(0.8)  # requests are queued and running on both replicas now
        os.kill(int(victim["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        concurrent.futures.wait(futures, timeout=300)
    lost = [repr(f.exception()) for f in futures if f.exception() is not None]
    assert not lost, f"{lost}\n--- corral log ---\n{corral.log.read_text()[-6000:]}"
    answers = [f.result() for f in futures]
    assert all(a.choices[0].message.content is not None for a in answers)
    assert retries(corral, "general") > retries_before  # some were moved off the dead replica
    back = corral.wait_healthy("general/0")
    assert int(back["restarts"]) == restarts_before + 1  # type: ignore[call-overload]
    assert back["pid"] != victim["pid"]


def test_fallback_answers_when_the_whole_expert_is_down(corral: RunningCorral, client: openai.OpenAI) -> None:
    for name in ("general/0", "general/1"):
        corral.wait_healthy(name)
    for name in ("general/0", "general/1"):
        os.kill(int(corral.replica(name)["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    raw = client.chat.completions.with_raw_response.create(
        model="general", messages=[{"role": "user", "content": "Is anyone there?"}], max_tokens=8
    )
    assert raw.headers["x-corral-expert"] == "fallback"
    assert "fell back" in raw.headers["x-corral-route"]
    assert raw.parse().choices[0].message.content is not None
    for name in ("general/0", "general/1"):
        corral.wait_healthy(name)


def predicted_tokens(url: str) -> float:
    text = httpx.get(url + "/metrics", trust_env=False).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.endswith("tokens_predicted_total")
    )


def test_client_disconnect_cancels_generation(corral: RunningCorral) -> None:
    replica = corral.wait_healthy("coder/0")  # one replica, one slot: all traffic lands there
    before = predicted_tokens(str(replica["url"]))
    body = {
        "model": "coder",
        "prompt": "1, 2, 3, 4, 5,",
        "max_tokens": 1500,
        "stream": True,
        "temperature": 0,
    }
    with httpx.stream(
        "POST",
        corral.url + "/v1/completions",
        json=body,
        trust_env=False,
        timeout=60,
        headers={"authorization": f"Bearer {corral.key}"},
    ) as response:
        assert response.status_code == 200
        for n, _ in enumerate(response.iter_lines()):
            if n >= 6:
                break  # leave mid-answer: closing the connection must stop llama-server
    deadline = time.monotonic() + 90
    while corral.replica("coder/0")["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)
    # A new request is served at once by the single slot, so the abandoned one no longer holds it.
    followup = httpx.post(
        corral.url + "/v1/completions",
        trust_env=False,
        timeout=60,
        headers={"authorization": f"Bearer {corral.key}"},
        json={"model": "coder", "prompt": "Hi", "max_tokens": 2},
    )
    assert followup.status_code == 200
    generated = predicted_tokens(str(replica["url"])) - before
    assert 0 < generated < 500, f"{generated} tokens generated; the client left after 6 events"


def test_status_cli_shows_replicas(corral: RunningCorral) -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    result = CliRunner().invoke(app, ["status", "--url", corral.url, "--key", corral.key])
    assert result.exit_code == 0, result.output
    for name in ("general/0", "general/1", "coder/0", "fallback/0", "embed/0"):
        assert name in result.output


def test_models_cli_measures_speed_and_fit(corral: RunningCorral) -> None:
    from typer.testing import CliRunner

    from corral.cli import app

    result = CliRunner().invoke(app, ["models", "--home", str(corral.home)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "gemma3-270m" in result.output and "Q4_K_M" in result.output
    assert "tok/s on the bundled model" in result.output
    assert "yes" in result.output


def test_request_right_after_a_stream_stays_on_its_replica(
    corral: RunningCorral, client: openai.OpenAI
) -> None:
    corral.wait_healthy("coder/0")
    for _ in range(3):
        stream = client.chat.completions.create(
            model="coder", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, stream=True
        )
        for _chunk in stream:
            pass
        raw = client.chat.completions.with_raw_response.create(
            model="coder", messages=[{"role": "user", "content": "Say bye."}], max_tokens=4
        )
        # llama-server drops the connection after a stream; the gateway must not take that for
        # a dead replica and send the request to the fallback.
        assert raw.headers["x-corral-replica"] == "coder/0"
    assert corral.replica("coder/0")["healthy"]
