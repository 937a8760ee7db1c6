"""The `mqtt:` section of corral.yaml (the broker, Home Assistant discovery), the world-state and
Home Assistant tool settings, and how their secrets are read (a 0600 file or the environment)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from paho.mqtt.client import topic_matches_sub
from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.errors import ConfigError
from corral.secrets import secret_from

if TYPE_CHECKING:
    from corral.agent.settings import AgentConfig

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_TOPIC_PART = r"^[A-Za-z0-9_-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttBrokerConfig(_Strict):
    """How to reach an MQTT broker."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password_file: Path | None = Field(None, description="a file (mode 0600) holding the password")
    password_env: str | None = Field(None, pattern=_ENV_NAME, description="or an environment variable")
    tls: bool = Field(False, description="connect with TLS (port 8883 on most brokers)")
    ca_file: Path | None = Field(None, description="CA certificate for TLS; default the system's")
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_max_s: int = Field(60, ge=1, le=3600, description="longest wait between reconnects")

    def password(self, env: Mapping[str, str] | None = None) -> str | None:
        return secret_from(
            file=self.password_file and self.password_file.expanduser(),
            env_var=self.password_env,
            env=env,
            what="the MQTT password",
        )


class MqttConfig(MqttBrokerConfig):
    """`mqtt:` — the gateway announces corral to Home Assistant by MQTT discovery."""

    enabled: bool = Field(False, description="run the MQTT bridge in the gateway process")
    discovery_prefix: str = Field("homeassistant", pattern=_TOPIC_PART)
    base_topic: str = Field("corral", pattern=_TOPIC_PART, description="where corral's states go")
    node_id: str = Field("corral", pattern=_TOPIC_PART, description="this corral's id in topics and HA")
    interval_s: float = Field(2.0, gt=0, le=600, description="how often states are checked for changes")
    min_publish_s: float = Field(
        5.0, ge=0, le=3600, description="shortest time between two updates of one entity (throttle)"
    )

    def broker(self) -> MqttBrokerConfig:
        return MqttBrokerConfig.model_validate(self.model_dump(include=set(MqttBrokerConfig.model_fields)))


def _check_patterns(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        levels = pattern.split("/")
        if not pattern or any("#" in p and p != "#" for p in levels) or "#" in levels[:-1]:
            raise ValueError(f"{pattern!r} is not an MQTT topic filter ('#' only as the last level)")
        if any("+" in p and p != "+" for p in levels):
            raise ValueError(f"{pattern!r} is not an MQTT topic filter ('+' only as a whole level)")
    return patterns


class WorldStateConfig(_Strict):
    """`agent.tools.world_state` — the MQTT topics the agent may read and write."""

    read: list[str] = Field(
        default_factory=list, description="topic filters whose (retained) values the agent may read"
    )
    write: list[str] = Field(default_factory=list, description="topic filters the agent may publish to")
    broker: MqttBrokerConfig | None = Field(None, description="default: the mqtt: section's broker")
    max_topics: int = Field(10_000, ge=1, description="values kept in the cache; the oldest go first")
    wait_s: float = Field(2.0, ge=0, le=60, description="how long a read waits for a topic's first value")

    @field_validator("read", "write")
    @classmethod
    def _filters(cls, patterns: list[str]) -> list[str]:
        return _check_patterns(patterns)


class HomeAssistantConfig(_Strict):
    """`agent.tools.home_assistant` — Home Assistant's REST API for the ha_state/ha_service tools."""

    url: str | None = Field(None, description="e.g. http://homeassistant.local:8123; unset: no HA tools")
    token_file: Path | None = Field(None, description="a file (mode 0600) holding a long-lived token")
    token_env: str | None = Field(None, pattern=_ENV_NAME, description="or an environment variable")
    timeout_s: float = Field(10.0, gt=0, le=300)
    allow_services: list[str] = Field(
        default_factory=list,
        description="domain.service names (or domain.*) the agent may call; empty: any",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("must be an http:// or https:// URL, e.g. http://homeassistant.local:8123")
        return url.rstrip("/") if url else url

    def token(self, env: Mapping[str, str] | None = None) -> str:
        token = secret_from(
            file=self.token_file and self.token_file.expanduser(),
            env_var=self.token_env,
            env=env,
            what="the Home Assistant token",
        )
        if token is None:
            raise ConfigError(
                "agent.tools.home_assistant needs token_file or token_env: create a long-lived access "
                "token in Home Assistant (your profile, Security tab)"
            )
        return token


def allowed(patterns: list[str], topic: str) -> bool:
    """Whether `topic` matches one of the MQTT topic filters (`+` one level, `#` the rest)."""
    return any(topic_matches_sub(p, topic) for p in patterns)


def describe(patterns: list[str]) -> str:
    return ", ".join(patterns) if patterns else "none"


def with_world_broker(agent: AgentConfig, mqtt: MqttConfig) -> AgentConfig:
    """The agent's settings with `tools.world_state.broker` taken from the `mqtt:` section when
    the world-state tool has topics but no broker of its own (one broker setting, not two)."""
    world = agent.tools.world_state
    if world.broker is not None or not (world.read or world.write) or not mqtt.enabled:
        return agent
    tools = agent.tools.model_copy(update={"world_state": world.model_copy(update={"broker": mqtt.broker()})})
    return agent.model_copy(update={"tools": tools})
