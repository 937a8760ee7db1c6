"""`world_state` (read device states from MQTT topics, low risk) and `world_command` (publish a
command to an MQTT topic, high risk: it changes the world, so it goes through the approval
policy). Both are limited to the topic allowlists of `agent.tools.world_state`."""

from __future__ import annotations

import json
from typing import Any

from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec
from corral.integrations.settings import describe
from corral.integrations.world import WorldError, WorldState


class WorldStateTool:
    def __init__(self, world: WorldState) -> None:
        self.world = world
        self.spec = ToolSpec(
            name="world_state",
            description=(
                "Read the current state of home devices from MQTT topics. Give one topic or a filter "
                f"('+' one level, '#' the rest). Readable: {describe(world.config.read)}."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "topic": {
                        "type": "string",
                        "minLength": 1,
                        "description": "e.g. zigbee2mqtt/kitchen_lamp",
                    }
                },
                "required": ["topic"],
                "additionalProperties": False,
            },
            risk="low",
            timeout_s=world.config.wait_s + 10.0,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        topic = str(args["topic"]).strip()
        try:
            readings = await self.world.read(topic)
        except WorldError as exc:
            raise ToolError(str(exc)) from None
        if not readings:
            known = self.world.known_topics()
            hint = f"; known topics: {', '.join(known[:20])}" if known else ""
            return ToolResult(False, f"no value has been seen on {topic!r}{hint}", data={"readings": []})
        lines = [f"{r.topic} = {r.value}" for r in readings]
        return ToolResult(True, "\n".join(lines), data={"readings": [r.to_json() for r in readings]})


class WorldCommandTool:
    def __init__(self, world: WorldState) -> None:
        self.world = world
        self.spec = ToolSpec(
            name="world_command",
            description=(
                "Send a command to a home device by publishing to an MQTT topic (e.g. "
                'zigbee2mqtt/kitchen_lamp/set with {"state": "ON"}). '
                f"Writable: {describe(world.config.write)}."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "topic": {"type": "string", "minLength": 1},
                    "payload": {
                        "description": "the message: text, or a JSON object sent as JSON",
                        "type": ["string", "object", "number", "boolean"],
                    },
                    "retain": {"type": "boolean", "default": False},
                },
                "required": ["topic", "payload"],
                "additionalProperties": False,
            },
            risk="high",
            timeout_s=world.config.wait_s + 15.0,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        topic = str(args["topic"]).strip()
        payload = args["payload"]
        text = payload if isinstance(payload, str) else json.dumps(payload)
        try:
            await self.world.publish(topic, text, retain=bool(args.get("retain", False)))
        except WorldError as exc:
            raise ToolError(str(exc)) from None
        return ToolResult(True, f"sent {text} to {topic}", data={"topic": topic, "payload": text})
