"""Runner semantics with FakeLLM and small test node types: order, branches, parallelism, loops,
retries, timeouts, cancellation, resume, replay, fork, gates, tools, sub-workflows, events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import Field

from corral.agent.library import WorkflowLibrary
from corral.agent.nodes.base import (
    NODE_TYPES,
    NodeContext,
    NodeParams,
    NodeResult,
    NodeType,
    Port,
    node_types,
)
from corral.agent.runner import Runner
from corral.agent.services import AgentServices
from corral.agent.settings import AgentConfig, HistoryConfig
from corral.agent.store import RunStore
from corral.agent.tools.base import ApprovalPolicy, ToolContext, ToolRegistry, ToolResult, ToolSpec
from corral.errors import BadRequestError
from corral.testing import FakeLLM

CALLS: dict[str, int] = {}
BLOCK = asyncio.Event()


class SleepParams(NodeParams):
    seconds: float = 0.0
    fail_times: int = 0
    block: bool = False
    label: str = ""


class SleepNode(NodeType):
    name = "test_sleep"
    dynamic_inputs = True
    outputs = (Port("start", "number"), Port("end", "number"), Port("label", "string"), Port("n", "integer"))
    Params = SleepParams

    async def run(self, ctx: NodeContext, inputs: dict[str, Any], params: SleepParams) -> NodeResult:
        key = f"{ctx.run_id}:{ctx.node_id}"
        CALLS[ctx.node_id] = CALLS.get(ctx.node_id, 0) + 1
        CALLS[key] = CALLS.get(key, 0) + 1
        start = time.monotonic()
        if ctx.attempt <= params.fail_times:
            raise RuntimeError(f"flaky failure {ctx.attempt}")
        if params.block:
            await BLOCK.wait()
        await asyncio.sleep(params.seconds)
        return NodeResult({"start": start, "end": time.monotonic(), "label": params.label, "n": CALLS[key]})


node_types()
if SleepNode.name not in NODE_TYPES:
    NODE_TYPES[SleepNode.name] = SleepNode()


class EchoTool:
    def __init__(self, name: str = "echo", risk: str = "low") -> None:
        self.spec = ToolSpec(
            name, "Echo the text back.",
            {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            risk=risk,  # type: ignore[arg-type]
        )  # fmt: skip

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return ToolResult(True, f"echo: {args['text']}")


def make(
    llm: FakeLLM | None = None, tools: ToolRegistry | None = None, **settings: Any
) -> tuple[Runner, WorkflowLibrary]:
    store = RunStore(":memory:")
    services = AgentServices(AgentConfig(**settings), store, llm=llm or FakeLLM(), tools=tools)
    library = WorkflowLibrary(store, None, shipped=False)
    services.workflows = library
    return Runner(services), library


async def run(
    runner: Runner, library: WorkflowLibrary, text: str, inputs: dict[str, Any] | None = None
) -> Any:
    workflow, version = library.save(text)
    return await runner.run(workflow, version, inputs or {})


async def eventually(predicate: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def outputs_of(runner: Runner, run_id: str) -> dict[str, Any]:
    return {s.node: s.outputs for s in runner.store.steps(run_id)}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    BLOCK.clear()


async def test_dataflow_prompt_llm_output_streams_tokens_and_records_steps() -> None:
    llm = FakeLLM(["Paris is the capital."])
    runner, library = make(llm)
    events = runner.bus.subscribe()
    record = await run(
        runner,
        library,
        """
name: ask
inputs: {question: {type: string}}
nodes:
  prompt: {type: prompt, in: {q: $inputs.question}, params: {template: "Q: {{ q }}"}}
  answer: {type: llm, in: {prompt: $prompt.text}}
  out: {type: output, in: {answer: $answer.text}}
""",
        {"question": "capital of France?"},
    )
    assert record.status == "succeeded", record.error
    assert record.outputs == {"answer": "Paris is the capital."}
    assert llm.requests[0].messages[-1]["content"] == "Q: capital of France?"
    assert [s.node for s in runner.store.steps(record.id)] == ["prompt", "answer", "out"]
    events.close()
    kinds = [e.type async for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished"
    assert "".join(e for e in kinds if e == "node.token") and kinds.count("node.token") == 4


async def test_parallel_branches_overlap_and_merge_waits_for_both() -> None:
    runner, library = make()
    record = await run(
        runner,
        library,
        """
name: fan
nodes:
  start: {type: pass}
  a: {type: test_sleep, params: {seconds: 0.2, label: a}}
  b: {type: test_sleep, params: {seconds: 0.2, label: b}}
  join: {type: merge}
  out: {type: output, in: {count: $join.count}}
