"""The node agent: a Ray actor on each machine that reports its profile and runs its replicas.

One detached actor per Ray node (named after the node id, namespace `corral`), pinned to that
node. It runs llama-server replicas through the same Engine `corral up` uses on one machine, so
health checks and restarts are the engine's; the gateway talks to the replicas over HTTP and to
the agent only to start, stop and watch them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from corral.engine.binaries import locate
from corral.engine.manager import Engine
from corral.engine.replica import ReplicaSpec
from corral.hardware import NodeProfile, detect_profile, load_measured_speed
from corral.models.catalog import Catalog
from corral.paths import CorralPaths, default_home

NAMESPACE = "corral"


def agent_name(node_id: str) -> str:
    return f"agent-{node_id}"


def mac_address() -> str | None:
    """The MAC of the interface carrying this machine's first non-loopback IPv4 address."""
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    for name, entries in sorted(addrs.items()):
        if name == "lo" or not stats.get(name) or not stats[name].isup:
            continue
        has_ipv4 = any(e.family == socket.AF_INET for e in entries)
        mac = next((e.address for e in entries if e.family == psutil.AF_LINK), None)
        if has_ipv4 and mac and mac != "00:00:00:00:00:00":
            return mac.lower()
    return None


def profile_from_json(data: dict[str, Any]) -> NodeProfile:
    fields = dict(data)
    fields["cpu_flags"] = frozenset(fields.get("cpu_flags", ()))
    return NodeProfile(**fields)


class NodeAgent:
    """The actor's class (wrapped by `ray.remote` in `ensure_agent`)."""

    def __init__(
        self, home: str | None = None, profile: dict[str, Any] | None = None, mac: str | None = None
    ) -> None:
        self.paths = CorralPaths(Path(home) if home else default_home()).ensure()
        detected = profile_from_json(profile) if profile else detect_profile(self.paths.home)
        if detected.tokens_per_second is None:
            cached = _cached_speed(self.paths.profile_cache)
            if cached is not None:
                detected = detected.with_speed(cached)
        self.profile = detected
        self.mac = mac if mac is not None else mac_address()
        self.host = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        self.node_id = ray.get_runtime_context().get_node_id()
        self.started = time.time()
        self._engine: Engine | None = None
        self._catalog = Catalog(self.paths.models)
        self._locks: dict[str, asyncio.Lock] = {}

    def _engine_now(self) -> Engine:
        if self._engine is None:
            client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0), trust_env=False)
            self._engine = Engine(locate(self.paths.engine_libs), self.paths.logs, client)
            self._engine.start_monitor()
        return self._engine

    async def info(self) -> dict[str, Any]:
        """Profile, MAC, address and this agent's own memory, for the head's planner and status."""
        return {
            "node_id": self.node_id,
            "name": self.profile.hostname,
            "host": self.host,
            "mac": self.mac,
            "profile": self.profile.to_json(),
            "pid": os.getpid(),
            "rss_bytes": psutil.Process().memory_info().rss,
            "started": self.started,
        }

    async def calibrate(self, model: str) -> float:
        """Measure (or read the cached) decode speed of `model` here; later info() reports it."""
        from corral.engine.calibrate import measure_tokens_per_second

        entry = await asyncio.to_thread(self._catalog.resolve, model)
        binaries = locate(self.paths.engine_libs)
        tps = await measure_tokens_per_second(
            binaries, entry, self.profile, self.paths.logs, self.paths.profile_cache
        )
        self.profile = self.profile.with_speed(tps)
        return tps

    async def start_replica(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Start one replica (`spec` names the model by catalog id or path); wait until it is
        ready. Returns its URL, or raises with the log's tail when it did not come up."""
        engine = self._engine_now()
        name = f"{spec['expert']}/{spec['index']}"
        async with self._locks.setdefault(name, asyncio.Lock()):  # one start per replica at a time
            entry = await asyncio.to_thread(self._catalog.resolve, spec["model"])
            wanted = ReplicaSpec(
                expert=spec["expert"],
                index=int(spec["index"]),
                model=entry,
                slots=int(spec["slots"]),
                context_per_slot=int(spec["context"]),
                threads=int(spec["threads"]),
                embedding=bool(spec.get("embedding")),
                extra_args=tuple(spec.get("extra_args", ())),
                host=self.host,
            )
            running = next((r for r in engine.replicas if r.spec.name == name), None)
            if running is not None and running.spec == wanted and running.state.healthy:
                return {"url": running.url, "pid": running.pid, "log": str(running.log_path)}  # asked again
            await self.stop_replica(name)
            replica = engine.add(wanted)
            engine.ready_timeout_s = float(spec.get("ready_timeout_s", 180.0))
            failed = await engine.start([replica])
        if failed:
            raise RuntimeError(
                f"replica {name} on {self.profile.hostname} did not start:\n{replica.log_tail()}"
            )
        return {"url": replica.url, "pid": replica.pid, "log": str(replica.log_path)}

    async def stop_replica(self, name: str) -> None:
        engine = self._engine
        if engine is None:
            return
        for replica in [r for r in engine.replicas if r.spec.name == name]:
            engine.replicas.remove(replica)
            health = engine.health.get(name)
            if health is not None:
                health.restarting = True  # a health check already under way must not revive it
            await replica.stop(grace_s=2.0)
            engine.health.pop(name, None)

    async def stop_all(self) -> None:
        if self._engine is not None:
            for replica in list(self._engine.replicas):
                await self.stop_replica(replica.spec.name)

    async def states(self) -> dict[str, dict[str, Any]]:
        """Each replica's engine-side health: status, slots, restarts, last error."""
        if self._engine is None:
            return {}
        return {
            r.spec.name: {
                "status": r.state.status,
                "slots": r.state.slots,
                "restarts": r.state.restarts,
                "last_error": r.state.last_error[-300:],
                "url": r.url,
                "pid": r.pid,
                "rss_bytes": _rss(r.pid),
            }
            for r in self._engine.replicas
        }

    async def sleep(self, command: list[str]) -> str:
        """Stop the replicas, then run the configured sleep command here; its output back."""
        await self.stop_all()
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        if process.returncode:
            raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}: {out.decode()[-300:]}")
        return out.decode()


def _cached_speed(cache: Path) -> float | None:
    """A speed `corral up` or an earlier calibration measured on this machine (any engine build)."""
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    return load_measured_speed(cache, str(data.get("fingerprint", "")) if isinstance(data, dict) else "")


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


NodeAgentActor = ray.remote(num_cpus=0, max_restarts=0)(NodeAgent)


def ensure_agent(
    node_id: str, *, home: str | None = None, profile: dict[str, Any] | None = None, mac: str | None = None
) -> Any:
    """The agent on `node_id`, started there (detached, pinned to the node) if it is not yet."""
    return NodeAgentActor.options(
        name=agent_name(node_id),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote(home, profile, mac)
