"""One MQTT connection (paho-mqtt 2.x) that never blocks the event loop: paho's network thread
connects, reconnects with backoff and delivers messages; corral's code publishes and subscribes
from anywhere. A broker that is down is a logged warning, not an error.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from corral.integrations.settings import MqttBrokerConfig

log = logging.getLogger("corral.mqtt")

Handler = Callable[[str, bytes, bool], None]  # topic, payload, retained — called on paho's thread
WARN_EVERY_S = 60.0  # a broker that stays down is mentioned once a minute, not per retry


class MqttLink:
    """A started link keeps trying to connect until `stop()`; `on_connect` callbacks run after
    every (re)connection (subscriptions are renewed by the link itself)."""

    def __init__(
        self,
        config: MqttBrokerConfig,
        name: str,
        *,
        will: tuple[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.client_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.connected = threading.Event()
        self.on_connect: list[Callable[[], None]] = []
        self._subscriptions: dict[str, list[Handler]] = {}
        self._lock = threading.Lock()
        self._last_warning = 0.0
        self._started = False
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311)
        password = config.password(env)  # read now: a bad secret file fails at start, clearly
        if config.username is not None:
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None, cert_reqs=ssl.CERT_REQUIRED
            )
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.reconnect_delay_set(1, config.reconnect_max_s)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_connect_fail = self._connect_failed
        client.on_message = self._message
        self.client = client

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._started:
            return
        self._started = True
        self.client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self.connected.is_set():
            self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: str, *, retain: bool = False, qos: int = 1) -> bool:
        """Queue a message; False when not connected (it is dropped, the caller republishes state
        on the next connection)."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info.rc == paho.MQTT_ERR_SUCCESS

    def subscribe(self, pattern: str, handler: Handler) -> None:
        with self._lock:
            first = pattern not in self._subscriptions
            self._subscriptions.setdefault(pattern, []).append(handler)
        if first and self.connected.is_set():
            self.client.subscribe(pattern, qos=1)

    # --- paho's thread ------------------------------------------------------------------------

    def _connected(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._warn(f"the MQTT broker at {self.where} refused the connection: {reason}")
            return
        log.info("connected to the MQTT broker at %s", self.where)
        self.connected.set()
        with self._lock:
            patterns = list(self._subscriptions)
        for pattern in patterns:
            client.subscribe(pattern, qos=1)
        for callback in list(self.on_connect):
            try:
                callback()
            except Exception:
                log.exception("an MQTT on-connect callback failed")

    def _disconnected(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and self._started:
            self._warn(f"lost the MQTT broker at {self.where} ({reason}); reconnecting with backoff")

    def _connect_failed(self, client: paho.Client, userdata: object) -> None:
        self._warn(
            f"cannot reach the MQTT broker at {self.where}; retrying with backoff (up to "
            f"{self.config.reconnect_max_s} s apart) — check mqtt.host/port in corral.yaml"
        )

    def _message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            handlers = [
                h
                for p, hs in self._subscriptions.items()
                if paho.topic_matches_sub(p, message.topic)
                for h in hs
            ]
        for handler in handlers:
            try:
                handler(message.topic, bytes(message.payload), bool(message.retain))
            except Exception:
                log.exception("handling MQTT message on %s failed", message.topic)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S or self._last_warning == 0.0:
            self._last_warning = now
            log.warning("%s", message)
