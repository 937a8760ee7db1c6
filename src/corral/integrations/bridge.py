"""The MQTT bridge in the gateway process: announces corral to Home Assistant (retained discovery
configs, an availability topic with a last will) and publishes entity states when they change,
at most one update per entity every `mqtt.min_publish_s`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from corral.integrations.discovery import FIXED, Entity, Topics, discovery_payload, snapshot
from corral.integrations.mqtt import MqttLink
from corral.integrations.settings import MqttConfig

log = logging.getLogger("corral.mqtt")


def _version() -> str:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


class HomeAssistantBridge:
    def __init__(
        self,
        config: MqttConfig,
        status: Callable[[], Mapping[str, Any]],
        readiness: Callable[[], tuple[bool, list[str]]],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.status = status
        self.readiness = readiness
        self.topics = Topics(config)
        self.link = MqttLink(
            config.broker(), f"corral-{config.node_id}", will=(self.topics.availability, "offline"), env=env
        )
        self.version = _version()
        self.announced: set[Entity] = set()
        self.published: dict[Entity, tuple[str, float]] = {}  # entity -> (state, when)
        self._fresh_connection = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.link.on_connect.append(self._on_connect)

    def _on_connect(self) -> None:  # paho's thread: hand over to the event loop
        self._fresh_connection = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Connect in the background and publish until the block ends; then say `offline`."""
        self._loop = asyncio.get_running_loop()
        self.link.start()
        task = asyncio.create_task(self._run(), name="mqtt-bridge")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self.link.connected.is_set():
                self.link.client.publish(self.topics.availability, "offline", qos=1, retain=True)
            await asyncio.to_thread(self.link.stop)  # joins paho's thread

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("the MQTT bridge failed to publish; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.interval_s)
            self._wake.clear()

    def tick(self, now: float | None = None) -> None:
        """Publish what changed (everything after a new connection)."""
        if not self.link.connected.is_set():
            return
        now = time.monotonic() if now is None else now
        if self._fresh_connection:
            self._fresh_connection = False
            self.announced.clear()
            self.published.clear()
            self.link.publish(self.topics.availability, "online", retain=True)
        ready, _ = self.readiness()
        states = snapshot(self.status(), ready)
        for entity in list(self.announced):
            if entity not in states and entity not in FIXED:  # a node left: remove its entity
                self.link.publish(self.topics.discovery(entity), "", retain=True)
                self.announced.discard(entity)
                self.published.pop(entity, None)
        for entity, state in states.items():
            if entity not in self.announced:
                payload = discovery_payload(entity, self.topics, self.version)
                if not self.link.publish(self.topics.discovery(entity), payload, retain=True):
                    return  # disconnected meanwhile: all again on the next connection
                self.announced.add(entity)
            last = self.published.get(entity)
            if last is not None and (last[0] == state or now - last[1] < self.config.min_publish_s):
                continue
            if self.link.publish(self.topics.state(entity), state, retain=True):
                self.published[entity] = (state, now)
