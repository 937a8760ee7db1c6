"""The logic around MQTT and Home Assistant without a broker: settings and their errors, secrets
from 0600 files, topic allowlists, the entity snapshot and discovery payloads, the bridge's
change-only throttled publishing, and the HA REST client's errors (401, 404, unreachable) against
a scripted HTTP transport."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from corral.agent.settings import AgentConfig, ToolsConfig
from corral.agent.tools.base import ToolContext, ToolRegistry
from corral.agent.tools.factory import builtin_tools
from corral.agent.tools.ha import HaServiceTool, HaStateTool
from corral.config import load_config
from corral.errors import ConfigError
from corral.integrations.bridge import HomeAssistantBridge
from corral.integrations.discovery import (
    ACTIVE_EXPERT,
    QUEUE,
    STATUS,
    Topics,
    discovery_payload,
    node_entity,
    snapshot,
)
from corral.integrations.ha_rest import HomeAssistantClient
from corral.integrations.settings import (
    HomeAssistantConfig,
    MqttConfig,
    WorldStateConfig,
    allowed,
    with_world_broker,
)


def test_mqtt_section_in_corral_yaml(tmp_path: Path) -> None:
    path = tmp_path / "corral.yaml"
    path.write_text("version: 1\nmqtt:\n  enabled: true\n  host: broker.lan\n  node_id: den\n")
    config = load_config(path)
    assert (
        config.mqtt.enabled
        and config.mqtt.host == "broker.lan"
        and config.mqtt.discovery_prefix == "homeassistant"
    )
    path.write_text("version: 1\nmqtt:\n  base_topic: a/b\n")
    with pytest.raises(ConfigError, match="base_topic"):
        load_config(path)
    path.write_text("version: 1\nmqtt:\n  hots: x\n")
    with pytest.raises(ConfigError, match="hots"):
        load_config(path)


def test_topic_filters_are_checked_and_matched() -> None:
    for bad in ("home/#/x", "home/lamp+", "", "a/b#"):
        with pytest.raises(ValidationError):
            WorldStateConfig(read=[bad])
    assert allowed(["home/#"], "home/kitchen/lamp") and allowed(["home/#"], "home")
    assert allowed(["home/+/set"], "home/lamp/set") and not allowed(["home/+/set"], "home/a/b/set")
    assert not allowed([], "home/lamp")


def test_password_and_token_come_from_a_private_file_or_the_environment(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as caught:
        MqttConfig(password_file=secret).password()
    assert "hunter2" not in str(caught.value)
    secret.chmod(0o600)
    assert MqttConfig(password_file=secret).password() == "hunter2"
    assert MqttConfig(password_env="MQTT_PW").password({"MQTT_PW": "x"}) == "x"
    with pytest.raises(ConfigError, match=r"\$MQTT_PW"):
        MqttConfig(password_env="MQTT_PW").password({})
    with pytest.raises(ConfigError, match="long-lived access token"):
        HomeAssistantConfig(url="http://ha:8123").token({})
    with pytest.raises(ValidationError, match="http"):
        HomeAssistantConfig(url="ha.local:8123")


def test_world_state_takes_the_mqtt_broker_unless_it_has_its_own() -> None:
    mqtt = MqttConfig(enabled=True, host="broker.lan", port=1884, node_id="den")
    agent = AgentConfig(tools=ToolsConfig(world_state=WorldStateConfig(read=["home/#"])))
    broker = with_world_broker(agent, mqtt).tools.world_state.broker
    assert broker is not None and (broker.host, broker.port) == ("broker.lan", 1884)
    assert agent.tools.world_state.broker is None  # the loaded config is not changed
    assert with_world_broker(agent, MqttConfig()).tools.world_state.broker is None  # mqtt off
    names = [t.spec.name for t in builtin_tools(with_world_broker(agent, mqtt).tools)]
    assert "world_state" in names and "world_command" not in names  # nothing writable


def _status(
    admitted: dict[str, int], queued: int = 0, nodes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    experts = [{"name": n, "admitted": a, "queued": queued if a else 0} for n, a in admitted.items()]
    return {"experts": experts, "nodes": nodes or []}


def test_snapshot_of_entities() -> None:
    states = snapshot(_status({"general": 0, "coder": 0}, nodes=[{"name": "Old PC"}]), ready=True)
    assert states[STATUS] == "online" and states[ACTIVE_EXPERT] == "idle" and states[QUEUE] == "0"
    assert states[node_entity("Old PC")] == "on"  # no power field: on
    states = snapshot(
        _status({"general": 1, "coder": 4}, queued=2, nodes=[{"name": "n", "power": "sleeping"}]), False
    )
    assert states[STATUS] == "degraded" and states[ACTIVE_EXPERT] == "coder" and states[QUEUE] == "4"
    assert states[node_entity("n")] == "sleeping"
    assert node_entity("Old PC").key == "node_old_pc_power"


def test_discovery_payload() -> None:
    topics = Topics(MqttConfig(node_id="den", discovery_prefix="ha", base_topic="corral"))
    assert topics.discovery(QUEUE) == "ha/sensor/den/queue_depth/config"
    payload = json.loads(discovery_payload(QUEUE, topics, "1.2"))
    assert payload["state_topic"] == "corral/den/queue_depth"
    assert payload["availability_topic"] == "corral/den/availability"
    assert payload["unit_of_measurement"] == "requests" and payload["state_class"] == "measurement"
    assert payload["device"] == {
        "identifiers": ["den"], "name": "Corral den", "manufacturer": "Corral", "model": "Corral gateway",
        "sw_version": "1.2",
    }  # fmt: skip


class RecordingLink:
    """Stands in for the broker connection: records what the bridge publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bool]] = []
        self.up = True

    @property
    def connected(self) -> RecordingLink:
        return self

    def is_set(self) -> bool:
        return self.up

    def publish(self, topic: str, payload: str, *, retain: bool = False, qos: int = 1) -> bool:
        if self.up:
            self.sent.append((topic, payload, retain))
        return self.up


