"""The Supervisor over an Engine whose replicas are never started (restarts are scripted): the
three modes, the Engine hook, reflection through the real reflect workflow with the FakeLLM
(valid and out-of-schema answers), approve/reject over HTTP, metrics, and adaptation's files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from corral.agent.nodes.base import NodeFailure
from corral.agent.service import AgentService
from corral.agent.settings import AgentConfig
from corral.cluster.registry import NodeLoss
from corral.engine.binaries import EngineBinaries
from corral.engine.manager import Engine
from corral.engine.replica import Replica, ReplicaSpec
from corral.evolve.suites import load_suite
from corral.gateway.app import create_app
from corral.supervisor.adaptation import AdaptationManager, Record, keyword, paraphrase
from corral.supervisor.service import ConflictError, Supervisor
from corral.supervisor.settings import SupervisorConfig
from corral.testing import FakeLLM

NAME = "general/0"


class World:
    def __init__(self, tmp_path: Path, mode: str, llm: FakeLLM | None = None, **settings: Any) -> None:
        binaries = EngineBinaries(tmp_path / "bin", tmp_path / "lib", {})
        self.client = httpx.AsyncClient()
        self.engine = Engine(binaries, tmp_path / "logs", self.client)
        spec = ReplicaSpec("general", 0, SimpleNamespace(id="m"), 1, 2048, 2)  # type: ignore[arg-type]
        self.replica = self.engine.add(spec)
        self.restarts: list[str] = []
        self.engine.restart = self._restart  # type: ignore[method-assign]
        self.registry = CollectorRegistry()
        self.agent = None
        if llm is not None:
            self.agent = AgentService(
                AgentConfig(), tmp_path / "agent", llm, workflows_dir=tmp_path / "wf", memory=False
            )
        config = SupervisorConfig.model_validate({"mode": mode, "verify_s": 0.05, **settings})
        self.adaptation = AdaptationManager(tmp_path, config.adaptation, self.agent)
        self.supervisor = Supervisor(
            config,
            tmp_path,
            self.engine,
            agent=self.agent,
            registry=self.registry,
            adaptation=self.adaptation,
        )
        self.supervisor.healer.poll_s = 0.01

    async def _restart(self, replica: Replica, reason: str) -> bool:
        self.restarts.append(reason)
        self.engine.health[replica.spec.name].held = False
        replica.state.set_status("ready")
        return True

    def crash(self, returncode: int, log: str = "") -> bool:
        self.replica.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.replica.log_path.write_text(log)
        self.replica.state.set_status("crashed")
        claimed = self.supervisor.on_exit(self.replica, returncode)
        if claimed:
            self.engine.health[NAME].held = True  # what Engine._check does with a True
        return claimed

    async def settle(self) -> None:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if all(i.status not in ("acting", "verifying") for i in self.supervisor.store.list()) and not [
                t for t in asyncio.all_tasks() if t.get_name().startswith(("incident-", "heal-"))
            ]:
                return

    def only(self) -> Any:
        incidents = self.supervisor.store.list()
        assert len(incidents) == 1, incidents
        return incidents[0]


@pytest.fixture
async def started() -> AsyncIterator[list[World]]:
    worlds: list[World] = []
    yield worlds
    for world in worlds:
        await world.supervisor.stop()
        if world.agent is not None and world.agent.started:
            await world.agent.stop()
        await world.client.aclose()


async def test_observe_records_the_action_and_leaves_the_replica_to_the_engine(
    tmp_path: Path, started: list[World]
) -> None:
    world = World(tmp_path, "observe")
    started.append(world)
    assert world.crash(-9) is False  # the Engine restarts it as usual
    await world.settle()
    incident = world.only()
    assert (incident.kind, incident.status, incident.action["action"]) == (
        "oom_kill",
        "recorded",
        "reduce_context",
    )
    assert incident.bundle.signal == "SIGKILL" and incident.bundle.spec["context_per_slot"] == 2048
    assert world.restarts == [] and world.replica.spec.context_per_slot == 2048
    assert (tmp_path / "supervisor" / "incidents" / f"{incident.id}.json").is_file()


async def test_review_waits_for_approval_then_heals(tmp_path: Path, started: list[World]) -> None:
    world = World(tmp_path, "review")
    started.append(world)
    assert world.crash(-9) is False
    await world.settle()
    incident = world.only()
    assert incident.status == "proposed" and world.restarts == []
    world.supervisor.approve(incident.id, by="admin")
    await world.settle()
    healed = world.supervisor.get(incident.id)
    assert healed.status == "healed", healed.history
    assert world.replica.spec.context_per_slot == 1024
    assert [e.event for e in healed.history][-3:] == ["approved", "acting", "healed"]
    with pytest.raises(ConflictError):
        world.supervisor.approve(incident.id)


async def test_review_reject_changes_nothing(tmp_path: Path, started: list[World]) -> None:
    world = World(tmp_path, "review")
    started.append(world)
    world.crash(-9)
    await world.settle()
    incident = world.supervisor.reject(world.only().id, by="admin", reason="not now")
    assert incident.status == "rejected" and world.replica.spec.context_per_slot == 2048
    with pytest.raises(ConflictError):
        world.supervisor.reject(incident.id)


async def test_autonomous_holds_the_replica_heals_it_and_hands_it_back(
    tmp_path: Path, started: list[World]
) -> None:
    world = World(tmp_path, "autonomous")
    started.append(world)
    assert world.crash(1, "llama_kv_cache_init: failed to allocate buffer for kv cache\n") is True
    await world.settle()
    incident = world.only()
    assert (incident.kind, incident.status) == ("context_overflow", "healed"), incident.history
    assert world.replica.spec.context_per_slot == 1024 and not world.engine.health[NAME].held
    metrics = generate_latest(world.registry).decode()
    assert 'corral_supervisor_incidents_total{kind="context_overflow"} 1.0' in metrics
    assert 'corral_supervisor_actions_total{action="reduce_context",outcome="healed"} 1.0' in metrics


async def test_a_single_plain_crash_is_only_recorded(tmp_path: Path, started: list[World]) -> None:
    world = World(tmp_path, "autonomous")
    started.append(world)
    assert world.crash(1) is False
    await world.settle()
    assert world.only().status == "recorded" and world.restarts == []


async def test_reflection_answer_outside_the_schema_is_rejected_and_recorded(
    tmp_path: Path, started: list[World]
) -> None:
    llm = FakeLLM(default='{"action":"reboot_the_planet"}')
    world = World(tmp_path, "autonomous", llm, repeat_threshold=2)
    started.append(world)
    await world.agent.start()  # type: ignore[union-attr]
    world.crash(1)
    world.crash(1)  # repeated: the rules leave it to reflection
    await world.settle()
    incident = world.supervisor.store.list()[0]
    assert incident.kind == "repeated_crash" and incident.status == "unresolved", incident.history
    assert "unknown action 'reboot_the_planet'" in incident.rejected_answers[0]["reason"]
    assert world.restarts == [] and not world.engine.health[NAME].held  # back to the Engine
    request = llm.requests[0]
    assert request.grammar is not None and "repeated" not in request.grammar
    assert "crashes in window: 2" in request.messages[-1]["content"]


async def test_reflection_picks_a_valid_action_which_is_carried_out(
    tmp_path: Path, started: list[World]
) -> None:
    world = World(tmp_path, "autonomous", FakeLLM(default='{"action":"restart"}'), repeat_threshold=2)
    started.append(world)
    await world.agent.start()  # type: ignore[union-attr]
    world.crash(1)
    world.crash(1)
    await world.settle()
    incident = world.supervisor.store.list()[0]
    assert (incident.classified_by, incident.status) == ("reflection", "healed"), incident.history
    assert world.restarts == ["supervisor: restart"]


async def test_novel_writes_a_train_case_and_a_paraphrase(tmp_path: Path, started: list[World]) -> None:
    answer = '{"action":"novel","description":"the licence daemon refuses the replica"}'
    world = World(tmp_path, "autonomous", FakeLLM(default=answer), repeat_threshold=2)
    started.append(world)
    await world.agent.start()  # type: ignore[union-attr]
    log = "main: loading model\nfatal: licence daemon at /run/lic.sock refused the connection\n"
    world.crash(3, log)
    world.crash(3, log)
    await world.settle()
    record = None
    for _ in range(1000):  # the campaign (FakeLLM: quick) runs in the background
        record = world.adaptation.record(world.supervisor.store.list()[0].id)
        if record is not None and record.stage in ("promoted", "refused", "failed"):
            break
        await asyncio.sleep(0.02)
    incident = world.supervisor.store.list()[0]
    assert incident.action == {
        "action": "novel",
        "reason": "",
        "description": "the licence daemon refuses the replica",
    }
    files = sorted((tmp_path / "evolve" / "suites" / "reflection.d").glob("*.yaml"))
    assert [f.name for f in files] == [f"novel-{incident.id}-para.yaml", f"novel-{incident.id}.yaml"]
    case = yaml.safe_load(files[1].read_text())
    assert case["split"] == "train" and case["expect"] == [{"action": "novel"}, {"contains": "licence"}]
    assert "refused the connection" in case["input"]["diagnostics"]
    suite = load_suite(tmp_path, "reflection")  # the shipped suite and the new cases merge
    assert {c.id for c in suite.split("validation")} >= {f"novel-{incident.id}-para"}
    # the FakeLLM's mutations change nothing useful: the campaign ends without a better variant
    assert record is not None
    assert record.stage == "refused", record.history
    assert record.campaign["campaign"].startswith("c_reflection_") and record.campaign["metric_calls"] > 0
    assert [h["stage"] for h in record.history] == ["case_written", "campaign_running", "refused"]
    assert world.supervisor.get(incident.id).adaptation["stage"] == "refused"


async def test_a_campaign_that_cannot_run_is_recorded_as_failed(tmp_path: Path) -> None:
    suites = tmp_path / "evolve" / "suites"
    suites.mkdir(parents=True)
    (suites / "reflection.yaml").write_text("version: 1\nname: reflection\nrole: [oops\n")  # malformed
    manager = AdaptationManager(tmp_path, SupervisorConfig().adaptation, llm=FakeLLM())
    record = await manager.run(Record(incident="x", cases={"novel-x": "f"}))
    assert record.stage == "failed" and "reflection.yaml" in record.history[-1]["reason"]
    saved = manager.record("x")  # saved, even with no incident file to mirror into
    assert saved is not None and saved.stage == "failed"


def test_paraphrase_rewords_but_keeps_the_log() -> None:
    text = "target: general/0 (replica)\nended: exit code 3; crashes in window: 2\nlog tail:\nfatal: boom"
    out = paraphrase(text)
    assert out != text and "stopped with: exit code 3" in out and out.endswith("fatal: boom")
    assert out.splitlines()[0].startswith("stopped with")


def test_keyword_comes_from_the_error_line() -> None:
    log = "ok line\nERROR: quantum flux capacitor overheated"
    incident = SimpleNamespace(bundle=SimpleNamespace(log_tail=log, signal=None), action=None)
    assert keyword(incident) == "overheated"  # type: ignore[arg-type]
    incident.action = {"action": "novel", "description": "the capacitor broke"}
    assert keyword(incident) == "capacitor"  # type: ignore[arg-type]


async def test_approve_and_reject_over_http(tmp_path: Path, started: list[World]) -> None:
    from tests.unit.conftest import Harness

    world = World(tmp_path, "review")
    started.append(world)
    harness = Harness(tmp_path / "h")
    harness.gateway.supervisor = world.supervisor
    app = create_app(harness.gateway)
    world.crash(-9)
    await world.settle()
    incident = world.only()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        user = {"authorization": f"Bearer {harness.key}"}
        admin = {"authorization": f"Bearer {harness.admin}"}
        listed = (await http.get("/api/supervisor/incidents?status=proposed", headers=user)).json()
        assert [i["id"] for i in listed["incidents"]] == [incident.id]
        one = (await http.get(f"/api/supervisor/incidents/{incident.id}", headers=user)).json()
        assert one["bundle"]["signal"] == "SIGKILL"
        assert (await http.get("/api/supervisor", headers=user)).json()["proposed"] == 1
        mode = await http.put("/api/supervisor/mode", headers=admin, json={"mode": "sideways"})
        assert mode.status_code == 400 and "autonomous" in mode.text
        assert (
            await http.put("/api/supervisor/mode", headers=user, json={"mode": "observe"})
        ).status_code == 403
        assert (
            await http.post(f"/api/supervisor/incidents/{incident.id}/approve", headers=user)
        ).status_code == 403
        missing = await http.post("/api/supervisor/incidents/nope/approve", headers=admin)
        assert missing.status_code == 404 and "GET /api/supervisor/incidents" in missing.text
        bad = await http.post(
            f"/api/supervisor/incidents/{incident.id}/reject", headers=admin, content=b"{oops"
        )
        assert bad.status_code == 400
        ok = await http.post(f"/api/supervisor/incidents/{incident.id}/approve", headers=admin)
        assert ok.status_code == 200 and ok.json()["status"] == "acting"
        await world.settle()
        again = await http.post(f"/api/supervisor/incidents/{incident.id}/approve", headers=admin)
        assert again.status_code == 409 and "not waiting for approval" in again.text
    assert world.supervisor.get(incident.id).status == "healed"


async def test_a_stop_midway_leaves_a_readable_interrupted_incident(
    tmp_path: Path, started: list[World]
) -> None:
    world = World(tmp_path, "review")
    started.append(world)
    world.crash(-9)
    await world.settle()
    incident = world.only()
    incident.status = "acting"
    world.supervisor.store.save(incident)
    (world.supervisor.store.root / "garbage.json").write_text("{not json")
    await world.supervisor.start()
    assert world.supervisor.get(incident.id).status == "interrupted"
    assert [i.id for i in world.supervisor.store.list()] == [incident.id]  # the bad file is skipped


async def test_an_adaptation_cut_off_midway_resumes_at_the_next_start(tmp_path: Path) -> None:
    from corral.tasks import TaskOwner

    settings = SupervisorConfig().adaptation.model_copy(update={"generations": 1, "max_metric_calls": 6})
    first = AdaptationManager(tmp_path, settings, llm=FakeLLM(default='{"action":"restart"}', delay_s=0.05))
    record = Record(incident="cut", cases={"novel-cut": "f"})
    task = asyncio.create_task(first.run(record))
    for _ in range(500):  # wait until the campaign has started, then cut it off
        saved = first.record("cut")
        if saved is not None and saved.stage == "campaign_running":
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cut = first.record("cut")
    assert cut is not None and cut.stage == "campaign_running" and cut.history[-1]["interrupted"]

    tasks = TaskOwner()
    second = AdaptationManager(tmp_path, settings, llm=FakeLLM(default='{"action":"restart"}'))
    assert second.resume(tasks) == ["cut"]
    for _ in range(1000):
        done = second.record("cut")
        if done is not None and done.stage in ("promoted", "refused", "failed"):
            break
        await asyncio.sleep(0.02)
    await tasks.close()
    assert done is not None and done.stage == "refused", done.history
    assert any(h.get("resumed") for h in done.history)
    assert second.resume(TaskOwner()) == []  # finished records are not run again


ASK = """
version: 1
name: ask
inputs: {question: {type: string}}
nodes:
  answer: {type: llm, in: {prompt: $inputs.question}}
  out: {type: output, in: {answer: $answer.text}}
