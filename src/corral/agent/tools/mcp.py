"""MCP client tools: connect to the configured MCP servers (stdio `command` or streamable-HTTP `url`)
with the official SDK and expose each server tool as a corral Tool named `mcp_<server>_<tool>`.

Each connection lives in its own asyncio task, which enters and leaves the SDK's `Client` (its
anyio task groups must be entered and exited by one task); tool calls only use the session, so
they can come from any task. A server whose connection ends makes the call that saw it fail with
a clear error; the next call starts it again (one attempt per call).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import IO, Any

import jsonschema
import mcp_types
from mcp import Client, MCPError, StdioServerParameters, stdio_client
from mcp.client import Transport
from mcp_types import CONNECTION_CLOSED, CallToolResult, Implementation

from corral.agent.settings import McpServerConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec

logger = logging.getLogger(__name__)

MAX_NAME = 64
STDERR_TAIL_BYTES = 2000
CLOSE_TIMEOUT_S = 10.0
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(server: str, tool: str, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """`mcp_<server>_<tool>` reduced to [A-Za-z0-9_-]{1,64}, with a numeric suffix if it is taken."""
    base = _UNSAFE.sub("_", f"mcp_{server}_{tool}")[:MAX_NAME]
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[: MAX_NAME - len(suffix)] + suffix
    return name


def _version() -> str:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    leaf = _leaf(exc)
    text = str(leaf) or type(leaf).__name__
    return text if isinstance(leaf, ToolError | MCPError) else f"{type(leaf).__name__}: {text}"


class McpServer:
    """One configured MCP server: its connection, its tools, and calls to them."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.name = config.name
        self.remote_tools: list[mcp_types.Tool] = []
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None
        self._errlog: IO[str] | None = None
        self._lock = asyncio.Lock()
        self._shut = False  # aclose() was called: no more restarts

    def __repr__(self) -> str:
        return f"McpServer({self.name!r})"

    @property
    def where(self) -> str:
        return " ".join(self.config.command) if self.config.command else str(self.config.url)

    def _target(self) -> StdioServerParameters | str:
        if self.config.command:
            command, *args = self.config.command
            return StdioServerParameters(command=command, args=args, env=dict(self.config.env) or None)
        if self.config.url:
            return self.config.url
        raise ToolError(
            f"MCP server {self.name!r} has neither 'command' nor 'url'; set one in agent.tools.mcp"
        )

    def stderr_tail(self) -> str:
        """The end of what a stdio server wrote to stderr (empty for HTTP servers)."""
        if self._errlog is None:
            return ""
        try:
            fd = self._errlog.fileno()
            size = os.fstat(fd).st_size
            start = max(0, size - STDERR_TAIL_BYTES)
            return os.pread(fd, size - start, start).decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""

    def _with_stderr(self, message: str) -> str:
        tail = self.stderr_tail()
        return f"{message}; its stderr ends with:\n{tail}" if tail else message

    async def _own(self, client: Client, ready: asyncio.Future[None], stop: asyncio.Event) -> None:
        """Hold the connection open until told to stop (runs as its own task)."""
        try:
            async with client:
                self._client = client
                if not ready.done():
                    ready.set_result(None)
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                logger.warning(
                    "MCP server %r: the connection ended with an error: %s", self.name, _describe(exc)
                )
        finally:
            if self._client is client:
                self._client = None
            if not ready.done():
                ready.cancel()

    async def connect(self) -> None:
        """Start (or restart) the connection; ToolError with the reason if it does not come up."""
        await self._disconnect()
        target = self._target()
        if isinstance(target, StdioServerParameters):
            # the server's stderr goes to a temp file, so a failure can say what the server said
            self._errlog = tempfile.TemporaryFile("w+", prefix=f"corral-mcp-{self.name}-")  # noqa: SIM115
            transport: Transport | str = stdio_client(target, errlog=self._errlog)
        else:
            transport = target
        client = Client(transport, client_info=Implementation(name="corral", version=_version()), cache=None)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._own(client, ready, self._stop), name=f"mcp-server-{self.name}")
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                await asyncio.shield(ready)
                self.remote_tools = await self._list_tools(client)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                await self._disconnect()
                raise
            if isinstance(exc, TimeoutError):
                reason = f"it did not answer within {self.config.connect_timeout_s:g} s"
            else:
                reason = _describe(exc)
            message = self._with_stderr(f"MCP server {self.name!r} ({self.where}) did not start: {reason}")
            await self._disconnect()
            raise ToolError(message) from None

    async def _list_tools(self, client: Client) -> list[mcp_types.Tool]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # a server whose cursor never ends cannot hang the start
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tools

    def _connection_closed(self) -> bool:
        client = self._client
        if client is None:
            return True
        # The SDK has no public "is the connection closed" yet; its dispatcher keeps a flag. Without
        # it a dead server is noticed by the next call instead (and restarted by the one after).
        dispatcher = getattr(client.session, "_dispatcher", None)
        return bool(getattr(dispatcher, "_closed", False))

    async def _disconnect(self) -> None:
        task, stop = self._task, self._stop
        self._task = self._stop = None
        self._client = None
        if task is not None:
            if stop is not None:
                stop.set()
            done, _ = await asyncio.wait([task], timeout=CLOSE_TIMEOUT_S)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._errlog is not None and task is not None:
            self._errlog.close()
            self._errlog = None

    async def aclose(self) -> None:
        self._shut = True
        async with self._lock:
            await self._disconnect()

    async def call_tool(self, name: str, arguments: dict[str, Any], timeout_s: float) -> CallToolResult:
        async with self._lock:
            if self._shut:
                raise ToolError(
                    f"MCP server {self.name!r} has been shut down with the agent; it cannot be used"
                )
            if self._connection_closed():
                logger.info("MCP server %r is not connected; starting it again", self.name)
                await self.connect()  # one attempt; its ToolError says why it failed
            client = self._client
        if client is None:
            raise ToolError(f"MCP server {self.name!r} is not connected; try again")
        try:
            return await client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise ToolError(
                    f"MCP server {self.name!r} refused {name}: {exc.message} (code {exc.code})"
                ) from None
            lost: Exception = exc
        except OSError as exc:
            lost = exc
        message = self._with_stderr(
            f"MCP server {self.name!r} ({self.where}) stopped while running {name} ({_describe(lost)}); "
            "the call may or may not have taken effect. The server will be started again on the next call"
        )
        async with self._lock:
            if self._client is client:
                await self._disconnect()
        raise ToolError(message)

    def tools(self, taken: set[str] | None = None) -> list[McpTool]:
        """This server's tools as corral Tools; tools whose schema cannot be used are logged and skipped."""
        taken = set() if taken is None else taken
        result: list[McpTool] = []
        for remote in self.remote_tools:
            schema = dict(remote.input_schema or {})
            schema.setdefault("type", "object")
            try:
                if schema.get("type") != "object":
                    raise jsonschema.SchemaError("the root of an input schema must be of type object")
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                logger.warning(
                    "MCP server %r: tool %r skipped, bad input schema: %s", self.name, remote.name, exc
                )
                continue
            name = tool_name(self.name, remote.name, taken)
            taken.add(name)
            result.append(McpTool(self, remote, name, schema))
        return result


