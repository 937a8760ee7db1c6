"""Home Assistant over a real mosquitto: the bridge's discovery, availability and state updates
(surviving a broker that is down, marked offline by its last will when killed), and the
world-state tools' read and write round trips, the write going through the approval gate."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from corral.agent.library import WorkflowLibrary
from corral.agent.runner import Runner
from corral.agent.services import AgentServices
from corral.agent.settings import AgentConfig, ToolsConfig
from corral.agent.store import RunStore
from corral.agent.tools.base import ToolContext
from corral.agent.tools.factory import build_registry
from corral.config import ExpertConfig
from corral.gateway.app import Gateway
from corral.gateway.auth import KeyStore
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router
from corral.integrations.bridge import HomeAssistantBridge
from corral.integrations.settings import MqttBrokerConfig, MqttConfig, WorldStateConfig
from corral.testing import FakeBackend, FakeLLM
from tests.fixtures.mosquitto import Broker, Watcher, _free_port, mosquitto, start_broker

pytestmark = pytest.mark.slow
__all__ = ["mosquitto"]  # the fixture


def _gateway(tmp_path: Path, nodes: list[dict[str, Any]]) -> Gateway:
    registry = LocalRegistry()
    registry.add(FakeBackend("general/0", "general"))
    experts = [ExpertConfig(name="general", model="m"), ExpertConfig(name="coder", model="m")]
    return Gateway(
        router=Router(experts, registry), keys=KeyStore(tmp_path / "keys.json"), nodes=lambda: nodes
    )


def _password_file(tmp_path: Path, secret: str) -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


async def test_discovery_availability_and_state_updates(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "broker", username="corral", password="s3cret-pass")
    watcher = Watcher(broker)
    try:
        nodes = [{"name": "head", "power": "awake"}, {"name": "old-pc"}]
        gateway = _gateway(tmp_path, nodes)
        config = MqttConfig(
            enabled=True, port=broker.port, username="corral",
            password_file=_password_file(tmp_path, "s3cret-pass"),
            node_id="den", interval_s=0.1, min_publish_s=0,
        )  # fmt: skip
        bridge = HomeAssistantBridge(config, gateway.status, gateway.readiness)
        async with bridge.running():
            await asyncio.to_thread(watcher.wait_for, "corral/den/availability", "online")
            status_config = json.loads(
                await asyncio.to_thread(watcher.wait_for, "homeassistant/sensor/den/status/config")
            )
            assert status_config["state_topic"] == "corral/den/status"
            assert status_config["availability_topic"] == "corral/den/availability"
            assert status_config["unique_id"] == "den_status" and status_config["device"]["identifiers"] == [
                "den"
            ]
            for key in ("active_expert", "queue_depth", "node_head_power", "node_old_pc_power"):
                await asyncio.to_thread(watcher.wait_for, f"homeassistant/sensor/den/{key}/config")
            await asyncio.to_thread(watcher.wait_for, "corral/den/status", "online")
            await asyncio.to_thread(watcher.wait_for, "corral/den/queue_depth", "0")
            await asyncio.to_thread(watcher.wait_for, "corral/den/active_expert", "idle")
            await asyncio.to_thread(watcher.wait_for, "corral/den/node_head_power", "awake")
            await asyncio.to_thread(watcher.wait_for, "corral/den/node_old_pc_power", "on")  # no field: on

            # Work arrives, the only replica goes down, a node sleeps: each state follows.
            gateway.router.admitted["coder"] = 3
            nodes[1]["power"] = "asleep"
            await asyncio.to_thread(watcher.wait_for, "corral/den/queue_depth", "3")
            await asyncio.to_thread(watcher.wait_for, "corral/den/active_expert", "coder")
            await asyncio.to_thread(watcher.wait_for, "corral/den/node_old_pc_power", "asleep")
            gateway.router.registry.backends("general")[0].state.set_status("failed")
            await asyncio.to_thread(watcher.wait_for, "corral/den/status", "degraded")

            # A node leaves: its entity is removed (an empty retained config).
            del nodes[1]
            await asyncio.to_thread(watcher.wait_for, "homeassistant/sensor/den/node_old_pc_power/config", "")
        await asyncio.to_thread(watcher.wait_for, "corral/den/availability", "offline")
        # What Home Assistant sees when it starts later: retained discovery, states, availability.
        late = Watcher(broker)
        try:
            await asyncio.to_thread(late.wait_for, "homeassistant/sensor/den/status/config")
            await asyncio.to_thread(late.wait_for, "corral/den/queue_depth", "3")
            await asyncio.to_thread(late.wait_for, "corral/den/availability", "offline")
            assert all(late.messages[t][1] for t in late.messages)  # every one of them retained
        finally:
            late.close()
    finally:
        watcher.close()
        broker.stop()


async def test_bridge_waits_for_a_broker_that_is_down_then_announces(tmp_path: Path) -> None:
    port = _free_port()
    gateway = _gateway(tmp_path, [{"name": "head"}])
    config = MqttConfig(enabled=True, port=port, interval_s=0.1, min_publish_s=0, reconnect_max_s=2)
    bridge = HomeAssistantBridge(config, gateway.status, gateway.readiness)
    async with bridge.running():
        await asyncio.sleep(0.5)  # connection refused meanwhile: logged, not raised
        assert not bridge.link.connected.is_set()
        assert gateway.status()["experts"]  # the gateway keeps answering
        broker = start_broker(tmp_path / "late", port=port)
        watcher = Watcher(broker)
        try:
            await asyncio.to_thread(watcher.wait_for, "corral/corral/availability", "online")
            await asyncio.to_thread(watcher.wait_for, "homeassistant/sensor/corral/status/config")
            await asyncio.to_thread(watcher.wait_for, "corral/corral/queue_depth", "0")
        finally:
            watcher.close()
            broker.stop()


WORLD_COMMAND = """
name: world_cmd
inputs: {args: {type: object}}
nodes:
  t: {type: tool, in: {tool: world_command, arguments: $inputs.args}}
  out: {type: output, in: {ok: $t.ok, content: $t.content, decision: $t.decision}}
