"""The world state seen over MQTT: a bounded cache of the latest (retained or live) value of every
topic under the read allowlist, and publishing commands to topics under the write allowlist."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from corral.integrations.mqtt import MqttLink
from corral.integrations.settings import MqttBrokerConfig, WorldStateConfig, allowed, describe

MAX_VALUE_CHARS = 2000  # one topic's value as the model sees it


class WorldError(Exception):
    """A read or write the agent may not do, or cannot do now; the message says what to do."""


@dataclass(frozen=True)
class Reading:
    topic: str
    value: str
    retained: bool
    received: float  # time.time()

    def to_json(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "value": self.value,
            "retained": self.retained,
            "age_s": round(max(0.0, time.time() - self.received), 1),
        }


def _is_filter(topic: str) -> bool:
    return "+" in topic or "#" in topic


class WorldState:
    def __init__(
        self, config: WorldStateConfig, broker: MqttBrokerConfig, *, env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.link = MqttLink(broker, "corral-world", env=env)
        self._values: OrderedDict[str, Reading] = OrderedDict()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        for pattern in config.read:
            self.link.subscribe(pattern, self._store)

    def start(self) -> None:
        self.link.start()

    def stop(self) -> None:
        self.link.stop()

    def _store(self, topic: str, payload: bytes, retained: bool) -> None:
        value = payload.decode("utf-8", errors="replace")[:MAX_VALUE_CHARS]
        with self._lock:
            self._values.pop(topic, None)
            if value:  # an empty retained message clears the topic
                self._values[topic] = Reading(topic, value, retained, time.time())
                while len(self._values) > self.config.max_topics:
                    self._values.popitem(last=False)
            self._arrived.notify_all()

    def _matching(self, query: str) -> list[Reading]:
        with self._lock:
            return [
                r
                for t, r in self._values.items()
                if (t == query or (_is_filter(query) and allowed([query], t)))
                and allowed(self.config.read, t)
            ]

    async def read(self, query: str) -> list[Reading]:
        """The cached values of a topic or of the topics under a filter (`+`, `#`); waits up to
        `wait_s` for a first value (a retained one arrives right after subscribing)."""
        if not _is_filter(query) and not allowed(self.config.read, query):
            raise WorldError(
                f"topic {query!r} is not readable; agent.tools.world_state.read allows: "
                f"{describe(self.config.read)}"
            )
        self.start()
        found = self._matching(query)
        deadline = time.monotonic() + self.config.wait_s
        while not found and time.monotonic() < deadline:
            await asyncio.to_thread(self._wait, min(0.2, max(0.0, deadline - time.monotonic())))
            found = self._matching(query)
        if not found and not self.link.connected.is_set():
            raise WorldError(
                f"not connected to the MQTT broker at {self.link.where}, so nothing is known about "
                f"{query!r}; try again later or check the broker"
            )
        return sorted(found, key=lambda r: r.topic)

    def _wait(self, timeout: float) -> None:
        with self._arrived:
            self._arrived.wait(timeout)

    def known_topics(self) -> list[str]:
        with self._lock:
            return sorted(self._values)

    async def publish(self, topic: str, payload: str, *, retain: bool = False) -> None:
        """Publish one command and wait for the broker's acknowledgement (QoS 1)."""
        if _is_filter(topic) or not topic:
            raise WorldError(f"{topic!r} is a filter, not a topic; publish to one exact topic")
        if not allowed(self.config.write, topic):
            raise WorldError(
                f"topic {topic!r} is not writable; agent.tools.world_state.write allows: "
                f"{describe(self.config.write)}"
            )
        self.start()
        await asyncio.to_thread(self.link.connected.wait, self.config.wait_s)
        if not self.link.connected.is_set():
            raise WorldError(
                f"not connected to the MQTT broker at {self.link.where}; the command was not sent"
            )
        info = self.link.client.publish(topic, payload, qos=1, retain=retain)
        try:
            await asyncio.to_thread(info.wait_for_publish, 10.0)
        except (RuntimeError, ValueError) as exc:
            raise WorldError(f"the command on {topic!r} was not sent ({exc}); try again") from None
        if not info.is_published():
            raise WorldError(f"the broker did not acknowledge the command on {topic!r} within 10 s")
