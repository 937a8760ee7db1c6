"""The closed action set: parsing and rejection, the grammar and seed the reflect workflow ships,
memory-cap and context-floor arithmetic, and the crash rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from corral.engine.replica import ReplicaSpec
from corral.supervisor.actions import (
    ActionRejected,
    Failover,
    IncreaseMemory,
    Limits,
    NotApplicable,
    Novel,
    ReduceContext,
    Restart,
    action_grammar,
    increased_memory,
    parse_action,
    planned_spec,
    reduced_context,
)
from corral.supervisor.diagnostics import Bundle, Memory, node_bundle, run_bundle, signal_name
from corral.supervisor.prompts import REFLECTION_SEED
from corral.supervisor.rules import classify

GB = 1_000_000_000
WORKFLOW = Path(__file__).parents[2] / "src" / "corral" / "workflows" / "reflect.yaml"


def spec(**changes: Any) -> ReplicaSpec:
    base = ReplicaSpec("general", 0, SimpleNamespace(id="m"), 1, 2048, 2)  # type: ignore[arg-type]
    return replace(base, **changes)


def limits(free: int = 8 * GB, ceiling: int | None = None, models: tuple[str, ...] = ()) -> Limits:
    return Limits(free_memory_bytes=free, max_memory_bytes=ceiling, min_context=512, failover_models=models)


def test_parse_accepts_each_action_in_both_shapes() -> None:
    assert parse_action('{"action":"restart"}') == Restart()
    assert parse_action({"action": "reduce_context", "factor": 0.5}) == ReduceContext(factor=0.5)
    assert parse_action({"tool": "increase_memory", "arguments": {"factor": 1.25}}) == IncreaseMemory(
        factor=1.25
    )
    assert parse_action('{"action":"failover","model":"small"}') == Failover(model="small")
    novel = parse_action('{"action":"novel","description":"a licence server refuses us"}')
    assert isinstance(novel, Novel)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ('{"action":"reboot"}', "unknown action 'reboot'"),
        ('{"action":"increase_memory","factor":3}', "factor"),  # more than x1.5
        ('{"action":"reduce_context","factor":0.1}', "factor"),
        ('{"action":"novel","description":""}', "description"),
        ('{"action":"restart","rm":"-rf /"}', "Extra inputs"),
        ("restart it please", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (None, "not a JSON object"),
    ],
)
def test_parse_rejects_anything_outside_the_set(answer: Any, says: str) -> None:
    with pytest.raises(ActionRejected, match=says):
        parse_action(answer)


def test_shipped_workflow_carries_the_generated_grammar_and_the_seed() -> None:
    ask = yaml.safe_load(WORKFLOW.read_text())["nodes"]["ask"]
    assert ask["params"]["grammar"] == action_grammar()
    assert ask["params"]["prompt_role"] == "reflection"
    assert ask["in"]["system"] == REFLECTION_SEED


def test_the_seed_examples_are_valid_actions() -> None:
    answers = [
        line.removeprefix("Answer: ") for line in REFLECTION_SEED.splitlines() if line.startswith("Answer:")
    ]
    assert {parse_action(a).action for a in answers} == {
        "reduce_context",
        "increase_memory",
        "failover",
        "novel",
    }


def test_memory_grows_at_most_by_half_and_within_free_ram_and_ceiling() -> None:
    assert increased_memory(GB, 1.5, limits()) == int(1.5 * GB)
    assert increased_memory(GB, 9.0, limits()) == int(1.5 * GB)  # the factor itself is capped
    assert increased_memory(GB, 1.5, limits(free=GB // 5)) == GB + GB // 5
    assert increased_memory(GB, 1.5, limits(ceiling=int(1.1 * GB))) == int(1.1 * GB)
    with pytest.raises(NotApplicable, match="cannot grow"):
        increased_memory(GB, 1.5, limits(free=0))
    with pytest.raises(NotApplicable, match="cannot grow"):
        increased_memory(GB, 1.5, limits(ceiling=GB))


def test_increase_memory_needs_a_limit_to_raise() -> None:
    with pytest.raises(NotApplicable, match="no memory limit"):
        planned_spec(IncreaseMemory(), spec(), limits())
    assert planned_spec(
        IncreaseMemory(factor=1.2), spec(memory_limit_bytes=GB), limits()
    ).memory_limit_bytes == int(1.2 * GB)


def test_context_halves_down_to_its_floor() -> None:
    assert reduced_context(2048, 0.5, 512) == 1024
    assert reduced_context(768, 0.5, 512) == 512
    with pytest.raises(NotApplicable, match="floor"):
        reduced_context(512, 0.5, 512)
    assert planned_spec(ReduceContext(), spec(context_per_slot=4096), limits()).context_per_slot == 2048


def test_failover_only_to_an_allowlisted_model() -> None:
    with pytest.raises(NotApplicable, match="allowlist"):
        planned_spec(
            Failover(model="evil"), spec(), limits(models=("small",)), lambda ref: SimpleNamespace(id=ref)
        )
    moved = planned_spec(
        Failover(model="small"), spec(), limits(models=("small",)), lambda ref: SimpleNamespace(id=ref)
    )
    assert moved.model.id == "small"
    with pytest.raises(NotApplicable, match="adaptation"):
        planned_spec(Novel(description="something new here"), spec(), limits())


def bundle(**fields: Any) -> Bundle:
    fields.setdefault("memory", Memory(available_bytes=GB))
    return Bundle(target="general/0", source="replica", **fields)


def test_rules_classify_known_signatures() -> None:
    assert signal_name(-9) == "SIGKILL" and signal_name(137) == "SIGKILL" and signal_name(1) is None
    oom = classify(bundle(exit_code=-9, signal="SIGKILL"))
    assert (oom.kind, oom.action) == ("oom_kill", ReduceContext(reason=oom.reason))
    kv = classify(bundle(exit_code=1, log_tail="llama_kv_cache_init: failed to allocate buffer for kv cache"))
    assert kv.kind == "context_overflow" and isinstance(kv.action, ReduceContext)
    limited = bundle(
        exit_code=1, log_tail="failed to allocate buffer of size 5", memory=Memory(limit_bytes=GB)
    )
    assert isinstance(classify(limited).action, IncreaseMemory)
    segv = classify(bundle(exit_code=-11, signal="SIGSEGV"))
    assert segv.kind == "segfault" and isinstance(segv.action, Restart)
    assert classify(bundle(exit_code=-11, signal="SIGSEGV", crashes_in_window=2)).action is None


def test_a_single_plain_crash_is_left_to_the_engine_and_repeats_go_to_reflection() -> None:
    once = classify(bundle(exit_code=1))
    assert once.kind == "crash" and not once.needs_healing
    again = classify(bundle(exit_code=1, crashes_in_window=3), repeat_threshold=3)
    assert again.kind == "repeated_crash" and again.action is None and again.needs_healing


def test_only_the_last_run_of_the_log_decides() -> None:
    earlier = "I srv  llama_server: initializing ...\nI srv load_model: n_ctx_slot = 1024\nI model loaded\n"
    now = "I srv  llama_server: initializing ...\nE llama_model_load: mmap failed: Cannot allocate memory\n"
    verdict = classify(bundle(exit_code=1, log_tail=earlier + now, memory=Memory(limit_bytes=GB)))
    assert verdict.kind == "alloc_failure" and isinstance(verdict.action, IncreaseMemory)


def test_runs_are_resumed_when_a_resume_fixes_them_and_repeats_go_to_reflection() -> None:
    steps = [{"seq": 1, "node": "answer", "status": "error", "error": "the model call failed"}]
    cut = classify(run_bundle("r1", "agent", "interrupted", "", []))
    assert (cut.kind, cut.action) == ("run_interrupted", Restart(reason=cut.reason))
    down = run_bundle("r2", "agent", "failed", "no healthy replica for 'general' or its fallbacks", steps)
    assert down.spec["node"] == "answer" and "1. answer: error" in down.log_tail
    assert classify(down).kind == "run_model_unavailable" and isinstance(classify(down).action, Restart)
    own = run_bundle("r3", "agent", "failed", "node 'parse' failed: not JSON", steps)
    assert (classify(own).kind, classify(own).needs_healing) == ("run_failed", False)
    repeated = run_bundle(
        "r4", "agent", "failed", "node 'parse' failed: not JSON", steps, failures_in_window=3
    )
    verdict = classify(repeated, repeat_threshold=3)
    assert (verdict.kind, verdict.action, verdict.needs_healing) == ("repeated_run_failure", None, True)
    assert "workflow: agent; status: failed; failed node: answer" in repeated.summary()


def test_a_lost_node_is_woken_only_when_its_experts_fit_nowhere_else() -> None:
    info = {"mac": None, "profile": {"ram_available_bytes": GB, "ram_total_bytes": 2 * GB}}
    moved = node_bundle("beta", "left the cluster", ["general/1"], {"general/1": "alpha"}, [], info)
    verdict = classify(moved)
    assert (verdict.kind, verdict.needs_healing) == (
        "node_lost",
        False,
    ) and "general/1 to alpha" in verdict.reason
    stuck = node_bundle("beta", "left the cluster", ["big/0"], {}, ["big/0"], info)
    assert (
        isinstance(classify(stuck).action, Restart) and "big/0 fit on no other node" in classify(stuck).reason
    )
    assert "fit nowhere now: big/0" in stuck.summary()
