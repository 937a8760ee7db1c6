"""Prometheus metrics of the agent — runs by workflow and outcome, node durations by node type,
tool calls by tool and outcome — kept from the event bus, so no counter lives in the runner or the
nodes. One subscriber (without token events) reads the bus for as long as the agent runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from corral.agent.events import Event, EventBus

_NODE_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_RUN_END = {"run.finished": "succeeded", "run.failed": "failed", "run.cancelled": "cancelled"}
BUS_QUEUE = 10_000  # events buffered for the metrics reader (token events are not sent to it)


def tool_outcome(outputs: dict[str, Any]) -> str:
    """ok, error (the tool failed), denied (policy or person) or refused (bad call)."""
    decision = str(outputs.get("decision") or "auto")
    if decision in ("denied", "refused"):
        return decision
    return "ok" if outputs.get("ok") else "error"


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "corral_agent_runs",
            "Agent runs finished, by workflow and status (succeeded, failed, cancelled)",
            ["workflow", "status"],
            registry=registry,
        )
        self.active = Gauge(
            "corral_agent_active_runs", "Agent runs started and not finished", registry=registry
        )
        self.node_seconds = Histogram(
            "corral_agent_node_seconds",
            "Time one workflow node took (retries included), by node type",
            ["type"],
            buckets=_NODE_BUCKETS,
            registry=registry,
        )
        self.node_failures = Counter(
            "corral_agent_node_failures",
            "Workflow nodes that failed after their retries",
            ["type"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "corral_tool_calls",
            "Tool calls of the agent's tool nodes, by tool and outcome (ok, error, denied, refused)",
            ["tool", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "corral_agent_metrics_dropped_events",
            "Bus events the metrics reader fell too far behind to see",
            registry=registry,
        )
        self._runs: dict[str, str] = {}  # run id -> workflow
        self._nodes: dict[str, dict[str, tuple[str, float]]] = {}  # run id -> node id -> (type, started)

    def observe(self, event: Event) -> None:
        """Account for one bus event."""
        if event.dropped:
            self.dropped.inc(event.dropped)
        kind, data = event.type, event.data
        if kind == "run.started":
            self._runs[event.run_id] = str(data.get("workflow") or "unknown")
        elif kind in _RUN_END:
            workflow = self._runs.pop(event.run_id, "unknown")
            self._nodes.pop(event.run_id, None)
            self.runs.labels(workflow, _RUN_END[kind]).inc()
        elif kind == "node.started":
            node_type = str(data.get("type") or "unknown")
            self._nodes.setdefault(event.run_id, {})[event.node_id] = (node_type, event.ts)
        elif kind in ("node.output", "node.failed"):
            node_type, started = self._nodes.get(event.run_id, {}).pop(event.node_id, ("unknown", event.ts))
            elapsed = data.get("elapsed_s")
            seconds = float(elapsed) if isinstance(elapsed, int | float) else max(0.0, event.ts - started)
            self.node_seconds.labels(node_type).observe(seconds)
            if kind == "node.failed":
                self.node_failures.labels(node_type).inc()
            elif node_type == "tool":
                outputs = data.get("outputs") or {}
                step = outputs.get("step") or {}
                self.tool_calls.labels(str(step.get("tool") or "unknown"), tool_outcome(outputs)).inc()
        self.active.set(len(self._runs))

    async def follow(self, bus: EventBus) -> None:
        with bus.subscribe(tokens=False, maxsize=BUS_QUEUE) as events:
            async for event in events:
                self.observe(event)

    @contextlib.asynccontextmanager
    async def running(self, bus: EventBus) -> AsyncIterator[None]:
        """Read the bus in a task until the block ends."""
        task = asyncio.create_task(self.follow(bus), name="agent-metrics")
        await asyncio.sleep(0)  # subscribed before the first run can start
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
