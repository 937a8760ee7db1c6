"""Workflow validation: every kind of mistake is reported with the node and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.agent.graph import WorkflowError, load_workflow
from corral.agent.library import WorkflowLibrary
from corral.agent.store import RunStore


def problems(text: str) -> list[str]:
    with pytest.raises(WorkflowError) as info:
        load_workflow(text)
    return info.value.problems


def test_invalid_yaml_names_the_line() -> None:
    found = problems("name: x\nnodes:\n  a: {type: pass\n")
    assert "invalid YAML at line" in found[0]


def test_unknown_node_type_suggests_the_close_one() -> None:
    found = problems("name: x\nnodes:\n  a: {type: lmm}\n")
    assert "node 'a' has unknown type 'lmm' (did you mean 'llm'?)" in found[0]


def test_bad_params_name_the_node_and_field() -> None:
    found = problems("name: x\nnodes:\n  l: {type: loop, params: {max_iterations: 0}}\n")
    assert "node 'l' (loop): params.max_iterations" in found[0]
    found = problems("name: x\nnodes:\n  p: {type: prompt, params: {template: '{{ oops '}}\n")
    assert "template syntax error" in found[0]


def test_missing_unknown_and_mistyped_inputs() -> None:
    assert "missing its required input 'tool'" in problems("name: x\nnodes:\n  t: {type: tool}\n")[0]
    found = problems("name: x\nnodes:\n  t: {type: tool, in: {tool: echo, tools: {}}}\n")
    assert "has no input 'tools' (did you mean 'tool'?)" in found[0]
    found = problems("name: x\nnodes:\n  t: {type: tool, in: {tool: 5}}\n")
    assert "input 'tool' must be string, got int" in found[0]
    found = problems("name: x\ninputs: {m: {type: list}}\nnodes:\n  t: {type: tool, in: {tool: $inputs.m}}\n")
    assert "input 'tool' must be string, but its binding gives list" in found[0]


def test_references_to_missing_nodes_ports_inputs_and_later_nodes() -> None:
    found = problems("name: x\nnodes:\n  o: {type: output, in: {a: $nope.text}}\n")
    assert "reads $nope, but there is no node 'nope'" in found[0]
    found = problems(
        "name: x\nnodes:\n  p: {type: prompt, params: {template: hi}}\n  o: {type: output, in: {a: $p.txt}}\n"
    )
    assert "has no output 'txt' (did you mean 'text'?)" in found[0]
    found = problems("name: x\nnodes:\n  o: {type: output, in: {a: $inputs.q}}\n")
    assert "reads $inputs.q, which the workflow does not declare" in found[0]
    found = problems(
        "name: x\nnodes:\n  a: {type: pass}\n  b: {type: pass}\n  o: {type: output, in: {v: $b}}\n"
        "edges: [{from: a, to: o}]\n"
    )
    assert "reads $b but 'b' does not run before it; add an edge" in found[0]


def test_dangling_edge_and_unknown_branch() -> None:
    found = problems("name: x\nnodes:\n  a: {type: pass}\nedges: [{from: a, to: bb}]\n")
    assert "edge 0 (a -> bb) is dangling" in found[0]
    found = problems(
        "name: x\nnodes:\n  g: {type: gate}\n  o: {type: pass}\nedges: [{from: g, to: o, when: yes}]\n"
    )
    assert "YAML reads yes/no" in found[0]  # an unquoted `yes` is a boolean
    found = problems(
        "name: x\nnodes:\n  g: {type: gate}\n  o: {type: pass}\nedges: [{from: g, to: o, when: ok}]\n"
    )
    assert "never emits branch" in found[0] and "approved, denied" in found[0]


def test_cycles_need_a_loop_node() -> None:
    found = problems(
        "name: x\nnodes:\n  s: {type: pass}\n  a: {type: pass}\n  b: {type: pass}\n"
        "edges: [{from: s, to: a}, {from: a, to: b}, {from: b, to: a}]\n"
    )
    assert "form a cycle with no loop bound" in found[0] and "a -> b -> a" in found[0]
    found = problems(
        "name: x\nnodes:\n  l: {type: loop, params: {max_iterations: 2}}\n  a: {type: pass}\n"
        "edges: [{from: l, to: a, when: done}, {from: a, to: l}]\n"
    )
    assert "its `done` branch leads back into it" in found[0]
    found = problems(
        "name: x\nnodes:\n  l: {type: loop, params: {max_iterations: 2}}\n  a: {type: pass}\n"
        "edges: [{from: l, to: a}]\n"
    )
    assert "need `when: body`" in found[0]


def test_unreachable_node_and_yaml_booleans_as_ids() -> None:
    found = problems(
        "name: x\nnodes:\n  s: {type: pass}\n  a: {type: pass}\n  b: {type: pass}\n"
        "edges: [{from: a, to: b}, {from: b, to: a}]\n"
    )
    assert any("unreachable" in p or "cycle" in p for p in found)
    found = problems("name: x\nnodes:\n  yes: {type: pass}\n")
    assert "quote the id" in found[0]


def test_problems_are_reported_together() -> None:
    found = problems("name: x\nnodes:\n  a: {type: nope}\n  b: {type: pass}\n  c: {type: loop}\n")
    assert len(found) == 2 and "'a'" in found[0] and "'c'" in found[1]


def test_shipped_workflows_are_valid() -> None:
    summaries = WorkflowLibrary(RunStore(":memory:")).summaries()
    assert {s["name"] for s in summaries} >= {"agent", "moe", "summarise"}
    assert all(s["valid"] for s in summaries), summaries


def test_a_file_whose_name_differs_from_its_file_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("name: other\nnodes:\n  a: {type: pass}\n")
    library = WorkflowLibrary(RunStore(":memory:"), tmp_path, shipped=False)
    [summary] = library.summaries()
    assert summary["valid"] is False and "mine.yaml says `name: other`" in summary["problems"][0]
    with pytest.raises(WorkflowError, match="make the name and the file name the same"):
        library.get("mine")
