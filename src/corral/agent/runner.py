"""The workflow runner: schedules nodes over a compiled graph, checkpoints each completion, and
resumes, replays and forks runs from their history.

Semantics
- Start: the nodes with no incoming edge run first, in parallel.
- A node completing fires its outgoing edges whose `when` matches its branch (or has no `when`);
  each fired edge runs its target once, in parallel with whatever else is running.
- `merge` joins: it waits until no running or queued node can still reach it, then runs once with
  every branch that arrived.
- `loop` bounds cycles: entered from outside it starts at iteration 0, entered by its back edge it
  counts one more; it emits `body` until `max_iterations`, then `done`.
- Failure: per-node timeout and retries; then `on_error` fails the run, emits the `error` branch,
  or continues. Cancelling a run cancels its running nodes (an LLM call stops generating).
- Durability: each completion is one SQLite row. The scheduler is deterministic in the sequence of
  completions, so replaying the rows rebuilds its state exactly; resume then runs what was queued
  or running when the process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.agent.events import EventBus
from corral.agent.graph import CompiledNode, CompiledWorkflow, Edge
from corral.agent.nodes.base import NodeContext, NodeFailure, NodeResult, check_value
from corral.agent.schema import literal, parse_reference
from corral.agent.services import AgentServices
from corral.agent.store import RunRecord, RunStore, StepRecord
from corral.errors import BadRequestError, NotFoundError

log = logging.getLogger("corral.agent")


class RunFailed(Exception):
    pass


@dataclass
class RunHandle:
    run_id: str
    task: asyncio.Task[RunRecord]

    async def result(self) -> RunRecord:
        return await asyncio.shield(self.task)

    def cancel(self) -> None:
        self.task.cancel()


class Runner:
    def __init__(self, services: AgentServices) -> None:
        self.services = services
        services.runner = self
        self.active: dict[str, RunHandle] = {}

    @property
    def store(self) -> RunStore:
        return self.services.store

    @property
    def bus(self) -> EventBus:
        return self.services.bus

    # --- starting runs ------------------------------------------------------------------------

    def start(
        self,
        workflow: CompiledWorkflow,
        version: int,
        inputs: Mapping[str, Any],
        *,
        session: str = "",
        parent_id: str | None = None,
        root_run: str = "",
        run_id: str | None = None,
        prompts: Mapping[str, str] | None = None,
    ) -> RunHandle:
        """`prompts` (role -> text) override the promoted prompts for this run's nodes that take a
        `prompt_role` (prompt evolution evaluates a candidate this way without promoting it)."""
        checked = check_inputs(workflow, inputs)
        run_id = run_id or new_run_id()
        self.store.create_run(run_id, workflow.name, version, checked, session=session, parent_id=parent_id)
        execution = _Execution(self, workflow, version, run_id, checked, session, root_run or run_id)
        execution.prompts = dict(prompts or {})
        execution.begin()
        return self._launch(execution)

    async def run(
        self, workflow: CompiledWorkflow, version: int, inputs: Mapping[str, Any], **kwargs: Any
    ) -> RunRecord:
        return await self.start(workflow, version, inputs, **kwargs).result()

    def resume(self, run_id: str) -> RunHandle:
        """Continue an interrupted (or failed) run from its last completed node."""
        record = self._record(run_id)
        if run_id in self.active:
            raise BadRequestError(f"run {run_id} is still running; there is nothing to resume")
        if record.status == "succeeded":
            raise BadRequestError(f"run {run_id} already succeeded; replay it to run it again")
        workflow = self._workflow(record)
        execution = _Execution(self, workflow, record.version, run_id, record.inputs, record.session, run_id)
        steps = self.store.steps(run_id)
        if record.status == "failed" and steps and steps[-1].status == "error":
            # a failed node is retried on resume: forget its failure, keep everything before it
            self.store.truncate_steps(run_id, steps[-1].seq - 1)
            steps = steps[:-1]
        execution.restore(steps)
        self.store.set_status(run_id, "running")
        return self._launch(execution, resumed=len(steps))

    def replay(self, run_id: str, inputs: Mapping[str, Any] | None = None) -> RunHandle:
        """A new run of the same workflow version with the same inputs, changed by `inputs`: a fork
        at step 0, so its `forked_from` names the run it replays (history shows the lineage)."""
        return self.fork(run_id, 0, inputs)

    def fork(self, run_id: str, at_seq: int, inputs: Mapping[str, Any] | None = None) -> RunHandle:
        """A new run that keeps the first `at_seq` completed steps of a past run and goes on from
        there (with `inputs` changed for the nodes still to run)."""
        record = self._record(run_id)
        workflow = self._workflow(record)
        steps = self.store.steps(run_id, upto=at_seq)
        if at_seq < 0 or (at_seq > 0 and (not steps or steps[-1].seq != at_seq)):
            last = steps[-1].seq if steps else 0
            raise BadRequestError(f"run {run_id} has no step {at_seq}; fork at a step from 0 to {last}")
        merged = check_inputs(workflow, {**record.inputs, **(inputs or {})})
        new_id = new_run_id()
        self.store.create_run(
            new_id, workflow.name, record.version, merged, session=record.session,
            forked_from=run_id, fork_seq=at_seq,
        )  # fmt: skip
        for step in steps:
            self.store.record_step(new_id, step)
        execution = _Execution(self, workflow, record.version, new_id, merged, record.session, new_id)
        execution.restore(steps)
        return self._launch(execution, resumed=len(steps))

    def cancel(self, run_id: str) -> bool:
        handle = self.active.get(run_id)
        if handle is None:
            return False
        handle.cancel()
        return True

    async def shutdown(self) -> None:
        """Stop every run; their rows stay `running` so the next start marks them interrupted."""
        handles = list(self.active.values())
        for handle in handles:
            handle.task.cancel()
        for handle in handles:
            with contextlib.suppress(BaseException):
                await handle.task

    def _launch(self, execution: _Execution, resumed: int | None = None) -> RunHandle:
        task = asyncio.get_running_loop().create_task(
            execution.drive(resumed), name=f"run {execution.run_id}"
        )
        handle = RunHandle(execution.run_id, task)
        self.active[execution.run_id] = handle
        task.add_done_callback(lambda _: self.active.pop(execution.run_id, None))
        return handle

    def _record(self, run_id: str) -> RunRecord:
        record = self.store.run(run_id)
        if record is None:
            raise NotFoundError(f"no run {run_id!r}; GET /api/runs lists the runs")
        return record

    def _workflow(self, record: RunRecord) -> CompiledWorkflow:
        if self.services.workflows is None:
            raise BadRequestError("no workflow library is configured")
        workflow, _ = self.services.workflows.get(record.workflow, record.version)
        return workflow


def new_run_id() -> str:
    return f"r_{time.strftime('%Y%m%d%H%M%S')}_{uuid.uuid4().hex[:8]}"


def check_inputs(workflow: CompiledWorkflow, inputs: Mapping[str, Any]) -> dict[str, Any]:
    declared = workflow.spec.inputs
    unknown = [k for k in inputs if k not in declared]
    if unknown:
        known = ", ".join(declared) or "none"
        raise BadRequestError(f"workflow {workflow.name!r} has no input {unknown[0]!r}; its inputs: {known}")
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in inputs:
            value = inputs[name]
            if not check_value(value, spec.type):
                raise BadRequestError(
                    f"input {name!r} of workflow {workflow.name!r} must be {spec.type}, "
                    f"got {type(value).__name__}"
                )
            out[name] = value
        elif spec.default is not None or not spec.required:
            out[name] = spec.default
        else:
            raise BadRequestError(f"workflow {workflow.name!r} needs input {name!r} ({spec.type})")
    return out


class _Execution:
    """One run's scheduler state and its drive loop."""

    def __init__(
        self,
        runner: Runner,
        workflow: CompiledWorkflow,
        version: int,
        run_id: str,
        inputs: dict[str, Any],
        session: str,
        root_run: str,
    ) -> None:
        self.runner = runner
        self.services = runner.services
        self.store = runner.store
        self.bus = runner.bus
        self.wf = workflow
        self.version = version
        self.run_id = run_id
        self.inputs = inputs
        self.session = session
        self.root_run = root_run
        self.vars: dict[str, Any] = {k: _copy(v) for k, v in workflow.spec.vars.items()}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.run_outputs: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.loop_iteration: dict[str, int] = {}
        self.arrivals: dict[str, list[Edge]] = {}
        self.queue: deque[tuple[str, int]] = deque()
        self.running: dict[asyncio.Task[StepRecord], tuple[str, int]] = {}
        self.seq = 0
        self.prompts: dict[str, str] = {}

    # --- deterministic scheduling (shared by live runs and restore) ----------------------------

    def begin(self) -> None:
        for node_id in self.wf.starts:
            self.queue.append((node_id, -1))

    def restore(self, steps: list[StepRecord]) -> None:
        self.begin()
        for step in steps:
            try:
                self.queue.remove((step.node, step.trigger))
            except ValueError:
                raise BadRequestError(
                    f"the history of run {self.run_id} does not fit workflow {self.wf.name} "
                    f"v{self.version} at step {step.seq} ({step.node}); replay the run instead"
                ) from None
            self.complete(step)

    def complete(self, step: StepRecord) -> None:
        node = self.wf.nodes[step.node]
        self.seq = max(self.seq, step.seq)
        self.outputs[node.id] = step.outputs
        self.counts[node.id] = self.counts.get(node.id, 0) + 1
        if node.is_loop:
            self.loop_iteration[node.id] = int(step.outputs.get("iteration", 0))
        if node.is_join:
            self.arrivals.pop(node.id, None)
        if node.spec.type == "output" and step.status == "ok":
            self.run_outputs.update(step.outputs)
        for var, value in step.var_updates.get("set", {}).items():
            self.vars[var] = value
        for var, value in step.var_updates.get("append", {}).items():
            current = self.vars.get(var)
            self.vars[var] = [*(current if isinstance(current, list) else []), value]
        if step.status == "error" and node.spec.on_error == "fail":
            return
        for edge in node.out_edges:
            if edge.when is None or edge.when == step.branch:
                target = self.wf.nodes[edge.target]
                if target.is_join:
                    self.arrivals.setdefault(target.id, []).append(edge)
                else:
                    self.queue.append((target.id, edge.index))
        self._release_merges()

    def _release_merges(self) -> None:
        if not self.arrivals:
            return
        active = {n for n, _ in self.queue} | {n for n, _ in self.running.values()}
        for merge_id, edges in list(self.arrivals.items()):
            if any(n == merge_id for n, _ in self.queue):
                continue
            if not (active & self.wf.ancestors[merge_id]):
                self.queue.append((merge_id, edges[-1].index))

    # --- the drive loop -----------------------------------------------------------------------

    async def drive(self, resumed: int | None) -> RunRecord:
        done: asyncio.Queue[asyncio.Task[StepRecord]] = asyncio.Queue()
        data: dict[str, Any] = {"workflow": self.wf.name, "version": self.version, "root_run": self.root_run}
        if resumed is not None:
            data["resumed_after_steps"] = resumed
        self.bus.publish("run.started", self.run_id, data=data)
        status, error = "succeeded", None
        try:
            while self.queue or self.running:
                if len(self.queue) == 1 and not self.running:
                    # One node ready and nothing running: run it inline, no task, no queue hop.
                    self._check_steps()
                    node_id, trigger = self.queue.popleft()
                    step = await self._execute(node_id, trigger)
                else:
                    while self.queue:
                        self._check_steps()
                        node_id, trigger = self.queue.popleft()
                        task = asyncio.get_running_loop().create_task(self._execute(node_id, trigger))
                        self.running[task] = (node_id, trigger)
                        task.add_done_callback(done.put_nowait)
                    finished = await done.get()
                    self.running.pop(finished)
                    step = finished.result()
                self.seq += 1
                step = StepRecord(
                    self.seq, step.node, step.trigger, step.status, step.branch, step.inputs, step.outputs,
                    step.var_updates, step.error, step.started, step.finished, step.attempts,
                )  # fmt: skip
                self.store.record_step(self.run_id, step)
                self.complete(step)
                if step.status == "error" and self.wf.nodes[step.node].spec.on_error == "fail":
                    raise RunFailed(f"node {step.node!r} failed: {step.error}")
        except RunFailed as exc:
            status, error = "failed", str(exc)
        except asyncio.CancelledError:
            status, error = "cancelled", "cancelled"
        except Exception as exc:  # a bug in a node or the runner: the run fails, the server lives
            log.exception("run %s crashed", self.run_id)
            status, error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            await self._stop_running()
        self.store.set_status(self.run_id, status, outputs=self.run_outputs, error=error)
        self._retention()
        kind = {"succeeded": "run.finished", "failed": "run.failed", "cancelled": "run.cancelled"}[status]
        payload = {"outputs": self.run_outputs, "error": error, "root_run": self.root_run}
        self.bus.publish(kind, self.run_id, data=payload)
        record = self.store.run(self.run_id)
        assert record is not None
        return record

    def _check_steps(self) -> None:
        if self.seq + len(self.running) >= self.wf.spec.max_steps:
            raise RunFailed(
                f"the run reached max_steps ({self.wf.spec.max_steps} node executions); "
                "raise `max_steps` in the workflow or check its loops"
            )

    async def _stop_running(self) -> None:
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self.running.clear()

    def _retention(self) -> None:
        history = self.services.settings.history
        try:
            self.store.enforce_retention(history.max_runs, history.max_bytes)
        except Exception:
            log.exception("history retention failed")

    # --- one node -----------------------------------------------------------------------------

    def _emit(self, node_id: str) -> Any:
        def emit(kind: str, data: dict[str, Any]) -> None:
            self.bus.publish(kind, self.run_id, node_id, {**data, "root_run": self.root_run})

        return emit

    async def _execute(self, node_id: str, trigger: int) -> StepRecord:
        node = self.wf.nodes[node_id]
        started = time.time()
        emit = self._emit(node_id)
        ctx = NodeContext(
            self.run_id, node_id, self.session, self.services, emit, iteration=self.counts.get(node_id, 0)
        )
        if node.is_loop:
            back = trigger >= 0 and self.wf.edges[trigger].back
            ctx.extra["loop_iteration"] = self.loop_iteration.get(node_id, 0) + 1 if back else 0
        if node.is_merge:
            ctx.extra["arrived"] = {
                e.source: self.outputs.get(e.source, {}) for e in self.arrivals.get(node_id, [])
            }
        ctx.extra["root_run"] = self.root_run
        ctx.extra["inputs"] = self.inputs
        ctx.extra["prompts"] = self.prompts
        emit("node.started", {"type": node.spec.type, "iteration": ctx.iteration})
        inputs: dict[str, Any] = {}
        error: str | None = None
        result: NodeResult | None = None
        attempts = 0
        retry = node.spec.retry
        try:
            inputs = self._resolve(node)
        except NodeFailure as exc:
            error = str(exc)  # a wiring problem: trying again cannot help
        else:
            for attempt in range(1, retry.attempts + 1):
                if attempt > 1:
                    delay = retry.backoff_s * 2 ** (attempt - 2)
                    emit("node.retry", {"attempt": attempt, "error": error, "delay_s": delay})
                    await asyncio.sleep(delay)
                attempts = ctx.attempt = attempt
                try:
                    if node.spec.timeout_s is None:
                        result = await node.type.run(ctx, inputs, node.params)
                    else:
                        async with asyncio.timeout(node.spec.timeout_s):
                            result = await node.type.run(ctx, inputs, node.params)
                    error = None
                    break
                except TimeoutError:
                    error = f"took longer than its timeout_s ({node.spec.timeout_s:g} s)"
                except NodeFailure as exc:
                    error = str(exc)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
        finished = time.time()
        if error is not None or result is None:
            message = error or "produced no result"
            emit("node.failed", {"error": message, "attempts": attempts})
            branch = "error" if node.spec.on_error == "branch" else None
            return StepRecord(
                0, node_id, trigger, "error", branch, inputs, {"error": message}, {}, message,
                started, finished, attempts,
            )  # fmt: skip
        updates = self._var_updates(node, result.outputs)
        emit(
            "node.output",
            {"outputs": result.outputs, "branch": result.branch, "elapsed_s": round(finished - started, 6)},
        )
        return StepRecord(
            0, node_id, trigger, "ok", result.branch, inputs, result.outputs, updates, None,
            started, finished, attempts,
        )  # fmt: skip

    def _resolve(self, node: CompiledNode) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, binding in node.bindings.items():
            if binding.kind == "literal":
                value = binding.value
            elif binding.kind == "struct":
                value = self._fill(binding.value)
            elif binding.kind == "inputs":
                value = self.inputs.get(binding.name)
            elif binding.kind == "vars":
                value = self.vars.get(binding.name)
            else:
                outputs = self.outputs.get(binding.name)
                if outputs is None:
                    value = None
                else:
                    value = outputs if binding.port is None else outputs.get(binding.port)
            port = node.ports.get(name)
            if value is None and port is not None:
                if port.default is not None:
                    value = _copy(port.default)
                elif port.required:
                    where = f"${binding.name}" + (f".{binding.port}" if binding.port else "")
                    raise NodeFailure(f"input {name!r} ({where}) has no value yet")
            if value is not None and port is not None and not check_value(value, port.type):
                raise NodeFailure(f"input {name!r} must be {port.type}, got {type(value).__name__}")
            values[name] = value
        for port in node.ports.values():
            if port.name not in values:
                values[port.name] = _copy(port.default)
        return values

    def _fill(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        ref = parse_reference(value)
        if ref is None:
            return literal(value)
        name, port = ref
        if name == "inputs":
            return self.inputs.get(port or "")
        if name == "vars":
            return self.vars.get(port or "")
        outputs = self.outputs.get(name) or {}
        return outputs if port is None else outputs.get(port)

    def _var_updates(self, node: CompiledNode, outputs: dict[str, Any]) -> dict[str, Any]:
        if not node.spec.set and not node.spec.append:
            return {}
        updates: dict[str, Any] = {}
        if node.spec.set:
            updates["set"] = {var: outputs.get(port) for var, port in node.spec.set.items()}
        if node.spec.append:
            updates["append"] = {var: outputs.get(port) for var, port in node.spec.append.items()}
        return updates


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value
