"""A real `corral up` (llama-server with the bundled model) with `mqtt:` on, against a real
mosquitto: it announces itself to Home Assistant, its agent reads device state over MQTT, and its
/metrics — parsed by prometheus_client's own parser — carries the gateway's, the agent's and the
tools' series; on shutdown it says `offline`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.mosquitto import Broker, Watcher, mosquitto
from tests.integration.conftest import AGENT_CONFIG, start_corral, stop_corral

pytestmark = pytest.mark.slow
__all__ = ["mosquitto"]  # the fixture

MQTT = """
mqtt:
  enabled: true
  port: PORT
  node_id: testcorral
  interval_s: 0.5
  min_publish_s: 0
agent:
  tools:
    world_state:
      read: ["home/#"]
      write: ["home/+/set"]
"""

PEEK = """
name: peek
nodes:
  look: {type: tool, in: {tool: world_state, arguments: {topic: home/lamp}}}
  out: {type: output, in: {ok: $look.ok, content: $look.content}}
"""


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_corral_up_announces_itself_reads_mqtt_and_exports_metrics(tmp_path: Path, mosquitto: Broker) -> None:
    watcher = Watcher(mosquitto)
    watcher.send("home/lamp", "ON", retain=True)
    home = tmp_path / "home"
    (home / "workflows").mkdir(parents=True)
    (home / "workflows" / "peek.yaml").write_text(PEEK)
    running = start_corral(home, AGENT_CONFIG + MQTT.replace("PORT", str(mosquitto.port)))
    try:
        running.wait_healthy("general/0")  # /ready is true once any replica is
        watcher.wait_for("corral/testcorral/availability", "online")
        config = json.loads(watcher.wait_for("homeassistant/sensor/testcorral/status/config"))
        assert config["state_topic"] == "corral/testcorral/status"
        watcher.wait_for("corral/testcorral/status", "online")  # /ready answered 200
        watcher.wait_for("corral/testcorral/queue_depth", "0")
        power = [
            t for t in watcher.messages if t.startswith("corral/testcorral/node_") and t.endswith("_power")
        ]
        assert power, sorted(watcher.messages)
        assert watcher.wait_for(power[0]) == "awake"

        client = httpx.Client(
            base_url=running.url,
            headers={"authorization": f"Bearer {running.key}"},
            trust_env=False,
            timeout=120,
        )
        chat = {"model": "general", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        run = client.post("/api/workflows/peek/run", json={"wait": True})
        assert run.status_code == 200, run.text
        assert run.json()["outputs"] == {"ok": True, "content": "home/lamp = ON"}, run.json()

        deadline = time.monotonic() + 30
        while True:
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
            samples = _samples(metrics.text)
            key = ("corral_agent_runs_total", (("status", "succeeded"), ("workflow", "peek")))
            if samples.get(key) == 1.0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert samples.get(key) == 1.0, metrics.text
        assert samples[("corral_tool_calls_total", (("outcome", "ok"), ("tool", "world_state")))] == 1.0
        assert samples[("corral_agent_node_seconds_count", (("type", "tool"),))] >= 1
        answered = [
            v for (name, labels), v in samples.items()
            if name == "corral_requests_total" and {("expert", "general"), ("status", "200")} <= set(labels)
        ]  # fmt: skip
        assert sum(answered) >= 1
        assert any(name == "corral_request_duration_seconds_bucket" for name, _ in samples)
        assert any(name == "corral_replica_healthy" and v == 1.0 for (name, _), v in samples.items())
    finally:
        stop_corral(running)
    try:
        watcher.wait_for("corral/testcorral/availability", "offline")
    finally:
        watcher.close()
