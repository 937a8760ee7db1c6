"""The Engine: owns every llama-server replica on this machine, keeps them healthy, restarts them.

It also watches configured remote OpenAI-compatible URLs, so a remote backend that failed a
request comes back into rotation once it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from corral.backends import HttpBackend
from corral.engine.binaries import EngineBinaries
from corral.engine.replica import Replica, ReplicaSpec
from corral.engine.stats import ReplicaMetrics, busy_slots, parse_metrics
from corral.tasks import TaskOwner

log = logging.getLogger("corral.engine")

MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0  # a replica up this long has its restart backoff reset
UNHEALTHY_RESTART_S = 30.0  # alive but failing /health this long: restart it


@dataclass
class ReplicaHealth:
    """Monitor bookkeeping for one replica (not read by the router)."""

    backoff_s: float = 1.0
    restarting: bool = False
    busy_slots: int = 0
    metrics: ReplicaMetrics = field(default_factory=ReplicaMetrics)
    ready_since: float = 0.0
    unhealthy_since: float = 0.0
    held: bool = False  # the supervisor heals it: the monitor neither restarts nor re-reports it


ExitHook = Callable[[Replica, int], bool]
"""Told of a replica's exit (its return code, negative for a signal); True means "I heal this one":
the Engine then leaves it down instead of restarting it. The supervisor is the one hook."""


class Engine:
    def __init__(
        self,
        binaries: EngineBinaries,
        log_dir: Path,
        client: httpx.AsyncClient,
        *,
        ready_timeout_s: float = 180.0,
        health_interval_s: float = 2.0,
    ) -> None:
        self.binaries = binaries
        self.log_dir = log_dir
        self.client = client
        self.ready_timeout_s = ready_timeout_s
        self.health_interval_s = health_interval_s
        self.replicas: list[Replica] = []
        self.remotes: list[HttpBackend] = []
        self.health: dict[str, ReplicaHealth] = {}
        self._tasks = TaskOwner()
        self._stopping = False
        self.on_exit: ExitHook | None = None

    def add(self, spec: ReplicaSpec) -> Replica:
        replica = spec.process(self.binaries, self.log_dir)
        self.replicas.append(replica)
        self.health[spec.name] = ReplicaHealth()
        return replica

    async def start(self, replicas: Iterable[Replica] | None = None) -> list[Replica]:
        """Start replicas concurrently; return those that failed to become ready."""
        targets = list(self.replicas if replicas is None else replicas)
        await asyncio.gather(*(r.start() for r in targets))
        ready = await asyncio.gather(*(r.wait_ready(self.client, self.ready_timeout_s) for r in targets))
        now = time.monotonic()
        for replica, ok in zip(targets, ready, strict=True):
            if ok:
                self.health[replica.spec.name].ready_since = now
        return [r for r, ok in zip(targets, ready, strict=True) if not ok]

    def watch_remote(self, backend: HttpBackend) -> None:
        self.remotes.append(backend)

    def start_in_background(self) -> None:
        """Start every replica, then watch them; returns at once."""

        async def start_then_watch() -> None:
            failed = await self.start()
            for replica in failed:
                log.error("replica %s did not start:\n%s", replica.spec.name, replica.log_tail())
            ready = sum(1 for r in self.replicas if r.state.healthy)
            log.info("ready: %d of %d replicas serving", ready, len(self.replicas))
            self.start_monitor()

        self._tasks.spawn(start_then_watch(), name="engine-start")

    def start_monitor(self) -> None:
        self._tasks.spawn(self._monitor(), name="engine-monitor")

    async def stop(self) -> None:
        self._stopping = True
        await self._tasks.close()
        await asyncio.gather(*(r.stop() for r in self.replicas))

    def replace_spec(self, replica: Replica, spec: ReplicaSpec) -> None:
        """Give a replica new settings (the supervisor's healing); they apply at its next start."""
        if spec.name != replica.spec.name:
            raise ValueError(f"a spec for {spec.name} cannot replace {replica.spec.name}'s")
        replica.spec = spec

    def release(self, replica: Replica) -> None:
        """The supervisor gives a held replica back: the monitor restarts it as usual."""
        self.health[replica.spec.name].held = False

    async def restart(self, replica: Replica, reason: str) -> bool:
        """Stop (if needed) and start one replica; True when it came back ready."""
        health = self.health[replica.spec.name]
        if health.restarting or self._stopping:
            return False
        health.restarting = True
        health.held = False
        try:
            log.warning("restarting %s: %s", replica.spec.name, reason)
            replica.state.restarts += 1
            await replica.stop(grace_s=2.0)
            await asyncio.sleep(health.backoff_s)
            health.backoff_s = min(MAX_BACKOFF_S, health.backoff_s * 2)
            await replica.start()
            ok = await replica.wait_ready(self.client, self.ready_timeout_s)
            if ok:
                health.ready_since = time.monotonic()
            return ok
        finally:
            health.restarting = False

    async def _monitor(self) -> None:
        while not self._stopping:
            await asyncio.gather(
                *(self._check(r) for r in self.replicas),
                *(self._check_remote(b) for b in self.remotes if not b.state.healthy),
            )
            await asyncio.sleep(self.health_interval_s)

    async def _check(self, replica: Replica) -> None:
        health = self.health[replica.spec.name]
        if health.restarting or health.held:
            return
        process = replica.process
        if process is not None and process.returncode is not None:
            replica.state.set_status("crashed", error=f"exit code {process.returncode}\n{replica.log_tail()}")
            if self.on_exit is not None and self.on_exit(replica, process.returncode):
                health.held = True
                return
            self._tasks.spawn(
                self.restart(replica, f"exited with code {process.returncode}"),
                name=f"restart-{replica.spec.name}",
            )
            return
        healthy = await replica.probe(self.client)
        now = time.monotonic()
        if healthy and not replica.state.healthy:
            replica.state.set_status("ready")
        elif not healthy and replica.state.healthy:
            replica.state.set_status("unhealthy", error="health check failed")
        if not healthy:
            health.unhealthy_since = health.unhealthy_since or now
            if now - health.unhealthy_since > UNHEALTHY_RESTART_S:
                health.unhealthy_since = 0.0
                self._tasks.spawn(
                    self.restart(replica, f"failed /health for {UNHEALTHY_RESTART_S:.0f}s"),
                    name=f"restart-{replica.spec.name}",
                )
            return
        health.unhealthy_since = 0.0
        if healthy:
            if time.monotonic() - health.ready_since > STABLE_AFTER_S:
                health.backoff_s = 1.0
            await self._read_stats(replica, health)

    async def _check_remote(self, backend: HttpBackend) -> None:
        try:
            response = await backend.get("/v1/models")
        except httpx.TransportError:
            return
        if response.status_code < 500:
            backend.state.set_status("remote")

    async def _read_stats(self, replica: Replica, health: ReplicaHealth) -> None:
        with contextlib.suppress(httpx.TransportError, ValueError):
            slots = await self.client.get(replica.url + "/slots", timeout=2.0)
            if slots.status_code == 200:
                health.busy_slots, total = busy_slots(slots.json())
                if total:
                    replica.state.slots = total
            metrics = await self.client.get(replica.url + "/metrics", timeout=2.0)
            if metrics.status_code == 200:
                health.metrics = parse_metrics(metrics.text)
                tps = health.metrics.predicted_tokens_per_second
                if tps > 0 and not replica.state.measured:
                    replica.state.seconds_per_token = 1.0 / tps
