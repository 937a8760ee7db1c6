"""Corral as an MCP server: the agent's enabled tools (under the approval policy), `ask_corral`
and read-only cluster tools and resources, served over streamable HTTP at the gateway's `/mcp`
(API key required) and bridged to stdio by `corral mcp` for desktop clients.

One implementation lives in the gateway process, next to the agent, its run history and its
approval gates; `corral mcp` is only a stdio <-> HTTP bridge to it, so a desktop client never
loads a second copy of the models or bypasses the gateway's keys and limits.

Approval: a tool whose policy is `ask` (or `deny`) is refused when called directly over MCP,
with a message pointing to `ask_corral` (whose run waits on a person's approval in Mission
Control like any other run) or to `agent.tools.approval`. A direct MCP call has no run for a
gate to hang on, and an MCP client that waited minutes for a person would time out anyway.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import httpx2
import mcp_types as types
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared._httpx_utils import create_mcp_http_client
from starlette.requests import HTTPConnection
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from corral.agent.tools.base import ToolContext
from corral.errors import ConfigError, CorralError
from corral.gateway.auth import KeyStore, bearer_token
from corral.gateway.errors import error_response

if TYPE_CHECKING:
    from fastapi import FastAPI

    from corral.gateway.app import Gateway

log = logging.getLogger("corral.mcp")

MCP_PATH = "/mcp"
ASK = "ask_corral"
STATUS = "corral_status"
EXPERTS = "corral_experts"
STATUS_URI = "corral://status"
EXPERTS_URI = "corral://experts"
HIDDEN_TOOLS = frozenset({"final_answer"})  # a workflow device, meaningless outside a run

_READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
_ASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 1, "description": "what to ask corral's agent"},
        "session": {
            "type": "string",
            "description": "a conversation id: turns with the same session share the agent's memory",
        },
    },
    "required": ["question"],
    "additionalProperties": False,
}
_NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _text(text: str, *, error: bool = False, structured: Any = None) -> types.CallToolResult:
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
    return types.CallToolResult(content=content, is_error=error, structured_content=structured)


def experts_of(gateway: Gateway) -> list[dict[str, Any]]:
    """Each expert's name, kind, description, aliases and how many replicas are ready."""
    out = []
    for name, expert in gateway.router.experts.items():
        backends = gateway.router.registry.backends(name)
        out.append({
            "name": name, "kind": expert.kind, "model": expert.model, "description": expert.description,
            "aliases": list(expert.aliases), "auto": expert.auto,
            "replicas": len(backends), "ready": sum(1 for b in backends if b.state.healthy),
        })  # fmt: skip
    return out