edges:
  - {from: start, to: a}
  - {from: start, to: b}
  - {from: a, to: join}
  - {from: b, to: join}
  - {from: join, to: out}
""",
    )
    assert record.status == "succeeded", record.error
    outs = outputs_of(runner, record.id)
    assert outs["a"]["start"] < outs["b"]["end"] and outs["b"]["start"] < outs["a"]["end"]  # they overlapped
    assert record.outputs == {"count": 2}
    assert [s.node for s in runner.store.steps(record.id)].count("join") == 1


async def test_a_dataflow_node_fed_by_several_nodes_runs_once_after_all_of_them() -> None:
    runner, library = make()
    record = await run(
        runner,
        library,
        """
name: fanin
nodes:
  a: {type: test_sleep, params: {seconds: 0.05, label: a}}
  b: {type: test_sleep, params: {label: b}}
  out: {type: output, in: {a: $a.label, b: $b.label}}
""",
    )
    assert record.outputs == {"a": "a", "b": "b"}
    assert [s.node for s in runner.store.steps(record.id)].count("out") == 1


async def test_switch_takes_one_branch_and_merge_does_not_wait_for_the_dead_one() -> None:
    runner, library = make()
    text = """
name: sw
inputs: {x: {type: integer}}
nodes:
  check: {type: switch, in: {value: $inputs.x}, params: {cases: [{branch: big, op: gt, value: 10}]}}
  big: {type: test_sleep, params: {label: big}}
  small: {type: test_sleep, params: {label: small}}
  join: {type: merge}
  out: {type: output, in: {texts: $join.count}}
edges:
  - {from: check, to: big, when: big}
  - {from: check, to: small, when: default}
  - {from: big, to: join}
  - {from: small, to: join}
  - {from: join, to: out}
"""
    record = await run(runner, library, text, {"x": 42})
    nodes = [s.node for s in runner.store.steps(record.id)]
    assert "big" in nodes and "small" not in nodes and record.outputs == {"texts": 1}
    record = await run(runner, library, text, {"x": 1})
    assert "small" in [s.node for s in runner.store.steps(record.id)]


LOOP = """
name: looper
nodes:
  loop: {type: loop, params: {max_iterations: 3}}
  body: {type: prompt, in: {i: $loop.iteration}, params: {template: "{{ i }}"}, append: {seen: text}}
  after: {type: output, in: {seen: $vars.seen, last: $loop.iteration}}
edges:
  - {from: loop, to: body, when: body}
  - {from: body, to: loop}
  - {from: loop, to: after, when: done}
"""


async def test_loop_runs_its_body_max_iterations_times_then_done() -> None:
    runner, library = make()
    record = await run(runner, library, LOOP)
    assert record.status == "succeeded", record.error
    assert record.outputs == {"seen": ["0", "1", "2"], "last": 3}


async def test_retries_with_backoff_then_success() -> None:
    runner, library = make()
    record = await run(
        runner,
        library,
        """
name: flaky
nodes:
  f: {type: test_sleep, params: {fail_times: 2}, retry: {attempts: 3, backoff_s: 0.01}}
""",
    )
    assert record.status == "succeeded", record.error
    assert runner.store.steps(record.id)[0].attempts == 3


async def test_timeout_error_branch_and_failing_run() -> None:
    runner, library = make()
    record = await run(
        runner,
        library,
        """
name: slow
nodes:
  s: {type: test_sleep, params: {seconds: 5}, timeout_s: 0.05, on_error: branch}
  handle: {type: output, in: {error: $s.error}}
edges:
  - {from: s, to: handle, when: error}
""",
    )
    assert record.status == "succeeded"
    assert "timeout_s" in record.outputs["error"]
    record = await run(
        runner,
        library,
        """
name: slow2
nodes:
  s: {type: test_sleep, params: {fail_times: 5}}
  never: {type: output, in: {x: 1}}
edges: [{from: s, to: never}]
""",
    )
    assert record.status == "failed" and "flaky failure" in (record.error or "")
    assert [s.node for s in runner.store.steps(record.id)] == ["s"]


async def test_cancel_stops_running_nodes() -> None:
    runner, library = make()
    workflow, version = library.save("name: c\nnodes:\n  s: {type: test_sleep, params: {seconds: 30}}\n")
    handle = runner.start(workflow, version, {})
    await asyncio.sleep(0.05)
    assert runner.cancel(handle.run_id)
    record = await handle.result()
    assert record.status == "cancelled"


RESUMABLE = """
name: resumable
nodes:
  one: {type: test_sleep, params: {label: one}}
  two: {type: test_sleep, params: {label: two}}
  three: {type: test_sleep, params: {block: true}}
  out: {type: output, in: {a: $one.label, b: $two.label, c: $three.n}}