"""
UNAVAILABLE = NodeFailure(
    "the model call failed: every replica for 'general' and its fallbacks failed (general/0: ConnectError)"
)


async def run_world(tmp_path: Path, mode: str, llm: FakeLLM, started: list[World]) -> World:
    (tmp_path / "wf").mkdir(exist_ok=True)
    (tmp_path / "wf" / "ask.yaml").write_text(ASK)
    world = World(tmp_path, mode, llm)
    started.append(world)
    assert world.agent is not None
    await world.agent.start()
    await world.supervisor.start()  # subscribes to the agent's runs
    return world


async def test_a_run_failed_by_an_unavailable_model_is_resumed_and_succeeds(
    tmp_path: Path, started: list[World]
) -> None:
    world = await run_world(tmp_path, "autonomous", FakeLLM(replies=[UNAVAILABLE], default="Paris."), started)
    assert world.agent is not None
    record = await world.agent.start_run("ask", {"question": "capital of France?"}).result()
    assert record.status == "failed"
    await world.settle()
    incident = world.only()
    assert (incident.kind, incident.target, incident.status) == (
        "run_model_unavailable",
        f"run/{record.id}",
        "healed",
    )
    assert incident.bundle.spec["node"] == "answer" and "every replica" in incident.bundle.detail
    resumed = world.agent.store.run(record.id)
    assert resumed is not None and (resumed.status, resumed.outputs) == ("succeeded", {"answer": "Paris."})


async def test_a_single_run_failing_for_its_own_reasons_is_only_recorded(
    tmp_path: Path, started: list[World]
) -> None:
    llm = FakeLLM(replies=[NodeFailure("the model call failed: the prompt has 9000 tokens")], default="x")
    world = await run_world(tmp_path, "autonomous", llm, started)
    assert world.agent is not None
    record = await world.agent.start_run("ask", {"question": "q"}).result()
    await world.settle()
    incident = world.only()
    assert (incident.kind, incident.status, incident.action) == ("run_failed", "recorded", None)
    assert world.agent.store.run(record.id).status == "failed"  # type: ignore[union-attr]  # not resumed
    assert len(llm.requests) == 1  # no reflection for one failed run


async def test_a_run_cut_off_by_a_shutdown_is_proposed_for_resume_then_resumed_on_approval(
    tmp_path: Path, started: list[World]
) -> None:
    first = await run_world(tmp_path, "review", FakeLLM(default="slow answer " * 50, delay_s=0.05), started)
    assert first.agent is not None
    handle = first.agent.start_run("ask", {"question": "q"})
    await asyncio.sleep(0.2)  # the llm node is streaming when corral "dies"...
    handle.task.cancel()
    await asyncio.gather(handle.task, return_exceptions=True)
    first.agent.store.set_status(handle.run_id, "running")  # ...so the run's row still says running
    await first.supervisor.stop()
    await first.agent.stop()
    started.remove(first)
    await first.client.aclose()

    second = await run_world(tmp_path, "review", FakeLLM(default="Paris."), started)
    await second.settle()
    incident = second.only()
    assert (incident.kind, incident.status, incident.action["action"]) == (
        "run_interrupted",
        "proposed",
        "restart",
    )
    second.supervisor.approve(incident.id, by="admin")
    await second.settle()
    assert second.supervisor.get(incident.id).status == "healed"
    assert second.agent.store.run(handle.run_id).status == "succeeded"  # type: ignore[union-attr]


def loss(unplaced: tuple[str, ...] = ()) -> NodeLoss:
    moved = {r: "alpha" for r in ("general/1", "big/0") if r not in unplaced}
    info = {
        "mac": "02:00:00:00:00:0b",
        "profile": {"ram_available_bytes": 6 << 30, "ram_total_bytes": 8 << 30},
    }
    return NodeLoss("beta", "left the cluster", ("general/1", "big/0"), moved, unplaced, info)


class FakeCluster:
    """What the supervisor uses of the RayRegistry: its nodes, Wake-on-LAN and the wake timeout."""

    def __init__(self, comes_back: bool) -> None:
        self.nodes: dict[str, Any] = {"beta": SimpleNamespace(state="lost")}
        self.config = SimpleNamespace(power=SimpleNamespace(wake_timeout_s=3.0))
        self.woken: list[str] = []
        self.on_node_lost: Any = None
        self.comes_back = comes_back

    def wake(self, target: str) -> tuple[str, str]:
        self.woken.append(target)
        if self.comes_back:
            self.nodes[target].state = "awake"
        return target, "02:00:00:00:00:0b"


def node_world(tmp_path: Path, mode: str, cluster: FakeCluster) -> World:
    world = World(tmp_path, mode)
    world.supervisor = Supervisor(
        world.supervisor.settings, tmp_path, world.engine, registry=CollectorRegistry(),
        cluster=cluster,  # type: ignore[arg-type]
    )  # fmt: skip
    return world


async def test_a_lost_node_whose_replicas_moved_is_recorded(tmp_path: Path, started: list[World]) -> None:
    cluster = FakeCluster(comes_back=True)
    world = node_world(tmp_path, "autonomous", cluster)
    started.append(world)
    assert cluster.on_node_lost == world.supervisor.node_lost  # the hook is installed
    cluster.on_node_lost(loss())
    await world.settle()
    incident = world.only()
    assert (incident.kind, incident.target, incident.status) == ("node_lost", "node/beta", "recorded")
    assert "general/1 to alpha" in incident.reason and not cluster.woken


async def test_a_lost_node_holding_what_fits_nowhere_else_is_woken(
    tmp_path: Path, started: list[World]
) -> None:
    cluster = FakeCluster(comes_back=True)
    world = node_world(tmp_path, "autonomous", cluster)
    started.append(world)
    world.supervisor.node_lost(loss(unplaced=("big/0",)))
    await world.settle()
    incident = world.only()
    assert (incident.kind, incident.status, incident.action["action"]) == ("node_lost", "healed", "restart")
    assert cluster.woken == ["beta"] and "back after Wake-on-LAN" in incident.outcome


async def test_a_node_that_does_not_come_back_fails_with_what_to_do(
    tmp_path: Path, started: list[World]
) -> None:
    cluster = FakeCluster(comes_back=False)
    world = node_world(tmp_path, "autonomous", cluster)
    started.append(world)
    world.supervisor.node_lost(loss(unplaced=("big/0",)))
    for _ in range(100):
        await world.settle()
        if world.only().status != "acting":
            break
    incident = world.only()
    assert incident.status == "failed" and "corral provision --playbook heal --limit beta" in incident.outcome
