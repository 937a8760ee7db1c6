"""What corral shows Home Assistant: its entities (status, active expert, queue depth, each node's
power state), their MQTT discovery config messages and their current states, computed from the
gateway's status. Pure functions: the bridge decides when to publish."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.integrations.settings import MqttConfig


@dataclass(frozen=True)
class Entity:
    key: str  # unique within this corral: status, queue_depth, node_<name>_power...
    name: str
    component: str = "sensor"
    icon: str = "mdi:server"
    unit: str | None = None
    numeric: bool = False


STATUS = Entity("status", "Status", icon="mdi:check-network")
ACTIVE_EXPERT = Entity("active_expert", "Active expert", icon="mdi:brain")
QUEUE = Entity("queue_depth", "Queue depth", icon="mdi:tray-full", unit="requests", numeric=True)
FIXED = (STATUS, ACTIVE_EXPERT, QUEUE)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "node"


def node_entity(node_name: str) -> Entity:
    return Entity(f"node_{slug(node_name)}_power", f"{node_name} power", icon="mdi:power")


class Topics:
    def __init__(self, config: MqttConfig) -> None:
        self.config = config
        self.root = f"{config.base_topic}/{config.node_id}"
        self.availability = f"{self.root}/availability"

    def state(self, entity: Entity) -> str:
        return f"{self.root}/{entity.key}"

    def discovery(self, entity: Entity) -> str:
        return f"{self.config.discovery_prefix}/{entity.component}/{self.config.node_id}/{entity.key}/config"


def discovery_payload(entity: Entity, topics: Topics, version: str) -> str:
    """Home Assistant's MQTT discovery config for one entity (retained by the broker)."""
    node_id = topics.config.node_id
    payload: dict[str, Any] = {
        "name": entity.name,
        "unique_id": f"{node_id}_{entity.key}",
        "object_id": f"{node_id}_{entity.key}",
        "state_topic": topics.state(entity),
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "icon": entity.icon,
        "device": {
            "identifiers": [node_id],
            "name": "Corral" if node_id == "corral" else f"Corral {node_id}",
            "manufacturer": "Corral",
            "model": "Corral gateway",
            "sw_version": version,
        },
    }
    if entity.unit is not None:
        payload["unit_of_measurement"] = entity.unit
    if entity.numeric:
        payload["state_class"] = "measurement"
    return json.dumps(payload, sort_keys=True)


def snapshot(status: Mapping[str, Any], ready: bool) -> dict[Entity, str]:
    """Each entity's state now. The active expert is the one with the most requests admitted
    (running or queued) at this moment, `idle` when none has any; a node without a `power`
    field counts as `on`."""
    experts = status.get("experts") or []
    busiest, most = "idle", 0
    queued = 0
    for expert in experts:
        admitted = int(expert.get("admitted") or 0)
        queued += int(expert.get("queued") or 0)
        if admitted > most:
            busiest, most = str(expert.get("name")), admitted
    states: dict[Entity, str] = {
        STATUS: "online" if ready else "degraded",
        ACTIVE_EXPERT: busiest,
        QUEUE: str(queued),
    }
    for node in status.get("nodes") or []:
        name = str(node.get("name") or "node")
        states[node_entity(name)] = str(node.get("power") or "on")
    return states
