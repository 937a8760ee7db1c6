"""The schema of corral.yaml (versioned, migrated) and how it is loaded with line-numbered errors.

The file declares experts: a named model with a description of what it is good at (read by the
`auto` router), its replicas, slots, context and a fallback chain. When no file exists the
embedded default applies: a general expert, an always-loaded fallback and an embedding expert,
all on the bundled model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from corral.agent.settings import AgentConfig
from corral.cluster.settings import ClusterConfig
from corral.engine.pooled import PooledConfig
from corral.errors import ConfigError
from corral.gateway.limits import RateLimitConfig
from corral.gateway.security import Origin
from corral.integrations.settings import MqttConfig
from corral.supervisor.settings import SupervisorConfig
from corral.voice.settings import VoiceConfig

CONFIG_VERSION = 1
BUNDLED_MODEL = "gemma3-270m"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8400, ge=1, le=65535)
    max_queue: int = Field(
        32,
        ge=0,
        description="requests an expert may hold beyond the slots of its healthy replicas "
        "(fallbacks included) before answering 429",
    )
    request_timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    failover_wait_s: float = Field(
        10.0,
        ge=0,
        description="how long a request waits for a replica to come back when every replica of "
        "its expert and fallbacks failed at once (then 503)",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="the largest request body any route accepts (413 above)"
    )
    rate_limit: RateLimitConfig = RateLimitConfig()
    cors_origins: list[Origin] = Field(
        default_factory=list,
        description="web origins allowed to call the API from a browser (none by default)",
    )


class ExpertConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: str = Field(description="a catalog model id or a path to a GGUF file")
    description: str = ""
    aliases: list[str] = []
    kind: Literal["chat", "embedding"] = "chat"
    replicas: int = Field(1, ge=0, le=64)
    slots: int = Field(2, ge=1, le=64)
    context: int = Field(2048, ge=128, description="tokens of context per slot")
    threads: int | None = Field(None, ge=1, description="threads per replica; default from cores")
    fallback: list[str] = []
    always_loaded: bool = False
    auto: bool = Field(True, description="whether `model: auto` may choose this expert")
    url: str | None = Field(
        None, description="an OpenAI-compatible base URL to use instead of a local replica"
    )
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the remote URL's API key",
    )
    extra_args: list[str] = []
    memory_limit_mb: int | None = Field(
        None, ge=64, description="address-space limit per replica (RLIMIT_AS); the supervisor may raise it"
    )
    pooled: PooledConfig | None = Field(None, description="spread the model over llama.cpp RPC workers")

    @field_validator("aliases", "fallback")
    @classmethod
    def _no_blank(cls, values: list[str]) -> list[str]:
        if any(not v.strip() for v in values):
            raise ValueError("entries must be non-empty names")
        return values


class UILink(_Strict):
    name: str = Field(min_length=1, max_length=60)
    url: str = Field(pattern=r"^https?://", description="an http(s) URL, e.g. your Grafana")


class UIConfig(_Strict):
    """Mission Control, the web UI at `/`."""

    enabled: bool = True
    session_ttl_s: float = Field(12 * 3600, ge=60, description="how long a browser login lasts")
    links: list[UILink] = Field(default_factory=list, description="admin UIs shown on the dashboard")


class CorralConfig(_Strict):
    version: int = CONFIG_VERSION
    server: ServerConfig = ServerConfig()
    experts: list[ExpertConfig]
    agent: AgentConfig = AgentConfig()
    ui: UIConfig = UIConfig()
    voice: VoiceConfig = VoiceConfig()
    cluster: ClusterConfig = ClusterConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    mqtt: MqttConfig = MqttConfig()

    @model_validator(mode="after")
    def _check_references(self, info: ValidationInfo) -> CorralConfig:
        if info.context and info.context.get("defer_cross_check"):
            return self  # parse_config runs cross_check itself to report line numbers
        problems = cross_check(self)
        if problems:
            raise ValueError(problems[0][1])
        return self

    def expert(self, name: str) -> ExpertConfig:
        for expert in self.experts:
            if expert.name == name:
                return expert
        raise KeyError(name)


RESERVED_MODEL_NAMES = frozenset({"auto"})

Problem = tuple[tuple[str | int, ...], str]  # (location in the file, message)


def cross_check(config: CorralConfig) -> list[Problem]:
    """Checks across experts (unique names, fallback targets), each with where it went wrong."""
    problems: list[Problem] = []
    names: set[str] = set()
    for i, expert in enumerate(config.experts):
        for name in [expert.name, *expert.aliases]:
            if name in names or name in RESERVED_MODEL_NAMES:
                problems.append(((
                    "experts", i, "name" if name == expert.name else "aliases"),
                    f"model name {name!r} is used twice (or is reserved); "
                    "give each expert and alias a unique name",
                ))  # fmt: skip
            names.add(name)
    experts = {e.name: e for e in config.experts}
    for i, expert in enumerate(config.experts):
        for target in expert.fallback:
            if target not in experts:
                problems.append(
                    (
                        ("experts", i, "fallback"),
                        f"expert {expert.name!r} falls back to {target!r}, which is not an "
                        f"expert; known experts: {', '.join(sorted(experts))}",
                    )
                )
            elif experts[target].kind != expert.kind:
                problems.append(
                    (
                        ("experts", i, "fallback"),
                        f"expert {expert.name!r} ({expert.kind}) cannot fall back to "
                        f"{target!r} ({experts[target].kind})",
                    )
                )
    for i, expert in enumerate(config.experts):
        if expert.api_key_env and expert.url is None:
            problems.append(
                (
                    ("experts", i, "api_key_env"),
                    f"expert {expert.name!r} has api_key_env but no url; the key is only "
                    "sent to a remote url, so add `url:` or remove `api_key_env`",
                )
            )
        if expert.pooled is not None and (expert.url is not None or expert.replicas > 1):
            problems.append((
                ("experts", i, "pooled"),
                f"expert {expert.name!r} is pooled: it runs one leader llama-server here over its "
                "RPC workers, so set `replicas: 1` and remove `url`",
            ))  # fmt: skip
    if not any(e.kind == "chat" for e in config.experts):
        problems.append((("experts",), "declare at least one expert of kind 'chat'"))
    return problems


def default_config() -> CorralConfig:
    """The embedded default: what `corral up` runs on one machine with no corral.yaml."""
    return CorralConfig(
        experts=[
            ExpertConfig(
                name="general",
                model=BUNDLED_MODEL,
                description="general questions, conversation, explanations, writing, summaries",
                aliases=["gpt-3.5-turbo", "gpt-4o-mini"],
                replicas=1,
                slots=2,
                fallback=["fallback"],
            ),
            ExpertConfig(
                name="fallback",
                model=BUNDLED_MODEL,
                description="small always-loaded model that answers when others are down",
                replicas=1,
                slots=1,
                always_loaded=True,
                auto=False,
            ),
            ExpertConfig(
                name="embed",
                model="all-minilm-l6-v2",
                kind="embedding",
                description="text embeddings",
                aliases=["text-embedding-3-small"],
                replicas=1,
                slots=1,
                context=512,
            ),
        ]
    )


# --- loading -------------------------------------------------------------------------------

_MIGRATIONS: dict[int, Any] = {}  # version -> function(dict) -> dict at version+1


def migrate(raw: dict[str, Any], source: str = "corral.yaml") -> dict[str, Any]:
    """Bring an older file's dict up to CONFIG_VERSION, one step at a time."""
    version = raw.get("version", CONFIG_VERSION)
    if not isinstance(version, int) or version < 1:
        raise ConfigError("`version` must be a positive integer; this corral writes version 1")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"{source} is version {version}, newer than this corral understands "
            f"({CONFIG_VERSION}); upgrade corral or write a version {CONFIG_VERSION} file"
        )
    while version < CONFIG_VERSION:
        raw = _MIGRATIONS[version](raw)
        version = raw["version"]
    return raw


