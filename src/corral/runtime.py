"""The single-machine runtime behind `corral up`: config -> models -> engine -> registry -> gateway."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from corral.agent.router_llm import RouterLLM
from corral.agent.service import AgentService
from corral.backends import BackendState, HttpBackend
from corral.config import CorralConfig, ExpertConfig
from corral.engine.binaries import EngineBinaries, locate
from corral.engine.manager import Engine
from corral.engine.pooled import pooled_spec
from corral.engine.replica import Replica, ReplicaSpec
from corral.errors import ConfigError
from corral.evolve.prompts import PromptBook
from corral.gateway.app import Gateway
from corral.gateway.auth import KeyStore
from corral.gateway.logins import LoginBook
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router, make_balancer
from corral.hardware import NodeProfile, node_status, process_rss
from corral.integrations.bridge import HomeAssistantBridge
from corral.integrations.settings import with_world_broker
from corral.models.bundled import Progress
from corral.models.catalog import Catalog, ModelEntry, check_fit
from corral.paths import CorralPaths
from corral.secrets import check_private
from corral.supervisor.service import build_supervisor

if TYPE_CHECKING:
    from corral.cluster.registry import RayRegistry
    from corral.voice.service import VoiceService

log = logging.getLogger("corral.runtime")
# What voice adds to the process when enabled: faster-whisper base (int8), Piper, Silero and
# smart-turn, about 250 MiB measured, plus pipecat and onnxruntime loaded (about 150 MiB).
VOICE_RAM_BYTES = 400 * 1024**2


@dataclass
class Runtime:
    config: CorralConfig
    paths: CorralPaths
    profile: NodeProfile
    balancer: str = "expected_finish_time"
    env: Mapping[str, str] = field(default_factory=dict)  # where api_key_env names are looked up
    progress: Progress | None = None
    models: dict[str, ModelEntry] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)
    cluster: RayRegistry | None = None  # `corral up --head`: the node agents run the replicas

    def plan(self) -> list[ReplicaSpec]:
        """Resolve each expert's model and check that all local replicas fit in RAM together."""
        catalog = Catalog(self.paths.models, self.progress)
        specs: list[ReplicaSpec] = []
        # voice's engines share the machine with the replicas (docs/operations.md, `corral up`)
        committed = VOICE_RAM_BYTES if self.config.voice.enabled else 0
        local_replicas = sum(e.replicas for e in self.config.experts if e.url is None)
        for expert in self.config.experts:
            if expert.url is not None or expert.replicas == 0:
                continue
            entry = catalog.resolve(expert.model)
            self.models[expert.name] = entry
            threads = expert.threads or self.profile.default_threads(local_replicas)
            for index in range(expert.replicas):
                verdict = check_fit(
                    entry.info, self.profile, expert.context * expert.slots,
                    already_committed=committed,
                )  # fmt: skip
                remote_pool = expert.pooled is not None and bool(expert.pooled.rpc)
                if not verdict.fits and not remote_pool:  # remote workers hold part of it
                    raise ConfigError(
                        f"expert {expert.name!r} replica {index} does not fit this machine: "
                        f"{verdict.reasons[0]} (set `replicas`, `slots` or `context` for "
                        f"{expert.name} in corral.yaml)"
                    )
                committed += verdict.need_bytes
                spec = ReplicaSpec(
                    expert=expert.name, index=index, model=entry, slots=expert.slots,
                    context_per_slot=expert.context, threads=threads,
                    embedding=expert.kind == "embedding", extra_args=tuple(expert.extra_args),
                    memory_limit_bytes=(expert.memory_limit_mb or 0) * 1024 * 1024 or None,
                )  # fmt: skip
                specs.append(spec if expert.pooled is None else pooled_spec(spec, expert.pooled))
        return specs

    def _cluster_models(self) -> list[ReplicaSpec]:
        """On a cluster no replica runs here; still resolve each expert's model (prompt format)."""
        catalog = Catalog(self.paths.models, self.progress)
        for expert in self.config.experts:
            if expert.url is None and expert.replicas:
                self.models[expert.name] = catalog.resolve(expert.model)
        return []

    def stops(self, expert: str) -> tuple[str, ...]:
        entry = self.models.get(expert)
        if entry is None or self.config.expert(expert).kind != "chat":
            return ()
        return entry.prompt_format.stop

    def replica_details(self, name: str) -> dict[str, Any]:
        if self.cluster is not None:
            return self.cluster.replica_details(name)
        replica = self.replicas.get(name)
        if replica is None:
            return {}
        return {
            "node": self.profile.hostname,
            "rss_bytes": process_rss(replica.pid),
            "url": replica.url,
            "pid": replica.pid,
            "threads": replica.spec.threads,
            "context_per_slot": replica.spec.context_per_slot,
            "log": str(replica.log_path),
        }

    def build(
        self, client: httpx.AsyncClient, binaries: EngineBinaries | None = None
    ) -> tuple[Gateway, Engine]:
        specs = self.plan() if self.cluster is None else self._cluster_models()
        binaries = binaries or locate(self.paths.engine_libs)
        engine = Engine(binaries, self.paths.logs, client)
        registry: LocalRegistry | RayRegistry = LocalRegistry() if self.cluster is None else self.cluster
        for spec in specs:
            replica = engine.add(spec)
            self.replicas[spec.name] = replica
            registry.add(
                HttpBackend(spec.name, spec.expert, spec.model.id, replica.url, client, replica.state)
            )
        for expert in self.config.experts:
            if expert.url is not None:
                remote = _remote_backend(expert, client, self.env)
                registry.add(remote)
                engine.watch_remote(remote)
        for secret in (self.paths.keys_file, self.paths.home / "logins.json"):
            if secret.exists():  # API key hashes and browser sessions: the owner's eyes only
                check_private(secret, "credentials file")
        server = self.config.server
        router = Router(
            self.config.experts, registry, max_queue=server.max_queue,
            balancer=make_balancer(self.balancer), holder=self.cluster,
        )  # fmt: skip
        gateway = Gateway(
            router=router,
            keys=KeyStore(self.paths.keys_file),
            stops=self.stops,
            replica_details=self.replica_details,
            required_experts=tuple(e.name for e in self.config.experts if e.always_loaded),
            max_body_bytes=server.max_body_bytes,
            failover_wait_s=server.failover_wait_s,
            rate_limit=server.rate_limit,
            cors_origins=list(server.cors_origins),
            nodes=self.cluster.status if self.cluster else lambda: [node_status(self.profile)],
            links=[link.model_dump() for link in self.config.ui.links],
            ui=self.config.ui.enabled,
        )
        gateway.logins = LoginBook(
            gateway.keys, self.paths.home / "logins.json", self.config.ui.session_ttl_s
        )
        if self.cluster is not None:
            self.cluster.bind_metrics(gateway.metrics.registry)
        gateway.agent = self.agent(gateway)
        gateway.voice = self.voice(gateway)
        gateway.supervisor = build_supervisor(
            self.config.supervisor, self.paths.home, engine, agent=gateway.agent,
            registry=gateway.metrics.registry, logs=gateway.logs.lines,
            resolve_model=Catalog(self.paths.models, self.progress).resolve, cluster=self.cluster,
        )  # fmt: skip
        if self.config.mqtt.enabled:
            bridge = HomeAssistantBridge(self.config.mqtt, gateway.status, gateway.readiness, env=self.env)
            gateway.background.append(bridge.running)
        return gateway, engine

    def agent(self, gateway: Gateway) -> AgentService:
        """The agent runtime, calling models in-process through the gateway's Proxy."""
        settings = with_world_broker(self.config.agent, self.config.mqtt)
        embed = settings.memory.embed_expert
        has_embedder = any(e.name == embed and e.kind == "embedding" for e in self.config.experts)
        if not has_embedder:
            log.warning("no embedding expert %r: the agent runs without long-term memory", embed)
        return AgentService(
            settings,
            self.paths.home / "agent",
            RouterLLM(gateway.proxy),
            workflows_dir=settings.workflows_dir or self.paths.home / "workflows",
            status=gateway.status,
            memory=has_embedder,
            prompts=PromptBook(self.paths.home),
        )

    def voice(self, gateway: Gateway) -> VoiceService | None:
        """The voice pipeline over the agent, when `voice.enabled` (its engines load in the
        background once the app starts; the Gateway's lifespan starts and stops it)."""
        if not self.config.voice.enabled or gateway.agent is None:
            return None
        from corral.voice.service import VoiceService

        return VoiceService(
            self.config.voice,
            gateway.agent,
            registry=gateway.metrics.registry,
            cpu_flags=self.profile.cpu_flags,
            models_dir=self.paths.models,
        )