class CorralMcp:
    """The MCP handlers over one Gateway (and its agent, when it has one)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.server: Server[Any] = Server(
            "corral",
            version=_version(),
            instructions=(
                "Corral is a private cluster of local models with an agent. Call ask_corral to have "
                "the agent answer (it may use tools; risky ones wait for a person's approval in "
                "Mission Control). corral_status and corral_experts describe the cluster."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_read_resource=self._read_resource,
        )

    # --- tools ----------------------------------------------------------------------------

    def _agent_ready(self) -> bool:
        return self.gateway.agent is not None and self.gateway.agent.started

    def tools(self) -> list[types.Tool]:
        tools = [
            types.Tool(
                name=STATUS,
                description="Corral's live status: experts, replicas (health, load, speed), nodes, agent.",
                input_schema=_NO_ARGS,
                annotations=_READ_ONLY,
            ),
            types.Tool(
                name=EXPERTS,
                description="The experts (models) corral serves: name, kind, description, ready replicas.",
                input_schema=_NO_ARGS,
                annotations=_READ_ONLY,
            ),
        ]
        agent = self.gateway.agent
        if agent is None or not agent.started:
            return tools
        tools.append(
            types.Tool(
                name=ASK,
                description=(
                    "Ask corral's agent (its default workflow, with memory and tools) and get its "
                    "answer and the run id; GET /api/runs/RUN_ID on the gateway shows every step."
                ),
                input_schema=_ASK_SCHEMA,
                annotations=types.ToolAnnotations(open_world_hint=True),
            )
        )
        registry = agent.services.tools
        if registry is None:
            return tools
        taken = {t.name for t in tools}
        for spec in registry.specs():
            if spec.name in HIDDEN_TOOLS or spec.name in taken:
                continue
            decision = registry.policy.decide(spec)
            note = {
                "auto": "",
                "ask": " [needs a person's approval: refused over MCP, use ask_corral]",
                "deny": " [denied by corral's approval policy]",
            }[decision]
            tools.append(
                types.Tool(
                    name=spec.name,
                    description=f"{spec.description} (risk: {spec.risk}){note}",
                    input_schema=dict(spec.parameters),
                    annotations=types.ToolAnnotations(read_only_hint=spec.risk == "low"),
                )
            )
        return tools

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools())

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await self.call(params.name, params.arguments or {})

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Run one tool; every failure comes back as an error result that says what to do."""
        if name == STATUS:
            status = self.gateway.status()
            return _text(json.dumps(status, default=str), structured=status)
        if name == EXPERTS:
            experts = {"experts": experts_of(self.gateway)}
            return _text(json.dumps(experts), structured=experts)
        if not self._agent_ready():
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"unknown tool {name!r}; tools/list names the tools (the agent is not running)",
            )
        if name == ASK:
            return await self._ask(arguments)
        return await self._agent_tool(name, arguments)

    async def _ask(self, arguments: dict[str, Any]) -> types.CallToolResult:
        question = arguments.get("question")
        session = arguments.get("session", "")
        if not isinstance(question, str) or not question.strip():
            return _text('ask_corral needs {"question": "..."}: a non-empty string', error=True)
        if not isinstance(session, str):
            return _text("ask_corral: session must be a string", error=True)
        agent = self.gateway.agent
        assert agent is not None
        handle = agent.chat([{"role": "user", "content": question}], session)
        record = await handle.result()
        if record.status != "succeeded":
            return _text(
                f"the agent run {record.id} {record.status}: {record.error}; GET /api/runs/{record.id} "
                f"shows where, and POST /api/runs/{record.id}/resume continues it",
                error=True,
                structured={"run_id": record.id, "status": record.status, "error": record.error},
            )
        answer = str((record.outputs or {}).get("answer", ""))
        return _text(answer, structured={"answer": answer, "run_id": record.id, "status": record.status})

    async def _agent_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        agent = self.gateway.agent
        assert agent is not None
        registry = agent.services.tools
        if registry is None or name in HIDDEN_TOOLS or name not in registry.names():
            known = ", ".join(t.name for t in self.tools())
            raise MCPError(
                code=types.INVALID_PARAMS, message=f"unknown tool {name!r}; the tools are: {known}"
            )
        decision = registry.decide(name)
        if decision == "deny":
            return _text(
                f"{name} is denied by corral's approval policy (agent.tools.approval); "
                "an administrator can change that in corral.yaml",
                error=True,
            )
        if decision == "ask":
            return _text(
                f"{name} needs a person's approval, which a direct MCP call cannot wait for; "
                f"call {ASK} instead (its run asks for approval in Mission Control), or set "
                f"`agent.tools.approval: {{{name}: auto}}` in corral.yaml to allow direct calls",
                error=True,
            )
        run_id = f"mcp_{uuid.uuid4().hex[:12]}"
        workdir = None
        if agent.services.workdir_root is not None:
            workdir = agent.services.workdir_root / run_id
            workdir.mkdir(parents=True, exist_ok=True)
        try:
            result = await registry.invoke(
                name, arguments, ToolContext(run_id, "mcp", "", workdir, agent.llm)
            )
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        log.info("MCP call of %s: %s in %.2f s", name, "ok" if result.ok else "failed", result.elapsed_s)
        data = result.data if isinstance(result.data, dict) else None
        return _text(result.content, error=not result.ok, structured=data)

    # --- resources ------------------------------------------------------------------------

    async def _list_resources(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=STATUS_URI, name="status", mime_type="application/json",
                    description="corral's live status (experts, replicas, nodes, agent)",
                ),
                types.Resource(
                    uri=EXPERTS_URI, name="experts", mime_type="application/json",
                    description="the experts corral serves and their ready replicas",
                ),
            ]
        )  # fmt: skip

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == STATUS_URI:
            data: Any = self.gateway.status()
        elif uri == EXPERTS_URI:
            data = {"experts": experts_of(self.gateway)}
        else:
            raise MCPError(
                code=types.INVALID_PARAMS,
                message=f"no resource {uri!r}; the resources are {STATUS_URI} and {EXPERTS_URI}",
            )
        text = json.dumps(data, default=str)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )


class _KeyRequired:
    """`/mcp` behind an API key in `Authorization: Bearer` or `X-API-Key` (never the browser's
    login cookie: no other web page can make a logged-in browser call tools)."""

    def __init__(self, app: StreamableHTTPASGIApp, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = HTTPConnection(scope).headers
        try:
            self.keys.verify(bearer_token(headers.get("authorization"), headers.get("x-api-key")))
        except CorralError as err:
            await error_response(err)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_mcp_route(app: FastAPI, gateway: Gateway) -> Callable[[], AbstractAsyncContextManager[None]]:
    """Mount `/mcp` (stateless streamable HTTP, JSON answers); returns the lifespan that runs
    the MCP session manager, for the app's lifespan to enter."""
    handlers = CorralMcp(gateway)
    manager = StreamableHTTPSessionManager(
        app=handlers.server,
        json_response=True,
        stateless=True,  # no per-client state held in the gateway: nothing to leak or expire
        max_request_body_size=gateway.max_body_bytes,
    )
    endpoint = _KeyRequired(StreamableHTTPASGIApp(manager), gateway.keys)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
    app.state.mcp = handlers

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with manager.run():
            yield

    return lifespan


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corral")
    except PackageNotFoundError:
        return "0"


# --- the stdio bridge (`corral mcp`) -------------------------------------------------------


def bridge_server(upstream: Client) -> Server[Any]:
    """A stdio-side server whose every request is answered by the gateway's `/mcp`."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await upstream.list_tools(cache_mode="refresh")

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await upstream.call_tool(params.name, params.arguments or {})

    async def list_resources(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return await upstream.list_resources(cache_mode="refresh")

    async def read_resource(
        ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        return await upstream.read_resource(str(params.uri), cache_mode="refresh")

    return Server(
        "corral",
        version=_version(),
        instructions=upstream.instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


async def serve_stdio(url: str, key: str, *, timeout_s: float = 900.0) -> None:
    """`corral mcp`: connect to the gateway's /mcp with `key`, then serve stdin/stdout until
    the desktop client closes them. Fails at once (CorralError) if the gateway is not there."""
    headers = {"authorization": f"Bearer {key}"}
    http = create_mcp_http_client(headers=headers, timeout=httpx2.Timeout(30.0, read=timeout_s))
    async with http:
        upstream = Client(
            streamable_http_client(url, http_client=http),
            client_info=types.Implementation(name="corral-mcp-bridge", version=_version()),
            cache=None,
        )
        try:
            await upstream.__aenter__()
        except Exception as exc:
            raise ConfigError(
                f"cannot reach corral's MCP endpoint at {url} ({_leaf(exc)}); start `corral up`, "
                "check --url, and give a valid API key (CORRAL_API_KEY or --key-file)"
            ) from None
        try:
            server = bridge_server(upstream)
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        finally:
            await upstream.__aexit__(None, None, None)


def _leaf(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
