"""The FastAPI app: OpenAI routes, health, status and metrics, all behind API keys (or a browser
login's cookie) but /health; Mission Control's files at `/`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from corral.agent.metrics import AgentMetrics
from corral.errors import BadRequestError, ForbiddenError, NotFoundError
from corral.evolve.prompts import PromptBook
from corral.gateway.agent_api import AGENT_MODEL, agent_chat, install_agent_routes
from corral.gateway.auth import KeyRecord, KeyStore, Scope, bearer_token
from corral.gateway.errors import install_error_handlers
from corral.gateway.evolve_api import install_evolve_routes
from corral.gateway.limits import Limits, RateLimitConfig
from corral.gateway.logbook import LogBook
from corral.gateway.logins import COOKIE, LoginBook
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.openapi import install_openapi
from corral.gateway.proxy import CHAT, COMPLETIONS, EMBEDDINGS, Endpoint, Proxy, parse_body, read_body
from corral.gateway.router import Router
from corral.gateway.security import SecurityHeaders, install_cors
from corral.gateway.supervisor_api import install_supervisor_routes
from corral.gateway.ui_api import install_ui_routes
from corral.gateway.voice_api import install_voice_routes
from corral.mcp_server import install_mcp_route

if TYPE_CHECKING:
    from corral.agent.service import AgentService
    from corral.supervisor.service import Supervisor
    from corral.voice.service import VoiceService

Lifespan = Callable[[], AbstractAsyncContextManager[None]]


@dataclass
class Gateway:
    """What the app needs; `corral up` builds it from the engine, tests from fakes."""

    router: Router
    keys: KeyStore
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    stops: Callable[[str], tuple[str, ...]] = lambda expert: ()
    replica_details: Callable[[str], dict[str, Any]] = lambda name: {}
    required_experts: tuple[str, ...] = ()
    max_body_bytes: int = 8 * 1024 * 1024
    failover_wait_s: float = 10.0
    created: int = field(default_factory=lambda: int(time.time()))
    agent: AgentService | None = None
    voice: VoiceService | None = None  # started and stopped with the app (needs the agent running)
    supervisor: Supervisor | None = None  # watches the engine's replicas; started with the app
    nodes: Callable[[], list[dict[str, Any]]] = lambda: []
    links: list[dict[str, str]] = field(default_factory=list)
    ui: bool = True  # serve Mission Control's files at `/` (its API routes are there either way)
    logins: LoginBook = None  # type: ignore[assignment]  # in memory unless `corral up` gives a file
    logs: LogBook = field(default_factory=LogBook)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    cors_origins: list[str] = field(default_factory=list)  # none: browsers refuse cross-origin reads
    mcp: bool = True  # serve corral's tools and ask_corral over MCP at /mcp
    # Started after the engine's lifespan (the agent is up) and stopped before it: the MQTT bridge.
    background: list[Lifespan] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.logins is None:
            self.logins = LoginBook(self.keys)

    @cached_property
    def agent_metrics(self) -> AgentMetrics:
        """The agent's run, node and tool metrics, in the gateway's registry (/metrics)."""
        return AgentMetrics(self.metrics.registry)

    @cached_property
    def proxy(self) -> Proxy:
        """The one Proxy: API requests and the agent's in-process LLM calls share its accounting."""
        return Proxy(self.router, self.metrics, self.stops, self.max_body_bytes, self.failover_wait_s)

    def status(self) -> dict[str, Any]:
        experts = []
        for name, expert in self.router.experts.items():
            replicas = []
            in_flight = 0
            for backend in self.router.registry.backends(name):
                s = backend.state
                in_flight += s.in_flight
                replicas.append({
                    "name": backend.name,
                    "model": backend.model_id,
                    "status": s.status,
                    "healthy": s.healthy,
                    "slots": s.slots,
                    "in_flight": s.in_flight,
                    "tokens_per_second": round(s.tokens_per_second, 2),
                    "measured": s.measured,
                    "served": s.served,
                    "failures": s.failures,
                    "restarts": s.restarts,
                    "last_error": s.last_error[-500:],
                    **self.replica_details(backend.name),
                })  # fmt: skip
            experts.append({
                "name": name,
                "kind": expert.kind,
                "model": expert.model,
                "description": expert.description,
                "aliases": expert.aliases,
                "fallback": expert.fallback,
                "admitted": self.router.admitted.get(name, 0),
                "queued": max(0, self.router.admitted.get(name, 0) - in_flight),
                "replicas": replicas,
            })  # fmt: skip
        agent: dict[str, Any] | None = None
        if self.agent is not None and self.agent.started:
            gates = self.agent.services.gates
            agent = {
                "workflow": self.agent.settings.workflow,
                "active_runs": len(self.agent.runner.active),
                "pending_gates": len(gates.pending()) if gates else 0,
            }
        return {
            "time": time.time(),
            "experts": experts,
            "nodes": self.nodes(),
            "agent": agent,
            "links": self.links,
        }

    def readiness(self) -> tuple[bool, list[str]]:
        problems = []
        for name in self.required_experts:
            if not any(b.state.healthy for b in self.router.registry.backends(name)):
                problems.append(f"expert {name!r} has no ready replica")
        backends = self.router.registry.all()
        if not any(b.state.healthy for b in backends):
            states = ", ".join(f"{b.name}: {b.state.status}" for b in backends)
            problems.append(f"no backend is ready ({states or 'none configured'})")
        return not problems, problems