edges:
  - {from: one, to: two}
  - {from: two, to: three}
  - {from: three, to: out}
"""


async def test_resume_after_a_crash_continues_from_the_last_completed_node() -> None:
    runner, library = make()
    workflow, version = library.save(RESUMABLE)
    handle = runner.start(workflow, version, {})
    await eventually(lambda: len(runner.store.steps(handle.run_id)) >= 2)
    handle.task.cancel()  # the process "dies" while `three` runs...
    await asyncio.gather(handle.task, return_exceptions=True)
    runner.store.set_status(handle.run_id, "running")  # ...so its row still says running
    assert runner.store.mark_interrupted() == [handle.run_id]
    BLOCK.set()
    record = await runner.resume(handle.run_id).result()
    assert record.status == "succeeded", record.error
    assert CALLS["one"] == 1 and CALLS["two"] == 1  # not run again
    assert record.outputs == {"a": "one", "b": "two", "c": 2}  # `three` was cut off once, then re-ran
    assert [s.node for s in runner.store.steps(record.id)] == ["one", "two", "three", "out"]


async def test_resume_a_loop_keeps_its_iteration_count_and_vars() -> None:
    runner, library = make()
    workflow, version = library.save(LOOP.replace("max_iterations: 3", "max_iterations: 4"))
    record = await runner.run(workflow, version, {})
    # cut the history after the second body step and resume: the result must be the same
    steps = runner.store.steps(record.id)
    second_body = [s.seq for s in steps if s.node == "body"][1]
    runner.store.truncate_steps(record.id, second_body)
    runner.store.set_status(record.id, "interrupted")
    resumed = await runner.resume(record.id).result()
    assert resumed.outputs == record.outputs == {"seen": ["0", "1", "2", "3"], "last": 4}


async def test_replay_with_changed_inputs_and_fork() -> None:
    llm = FakeLLM(default="x")
    runner, library = make(llm)
    text = """
name: two_step
inputs: {name: {type: string}}
nodes:
  greet: {type: prompt, in: {n: $inputs.name}, params: {template: "hi {{ n }}"}}
  shout: {type: prompt, in: {g: $greet.text, n: $inputs.name}, params: {template: "{{ g | upper }} {{ n }}"}}
  out: {type: output, in: {text: $shout.text}}
"""
    first = await run(runner, library, text, {"name": "ann"})
    assert first.outputs == {"text": "HI ANN ann"}
    again = await runner.replay(first.id, {"name": "bob"}).result()
    assert again.outputs == {"text": "HI BOB bob"} and again.id != first.id
    forked = await runner.fork(first.id, 1, {"name": "cy"}).result()
    assert forked.outputs == {"text": "HI ANN cy"}  # greet kept from the past run, shout re-ran
    assert forked.forked_from == first.id
    with pytest.raises(BadRequestError):
        runner.fork(first.id, 99)


async def test_gate_waits_for_approval_and_denies_on_timeout() -> None:
    runner, library = make()
    text = """
name: gated
nodes:
  ask: {type: gate, params: {title: "Reboot?", timeout_s: TIMEOUT}}
  go: {type: output, in: {r: approved}}
  stop: {type: output, in: {r: denied}}
edges:
  - {from: ask, to: go, when: approved}
  - {from: ask, to: stop, when: denied}
"""
    workflow, version = library.save(text.replace("TIMEOUT", "30"))
    handle = runner.start(workflow, version, {})
    gates = runner.services.gates
    assert gates is not None
    await eventually(gates.pending)
    assert runner.store.run(handle.run_id).status == "waiting"  # type: ignore[union-attr]
    gates.decide(gates.pending()[0]["id"], True, by="tester")
    assert (await handle.result()).outputs == {"r": "approved"}
    record = await run(runner, library, text.replace("TIMEOUT", "0.05").replace("gated", "gated2"))
    assert record.outputs == {"r": "denied"}
    assert runner.store.gates(run_id=record.id)[0]["status"] == "expired"


async def test_tool_node_policy_auto_ask_deny_and_bad_arguments() -> None:
    tools = ToolRegistry(
        [EchoTool(), EchoTool("risky", "high"), EchoTool("banned")],
        ApprovalPolicy({"banned": "deny"}),
    )
    runner, library = make(tools=tools, gate_timeout_s=0.05)
    text = """
name: tool_NAME
inputs: {args: {type: object}}
nodes:
  t: {type: tool, in: {tool: NAME, arguments: $inputs.args}}
  out: {type: output, in: {ok: $t.ok, content: $t.content, decision: $t.decision}}
"""

    async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        record = await run(runner, library, text.replace("NAME", name), {"args": args})
        assert record.status == "succeeded", record.error
        return record.outputs  # type: ignore[return-value]

    assert await call("echo", {"text": "hi"}) == {"ok": True, "content": "echo: hi", "decision": "auto"}
    out = await call("echo", {"txt": "hi"})
    assert out["ok"] is False and "text" in out["content"] and out["decision"] == "refused"
    out = await call("banned", {"text": "hi"})
    assert out["decision"] == "denied" and "agent.tools.approval" in out["content"]
    out = await call("risky", {"text": "hi"})  # asks, nobody answers within 0.05 s: denied
    assert out["decision"] == "denied" and "timeout" in out["content"]
    out = await call("nosuch", {"text": "hi"})
    assert out["ok"] is False and "echo" in out["content"]


AGENTISH = """
name: agentish
inputs: {messages: {type: messages}}
nodes:
  loop: {type: loop, params: {max_iterations: 3}}
  decide: {type: tool_choice, in: {messages: $inputs.messages, steps: $vars.steps}}
  act: {type: tool, in: {tool: $decide.tool, arguments: $decide.arguments}, append: {steps: step}}
  answer: {type: output, in: {answer: $decide.answer}}
  bound: {type: output, in: {answer: "step limit"}}
vars: {steps: []}
edges:
  - {from: loop, to: decide, when: body}
  - {from: decide, to: act, when: tool}
  - {from: act, to: loop}
  - {from: decide, to: answer, when: final}
  - {from: loop, to: bound, when: done}
"""


async def test_agent_loop_calls_a_tool_then_answers_with_a_grammar_constrained_call() -> None:
    llm = FakeLLM([
        '{"tool": "echo", "arguments": {"text": "ping"}}',
        '{"tool": "final_answer", "arguments": {"answer": "the echo said ping"}}',
    ])  # fmt: skip
    runner, library = make(llm, ToolRegistry([EchoTool()]))
    record = await run(runner, library, AGENTISH, {"messages": [{"role": "user", "content": "echo ping"}]})
    assert record.status == "succeeded", record.error
    assert record.outputs == {"answer": "the echo said ping"}
    grammar = llm.requests[0].grammar
    assert grammar is not None and '{\\"tool\\":\\"echo\\"' in grammar and "final_answer" in grammar
    assert "Tool echo result: echo: ping" in llm.requests[1].messages[-1]["content"]


async def test_agent_loop_garbage_from_the_model_is_a_recorded_error_and_the_step_bound_holds() -> None:
    runner, library = make(FakeLLM(["I think maybe"]), ToolRegistry([EchoTool()]))
    record = await run(runner, library, AGENTISH, {"messages": [{"role": "user", "content": "x"}]})
    assert record.status == "failed" and "did not return a tool call" in (record.error or "")
    looping = FakeLLM(default='{"tool": "echo", "arguments": {"text": "again"}}')
    runner, library = make(looping, ToolRegistry([EchoTool()]))
    record = await run(runner, library, AGENTISH, {"messages": [{"role": "user", "content": "x"}]})
    assert record.outputs == {"answer": "step limit"} and len(looping.requests) == 3


async def test_sub_workflow_runs_as_a_child_run() -> None:
    runner, library = make()
    library.save(
        "name: child\ninputs: {x: {type: string}}\nnodes:\n  o: {type: output, in: {y: $inputs.x}}\n"
    )
    record = await run(
        runner,
        library,
        """
name: parent
nodes:
  sub: {type: workflow, in: {x: hello}, params: {workflow: child}}
  out: {type: output, in: {got: $sub.y}}
""",
    )
    assert record.outputs == {"got": "hello"}
    children = runner.store.runs(parent_id=record.id)
    assert len(children) == 1 and children[0].workflow == "child"


async def test_max_steps_and_retention() -> None:
    runner, library = make(history=HistoryConfig(max_runs=3))
    for _ in range(5):
        await run(runner, library, "name: tiny\nnodes:\n  a: {type: pass}\n")
    assert len(runner.store.runs()) == 3
    record = await run(runner, library, LOOP.replace("max_iterations: 3", "max_iterations: 100").replace(
        "name: looper", "name: looper\nmax_steps: 10"
    ))  # fmt: skip
    assert record.status == "failed" and "max_steps" in (record.error or "")


class _Unused(NodeParams):
    x: int = Field(0)
