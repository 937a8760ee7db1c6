"""The placement planner: which node runs each replica of each expert, and why (pure logic).

Rules, in order: a node must have the expert's required CPU flags and its RAM (after the
cluster's reserve and what is already placed there); the always-loaded (fallback) experts go
first, onto the most reliable node; then bigger models before smaller ones, each replica onto the
fastest node that has room, preferring nodes that do not yet run that expert (spread, so losing
a machine loses one replica, not all). An expert that fits nowhere is listed with the reason per
node; the rest of the plan stands. Pooled experts are planned elsewhere and listed as skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_GIB = 1024**3
KEEP_SPEED_RATIO = 0.8  # a running replica moves only to a node at least 1/0.8 = 1.25x as fast


@dataclass(frozen=True)
class NodeCapacity:
    """What the planner knows about one node."""

    name: str
    ram_bytes: int  # available RAM when the node reported (before any corral replica)
    cores: int  # physical cores
    cpu_flags: frozenset[str]
    tokens_per_second: float | None = None  # measured decode speed on the bundled model
    reliability: float = 0.0  # higher is more reliable (the head, then longest up)


@dataclass(frozen=True)
class ExpertDemand:
    """What one expert asks of a node per replica."""

    name: str
    replicas: int
    need_bytes: int  # RAM of one replica: weights + KV cache + compute buffers
    requires: frozenset[str] = frozenset()
    always_loaded: bool = False
    threads: int | None = None  # fixed threads per replica; None: split the node's cores
    pooled: bool = False


@dataclass(frozen=True)
class Placement:
    expert: str
    index: int
    node: str
    threads: int
    need_bytes: int
    why: str


@dataclass(frozen=True)
class Unplaced:
    expert: str
    index: int
    reason: str


@dataclass
class Plan:
    placements: list[Placement] = field(default_factory=list)
    unplaced: list[Unplaced] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # expert -> why it is not planned here

    def on(self, node: str) -> list[Placement]:
        return [p for p in self.placements if p.node == node]

    def of(self, expert: str) -> list[Placement]:
        return [p for p in self.placements if p.expert == expert]

    def key(self) -> frozenset[tuple[str, int, str]]:
        """What must run where; two plans with the same key need no replica moved."""
        return frozenset((p.expert, p.index, p.node) for p in self.placements)


def _gib(n: int) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / 1024**2:.0f} MiB"


def _speed(node: NodeCapacity) -> float:
    # Unmeasured nodes rank by cores: a rough stand-in until calibration reports.
    return node.tokens_per_second if node.tokens_per_second else float(node.cores)


def plan(
    experts: Sequence[ExpertDemand],
    nodes: Iterable[NodeCapacity],
    *,
    reserve_bytes: int = 768 * 1024 * 1024,
    keep: Iterable[Placement] = (),
) -> Plan:
    """Place every replica of every expert on `nodes`.

    `keep` is the current placement: a replica already running on a node that still qualifies
    stays there unless a node that joined is clearly better for it (not yet running that expert,
    or at least 1.25x as fast): a reload costs seconds to minutes, so near-ties do not move.
    """
    pool = sorted(nodes, key=lambda n: n.name)
    free = {n.name: n.ram_bytes - reserve_bytes for n in pool}
    by_name = {n.name: n for n in pool}
    result = Plan()
    kept = {(p.expert, p.index): p.node for p in keep}
    order = sorted(experts, key=lambda e: (not e.always_loaded, -e.need_bytes, e.name))
    chosen: list[tuple[ExpertDemand, int, NodeCapacity, str]] = []
    for expert in order:
        if expert.pooled:
            result.skipped[expert.name] = "pooled: runs across nodes with llama.cpp RPC"
            continue
        placed_on: list[str] = []
        for index in range(expert.replicas):
            eligible = [n for n in pool if _why_not(expert, n, free[n.name]) is None]
            if not eligible:
                reasons = "; ".join(f"{n.name}: {_why_not(expert, n, free[n.name])}" for n in pool)
                result.unplaced.append(
                    Unplaced(expert.name, index, reasons or "no node has joined the cluster")
                )
                continue
            previous = by_name.get(kept.get((expert.name, index), ""))
            if expert.always_loaded and index == 0:
                node = max(eligible, key=lambda n: (n.reliability, _speed(n), n.name))
                why = "fallback: on the most reliable node"
            else:
                node = min(
                    eligible,
                    key=lambda n: (placed_on.count(n.name), -_speed(n), -free[n.name], n.name),
                )
                spread = "" if placed_on.count(node.name) == 0 else ", sharing (no other node fits)"
                why = f"fastest node with room ({_speed(node):.0f} tok/s){spread}"
            if (
                previous is not None
                and previous in eligible
                and _still_good(previous, node, placed_on, expert)
            ):
                node, why = previous, "already running here"
            free[node.name] -= expert.need_bytes
            placed_on.append(node.name)
            chosen.append((expert, index, node, why))
    per_node = {name: sum(1 for _, _, n, _ in chosen if n.name == name) for name in by_name}
    for expert, index, node, why in chosen:
        threads = expert.threads or max(1, node.cores // max(1, per_node[node.name]))
        result.placements.append(Placement(expert.name, index, node.name, threads, expert.need_bytes, why))
    result.placements.sort(key=lambda p: (p.expert, p.index))
    return result


def _still_good(
    previous: NodeCapacity, best: NodeCapacity, placed_on: list[str], expert: ExpertDemand
) -> bool:
    """Keep a running replica where it is unless moving it gains something clear: a node that
    does not yet run the expert (spread), a much faster node, or (fallback) a more reliable one."""
    if previous.name == best.name:
        return True
    if expert.always_loaded and previous.reliability < best.reliability:
        return False
    if placed_on.count(previous.name) > placed_on.count(best.name):
        return False
    return _speed(previous) >= KEEP_SPEED_RATIO * _speed(best)


def _why_not(expert: ExpertDemand, node: NodeCapacity, free: int) -> str | None:
    missing = sorted(expert.requires - node.cpu_flags)
    if missing:
        return f"lacks CPU flag {', '.join(missing)}"
    if expert.need_bytes > free:
        return f"needs {_gib(expert.need_bytes)}, {_gib(max(0, free))} free after the reserve"
    return None