def create_app(gateway: Gateway, lifespan: Lifespan | None = None) -> FastAPI:
    @asynccontextmanager
    async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if lifespan is not None:
                await stack.enter_async_context(lifespan())
            if gateway.supervisor is not None:
                await gateway.supervisor.start()
                stack.push_async_callback(gateway.supervisor.stop)
            if gateway.agent is not None and gateway.agent.started:
                await stack.enter_async_context(gateway.agent_metrics.running(gateway.agent.bus))
            for service in gateway.background:
                await stack.enter_async_context(service())
            if gateway.voice is not None:
                # Inside the engine's lifespan: voice sessions end before the agent stops.
                await gateway.voice.start()
                stack.push_async_callback(gateway.voice.stop)
            if mcp_lifespan is not None:
                await stack.enter_async_context(mcp_lifespan())
            yield

    app = FastAPI(
        title="Corral",
        summary="OpenAI-compatible gateway for a cluster of local llama.cpp models",
        version="0.1.0",
        lifespan=_lifespan,
        docs_url=None,  # FastAPI's docs pages load from a CDN: useless offline
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    install_openapi(app)
    proxy = gateway.proxy

    def authorize(conn: HTTPConnection, need: Scope = "user") -> KeyRecord:
        """The key behind a request: an `Authorization`/`X-API-Key` header, a WebSocket's
        `?token=`, or the browser's login cookie (same-origin only)."""
        headers = conn.headers
        token = bearer_token(headers.get("authorization"), headers.get("x-api-key"))
        if token is None and conn.scope["type"] == "websocket":
            token = conn.query_params.get("token")
        if token is None and COOKIE in conn.cookies:
            _same_origin(conn)
            return gateway.logins.verify(conn.cookies[COOKIE], need)[0]
        return gateway.keys.verify(token, need=need)

    install_ui_routes(app, gateway, authorize)
    if gateway.agent is not None:
        install_agent_routes(app, gateway.agent, authorize)
    if gateway.agent is not None and isinstance(gateway.agent.prompts, PromptBook):
        install_evolve_routes(app, gateway.agent.prompts.home, authorize)
    if gateway.voice is not None:
        install_voice_routes(app, gateway.voice, authorize)
    if gateway.supervisor is not None:
        install_supervisor_routes(app, gateway.supervisor, authorize)
    mcp_lifespan = install_mcp_route(app, gateway) if gateway.mcp else None
    # Outermost last: CORS answers preflights, headers go on every answer, limits come first.
    app.add_middleware(
        Limits, config=gateway.rate_limit, max_body_bytes=gateway.max_body_bytes, keys=gateway.keys,
        logins=lambda: gateway.logins,
    )  # fmt: skip
    app.add_middleware(SecurityHeaders)
    install_cors(app, gateway.cors_origins)

    async def forward(request: Request, endpoint: Endpoint) -> Response:
        authorize(request)
        return await proxy.handle(request, endpoint)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        """Liveness: the process answers. Public."""
        return {"status": "ok"}

    @app.get("/ready", tags=["health"])
    async def ready() -> Response:
        """Readiness: the required experts have a ready replica. Public."""
        ok, problems = gateway.readiness()
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "problems": problems},
            status_code=200 if ok else 503,
        )

    @app.get("/v1/models", tags=["openai"])
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        data = [
            {
                "id": "auto",
                "object": "model",
                "created": gateway.created,
                "owned_by": "corral",
                "corral": {"kind": "router", "description": "mixture-of-experts routing"},
            }
        ]
        if gateway.agent is not None:
            description = f"the agent: workflow {gateway.agent.settings.workflow!r} with memory and tools"
            data.append({
                "id": AGENT_MODEL, "object": "model", "created": gateway.created, "owned_by": "corral",
                "corral": {"kind": "agent", "description": description},
            })  # fmt: skip
        for name, expert in gateway.router.experts.items():
            meta = {"kind": expert.kind, "description": expert.description, "model": expert.model}
            for model_id in [name, *expert.aliases]:
                data.append({
                    "id": model_id, "object": "model", "created": gateway.created,
                    "owned_by": "corral", "corral": {**meta, "expert": name},
                })  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request) -> Response:
        if gateway.agent is None:
            return await forward(request, CHAT)
        authorize(request)
        started = time.perf_counter()
        raw = await read_body(request, gateway.max_body_bytes)
        body = parse_body(raw)
        if body.get("model") == AGENT_MODEL:
            return await agent_chat(request, gateway.agent, body)
        return await proxy.serve(CHAT, body, raw, request=request, started=started)

    @app.post("/v1/completions", tags=["openai"])
    async def completions(request: Request) -> Response:
        return await forward(request, COMPLETIONS)

    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(request: Request) -> Response:
        return await forward(request, EMBEDDINGS)

    @app.get("/api/status", tags=["corral"])
    async def status(request: Request) -> dict[str, Any]:
        authorize(request)
        return gateway.status()

    @app.get("/api/keys", tags=["admin"])
    async def list_keys(request: Request) -> dict[str, Any]:
        """Key ids, names and scopes (never secrets). Admin scope."""
        authorize(request, "admin")
        return {"keys": [_key_json(r) for r in gateway.keys.list()]}

    @app.post("/api/keys", tags=["admin"], status_code=201)
    async def create_key(request: Request) -> dict[str, Any]:
        """Create a key from {"name": ..., "scope": "user"|"admin"}; the secret is in this
        response only. Admin scope."""
        authorize(request, "admin")  # before reading the body: strangers learn nothing
        try:
            body = NewKey.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise BadRequestError(f"{param or 'body'}: {first['msg']}", param=param) from None
        record, secret = gateway.keys.create(body.name, body.scope)
        return {**_key_json(record), "key": secret}

    @app.delete("/api/keys/{key_id}", tags=["admin"])
    async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
        """Revoke a key from the next request on. Admin scope."""
        authorize(request, "admin")
        if key_id not in {r.id for r in gateway.keys.list()}:
            raise NotFoundError(f"no key with id {key_id!r}; GET /api/keys lists them")
        return _key_json(gateway.keys.revoke(key_id))

    @app.get("/metrics", tags=["corral"])
    async def metrics(request: Request) -> Response:
        authorize(request)
        for backend in gateway.router.registry.all():
            labels = (backend.expert, backend.name)
            gateway.metrics.healthy.labels(*labels).set(1 if backend.state.healthy else 0)
            gateway.metrics.in_flight.labels(*labels).set(backend.state.in_flight)
            gateway.metrics.tokens_per_second.labels(*labels).set(backend.state.tokens_per_second)
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _same_origin(conn: HTTPConnection) -> None:
    """A cookie only counts from our own pages: SameSite=Strict stops other sites, and this stops
    another port on the same host (SameSite ignores ports) from riding on the login."""
    origin = conn.headers.get("origin")
    if origin is None:
        return  # browsers send Origin on every cross-origin request and on every WebSocket
    host = conn.headers.get("host", "")
    if origin.split("://", 1)[-1] != host:
        raise ForbiddenError(
            f"cross-origin request from {origin} refused; open Mission Control at http://{host}/ "
            "or send an API key in the Authorization header"
        )


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    scope: Scope = "user"


def _key_json(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "scope": record.scope,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }
