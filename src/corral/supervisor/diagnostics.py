"""The diagnostics bundle: what the supervisor knows about one failure — how a replica's process
ended, an agent run's failed step, or a cluster node's loss — with its log tail (or step trace),
memory (RSS and limit, the machine's free RAM), recent requests and its spec."""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from typing import Any

import psutil
from pydantic import BaseModel, Field

from corral.engine.replica import ReplicaSpec


class Memory(BaseModel):
    rss_bytes: int | None = None
    limit_bytes: int | None = None
    available_bytes: int = 0
    total_bytes: int = 0


class Bundle(BaseModel):
    """Everything reflection sees; stored inside the incident file."""

    target: str
    source: str = Field(description="replica | run | node")
    time: float = Field(default_factory=time.time)
    exit_code: int | None = None
    signal: str | None = None
    log_tail: str = ""
    memory: Memory = Memory()
    recent_requests: list[dict[str, Any]] = Field(default_factory=list)
    spec: dict[str, Any] = Field(default_factory=dict)
    crashes_in_window: int = 1
    detail: str = ""

    def summary(self) -> str:
        """The compact text reflection reads (a small model has a small context)."""
        ended = self.signal or (f"exit code {self.exit_code}" if self.exit_code is not None else "running")
        lines = [
            f"target: {self.target} ({self.source})",
            f"ended: {ended}; crashes in window: {self.crashes_in_window}",
            f"memory: rss={self.memory.rss_bytes} limit={self.memory.limit_bytes} "
            f"free={self.memory.available_bytes}",
        ]
        if self.source == "run" and self.spec:
            lines.append(
                f"workflow: {self.spec.get('workflow')}; status: {self.spec.get('status')}; "
                f"failed node: {self.spec.get('node') or 'none'}"
            )
        elif self.source == "node" and self.spec:
            lines.append(
                f"replicas it held: {', '.join(self.spec.get('replicas', [])) or 'none'}; "
                f"fit nowhere now: {', '.join(self.spec.get('unplaced', [])) or 'none'}"
            )
        elif self.spec:
            lines.append(
                f"context per slot: {self.spec.get('context_per_slot')}; slots: {self.spec.get('slots')}; "
                f"model: {self.spec.get('model')}"
            )
        if self.detail:
            lines.append(f"detail: {self.detail[:300]}")
        tail = [line for line in self.log_tail.splitlines() if line.strip()][-8:]
        if tail:
            lines.append("log tail:")
            lines += [line[:200] for line in tail]
        return "\n".join(lines)


def signal_name(returncode: int | None) -> str | None:
    """SIGKILL for -9 (asyncio's form) or 137 (a shell's), None for a plain exit code."""
    if returncode is None:
        return None
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if number <= 0:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def spec_json(spec: ReplicaSpec) -> dict[str, Any]:
    return {
        "expert": spec.expert,
        "index": spec.index,
        "model": spec.model.id,
        "slots": spec.slots,
        "context_per_slot": spec.context_per_slot,
        "threads": spec.threads,
        "memory_limit_bytes": spec.memory_limit_bytes,
        "extra_args": list(spec.extra_args),
    }


def machine_memory() -> tuple[int, int]:
    """(available, total) bytes of RAM on this machine."""
    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


def replica_bundle(
    spec: ReplicaSpec,
    returncode: int | None,
    log_tail: str,
    *,
    rss_bytes: int | None = None,
    recent_requests: Sequence[dict[str, Any]] = (),
    crashes_in_window: int = 1,
    detail: str = "",
) -> Bundle:
    available, total = machine_memory()
    return Bundle(
        target=spec.name,
        source="replica",
        exit_code=returncode,
        signal=signal_name(returncode),
        log_tail=log_tail,
        memory=Memory(
            rss_bytes=rss_bytes,
            limit_bytes=spec.memory_limit_bytes,
            available_bytes=available,
            total_bytes=total,
        ),
        recent_requests=list(recent_requests)[-10:],
        spec=spec_json(spec),
        crashes_in_window=crashes_in_window,
        detail=detail,
    )


def run_bundle(
    run_id: str,
    workflow: str,
    status: str,
    error: str,
    steps: Sequence[dict[str, Any]],
    *,
    failures_in_window: int = 1,
) -> Bundle:
    """An agent run that failed (or was cut off by a shutdown): its error, and its step trace as
    the log tail (node, status, error of each step, the failing one last)."""
    available, total = machine_memory()
    failed = next((s for s in reversed(steps) if s.get("status") == "error"), None)
    trace = [
        f"{s.get('seq')}. {s.get('node')}: {s.get('status')}" + (f" ({s['error']})" if s.get("error") else "")
        for s in steps[-12:]
    ]
    return Bundle(
        target=f"run/{run_id}",
        source="run",
        log_tail="\n".join(trace),
        memory=Memory(available_bytes=available, total_bytes=total),
        spec={
            "run_id": run_id,
            "workflow": workflow,
            "status": status,
            "node": failed.get("node") if failed else None,
        },
        crashes_in_window=failures_in_window,
        detail=error,
    )


def node_bundle(
    name: str,
    why: str,
    replicas: Sequence[str],
    moved: dict[str, str],
    unplaced: Sequence[str],
    info: dict[str, Any],
) -> Bundle:
    """A cluster node the head lost: why, the replicas it held, where the planner moved them
    and which fit nowhere now, and the node's last reported profile."""
    profile = info.get("profile", {})
    moves = ", ".join(f"{r} -> {n}" for r, n in sorted(moved.items())) or "none"
    return Bundle(
        target=f"node/{name}",
        source="node",
        memory=Memory(
            rss_bytes=info.get("rss_bytes"),
            available_bytes=int(profile.get("ram_available_bytes", 0)),
            total_bytes=int(profile.get("ram_total_bytes", 0)),
        ),
        spec={
            "node": name,
            "replicas": list(replicas),
            "moved": dict(moved),
            "unplaced": list(unplaced),
            "mac": info.get("mac"),
            "address": info.get("host"),
        },
        detail=f"node {name} {why}; moved: {moves}",
    )
