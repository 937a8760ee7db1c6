"""MCP tools against a real MCP server (tests/fixtures/mcp_echo_server.py) over stdio and streamable HTTP."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import psutil
import pytest

from corral.agent.settings import McpServerConfig
from corral.agent.tools.base import ToolContext, ToolRegistry
from corral.agent.tools.mcp import connect_mcp_servers, tool_name

CTX = ToolContext()
SERVER = Path(__file__).parent.parent / "fixtures" / "mcp_echo_server.py"
EXPECTED = {
    "mcp_echo_echo",
    "mcp_echo_add",
    "mcp_echo_fail",
    "mcp_echo_pixel",
    "mcp_echo_weird_name",
    "mcp_echo_die",
}


def _stdio(name: str = "echo", **extra: object) -> McpServerConfig:
    return McpServerConfig.model_validate({"name": name, "command": [sys.executable, str(SERVER)], **extra})


def _server_processes() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if (
                any(str(SERVER) == part for part in child.cmdline())
                and child.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(child)
        except psutil.Error:
            pass
    return found


@pytest.fixture
async def registry() -> AsyncIterator[ToolRegistry]:
    tools, stack = await connect_mcp_servers([_stdio(risk="low", timeout_s=20)])
    async with stack:
        yield ToolRegistry(tools)


@pytest.mark.slow
async def test_tools_are_listed_and_called(registry: ToolRegistry) -> None:
    assert set(registry.names()) == EXPECTED
    add = registry.get("mcp_echo_add").spec
    assert add.risk == "low" and add.timeout_s == 20
    assert add.parameters["required"] == ["a", "b"]
    assert add.description.startswith("Add two integers.")
    assert registry.decide("mcp_echo_add") == "auto"

    echoed = await registry.invoke("mcp_echo_echo", {"text": "hello over stdio"}, CTX)
    assert echoed.ok and echoed.content == "hello over stdio"

    added = await registry.invoke("mcp_echo_add", {"a": 2, "b": 40}, CTX)
    assert added.ok and added.content == "42"
    assert added.data["structured"] == {"result": 42}

    image = await registry.invoke("mcp_echo_pixel", {}, CTX)
    assert image.ok
    assert image.content.splitlines() == ["a tiny image", "[image: image/png, 70 bytes, not shown]"]
    assert image.data["content"][1] == {"type": "image", "mime_type": "image/png", "bytes": 70}

    weird = await registry.invoke("mcp_echo_weird_name", {}, CTX)
    assert weird.ok and weird.content == "ok"

    bad_args = await registry.invoke("mcp_echo_add", {"a": "two"}, CTX)
    assert not bad_args.ok and "bad arguments" in bad_args.content


@pytest.mark.slow
async def test_tool_error_is_not_ok(registry: ToolRegistry) -> None:
    failed = await registry.invoke("mcp_echo_fail", {"reason": "disk full"}, CTX)
    assert not failed.ok
    assert "failed on purpose: disk full" in failed.content
    assert failed.data["is_error"] is True


@pytest.mark.slow
async def test_a_dead_server_is_reported_then_restarted(
    registry: ToolRegistry,
) -> None:
    [first] = _server_processes()
    died = await registry.invoke("mcp_echo_die", {}, CTX)
    assert not died.ok
    assert "MCP server 'echo'" in died.content and "stopped while running die" in died.content
    assert "started again on the next call" in died.content

    again = await registry.invoke("mcp_echo_echo", {"text": "back"}, CTX)
    assert again.ok, again.content
    assert again.content == "back"
    [second] = _server_processes()
    assert second.pid != first.pid


@pytest.mark.slow
async def test_a_server_killed_while_idle_is_restarted_on_the_next_call(
    registry: ToolRegistry,
) -> None:
    [process] = _server_processes()
    process.kill()
    process.wait(5)
    await asyncio.sleep(0.2)  # let the client read the end of the pipe
    result = await registry.invoke("mcp_echo_echo", {"text": "still here"}, CTX)
    assert result.ok, result.content
    assert result.content == "still here"


@pytest.mark.slow
async def test_a_server_that_does_not_start_is_skipped(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    crash = tmp_path / "crash.py"
    crash.write_text("import sys\nsys.stderr.write('cannot open the database\\n')\nsys.exit(2)\n")
    configs = [
        McpServerConfig(name="missing", command=["/nonexistent/mcp-server", "--flag"]),
        McpServerConfig(name="crashes", command=[sys.executable, str(crash)], connect_timeout_s=10),
        _stdio(),
    ]
    with caplog.at_level(logging.ERROR, logger="corral.agent.tools.mcp"):
        tools, stack = await connect_mcp_servers(configs)
    async with stack:
        assert {t.spec.name for t in tools} == EXPECTED
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        missing = next(m for m in messages if "'missing'" in m)
        assert "/nonexistent/mcp-server" in missing and "FileNotFoundError" in missing
        crashed = next(m for m in messages if "'crashes'" in m)
        assert "did not start" in crashed and "cannot open the database" in crashed
    assert _server_processes() == []


@pytest.mark.slow
async def test_close_stops_the_server_process() -> None:
    tools, stack = await connect_mcp_servers([_stdio()])
    assert len(_server_processes()) == 1
    await stack.aclose()
    assert _server_processes() == []
    result = await ToolRegistry(tools).invoke("mcp_echo_echo", {"text": "x"}, CTX)
    assert not result.ok and "has been shut down" in result.content
    assert _server_processes() == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_http_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            assert process.stderr is not None
            raise RuntimeError(f"the HTTP MCP server exited: {process.stderr.read().decode()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


@pytest.mark.slow
async def test_streamable_http() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    process = _start_http_server(port)
    try:
        tools, stack = await connect_mcp_servers([McpServerConfig(name="web", url=url, risk="high")])
        async with stack:
            registry = ToolRegistry(tools)
            assert "mcp_web_echo" in registry.names()
            assert registry.get("mcp_web_echo").spec.risk == "high"
            echoed = await registry.invoke("mcp_web_echo", {"text": "hello over http"}, CTX)
            assert echoed.ok and echoed.content == "hello over http"
            failed = await registry.invoke("mcp_web_fail", {"reason": "http"}, CTX)
            assert not failed.ok and "failed on purpose: http" in failed.content

            # the server goes away: a clear error; once it is back, the next call reconnects
            process.kill()
            _stop(process)
            lost = await registry.invoke("mcp_web_echo", {"text": "anyone?"}, CTX)
            assert not lost.ok and f"MCP server 'web' ({url}) stopped" in lost.content
            process = _start_http_server(port)
            back = await registry.invoke("mcp_web_echo", {"text": "back"}, CTX)
            assert back.ok and back.content == "back"
    finally:
        _stop(process)


async def test_unreachable_http_server_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    with caplog.at_level(logging.ERROR, logger="corral.agent.tools.mcp"):
        tools, stack = await connect_mcp_servers([McpServerConfig(name="gone", url=url, connect_timeout_s=5)])
    await stack.aclose()
    assert tools == []
    assert any("'gone'" in r.getMessage() and url in r.getMessage() for r in caplog.records)


def test_tool_names_are_sanitised() -> None:
    assert tool_name("lab", "read file") == "mcp_lab_read_file"
    assert tool_name("lab", "ns.get/thing") == "mcp_lab_ns_get_thing"
    long = tool_name("lab", "x" * 100)
    assert len(long) == 64 and long.startswith("mcp_lab_xxx")
    assert tool_name("lab", "x" * 100, {long}) == long[:62] + "_2"
    assert tool_name("lab", "a.b", {"mcp_lab_a_b"}) == "mcp_lab_a_b_2"


def test_config_needs_one_transport() -> None:
    with pytest.raises(ValueError, match="exactly one of 'command' or 'url'"):
        McpServerConfig(name="x")
    with pytest.raises(ValueError, match="exactly one of 'command' or 'url'"):
        McpServerConfig(name="x", command=["a"], url="http://h/mcp")


async def test_nothing_configured() -> None:
    tools, stack = await connect_mcp_servers([])
    assert tools == [] and isinstance(stack, AsyncExitStack)
    await stack.aclose()
