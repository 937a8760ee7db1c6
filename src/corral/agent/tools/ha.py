"""`ha_state` (read one Home Assistant entity, low risk) and `ha_service` (call a Home Assistant
service such as light.turn_on, high risk: behind the approval policy), over HA's REST API with a
long-lived token from `agent.tools.home_assistant`."""

from __future__ import annotations

import json
from typing import Any

from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec
from corral.integrations.ha_rest import HomeAssistantClient, HomeAssistantError
from corral.integrations.settings import HomeAssistantConfig, allowed


def _brief(state: dict[str, Any]) -> str:
    attributes = state.get("attributes") or {}
    name = attributes.get("friendly_name")
    shown = {k: v for k, v in attributes.items() if k != "friendly_name"}
    head = f"{state.get('entity_id')} ({name})" if name else str(state.get("entity_id"))
    return f"{head} is {state.get('state')}" + (f"; attributes: {json.dumps(shown)[:1500]}" if shown else "")


class HaStateTool:
    spec = ToolSpec(
        name="ha_state",
        description=(
            "Read one Home Assistant entity's state and attributes, e.g. sensor.living_room_temperature."
        ),
        parameters={
            "type": "object",
            "properties": {"entity_id": {"type": "string", "pattern": r"^[a-z0-9_]+\.[a-z0-9_]+$"}},
            "required": ["entity_id"],
            "additionalProperties": False,
        },
        risk="low",
        timeout_s=30.0,
    )

    def __init__(self, client: HomeAssistantClient) -> None:
        self.client = client

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            state = await self.client.get_state(str(args["entity_id"]))
        except HomeAssistantError as exc:
            raise ToolError(str(exc)) from None
        return ToolResult(True, _brief(state), data=state)


class HaServiceTool:
    spec = ToolSpec(
        name="ha_service",
        description=(
            "Call a Home Assistant service (changes devices), e.g. domain light, service turn_on, "
            'data {"entity_id": "light.kitchen", "brightness_pct": 50}.'
        ),
        parameters={
            "type": "object",
            "properties": {
                "domain": {"type": "string", "pattern": r"^[a-z0-9_]+$"},
                "service": {"type": "string", "pattern": r"^[a-z0-9_]+$"},
                "data": {"type": "object", "default": {}},
            },
            "required": ["domain", "service"],
            "additionalProperties": False,
        },
        risk="high",
        timeout_s=30.0,
    )

    def __init__(self, client: HomeAssistantClient, config: HomeAssistantConfig) -> None:
        self.client = client
        self.config = config

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        domain, service = str(args["domain"]), str(args["service"])
        name = f"{domain}.{service}"
        # domain.* and domain.service reuse the MQTT filter syntax: '.' plays the part of '/'
        rules = [r.replace(".", "/").replace("*", "#") for r in self.config.allow_services]
        if rules and not allowed(rules, f"{domain}/{service}"):
            raise ToolError(
                f"{name} is not allowed; agent.tools.home_assistant.allow_services lists: "
                f"{', '.join(self.config.allow_services)}"
            )
        try:
            changed = await self.client.call_service(domain, service, dict(args.get("data") or {}))
        except HomeAssistantError as exc:
            raise ToolError(str(exc)) from None
        states = [_brief(s) for s in changed if isinstance(s, dict)]
        summary = f"called {name}" + (": " + "; ".join(states) if states else " (no state changed)")
        return ToolResult(True, summary, data={"service": name, "changed": changed})
