"""Campaigns with the shipped FakeLLM through the real agent workflow: staged evaluation, budgets,
unusable mutations, resuming an interrupted campaign, malformed suites, the LLM cache and the
prompt the agent uses after a promotion."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from corral.agent.llm import LLMRequest
from corral.agent.service import AgentService
from corral.agent.settings import AgentConfig
from corral.errors import ConfigError
from corral.evolve.archive import Archive
from corral.evolve.campaign import run_campaign
from corral.evolve.evaluate import Budget, Meter, MeteredLLM, evaluator_hash
from corral.evolve.mutate import parse_reply
from corral.evolve.prompts import PromptBook
from corral.evolve.suites import load_suite
from corral.testing import FakeLLM

CASES = [("t-paris", "train", "France", "Paris"), ("t-rome", "train", "Italy", "Rome"),
         ("t-oslo", "train", "Norway", "Oslo"), ("v-bern", "validation", "Switzerland", "Bern"),
         ("v-lima", "validation", "Peru", "Lima"), ("h-kyiv", "heldout", "Ukraine", "Kyiv")]  # fmt: skip
SUITE = "version: 1\nname: mini\nrole: system\nworkflow: agent\noutput: answer\ncases:\n" + "".join(
    f"  - id: {cid}\n    split: {split}\n"
    f"    input: {{messages: [{{role: user, content: 'capital of {country}?'}}]}}\n"
    f"    expect: [{{contains: {city}}}]\n"
    for cid, split, country, city in CASES
)
CAPITALS = {"France": "Paris", "Italy": "Rome", "Norway": "Oslo", "Switzerland": "Bern", "Peru": "Lima",
            "Ukraine": "Kyiv"}  # fmt: skip


def is_mutation(request: LLMRequest) -> bool:
    return bool(request.json_schema and "prompt" in request.json_schema.get("properties", {}))


def agent_reply(request: LLMRequest) -> str:
    """The fake agent knows a capital only when its system prompt says `capitals`; other prompts
    get France right and nothing else."""
    system = str(request.messages[0]["content"])
    user = str([m for m in request.messages if m["role"] == "user"][-1]["content"])
    answer = "I am not sure"
    for country, city in CAPITALS.items():
        if country in user and ("capitals" in system or country == "France"):
            answer = f"It is {city}."
    return json.dumps({"tool": "final_answer", "arguments": {"answer": answer}})


def good_mutation(request: LLMRequest) -> str:
    return json.dumps({"rationale": "it did not know capitals", "prompt": "You know all capitals. Answer."})


def scripted(mutation: Any = good_mutation) -> FakeLLM:
    return FakeLLM(default=lambda r: mutation(r) if is_mutation(r) else agent_reply(r))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    suites = tmp_path / "evolve" / "suites"
    suites.mkdir(parents=True)
    (suites / "mini.yaml").write_text(SUITE)
    return tmp_path


async def test_a_campaign_records_lineage_and_stages_its_evaluation(home: Path) -> None:
    llm = scripted()
    result = await run_campaign(home, "mini", generations=2, seed=1, llm=llm, minibatch=2)
    archive = Archive(home)
    root, best = archive.variant(result.root), archive.variant(result.best)
    assert result.improved and best.parent_ids == [root.id] and best.selection == "dgm"
    assert best.rationale == "it did not know capitals" and "+You know all capitals." in best.diff
    assert result.scores == {root.id: 0.0, best.id: 1.0}
    assert result.heldout == {root.id: 0.0, best.id: 1.0}
    child_scores = archive.scores(best.id, "mini")
    assert {s.split for s in child_scores.values()} == {"train", "validation", "heldout"}
    root_scores = archive.scores(root.id, "mini")
    assert len([s for s in root_scores.values() if s.split == "train"]) == 2  # the minibatch only
    assert all(s.evaluator_hash == evaluator_hash() for s in child_scores.values())
    assert all(s.suite_hash == load_suite(home, "mini").hash for s in child_scores.values())
    assert all(s.run_id for s in child_scores.values())  # each case ran as an agent run
    # generation 2 picks a parent; the child passes the minibatch, so there is nothing to reflect on
    kinds = [(e.generation, e.kind, e.data.get("outcome")) for e in archive.events(result.campaign)]
    assert (1, "generation", "accepted") in kinds and result.generations == 2
    # the candidate ran through the real workflow with its prompt as an override, not promoted
    assert archive.promoted_ids() == {}
    assert any("You know all capitals" in str(r.messages[0]["content"]) for r in llm.requests)
    assert archive.promote(best.id).id == best.id


async def test_a_child_worse_on_its_minibatch_never_reaches_validation(home: Path) -> None:
    def worse(request: LLMRequest) -> str:
        return json.dumps({"rationale": "shorter", "prompt": "Refuse everything."})

    def reply(request: LLMRequest) -> str:
        if is_mutation(request):
            return worse(request)
        if "Refuse" in str(request.messages[0]["content"]):
            return json.dumps({"tool": "final_answer", "arguments": {"answer": "no"}})
        return agent_reply(request)

    result = await run_campaign(home, "mini", generations=1, llm=FakeLLM(default=reply), minibatch=3)
    archive = Archive(home)
    (child,) = result.children
    assert {s.split for s in archive.scores(child, "mini").values()} == {"train"}
    assert result.best == result.root and result.heldout == {}  # held-out is only for promotion
    assert [e.data["outcome"] for e in archive.events(result.campaign) if e.generation == 1 and e.kind ==
            "generation"] == ["rejected"]  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("I would rather not.", "no usable prompt"),
        ('{"rationale": "x", "prompt": "<the complete revised prompt>"}', "no usable prompt"),
        ('{"rationale": "same", "prompt": "PLACEHOLDER"}', "unchanged"),
        (json.dumps({"rationale": "more", "prompt": "word " * 400}), "over the cap"),
    ],
)
async def test_an_unusable_mutation_is_a_recorded_failed_attempt(home: Path, reply: str, error: str) -> None:
    from corral.evolve.roles import seed

    text = reply.replace("PLACEHOLDER", seed("system").replace('"', '\\"'))
    result = await run_campaign(
        home, "mini", generations=2, llm=scripted(lambda r: text), max_prompt_tokens=64
    )
    archive = Archive(home)
    assert result.children == [] and result.failed_attempts == 2 and result.stopped == "done"
    failures = [e for e in archive.events(result.campaign) if e.kind == "generation" and e.generation > 0]
    assert all(e.data["outcome"] == "failed" and error in e.data["reason"] for e in failures)
    mutations = [e for e in archive.events(result.campaign) if e.kind == "mutation"]
    assert len(mutations) == 2 and all(e.data["calls"] == 1 for e in mutations)


async def test_a_budget_stops_the_campaign_cleanly(home: Path) -> None:
    result = await run_campaign(
        home, "mini", generations=5, llm=scripted(), budget=Budget(max_metric_calls=4)
    )
    assert result.stopped == "budget" and result.metric_calls == 4
    archive = Archive(home)
    assert any(e.kind == "stopped" for e in archive.events(result.campaign))
    tokens = await run_campaign(
        home, "mini", generations=5, seed=2, llm=scripted(), budget=Budget(max_tokens=1)
    )
    assert tokens.stopped == "budget" and tokens.metric_calls == 1  # one case spends the token budget


async def test_an_interrupted_campaign_resumes_from_the_archive(home: Path) -> None:
    calls = 0
    task: asyncio.Task[Any] | None = None

    def reply(request: LLMRequest) -> str:
        nonlocal calls
        calls += 1
        if calls == 6 and task is not None:
            task.cancel()  # the process is stopped in the middle of generation 1
        return good_mutation(request) if is_mutation(request) else agent_reply(request)

    task = asyncio.create_task(
        run_campaign(home, "mini", generations=3, llm=FakeLLM(default=reply), minibatch=2)
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    archive = Archive(home)
    before = archive.variants("mini")
    assert len(before) in (1, 2)
    result = await run_campaign(home, "mini", generations=3, llm=scripted(), minibatch=2)
    assert result.generations == 3 and result.improved
    generations = [e.generation for e in archive.events(result.campaign) if e.kind == "generation"]
    assert sorted(generations) == [0, 1, 2, 3]  # each generation recorded once
    assert [v.id for v in archive.variants("mini")][: len(before)] == [v.id for v in before]
    again = await run_campaign(home, "mini", generations=3, llm=scripted(), minibatch=2)
    assert again.metric_calls == result.metric_calls  # finished: nothing is rerun


def problem(home: Path, name: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_suite(home, name)
    return caught.value.message


def test_a_malformed_suite_names_the_file_and_line(home: Path) -> None:
    path = home / "evolve" / "suites" / "bad.yaml"
    path.write_text("version: 1\nname: bad\nrole: system\ncases:\n  - id: a\n    input: {}\n    expect:\n"
                    "      - contains: x\n        regex: '('\n")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_suite(home, "bad")
    assert f"{path}:9: cases.0.expect.0.regex: not a valid regular expression" in caught.value.message
    path.write_text(path.read_text().replace("'('", "'y'"))
    message = problem(home, "bad")
    assert f"{path}:8: cases.0.expect.0" in message and "exactly one check" in message
    path.write_text("version: 1\nname: bad\nrole: system\ncases:\n  - id: a\n    input: {}\n    expect: []\n"
                    "    colour: red\n")  # fmt: skip
    message = problem(home, "bad")
    assert f"{path}:8: cases.0.colour: unknown key" in message
    path.write_text("version: 1\nname: bad\nrole: system\ncases: [\n")
    assert f"{path}:5: not valid YAML" in problem(home, "bad")


def test_extra_case_files_extend_a_suite(home: Path) -> None:
    extra = home / "evolve" / "suites" / "mini.d"
    extra.mkdir()
    (extra / "new.yaml").write_text(
        "id: t-new\nsplit: train\ninput: {messages: []}\nexpect: [{action: restart}]\n"
    )
    suite = load_suite(home, "mini")
    assert suite.case("t-new").expect[0].action == "restart" and len(suite.cases) == 7
    (extra / "dup.yaml").write_text("id: t-paris\ninput: {}\nexpect: [{contains: x}]\n")
    assert "appears twice" in problem(home, "mini")


async def test_the_llm_cache_answers_a_repeated_request_from_disk(tmp_path: Path) -> None:
    fake = FakeLLM(default="cached answer")
    meter = Meter()
    cached = MeteredLLM(fake, tmp_path / "cache", meter)
    request = LLMRequest([{"role": "user", "content": "hi"}], temperature=0.7)
    first = await cached.complete(request)
    second = await MeteredLLM(fake, tmp_path / "cache", meter).complete(request)
    assert first.text == second.text == "cached answer"
    assert len(fake.requests) == 1 and meter.calls == 1 and meter.cached == 1
    await cached.complete(LLMRequest([{"role": "user", "content": "hi"}], temperature=0.1))
    assert len(fake.requests) == 2  # other parameters: another entry


def test_mutation_replies_are_parsed_robustly() -> None:
    assert parse_reply('{"rationale": "r", "prompt": " p "}') == ("p", "r")
    assert parse_reply('Sure! {"prompt": "p2", "rationale": "why"} hope it helps') == ("p2", "why")
    assert parse_reply("PROMPT: Be kind.\nRATIONALE: users asked") == ("Be kind.", "users asked")
    assert parse_reply("no idea") == ("", "")


async def test_the_agent_uses_a_promotion_at_once(home: Path) -> None:
    llm = scripted()
    result = await run_campaign(home, "mini", generations=1, llm=llm, minibatch=2)
    service = AgentService(AgentConfig(), home / "agent", llm, memory=False, prompts=PromptBook(home))
    await service.start()
    try:
        ask = [{"role": "user", "content": "capital of Peru?"}]
        before = await service.chat(ask).result()
        assert "Lima" not in before.outputs["answer"]
        Archive(home).promote(result.best)
        after = await service.chat(ask).result()
        assert "Lima" in after.outputs["answer"]  # same service, no restart
        Archive(home).rollback()
        assert "Lima" not in (await service.chat(ask).result()).outputs["answer"]
    finally:
        await service.stop()
