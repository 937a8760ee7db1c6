"""/metrics of a gateway with the agent, parsed by prometheus_client's own parser, and the shipped
Grafana dashboard checked against it: every metric a panel queries is one corral exports (names
collected from the live registry after exercising the gateway, the agent, its tools, voice and
the supervisor)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from corral.supervisor.metrics import SupervisorMetrics
from corral.voice.metrics import VoiceMetrics
from tests.unit.conftest import Harness

DASHBOARD = Path(__file__).parents[2] / "deploy" / "monitoring" / "grafana" / "corral-dashboard.json"
METRIC = re.compile(r"\bcorral_[a-z0-9_]+")


async def _exported(harness: Harness) -> tuple[set[str], set[str]]:
    """The series names in GET /metrics after real traffic through the app, and those of every
    declared family (a labelled family with no series yet, no 429 so far say, has no samples:
    its series names follow from its type)."""
    app = harness.app
    # Voice and the supervisor register in the gateway's registry when `corral up` runs them.
    VoiceMetrics(harness.gateway.metrics.registry).voice_to_voice.observe(0.9)  # a spoken turn
    SupervisorMetrics(harness.gateway.metrics.registry).incidents.labels("replica_exit").inc()
    async with app.router.lifespan_context(app), harness.client() as client:  # the app's own wiring
        chat = {"model": "general", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
        async with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as response:
            assert response.status_code == 200
            _ = [chunk async for chunk in response.aiter_raw()]
        # The agent calls a tool (web_fetch refuses loopback: an `error` outcome), then answers.
        harness.llm.script(['{"tool": "web_fetch", "arguments": {"url": "http://127.0.0.1:9/"}}'])
        agent = {**chat, "model": "corral-agent"}
        answer = await client.post("/v1/chat/completions", json=agent)
        assert answer.status_code == 200, answer.text
        registry = harness.gateway.metrics.registry
        for _ in range(500):  # the metrics reader catches up with the bus
            if registry.get_sample_value(
                "corral_agent_runs_total", {"workflow": "agent", "status": "succeeded"}
            ):
                break
            await asyncio.sleep(0.01)
        metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    samples: set[str] = set()
    declared: set[str] = set()
    for family in text_string_to_metric_families(metrics.text):
        samples |= {sample.name for sample in family.samples}
        declared |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return samples, samples | declared


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


async def test_metrics_parse_and_carry_gateway_agent_and_tool_series(harness: Harness) -> None:
    samples, _ = await _exported(harness)
    for name in (
        "corral_requests_total",
        "corral_request_duration_seconds_bucket",
        "corral_time_to_first_token_seconds_bucket",
        "corral_agent_runs_total",
        "corral_agent_node_seconds_bucket",
        "corral_tool_calls_total",
        "corral_voice_to_voice_seconds_bucket",
    ):
        assert name in samples, name
    text = (await _text(harness)).splitlines()
    assert any(
        line.startswith('corral_agent_runs_total{status="succeeded",workflow="agent"}') for line in text
    )
    assert any(line.startswith('corral_tool_calls_total{outcome="error",tool="web_fetch"}') for line in text)


async def _text(harness: Harness) -> str:
    async with harness.client() as client:
        return (await client.get("/metrics")).text


async def test_every_dashboard_query_names_an_exported_metric(harness: Harness) -> None:
    _, exported = await _exported(harness)
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    queried: set[str] = set()
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            assert names, f"panel {panel['title']!r} queries no corral metric: {target['expr']}"
            missing = names - exported
            assert not missing, (
                f"panel {panel['title']!r} queries {sorted(missing)}, which corral does not export"
            )
            queried |= names
    for variable in dashboard["templating"]["list"]:
        assert set(METRIC.findall(json.dumps(variable.get("query", "")))) <= exported
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "latency", "first token", "tokens per second", "queue", "healthy"):
        assert topic in titles, topic
    for family in (
        "corral_agent_runs",
        "corral_tool_calls",
        "corral_voice_to_voice_seconds",
        "corral_supervisor",
    ):
        assert any(name.startswith(family) for name in queried), family