"""


async def test_world_state_reads_retained_values_and_commands_go_through_the_gate(
    tmp_path: Path, mosquitto: Broker
) -> None:
    watcher = Watcher(mosquitto)
    try:
        watcher.send("home/kitchen/lamp", '{"state": "OFF"}', retain=True)
        watcher.send("home/garage/door", "closed", retain=True)
        watcher.send("secret/alarm/code", "1234", retain=True)
        world = WorldStateConfig(
            read=["home/#"], write=["home/+/lamp/set"],
            broker=MqttBrokerConfig(port=mosquitto.port), wait_s=5,
        )  # fmt: skip
        async with AsyncExitStack() as stack:
            tools = await build_registry(ToolsConfig(world_state=world), stack)
            assert {"world_state", "world_command"} <= set(tools.names())
            assert tools.get("world_command").spec.risk == "high" and tools.decide("world_command") == "ask"

            ctx = ToolContext()
            lamp = await tools.invoke("world_state", {"topic": "home/kitchen/lamp"}, ctx)
            assert lamp.ok and lamp.content == 'home/kitchen/lamp = {"state": "OFF"}', lamp.content
            everything = await tools.invoke("world_state", {"topic": "home/#"}, ctx)
            assert everything.ok and "home/garage/door = closed" in everything.content
            refused = await tools.invoke("world_state", {"topic": "secret/alarm/code"}, ctx)
            assert not refused.ok and "not readable" in refused.content and "1234" not in refused.content

            # A live change reaches the cache.
            watcher.send("home/garage/door", "open")
            for _ in range(100):
                door = await tools.invoke("world_state", {"topic": "home/garage/door"}, ctx)
                if door.content.endswith("open"):
                    break
                await asyncio.sleep(0.05)
            assert door.content == "home/garage/door = open"

            # Writes: through the workflow's tool node, which asks a person first.
            services = AgentServices(
                AgentConfig(gate_timeout_s=30), RunStore(":memory:"), llm=FakeLLM(), tools=tools
            )
            library = WorkflowLibrary(services.store, None, shipped=False)
            services.workflows = library
            runner = Runner(services)
            workflow, version = library.save(WORLD_COMMAND)
            gates = services.gates
            assert gates is not None

            async def command(args: dict[str, Any], approve: bool) -> dict[str, Any]:
                handle = runner.start(workflow, version, {"args": args})
                for _ in range(500):
                    if gates.pending():
                        break
                    await asyncio.sleep(0.01)
                pending = gates.pending()
                assert pending and pending[0]["details"]["tool"] == "world_command"
                gates.decide(pending[0]["id"], approve, by="tester")
                record = await handle.result()
                assert record.status == "succeeded", record.error
                return record.outputs  # type: ignore[return-value]

            denied = await command({"topic": "home/kitchen/lamp/set", "payload": {"state": "ON"}}, False)
            assert denied["decision"] == "denied" and not denied["ok"]
            await asyncio.sleep(0.3)
            assert "home/kitchen/lamp/set" not in watcher.messages  # nothing was sent

            approved = await command({"topic": "home/kitchen/lamp/set", "payload": {"state": "ON"}}, True)
            assert approved["decision"] == "approved" and approved["ok"], approved
            got = await asyncio.to_thread(watcher.wait_for, "home/kitchen/lamp/set")
            assert json.loads(got) == {"state": "ON"}

            outside = await command({"topic": "home/garage/door", "payload": "open"}, True)
            assert not outside["ok"] and "not writable" in outside["content"]
            await runner.shutdown()
    finally:
        watcher.close()


KILLED = """
import asyncio, sys
from corral.integrations.bridge import HomeAssistantBridge
from corral.integrations.settings import MqttConfig

async def main() -> None:
    config = MqttConfig(enabled=True, port=int(sys.argv[1]), node_id="doomed", interval_s=0.1)
    bridge = HomeAssistantBridge(config, lambda: {"experts": [], "nodes": []}, lambda: (True, []))
    async with bridge.running():
        await asyncio.sleep(600)

asyncio.run(main())
"""


def test_a_corral_that_dies_is_marked_offline_by_its_last_will(tmp_path: Path, mosquitto: Broker) -> None:
    watcher = Watcher(mosquitto)
    process = subprocess.Popen([sys.executable, "-c", KILLED, str(mosquitto.port)])
    try:
        watcher.wait_for("corral/doomed/availability", "online", timeout=60)
        process.kill()  # no clean shutdown: the broker publishes the will
        process.wait(10)
        watcher.wait_for("corral/doomed/availability", "offline")
    finally:
        if process.poll() is None:
            process.kill()
        watcher.close()
