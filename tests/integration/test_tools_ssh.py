"""The ssh tool against a real asyncssh server that runs each command in a real subprocess."""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from corral.agent.settings import SshConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolRegistry
from corral.agent.tools.ssh import SshTool, Target
from corral.errors import ConfigError

CTX = ToolContext()


async def _run_command(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Run the requested command with /bin/sh and relay its output and exit status."""
    child = await asyncio.create_subprocess_shell(
        process.command or "true",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    process.stdout.write(out)
    process.stderr.write(err)
    process.exit(child.returncode or 0)


@dataclass
class SshServer:
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key: asyncssh.SSHKey


@pytest.fixture
async def ssh_server(tmp_path: Path) -> AsyncIterator[SshServer]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = tmp_path / "id_ed25519"
    client_key.write_private_key(str(client_key_path))
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    server = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        process_factory=_run_command,
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
    try:
        yield SshServer(port, getpass.getuser(), client_key_path, known_hosts, host_key)
    finally:
        server.close()
        await server.wait_closed()


def _tool(server: SshServer, **overrides: object) -> SshTool:
    settings: dict[str, object] = {
        "hosts": [f"127.0.0.1:{server.port}"],
        "known_hosts": server.known_hosts,
        "client_keys": [server.client_key],
        "connect_timeout_s": 5,
        "command_timeout_s": 10,
    }
    settings.update(overrides)
    return SshTool(SshConfig.model_validate(settings))


async def test_runs_a_command_and_returns_output_and_status(ssh_server: SshServer) -> None:
    tool = _tool(ssh_server)
    result = await tool.call({"host": "127.0.0.1", "command": "echo hello from $((40 + 2))"}, CTX)
    assert result.ok, result.content
    assert result.data["stdout"] == "hello from 42\n"
    assert result.data["exit_status"] == 0
    assert "[exit status 0]" in result.content

    failing = await tool.call(
        {"host": f"127.0.0.1:{ssh_server.port}", "command": "echo oops >&2; exit 3"}, CTX
    )
    assert not failing.ok
    assert failing.data["exit_status"] == 3
    assert "[stderr]\noops" in failing.content and "[exit status 3]" in failing.content


async def test_output_is_capped(ssh_server: SshServer) -> None:
    tool = _tool(ssh_server, max_output_bytes=1024)
    result = await tool.call({"host": "127.0.0.1", "command": "head -c 100000 /dev/zero | tr '\\0' x"}, CTX)
    assert result.ok
    assert len(result.data["stdout"]) == 1024 and result.data["truncated"]
    assert "[stdout cut at 1024 bytes]" in result.content


async def test_host_not_in_allowlist_is_refused(ssh_server: SshServer) -> None:
    tool = _tool(ssh_server)
    for host in ("localhost", "127.0.0.2", f"127.0.0.1:{ssh_server.port + 1}", "intruder@127.0.0.1"):
        with pytest.raises(ToolError, match=r"not in the ssh allowlist .*agent\.tools\.ssh\.hosts"):
            await tool.call({"host": host, "command": "true"}, CTX)


async def test_user_at_host_entries(ssh_server: SshServer) -> None:
    tool = _tool(
        ssh_server, hosts=[f"{ssh_server.user}@127.0.0.1:{ssh_server.port}"], username="someone-else"
    )
    result = await tool.call({"host": f"{ssh_server.user}@127.0.0.1", "command": "echo hi"}, CTX)
    assert result.ok and result.data["host"] == f"{ssh_server.user}@127.0.0.1:{ssh_server.port}"
    with pytest.raises(ToolError, match="allowlist"):
        await tool.call({"host": "someone-else@127.0.0.1", "command": "echo hi"}, CTX)


async def test_unknown_host_key_is_refused(ssh_server: SshServer, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{ssh_server.port} {other}")
    tool = _tool(ssh_server, known_hosts=wrong)
    with pytest.raises(ToolError, match=r"host key .* is not in .*wrong_known_hosts.*ssh-keyscan"):
        await tool.call({"host": "127.0.0.1", "command": "true"}, CTX)

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(ToolError, match="ssh-keyscan"):
        await _tool(ssh_server, known_hosts=empty).call({"host": "127.0.0.1", "command": "true"}, CTX)


async def test_missing_known_hosts_file_is_an_error(ssh_server: SshServer, tmp_path: Path) -> None:
    tool = _tool(ssh_server, known_hosts=None)  # default ~/.ssh/known_hosts; HOME is a fresh tmp dir
    with pytest.raises(ToolError, match=r"no known_hosts file at .*known_hosts.*ssh-keyscan -p"):
        await tool.call({"host": "127.0.0.1", "command": "true"}, CTX)


async def test_through_the_registry(ssh_server: SshServer) -> None:
    registry = ToolRegistry([_tool(ssh_server)])
    assert registry.decide("ssh") == "ask"
    result = await registry.invoke("ssh", {"host": "127.0.0.1", "command": "printf ok"}, CTX)
    assert result.ok and result.content.startswith("ok")
    refused = await registry.invoke("ssh", {"host": "10.0.0.9", "command": "true"}, CTX)
    assert not refused.ok and "agent.tools.ssh.hosts" in refused.content


def test_target_parsing() -> None:
    assert Target.parse("pi@Node1:2222") == Target("pi", "node1", 2222)
    assert Target.parse("[::1]:22") == Target(None, "::1", 22)
    assert Target.parse("fe80::1") == Target(None, "fe80::1", None)
    for bad in ("", "host:99999", "-oProxyCommand=x", "a b"):
        with pytest.raises(ValueError):
            Target.parse(bad)
    with pytest.raises(ConfigError, match=r"agent\.tools\.ssh\.hosts"):
        SshTool(SshConfig(hosts=["host:notaport"]))


async def test_nothing_listening_is_a_clear_error(ssh_server: SshServer) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    known = ssh_server.known_hosts
    known.write_text(
        known.read_text() + f"\n[127.0.0.1]:{port} {ssh_server.host_key.export_public_key().decode()}"
    )
    tool = _tool(ssh_server, hosts=[f"127.0.0.1:{port}"])
    with pytest.raises(ToolError, match=rf"could not connect to {getpass.getuser()}@127\.0\.0\.1:{port}"):
        await tool.call({"host": "127.0.0.1", "command": "true"}, CTX)
