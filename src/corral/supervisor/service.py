"""The Supervisor: told of every replica exit by the Engine, every failed or interrupted agent
run by the agent's event bus, and every lost cluster node by the RayRegistry, it records an
incident with a diagnostics bundle, classifies it (rules first, then the reflect workflow), and
heals according to its mode — observe records, review waits for a human in Mission Control,
autonomous acts (a replica's settings and restart, a run's resume, a node's Wake-on-LAN).

How it relates to the Engine's own restarts: the Engine restarts any crashed replica with backoff,
which is right for a one-off crash, so the supervisor only records those. It takes over (the
Engine's ExitHook answers True and leaves the replica down) only in autonomous mode and only for
what a plain restart does not fix: a known signature (OOM kill, allocation failure, context that
does not fit) or crashes repeated within a window. Its own actions restart through the Engine's
`restart`, so there is one restart path, not two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from corral.engine.manager import Engine
from corral.engine.replica import Replica, ReplicaSpec
from corral.errors import BadRequestError, CorralError, NotFoundError
from corral.hardware import process_rss
from corral.models.catalog import ModelEntry
from corral.supervisor.actions import ActionRejected, HealingAction, Limits, Novel, action_json, parse_action
from corral.supervisor.diagnostics import Bundle, machine_memory, node_bundle, replica_bundle, run_bundle
from corral.supervisor.healing import Healer, Result
from corral.supervisor.incidents import Incident, IncidentStore, new_id
from corral.supervisor.metrics import SupervisorMetrics
from corral.supervisor.reflection import reflect
from corral.supervisor.rules import Verdict, classify
from corral.supervisor.settings import Mode, SupervisorConfig
from corral.tasks import TaskOwner

if TYPE_CHECKING:
    from corral.agent.events import Subscription
    from corral.agent.service import AgentService
    from corral.cluster.registry import NodeLoss, RayRegistry
    from corral.supervisor.adaptation import AdaptationManager

log = logging.getLogger("corral.supervisor")

RESUME_WAIT_S = 600.0  # how long a resumed run may take before its incident says "still running"


class ConflictError(BadRequestError):
    """An approve/reject of an incident that is not waiting for one."""

    status_code = 409
    code = "incident_not_pending"


class EngineTargets:
    """The healer's view of the Engine's replicas."""

    def __init__(self, engine: Engine, exits: Callable[[str], int]) -> None:
        self.engine = engine
        self._exits = exits

    def replica(self, name: str) -> Replica:
        for replica in self.engine.replicas:
            if replica.spec.name == name:
                return replica
        raise KeyError(name)

    def spec(self, name: str) -> ReplicaSpec:
        return self.replica(name).spec

    def apply(self, name: str, spec: ReplicaSpec) -> None:
        self.engine.replace_spec(self.replica(name), spec)

    async def restart(self, name: str, reason: str) -> bool:
        replica = self.replica(name)
        # the Engine's own restart is under way (a plain flag, no event to wait on): let it end
        while self.engine.health[name].restarting:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        return await self.engine.restart(replica, reason)

    def healthy(self, name: str) -> bool:
        return self.replica(name).state.healthy

    def exits(self, name: str) -> int:
        return self._exits(name)


class Supervisor:
    def __init__(
        self,
        settings: SupervisorConfig,
        home: Path,
        engine: Engine,
        *,
        agent: AgentService | None = None,
        registry: CollectorRegistry | None = None,
        resolve_model: Callable[[str], ModelEntry] | None = None,
        context: Callable[[str], list[dict[str, Any]]] = lambda target: [],
        adaptation: AdaptationManager | None = None,
        cluster: RayRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.agent = agent
        self.cluster = cluster
        self.context = context  # recent gateway activity about a replica, for the bundle
        self.adaptation = adaptation
        self.store = IncidentStore(home / "supervisor" / "incidents")
        self.metrics = SupervisorMetrics(registry)
        self.targets = EngineTargets(engine, self.exit_count)
        self.healer = Healer(self.targets, settings, self.limits, resolve_model)
        self._exits: dict[str, list[float]] = {}
        self._busy: set[str] = set()  # targets being healed: their exits belong to the healer
        self._resuming: set[str] = set()  # runs the healer resumed: a new failure is its verdict
        self._tasks = TaskOwner()
        engine.on_exit = self.on_exit
        if cluster is not None:
            cluster.on_node_lost = self.node_lost

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        interrupted = self.store.mark_interrupted()
        if interrupted:
            log.warning("%d incident(s) were being healed when corral stopped: %s", len(interrupted),
                        ", ".join(interrupted))  # fmt: skip
        if self.adaptation is not None:
            self.adaptation.resume(self._tasks)
        if self.agent is not None and self.agent.started:
            subscription = self.agent.bus.subscribe(tokens=False)
            self._tasks.spawn(self._watch_runs(subscription), name="supervisor-runs")
            for run_id in self.agent.interrupted:
                self.run_ended(run_id)

    async def stop(self) -> None:
        await self._tasks.close()

    def status(self) -> dict[str, Any]:
        incidents = self.store.list(limit=1000)
        s = self.settings
        return {
            "enabled": s.enabled,
            "mode": s.mode,
            "cooldown_s": s.cooldown_s,
            "max_actions_per_hour": s.max_actions_per_hour,
            "verify_s": s.verify_s,
            "failover_models": list(s.failover_models),
            "incidents": len(incidents),
            "proposed": sum(1 for i in incidents if i.status == "proposed"),
            "adaptation": s.adaptation.enabled,
        }

    def set_mode(self, mode: Mode) -> None:
        """Switch observe/review/autonomous until the next start (corral.yaml keeps the default)."""
        log.warning("supervisor mode: %s -> %s", self.settings.mode, mode)
        self.settings.mode = mode

    def limits(self) -> Limits:
        available, _ = machine_memory()
        return Limits(
            free_memory_bytes=available,
            max_memory_bytes=self.settings.max_memory_bytes,
            min_context=self.settings.min_context,
            failover_models=tuple(self.settings.failover_models),
        )

    def exit_count(self, target: str) -> int:
        return len(self._exits.get(target, []))

    # --- the Engine's hook ---------------------------------------------------------------------

    def on_exit(self, replica: Replica, returncode: int) -> bool:
        """Record the exit; True when the supervisor heals it (the Engine then leaves it down)."""
        name = replica.spec.name
        now = time.monotonic()
        self._exits.setdefault(name, []).append(now)
        if name in self._busy:
            return True  # the healer is verifying this one and sees the recurrence
        window = [t for t in self._exits[name] if now - t < self.settings.repeat_window_s]
        bundle = replica_bundle(
            replica.spec, returncode, replica.log_tail(self.settings.log_tail_lines),
            rss_bytes=process_rss(replica.pid), recent_requests=self._recent(replica),
            crashes_in_window=len(window),
        )  # fmt: skip
        verdict = classify(bundle, self.settings.repeat_threshold)
        incident = self.open(bundle, verdict)
        if not verdict.needs_healing:
            return False
        # Hold the replica down only when the rules already know the action: reflection needs a
        # model, and on a one-replica machine that model is the replica that just crashed.
        claim = self.settings.mode == "autonomous" and verdict.action is not None
        if claim:
            self._busy.add(name)
        self._tasks.spawn(self.handle(incident, verdict), name=f"incident-{incident.id}")
        return claim

    # --- runs and nodes ------------------------------------------------------------------------

    async def _watch_runs(self, subscription: Subscription) -> None:
        try:
            async for event in subscription:
                if event.type == "run.failed" and event.data.get("root_run", event.run_id) == event.run_id:
                    self.run_ended(event.run_id)
        finally:
            subscription.close()

    def run_ended(self, run_id: str) -> Incident | None:
        """A failed or interrupted agent run: record it, and resume it when the rules say a
        resume fixes it (a shutdown cut it off, its model was briefly unavailable)."""
        if self.agent is None or run_id in self._resuming:
            return None  # a run the healer resumed: the healer records how it ended
        record = self.agent.store.run(run_id)
        if record is None or record.parent_id or record.workflow == self.settings.reflection_workflow:
            return None  # a sub-run fails its parent, which is recorded; reflecting on reflection loops
        key = f"workflow/{record.workflow}"
        now = time.monotonic()
        self._exits.setdefault(key, []).append(now)
        window = [t for t in self._exits[key] if now - t < self.settings.repeat_window_s]
        steps = [step.to_json() for step in self.agent.store.steps(run_id)]
        bundle = run_bundle(run_id, record.workflow, record.status, record.error or "", steps,
                            failures_in_window=len(window))  # fmt: skip
        verdict = classify(bundle, self.settings.repeat_threshold)
        incident = self.open(bundle, verdict)
        if verdict.needs_healing:
            self._tasks.spawn(self.handle(incident, verdict), name=f"incident-{incident.id}")
        return incident

    def node_lost(self, loss: NodeLoss) -> Incident:
        """A node the cluster lost (not one put to sleep): recorded when its replicas found other
        nodes; brought back by Wake-on-LAN when some of its experts fit nowhere else."""
        bundle = node_bundle(loss.name, loss.why, loss.replicas, loss.moved, loss.unplaced, loss.info)
        verdict = classify(bundle, self.settings.repeat_threshold)
        incident = self.open(bundle, verdict)
        if verdict.needs_healing:
            self._tasks.spawn(self.handle(incident, verdict), name=f"incident-{incident.id}")
        return incident

    async def _resume(self, bundle: Bundle) -> Result:
        run_id = str(bundle.spec.get("run_id"))
        if self.agent is None or not self.agent.started:
            return Result("failed", "the agent runtime is not running")
        self._resuming.add(run_id)
        try:
            try:
                handle = self.agent.runner.resume(run_id)
            except CorralError as exc:
                return Result("failed", f"run {run_id} could not be resumed: {exc.message}")
            await asyncio.wait({handle.task}, timeout=RESUME_WAIT_S)
            record = self.agent.store.run(run_id)
            status = record.status if record is not None else "gone"
        finally:
            self._resuming.discard(run_id)
        if status == "succeeded":
            return Result("healed", f"run {run_id} was resumed and succeeded")
        if status in ("running", "waiting"):
            return Result("healed", f"run {run_id} was resumed and is {status}")
        error = record.error if record is not None else ""
        return Result("failed", f"run {run_id} was resumed and {status} again: {error}")

    async def _wake(self, bundle: Bundle) -> Result:
        name = str(bundle.spec.get("node"))
        cluster = self.cluster
        if cluster is None:
            return Result("failed", "corral is not running a cluster head")
        try:
            cluster.wake(name)
        except Exception as exc:
            return Result("failed", f"cannot wake node {name}: {exc}; or restore its services with "
                                    f"`corral provision --playbook heal --limit {name}`")  # fmt: skip
        loop = asyncio.get_running_loop()
        timeout = cluster.config.power.wake_timeout_s
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            record = cluster.nodes.get(name)
            if record is not None and record.state == "awake":
                return Result("healed", f"node {name} is back after Wake-on-LAN")
            await asyncio.sleep(1.0)
        return Result(
            "failed",
            f"node {name} did not come back within {timeout:.0f}s of Wake-on-LAN; check its power, "
            f"or run `corral provision --playbook heal --limit {name}`",
        )

    def _recent(self, replica: Replica) -> list[dict[str, Any]]:
        state = replica.state
        counts = {"in_flight": state.in_flight, "served": state.served, "failures": state.failures,
                  "restarts": state.restarts}  # fmt: skip
        return [{"backend": counts}, *self.context(replica.spec.name)]

    # --- incidents -----------------------------------------------------------------------------

    def open(self, bundle: Bundle, verdict: Verdict) -> Incident:
        incident = Incident(
            id=new_id(), kind=verdict.kind, target=bundle.target, bundle=bundle,
            mode=self.settings.mode, reason=verdict.reason,
            action=action_json(verdict.action) if verdict.action is not None else None,
            classified_by="rules" if verdict.action is not None else "none",
        )  # fmt: skip
        incident.note("opened", kind=verdict.kind, reason=verdict.reason)
        if not verdict.needs_healing:
            incident.note("recorded", reason=verdict.reason)
        self.store.save(incident)
        self.metrics.incidents.labels(verdict.kind).inc()
        log.warning("incident %s: %s on %s (%s)", incident.id, verdict.kind, bundle.target, verdict.reason)
        return incident

    async def handle(self, incident: Incident, verdict: Verdict) -> Incident:
        """Classify further when the rules could not, then record, propose or act by mode."""
        try:
            action = verdict.action
            if action is None:
                action = await self._reflect(incident)
            if action is None:
                incident.status = "unresolved"
                self.store.save(incident)
                return incident
            if isinstance(action, Novel):
                return await self._adapt(incident, action)
            if self.settings.mode == "observe":
                incident.status = "recorded"
                incident.note("observed", action=action.action, reason="observe mode: nothing is done")
                self.metrics.actions.labels(action.action, "observed").inc()
                self.store.save(incident)
                return incident
            if self.settings.mode == "review":
                incident.status = "proposed"
                incident.note("proposed", action=action.action)
                self.metrics.actions.labels(action.action, "proposed").inc()
                self.store.save(incident)
                return incident
            return await self.act(incident, action)
        finally:
            self._busy.discard(incident.target)
            self._hand_back(incident.target)

    async def _reflect(self, incident: Incident) -> HealingAction | None:
        if self.agent is None or not self.agent.started:
            incident.note("reflection_unavailable", reason="the agent runtime is not running")
            return None
        result = await reflect(
            self.agent, incident.bundle, workflow=self.settings.reflection_workflow,
            model=self.settings.reflection_model,
        )  # fmt: skip
        if result.action is None:
            incident.rejected_answers.append({"answer": result.answer, "reason": result.rejected,
                                              "run_id": result.run_id})  # fmt: skip
            incident.note("reflection_rejected", reason=result.rejected, run_id=result.run_id)
            self.metrics.actions.labels("invalid", "rejected").inc()
            return None
        incident.classified_by = "reflection"
        incident.action = action_json(result.action)
        incident.note("reflected", action=result.action.action, run_id=result.run_id)
        return result.action

    async def _adapt(self, incident: Incident, action: Novel) -> Incident:
        incident.status = "adapting" if self.adaptation is not None else "unresolved"
        incident.note("novel", description=action.description)
        self.store.save(incident)
        if self.adaptation is not None and self.settings.adaptation.enabled:
            self.adaptation.start(incident, self._tasks)
        return incident

    async def act(self, incident: Incident, action: HealingAction) -> Incident:
        target = incident.target
        self._busy.add(target)
        incident.status = "acting"
        incident.note("acting", action=action.action)
        self.store.save(incident)
        try:
            result = await self._heal(incident, action)
        except Exception as exc:  # the action itself broke: record it, do not lose the incident
            log.exception("healing %s on %s failed", action.action, target)
            result = Result("failed", f"{action.action} raised {type(exc).__name__}: {exc}")
        finally:
            self._busy.discard(target)
            self._hand_back(target)
        status = {"not_applicable": "failed"}.get(result.outcome, result.outcome)
        incident.status = status  # type: ignore[assignment]
        incident.outcome = result.detail
        incident.note(result.outcome, detail=result.detail, before=result.before, after=result.after)
        self.metrics.actions.labels(action.action, result.outcome).inc()
        self.store.save(incident)
        log.warning("incident %s: %s -> %s (%s)", incident.id, action.action, result.outcome, result.detail)
        return incident

    async def _heal(self, incident: Incident, action: HealingAction) -> Result:
        bundle = incident.bundle
        if bundle.source == "run":
            key = f"workflow/{bundle.spec.get('workflow')}"
            return await self.healer.restart_only(
                incident.target, action, lambda: self._resume(bundle), key=key
            )
        if bundle.source == "node":
            return await self.healer.restart_only(incident.target, action, lambda: self._wake(bundle))
        return await self.healer.heal(incident.target, action)

    def _hand_back(self, target: str) -> None:
        """A held replica that nobody is healing any more goes back to the Engine's restarts."""
        if target in self._busy:
            return
        replica = next((r for r in self.engine.replicas if r.spec.name == target), None)
        if replica is not None and self.engine.health[target].held:
            self.engine.release(replica)

    # --- review --------------------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        try:
            return self.store.get(incident_id)
        except KeyError:
            raise NotFoundError(
                f"no incident {incident_id!r}; GET /api/supervisor/incidents lists them"
            ) from None

    def approve(self, incident_id: str, *, by: str = "") -> Incident:
        incident = self.get(incident_id)
        if incident.status != "proposed" or incident.action is None:
            raise ConflictError(f"incident {incident_id} is {incident.status}, not waiting for approval")
        try:
            action = parse_action(incident.action)
        except ActionRejected as exc:
            raise ConflictError(f"incident {incident_id} holds no valid action: {exc}") from None
        incident.note("approved", by=by)
        incident.status = "acting"
        self.store.save(incident)
        self._tasks.spawn(self.act(incident, action), name=f"heal-{incident.id}")
        return incident

    def reject(self, incident_id: str, *, by: str = "", reason: str = "") -> Incident:
        incident = self.get(incident_id)
        if incident.status != "proposed":
            raise ConflictError(f"incident {incident_id} is {incident.status}, not waiting for approval")
        incident.status = "rejected"
        incident.note("rejected", by=by, reason=reason)
        action = (incident.action or {}).get("action", "unknown")
        self.metrics.actions.labels(str(action), "rejected").inc()
        self.store.save(incident)
        return incident


def build_supervisor(
    settings: SupervisorConfig,
    home: Path,
    engine: Engine,
    *,
    agent: AgentService | None,
    registry: CollectorRegistry | None,
    resolve_model: Callable[[str], ModelEntry] | None,
    logs: Callable[[], list[dict[str, Any]]] = list,
    cluster: RayRegistry | None = None,
) -> Supervisor | None:
    """The supervisor `corral up` runs (None when `supervisor.enabled` is false), with its
    adaptation manager when adaptation is on."""
    if not settings.enabled:
        return None
    from corral.supervisor.adaptation import AdaptationManager

    def context(target: str) -> list[dict[str, Any]]:
        """The gateway's recent log lines about this replica (retries, failures, restarts)."""
        lines = [line for line in logs() if target in str(line.get("message", ""))]
        return [{"log": line.get("message"), "ts": line.get("ts")} for line in lines[-5:]]

    adaptation = AdaptationManager(home, settings.adaptation, agent) if settings.adaptation.enabled else None
    return Supervisor(
        settings, home, engine, agent=agent, registry=registry, resolve_model=resolve_model,
        context=context, adaptation=adaptation, cluster=cluster,
    )  # fmt: skip