class McpTool:
    """One tool of an MCP server, called through `tools/call`."""

    def __init__(self, server: McpServer, remote: mcp_types.Tool, name: str, schema: dict[str, Any]) -> None:
        self.server = server
        self.remote_name = remote.name
        description = (remote.description or remote.title or remote.name).strip()
        self.spec = ToolSpec(
            name=name,
            description=f"{description} (tool {remote.name!r} of MCP server {server.name!r})",
            parameters=schema,
            risk=server.config.risk,
            timeout_s=server.config.timeout_s,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        result = await self.server.call_tool(self.remote_name, args, self.spec.timeout_s)
        content, parts = render_content(result)
        data = {
            "server": self.server.name,
            "tool": self.remote_name,
            "is_error": result.is_error,
            "content": parts,
            "structured": result.structured_content,
        }
        return ToolResult(not result.is_error, content, data)


def _size(b64: str) -> int:
    return len(b64) * 3 // 4 - b64.count("=", -2)


def render_content(result: CallToolResult) -> tuple[str, list[dict[str, Any]]]:
    """The text a model reads, and a summary of each content part (binary data is left out)."""
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            texts.append(block.text)
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            size = _size(block.data)
            texts.append(f"[{block.type}: {block.mime_type}, {size} bytes, not shown]")
            parts.append({"type": block.type, "mime_type": block.mime_type, "bytes": size})
        elif isinstance(block, mcp_types.ResourceLink):
            label = f" ({block.name})" if block.name and block.name != str(block.uri) else ""
            texts.append(f"[resource link: {block.uri}{label}]")
            parts.append({"type": "resource_link", "uri": str(block.uri), "name": block.name})
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                texts.append(f"[resource {resource.uri}]\n{resource.text}")
                parts.append({"type": "resource", "uri": str(resource.uri), "text": resource.text})
            else:
                size = _size(resource.blob)
                texts.append(
                    f"[resource {resource.uri}: {resource.mime_type or 'binary'}, {size} bytes, not shown]"
                )
                parts.append({"type": "resource", "uri": str(resource.uri), "bytes": size})
        else:  # a content type newer than this code
            kind = getattr(block, "type", type(block).__name__)
            texts.append(f"[{kind} content, not shown]")
            parts.append({"type": kind})
    if not texts and result.structured_content is not None:
        texts.append(json.dumps(result.structured_content, ensure_ascii=False))
    content = "\n".join(texts)
    if not content:
        content = "(the tool returned an error without a message)" if result.is_error else "(no output)"
    return content, parts


async def connect_mcp_servers(configs: Sequence[McpServerConfig]) -> tuple[list[McpTool], AsyncExitStack]:
    """Connect to every configured server; one that fails is logged with its error and skipped.

    Returns the tools of the servers that came up and an exit stack that closes them all
    (`await stack.aclose()`, or `async with stack:`).
    """
    stack = AsyncExitStack()
    servers: list[McpServer] = []
    for config in configs:
        if any(s.name == config.name for s in servers):
            logger.error("MCP server %r is configured twice; the second entry is skipped", config.name)
            continue
        servers.append(McpServer(config))
    try:
        outcomes = await asyncio.gather(*(s.connect() for s in servers), return_exceptions=True)
    except BaseException:
        await asyncio.gather(*(s.aclose() for s in servers), return_exceptions=True)
        raise
    tools: list[McpTool] = []
    taken: set[str] = set()
    for server, outcome in zip(servers, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            logger.error("MCP server %r is skipped: %s", server.name, _describe(outcome))
            await server.aclose()
            continue
        stack.push_async_callback(server.aclose)
        server_tools = server.tools(taken)
        logger.info("MCP server %r: %d tools", server.name, len(server_tools))
        tools.extend(server_tools)
    return tools, stack