def _remote_backend(expert: ExpertConfig, client: httpx.AsyncClient, env: Mapping[str, str]) -> HttpBackend:
    """An OpenAI-compatible URL; `url` may end in /v1 or not, with or without a slash."""
    state = BackendState(slots=expert.slots)
    state.set_status("remote")
    base = (expert.url or "").rstrip("/").removesuffix("/v1")
    api_key = None
    if expert.api_key_env:
        api_key = env.get(expert.api_key_env)
        if not api_key:
            raise ConfigError(
                f"expert {expert.name!r} reads its API key from ${expert.api_key_env}, which is "
                "not set; export it before `corral up`"
            )
    return HttpBackend(
        f"{expert.name}/remote", expert.name, expert.model, base, client, state,
        api_key=api_key, upstream_model=expert.model,
    )  # fmt: skip


@asynccontextmanager
async def engine_lifespan(
    engine: Engine, client: httpx.AsyncClient, agent: AgentService | None = None
) -> AsyncIterator[None]:
    """Serve at once while the replicas load in the background; stop them all on the way out.

    Binding first means /health answers during a long model load and /ready says why it is not
    ready yet; requests meanwhile get 503 with Retry-After instead of a refused connection.
    """
    try:
        engine.start_in_background()
        if agent is not None:
            await agent.start()
        try:
            yield
        finally:
            if agent is not None:
                await agent.stop()
    finally:
        await engine.stop()
        await client.aclose()


def http_client(config: CorralConfig) -> httpx.AsyncClient:
    server = config.server
    return httpx.AsyncClient(
        timeout=httpx.Timeout(server.request_timeout_s, connect=server.connect_timeout_s),
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        trust_env=False,  # never route loopback replicas through a proxy from the environment
    )
