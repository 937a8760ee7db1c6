"""RayRegistry: the gateway's Registry seam over a Ray cluster, following it live.

A reconcile loop (every `interval_s`) reads the alive Ray nodes, makes sure each runs a node
agent, re-plans when a node joined or left (the planner keeps what already runs), starts and
stops replicas through the agents, copies each replica's engine-side health into the backend the
router reads, and applies the power policy. A node that leaves drops its backends at once: the
proxy's failover sends its unstarted requests to the other replicas, and the next plan re-places
its experts. Requests for an expert only a sleeping node could serve are held (`hold`) while the
node is woken with Wake-on-LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from prometheus_client import CollectorRegistry, Gauge

from corral.backends import Backend, BackendState, HttpBackend
from corral.cluster.agent import NAMESPACE, agent_name, ensure_agent
from corral.cluster.planner import ExpertDemand, NodeCapacity, Placement, Plan, plan
from corral.cluster.power import POWER_STATES, NodePower, resolve_mac, send_wake, to_sleep
from corral.cluster.settings import ClusterConfig
from corral.paths import atomic_write_text
from corral.tasks import TaskOwner

log = logging.getLogger("corral.cluster")

AGENT_CALL_TIMEOUT_S = 10.0
INFO_REFRESH_S = 15.0  # how often a node's report (measured speed, agent RSS) is read again
AGENT_GRACE_S = 30.0  # a new node without an agent this long gets one started by the head
RETIRE_DRAIN_S = 120.0  # a moved replica's old copy finishes the requests it holds for at most this long


@dataclass(frozen=True)
class ReplicaTemplate:
    """How to start a replica of one expert on any node (threads come from the plan)."""

    model: str  # catalog id or GGUF path, resolved by the agent on its node
    model_id: str
    slots: int
    context: int
    embedding: bool = False
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class NodeLoss:
    """A node the head lost (not one it put to sleep), told to the supervisor after the re-plan:
    the replicas it held, where they went, which fit nowhere now, and its last profile."""

    name: str
    why: str
    replicas: tuple[str, ...]
    moved: dict[str, str]
    unplaced: tuple[str, ...]
    info: dict[str, Any]


@dataclass
class NodeRecord:
    name: str
    node_id: str
    handle: Any  # the agent's ActorHandle
    info: dict[str, Any]
    state: str = "awake"  # awake | sleeping | waking | lost
    idle_since: float | None = field(default_factory=time.monotonic)
    woken_at: float = 0.0
    info_at: float = field(default_factory=time.monotonic)

    def capacity(self, head_node_id: str | None) -> NodeCapacity:
        p = self.info["profile"]
        # The head first (it runs the gateway: if it is down nothing serves), then longest up.
        started = float(self.info.get("started", 0.0))
        return NodeCapacity(
            name=self.name,
            ram_bytes=int(p["ram_available_bytes"]),
            cores=int(p["cores_physical"]),
            cpu_flags=frozenset(p["cpu_flags"]),
            tokens_per_second=p.get("tokens_per_second"),
            reliability=float("inf") if self.node_id == head_node_id else -started,
        )


class RayRegistry:
    """Backends on the cluster's nodes; `start()` runs the reconcile loop in the app's loop."""

    def __init__(
        self,
        demands: Sequence[ExpertDemand],
        templates: dict[str, ReplicaTemplate],
        client: httpx.AsyncClient,
        config: ClusterConfig,
        *,
        head_node_id: str | None = None,
        interval_s: float = 1.0,
        state_file: Path | None = None,
    ) -> None:
        self.demands = list(demands)
        self.templates = templates
        self.client = client
        self.config = config
        self.head_node_id = head_node_id
        self.interval_s = interval_s
        self.state_file = state_file  # the sleeping nodes, so a restarted head can still wake them
        self._saved: dict[str, str] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.plan = Plan()
        self._remotes: list[Backend] = []
        self._backends: dict[tuple[str, int], HttpBackend] = {}
        self._where: dict[str, str] = {}  # backend name -> node name
        # A replica moving to a better node keeps serving where it was until its successor is
        # ready (make before break): the old backend and its placement, by (expert, index).
        self._moving: dict[tuple[str, int], tuple[HttpBackend, Placement]] = {}
        self._tasks = TaskOwner()
        self._stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._first_seen: dict[str, float] = {}
        self._power_gauge: Gauge | None = None
        self._nodes_gauge: Gauge | None = None
        self.on_node_lost: Callable[[NodeLoss], object] | None = None  # the supervisor's hook
        self._losses: list[tuple[NodeRecord, str, tuple[str, ...]]] = []  # told after the re-plan

    # The Registry seam ---------------------------------------------------------------------

    def add(self, backend: Backend) -> None:
        """A static backend (a configured remote URL) served beside the cluster's replicas."""
        self._remotes.append(backend)

    def backends(self, expert: str) -> Sequence[Backend]:
        mine = [b for (e, _), b in sorted(self._backends.items()) if e == expert]
        leaving = [b for (e, _), (b, _) in sorted(self._moving.items()) if e == expert]
        return [*mine, *leaving, *(b for b in self._remotes if b.expert == expert)]

    def all(self) -> Sequence[Backend]:
        leaving = [b for _, (b, _) in sorted(self._moving.items())]
        return [*(b for _, b in sorted(self._backends.items())), *leaving, *self._remotes]

    # Lifecycle -----------------------------------------------------------------------------

    def bind_metrics(self, registry: CollectorRegistry) -> None:
        self._power_gauge = Gauge(
            "corral_node_power_state",
            "Power state of a cluster node: 1 awake, 0 sleeping, 2 waking, -1 lost",
            ["node"],
            registry=registry,
        )
        self._nodes_gauge = Gauge(
            "corral_cluster_nodes", "Cluster nodes awake and serving", registry=registry
        )

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # for callers on other threads (CLI, tests)
        self._load_sleepers()
        self._tasks.spawn(self._loop(), name="cluster-reconcile")

    async def stop(self) -> None:
        self._stopping = True
        await self._tasks.close()
        for record in self.nodes.values():
            if record.state == "awake":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(record.handle.stop_all.remote(), AGENT_CALL_TIMEOUT_S)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.reconcile()
            except Exception:  # one bad pass must not stop the cluster following itself
                log.exception("cluster reconcile failed; trying again")
            await asyncio.sleep(self.interval_s)

    # Reconcile -----------------------------------------------------------------------------

    async def reconcile(self) -> None:
        alive = await asyncio.to_thread(_alive_nodes)
        # A node put to sleep stays alive in Ray until it actually sleeps; it comes back (woken)
        # under a new node id, so only ids never seen are adopted.
        known = {r.node_id for r in self.nodes.values() if r.state != "lost"}
        for node_id in alive:
            if node_id not in known:
                await self._adopt(node_id)
        for record in list(self.nodes.values()):
            if record.state == "awake" and record.node_id not in alive:
                self._lose(record, "left the cluster")
        await self._sync_states()
        self._replan()
        self._finish_moves()
        self._tell_losses()
        self._apply_power()
        self._export()
        self._save_sleepers()

    async def _adopt(self, node_id: str) -> None:
        first_seen = self._first_seen.setdefault(node_id, time.monotonic())
        try:
            handle = await asyncio.to_thread(_existing_agent, node_id)
            if handle is None:
                if time.monotonic() - first_seen < AGENT_GRACE_S:
                    return  # `corral join` starts it with its own home and profile; give it time
                handle = await asyncio.to_thread(ensure_agent, node_id)  # a bare `ray start` node
            info = await asyncio.wait_for(handle.info.remote(), AGENT_CALL_TIMEOUT_S * 3)
        except Exception as exc:
            log.warning("node %s: its agent did not answer (%s); retrying next pass", node_id[:8], exc)
            return
        for record in self.nodes.values():
            if record.node_id == node_id and record.state == "lost":  # it answers again
                record.handle, record.info, record.state = handle, info, "awake"
                log.info("node %s answers again", record.name)
                return
        name = str(info["name"])
        same = self.nodes.get(name)
        if same is not None and same.state == "awake" and same.node_id != node_id:
            name = f"{name}-{node_id[:6]}"
        previous = self.nodes.get(name)
        record = NodeRecord(name, node_id, handle, info)
        if previous is not None and previous.state in ("sleeping", "waking", "lost"):
            log.info("node %s is back (%s before)", name, previous.state)
        self.nodes[name] = record
        log.info("node %s joined: %s", name, _describe(info))

    def _lose(self, record: NodeRecord, why: str) -> None:
        record.state = "sleeping" if record.state == "sleeping" else "lost"
        if record.state == "lost":
            log.warning("node %s %s: its replicas are re-placed", record.name, why)
            held = tuple(f"{p.expert}/{p.index}" for p in self.plan.on(record.name))
            self._losses.append((record, why, held))
        for key, backend in list(self._backends.items()):
            if self._where.get(backend.name) == record.name:
                backend.state.set_status("lost", error=f"node {record.name} {why}")
                del self._backends[key]
        for key, (backend, placement) in list(self._moving.items()):
            if placement.node == record.name:
                backend.state.set_status("lost", error=f"node {record.name} {why}")
                del self._moving[key]
        self.plan = Plan(
            [p for p in self.plan.placements if p.node != record.name], self.plan.unplaced, self.plan.skipped
        )

    def _tell_losses(self) -> None:
        losses, self._losses = self._losses, []
        if self.on_node_lost is None:
            return
        where = {f"{p.expert}/{p.index}": p.node for p in self.plan.placements}
        unplaced = {f"{u.expert}/{u.index}" for u in self.plan.unplaced}
        for record, why, held in losses:
            moved = {r: where[r] for r in held if r in where}
            loss = NodeLoss(
                record.name, why, held, moved, tuple(r for r in held if r in unplaced), record.info
            )
            try:
                self.on_node_lost(loss)
            except Exception:  # the supervisor's trouble must not stop the cluster following itself
                log.exception("telling the supervisor that node %s was lost failed", record.name)

    def _save_sleepers(self) -> None:
        """Remember the nodes asleep (or being woken): they are not in Ray, and a head restarted
        meanwhile must still know their experts, profiles and MACs to wake them on demand."""
        states = {name: r.state for name, r in self.nodes.items()}
        if self.state_file is None or states == self._saved:
            return
        asleep = {
            name: {"node_id": r.node_id, "info": r.info, "state": r.state}
            for name, r in self.nodes.items()
            if r.state in ("sleeping", "waking")
        }
        try:
            atomic_write_text(self.state_file, json.dumps({"version": 1, "sleeping": asleep}, indent=1))
            self._saved = states
        except OSError as exc:
            log.warning("cannot save the sleeping nodes to %s (%s); a restarted head forgets them",
                        self.state_file, exc)  # fmt: skip

    def _load_sleepers(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            saved = json.loads(self.state_file.read_text())["sleeping"]
            for name, node in saved.items():
                if name not in self.nodes:
                    record = NodeRecord(
                        name, str(node["node_id"]), None, dict(node["info"]), state="sleeping"
                    )
                    record.idle_since = None
                    self.nodes[name] = record
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot read the sleeping nodes from %s (%s); starting without them",
                        self.state_file, exc)  # fmt: skip
            return
        if saved:
            log.info("asleep since before this start (woken on demand): %s", ", ".join(sorted(saved)))

    async def _sync_states(self) -> None:
        async def one(record: NodeRecord) -> None:
            try:
                states = await asyncio.wait_for(record.handle.states.remote(), AGENT_CALL_TIMEOUT_S)
                if time.monotonic() - record.info_at > INFO_REFRESH_S:  # speed measured since, RSS
                    record.info = await asyncio.wait_for(record.handle.info.remote(), AGENT_CALL_TIMEOUT_S)
                    record.info_at = time.monotonic()
            except ray.exceptions.RayActorError as exc:  # the agent (or its node) is gone
                self._lose(record, f"lost its agent ({type(exc).__name__})")
                return
            except Exception as exc:  # slow or busy (loading a model): ask again next pass
                log.debug("node %s: no state this pass (%s)", record.name, exc)
                return
            for (expert, index), backend in self._backends.items():
                if self._where.get(backend.name) != record.name:
                    continue
                state = states.get(f"{expert}/{index}")
                if state is None:
                    continue  # not started there yet
                if not backend.base_url:
                    if state["status"] != "ready":
                        continue  # still loading
                    backend.base_url = str(state["url"])  # the engine's restart revived it
                if state["status"] != backend.state.status:
                    backend.state.set_status(state["status"], error=state["last_error"])
                backend.state.restarts = int(state["restarts"])
                backend.state.slots = int(state["slots"])

        await asyncio.gather(*(one(r) for r in self.nodes.values() if r.state == "awake"))

    def capacities(self, *, including_asleep: bool = False) -> list[NodeCapacity]:
        wanted = ("awake", "sleeping", "waking") if including_asleep else ("awake",)
        return [r.capacity(self.head_node_id) for r in self.nodes.values() if r.state in wanted]

    def _replan(self) -> None:
        new = plan(
            self.demands,
            self.capacities(),
            reserve_bytes=self.config.reserve_bytes,
            keep=self.plan.placements,
        )
        old = {(p.expert, p.index): p for p in self.plan.placements}
        fresh = {(p.expert, p.index): p for p in new.placements}
        if new.key() != self.plan.key():
            log.info("plan: %s", ", ".join(f"{p.expert}/{p.index}@{p.node}" for p in new.placements))
        for u in new.unplaced:
            if u not in self.plan.unplaced:
                log.warning("expert %s replica %d fits no node: %s", u.expert, u.index, u.reason)
        self.plan = new
        for key, placement in old.items():
            if fresh.get(key) is None or fresh[key].node != placement.node:
                current = self._backends.get(key)
                serving = current is not None and current.state.healthy
                if fresh.get(key) is not None and serving and key not in self._moving:
                    assert current is not None
                    self._moving[key] = (current, placement)  # serves on until its successor is ready
                else:
                    self._tasks.spawn(self._stop_replica(placement), name=f"stop-{key}")
        for key, placement in fresh.items():
            moving = self._moving.get(key)
            if moving is not None and moving[1].node == placement.node:
                # Moved back before the move finished: keep the copy running there.
                successor = self._backends.get(key)
                if successor is not None and successor is not moving[0] and key in old:
                    self._tasks.spawn(self._stop_replica(old[key]), name=f"stop-{key}")
                del self._moving[key]
                self._backends[key] = moving[0]
                self._where[moving[0].name] = placement.node
                continue
            if key not in self._backends or self._where.get(self._backends[key].name) != placement.node:
                self._start_replica(placement)

    def _finish_moves(self) -> None:
        """Retire a moved replica's old copy once its successor serves (or the move is moot)."""
        for key, (backend, placement) in list(self._moving.items()):
            successor = self._backends.get(key)
            planned = next((p for p in self.plan.placements if (p.expert, p.index) == key), None)
            loading = successor is not None and not successor.state.healthy and planned is not None
            if loading and backend.state.healthy:
                continue  # the successor is loading: the old copy keeps serving
            del self._moving[key]
            backend.state.set_status("draining")  # no new requests; the ones it holds finish
            self._tasks.spawn(self._retire(backend, placement), name=f"retire-{key}")

    async def _retire(self, backend: HttpBackend, placement: Placement) -> None:
        deadline = time.monotonic() + RETIRE_DRAIN_S
        while backend.state.in_flight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        await self._stop_replica(placement)
        backend.state.set_status("stopped")
        log.info("replica %s/%d moved: its old copy on %s is stopped", placement.expert, placement.index,
                 placement.node)  # fmt: skip

    def _start_replica(self, placement: Placement) -> None:
        template = self.templates[placement.expert]
        key = (placement.expert, placement.index)
        name = f"{placement.expert}/{placement.index}"
        state = BackendState(slots=template.slots)
        backend = HttpBackend(name, placement.expert, template.model_id, "", self.client, state)
        self._backends[key] = backend
        self._where[name] = placement.node
        record = self.nodes[placement.node]
        spec = {
            "expert": placement.expert,
            "index": placement.index,
            "model": template.model,
            "slots": template.slots,
            "context": template.context,
            "threads": placement.threads,
            "embedding": template.embedding,
            "extra_args": list(template.extra_args),
            "ready_timeout_s": self.config.ready_timeout_s,
        }

        async def start() -> None:
            try:
                started = await asyncio.wait_for(
                    record.handle.start_replica.remote(spec), self.config.ready_timeout_s + 30
                )
            except Exception as exc:
                if self._backends.get(key) is backend:
                    state.set_status("crashed", error=f"on {record.name}: {exc}"[-500:])
                return
            if self._backends.get(key) is not backend:  # re-placed while it loaded
                with contextlib.suppress(Exception):
                    await record.handle.stop_replica.remote(name)
                return
            backend.base_url = str(started["url"]).rstrip("/")
            state.set_status("ready")
            log.info("replica %s ready on %s at %s", name, record.name, backend.base_url)

        self._tasks.spawn(start(), name=f"start-{name}")

    async def _stop_replica(self, placement: Placement) -> None:
        record = self.nodes.get(placement.node)
        if record is None or record.state != "awake":
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                record.handle.stop_replica.remote(f"{placement.expert}/{placement.index}"),
                AGENT_CALL_TIMEOUT_S,
            )

    # Power -----------------------------------------------------------------------------------

    def _essential(self, record: NodeRecord) -> bool:
        fallbacks = {d.name for d in self.demands if d.always_loaded}
        holds_fallback = any(p.expert in fallbacks for p in self.plan.on(record.name))
        return record.node_id == self.head_node_id or holds_fallback

    def _apply_power(self) -> None:
        now = time.monotonic()
        for record in self.nodes.values():
            busy = any(
                b.state.in_flight > 0
                for b in self._backends.values()
                if self._where.get(b.name) == record.name
            )
            if busy:
                record.idle_since = None
            elif record.idle_since is None:
                record.idle_since = now
        views = [NodePower(r.name, r.state, r.idle_since, self._essential(r)) for r in self.nodes.values()]
        for name in to_sleep(self.config.power, views, now):
            log.info("node %s idle for %.0fs with nothing pinned", name, self.config.power.idle_s)
            self._tasks.spawn(self.sleep_node(name), name=f"sleep-{name}")

    async def sleep_node(self, name: str) -> None:
        """Stop the node's replicas and run the sleep command on it; its experts are re-placed."""
        record = self.nodes[name]
        handle = record.handle
        record.state = "sleeping"
        self._lose(record, "was put to sleep")
        log.info("putting node %s to sleep (%s)", name, " ".join(self.config.power.sleep_command))
        try:
            await asyncio.wait_for(handle.sleep.remote(self.config.power.sleep_command), 60)
        except Exception as exc:
            log.warning("node %s: the sleep command failed (%s); it stays awake", name, exc)
            if record.state == "sleeping":
                record.state = "awake"
                record.idle_since = time.monotonic()

    def wake_target(self, expert: str) -> str | None:
        """The sleeping node a plan would put `expert` on, when no awake node can run it."""
        if self.plan.of(expert) or not any(d.name == expert for d in self.demands):
            return None
        wider = plan(
            self.demands,
            self.capacities(including_asleep=True),
            reserve_bytes=self.config.reserve_bytes,
            keep=self.plan.placements,
        )
        for placement in wider.of(expert):
            record = self.nodes.get(placement.node)
            if record is not None and record.state in ("sleeping", "waking"):
                return record.name
        return None

    def wake(self, target: str) -> tuple[str, str]:
        """Send Wake-on-LAN to a node (by name) or a MAC; (node name or "", MAC)."""
        reported = {name: r.info.get("mac") for name, r in self.nodes.items()}
        name, mac = resolve_mac(target, reported, self.config.power)
        send_wake(mac, self.config.power)
        record = self.nodes.get(name)
        if record is not None and record.state in ("sleeping", "lost", "waking"):
            record.state = "waking"
            record.woken_at = time.monotonic()
        log.info("sent Wake-on-LAN to %s (%s)", name or mac, mac)
        return name, mac

    async def hold(self, expert: str) -> bool:
        """Wait for `expert` to have a ready replica, waking the node it needs; False when none
        can be woken for it or it did not come up within the wake timeout (the caller falls back)."""
        node = self.wake_target(expert)
        if node is None:
            return False
        record = self.nodes[node]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.power.wake_timeout_s
        try:
            if record.state != "waking" or time.monotonic() - record.woken_at > 15:
                self.wake(node)
        except Exception as exc:
            log.warning("cannot wake %s for %s: %s", node, expert, exc)
            return False
        while loop.time() < deadline:
            if any(b.state.healthy for b in self.backends(expert)):
                return True
            await asyncio.sleep(0.2)
        log.warning(
            "node %s did not come back within %.0fs; %s falls back",
            node,
            self.config.power.wake_timeout_s,
            expert,
        )
        return False

    # Status ------------------------------------------------------------------------------------

    def node_of(self, backend_name: str) -> str | None:
        return self._where.get(backend_name)

    def replica_details(self, backend_name: str) -> dict[str, Any]:
        node = self._where.get(backend_name)
        backend = next((b for b in self._backends.values() if b.name == backend_name), None)
        if node is None or backend is None:
            return {}
        return {"node": node, "url": backend.base_url}

    def status(self) -> list[dict[str, Any]]:
        """Every node the cluster knows, for /api/status and the dashboard."""
        out = []
        for record in sorted(self.nodes.values(), key=lambda r: r.name):
            p = record.info["profile"]
            out.append({
                "name": record.name,
                "role": "head" if record.node_id == self.head_node_id else "worker",
                "cores": p["cores_logical"],
                "cores_physical": p["cores_physical"],
                "cpu_model": p["cpu_model"],
                "cpu_flags": sorted(p["cpu_flags"]),
                "memory_total": p["ram_total_bytes"],
                "memory_available": p["ram_available_bytes"],
                "load": [],
                "power": record.state,
                "mac": record.info.get("mac"),
                "address": record.info.get("host"),
                "agent_rss_bytes": record.info.get("rss_bytes"),
                "tokens_per_second": p.get("tokens_per_second"),
                "replicas": [f"{p.expert}/{p.index}" for p in self.plan.on(record.name)],
                "uptime_s": round(time.time() - float(record.info.get("started", time.time())), 1),
            })  # fmt: skip
        return out

    def _export(self) -> None:
        if self._power_gauge is not None and self._nodes_gauge is not None:
            for record in self.nodes.values():
                self._power_gauge.labels(record.name).set(POWER_STATES[record.state])
            self._nodes_gauge.set(sum(1 for r in self.nodes.values() if r.state == "awake"))


def _existing_agent(node_id: str) -> Any:
    try:
        return ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
    except ValueError:
        return None


def _alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # type: ignore[no-untyped-call]


def _describe(info: dict[str, Any]) -> str:
    p = info["profile"]
    tps = p.get("tokens_per_second")
    return (
        f"{p['cores_physical']} cores, {p['ram_total_bytes'] / 1024**3:.1f} GiB, "
        f"{' '.join(sorted(p['cpu_flags'])) or 'no SIMD flags'}, "
        f"{f'{tps:.1f} tok/s' if tps else 'speed not measured'}, MAC {info.get('mac') or 'unknown'}"
    )