def test_bridge_publishes_changes_only_and_throttles() -> None:
    status = _status({"general": 0})
    bridge = HomeAssistantBridge(
        MqttConfig(node_id="den", min_publish_s=5), lambda: status, lambda: (True, [])
    )
    link = RecordingLink()
    bridge.link = link  # type: ignore[assignment]
    bridge._fresh_connection = True
    bridge.tick(now=100.0)
    topics = [t for t, _, _ in link.sent]
    assert topics[0] == "corral/den/availability" and link.sent[0][1] == "online"
    assert sum(t.endswith("/config") for t in topics) == 3 and "corral/den/queue_depth" in topics
    assert all(retain for _, _, retain in link.sent)
    link.sent.clear()
    bridge.tick(now=101.0)
    assert link.sent == []  # nothing changed
    status["experts"][0]["admitted"] = 2
    bridge.tick(now=102.0)
    assert link.sent == []  # changed, but the last update is only 2 s old
    bridge.tick(now=105.5)
    assert ("corral/den/queue_depth", "0", True) not in link.sent
    assert ("corral/den/active_expert", "general", True) in link.sent
    link.sent.clear()
    link.up = False
    status["experts"][0]["admitted"] = 0
    bridge.tick(now=200.0)  # disconnected: nothing, and everything again after reconnecting
    link.up = True
    bridge._fresh_connection = True
    bridge.tick(now=201.0)
    assert sum(t.endswith("/config") for t, _, _ in link.sent) == 3


def _ha(handler: Any, allow: list[str] | None = None) -> ToolRegistry:
    config = HomeAssistantConfig(url="http://ha.test:8123", allow_services=allow or [])
    client = HomeAssistantClient(config, "tok", httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    return ToolRegistry([HaStateTool(client), HaServiceTool(client, config)])


async def test_ha_tools_call_the_rest_api() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["authorization"] == "Bearer tok"
        if request.url.path == "/api/states/light.kitchen":
            return httpx.Response(200, json={"entity_id": "light.kitchen", "state": "off", "attributes": {}})
        if request.url.path == "/api/services/light/turn_on":
            return httpx.Response(200, json=[{"entity_id": "light.kitchen", "state": "on", "attributes": {}}])
        return httpx.Response(404, json={"message": "Entity not found."})

    tools = _ha(handler)
    ctx = ToolContext()
    state = await tools.invoke("ha_state", {"entity_id": "light.kitchen"}, ctx)
    assert state.ok and state.content == "light.kitchen is off"
    called = await tools.invoke(
        "ha_service", {"domain": "light", "service": "turn_on", "data": {"entity_id": "light.kitchen"}}, ctx
    )
    assert called.ok and "light.kitchen is on" in called.content
    assert json.loads(seen[-1].content) == {"entity_id": "light.kitchen"} and seen[-1].method == "POST"
    missing = await tools.invoke("ha_state", {"entity_id": "light.nowhere"}, ctx)
    assert not missing.ok and "404" in missing.content and "Developer tools" in missing.content
    assert tools.get("ha_service").spec.risk == "high" and tools.decide("ha_service") == "ask"
    assert tools.decide("ha_state") == "auto"


async def test_ha_errors_say_what_to_do() -> None:
    tools = _ha(lambda request: httpx.Response(401, text="401: Unauthorized"))
    result = await tools.invoke("ha_state", {"entity_id": "sun.sun"}, ToolContext())
    assert (
        not result.ok
        and "401" in result.content
        and "token" in result.content
        and "tok" not in result.content.split()
    )

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = HomeAssistantConfig(url=f"http://127.0.0.1:{port}", timeout_s=5)
    registry = ToolRegistry([HaStateTool(HomeAssistantClient(config, "tok"))])
    result = await registry.invoke("ha_state", {"entity_id": "sun.sun"}, ToolContext())
    assert not result.ok and "cannot reach Home Assistant" in result.content

    limited = _ha(lambda request: httpx.Response(200, json=[]), allow=["light.*", "scene.turn_on"])
    ok = await limited.invoke("ha_service", {"domain": "light", "service": "turn_off"}, ToolContext())
    assert ok.ok
    refused = await limited.invoke("ha_service", {"domain": "lock", "service": "unlock"}, ToolContext())
    assert not refused.ok and "allow_services" in refused.content