def load_config(path: Path) -> CorralConfig:
    """Load and validate corral.yaml; every error names the line and what to change."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; create it or run without --config") from None
    config = parse_config(text, source=str(path))
    for expert in config.experts:
        model = Path(expert.model).expanduser()
        local = expert.url is None  # a remote's model is a name like org/model, not a path
        if local and (model.suffix == ".gguf" or "/" in expert.model) and not model.is_absolute():
            expert.model = str((path.parent / model).resolve())
    return config


def parse_config(text: str, *, source: str = "corral.yaml") -> CorralConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: the file must be a mapping with `experts:` at the top")
    raw = migrate(raw, source)
    raw.setdefault("experts", [e.model_dump() for e in default_config().experts])
    try:
        config = CorralConfig.model_validate(raw, context={"defer_cross_check": True})
    except ValidationError as exc:
        problems = [(tuple(e["loc"]), _explain(e)) for e in exc.errors()]
        raise _located(problems, node, source) from None
    problems = cross_check(config)
    if problems:
        raise _located(problems, node, source)
    return config


def _located(problems: list[Problem], node: yaml.Node | None, source: str) -> ConfigError:
    lines = []
    for loc, message in problems:
        line = _line_of(node, loc)
        where = f"{source}:{line}" if line else source
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{where}: {dotted}: {message}")
    return ConfigError("invalid corral.yaml\n  " + "\n  ".join(lines))


def _explain(error: Any) -> str:
    kind = error["type"]
    msg = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return "unknown setting; remove it or check its spelling (see docs/configuration.md)"
    if kind == "missing":
        return "required setting is missing; add it"
    return msg


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node that `loc` reaches."""
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for key, value in node.value:
                if key.value == part:
                    nxt = value
                    best = key.start_mark.line + 1
                    break
            if nxt is None:
                return best
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return best
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            return best
    return best
