"""The `ssh` tool: run one command on an allowlisted host over SSH, with host keys always checked.

Hosts come from `agent.tools.ssh.hosts` as `host`, `user@host`, `host:port` or `user@host:port`
(`[v6addr]:port` for IPv6). A request names a host the same way and must match an entry; the
user and port default to the entry's. Host keys are verified against the configured known_hosts
file (default ~/.ssh/known_hosts); a missing file or an unknown key is an error that says how to
add the key, never a silent accept.
"""

from __future__ import annotations

import asyncio
import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from corral.agent.settings import SshConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec
from corral.agent.tools.output import read_capped
from corral.errors import ConfigError

HOSTS_KEY = "agent.tools.ssh.hosts"


@dataclass(frozen=True)
class Target:
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> Target:
        text = text.strip()
        user, at, rest = text.rpartition("@")
        if not at:
            user, rest = "", text
        port: int | None = None
        if rest.startswith("["):  # [v6addr]:port or [v6addr]
            host, _, tail = rest[1:].partition("]")
            if tail:
                if not tail.startswith(":"):
                    raise ValueError(text)
                port = int(tail[1:])
        elif rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
            port = int(port_text)
        else:
            host = rest
        if not host or any(ch.isspace() for ch in host) or host.startswith("-"):
            raise ValueError(text)
        if port is not None and not 0 < port < 65536:
            raise ValueError(text)
        return cls(user or None, host.lower(), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}:{self.port or 22}"


class SshTool:
    """Run a command on one of the configured hosts; returns its output and exit status."""

    def __init__(self, config: SshConfig) -> None:
        self.config = config
        self.entries: list[Target] = []
        for entry in config.hosts:
            try:
                self.entries.append(Target.parse(entry))
            except ValueError:
                raise ConfigError(
                    f"{HOSTS_KEY} has an entry {entry!r} that is not host, user@host or host:port"
                ) from None
        self.spec = ToolSpec(
            name="ssh",
            description=(
                "Run one shell command on a configured host over SSH and return its output and exit status. "
                f"Hosts: {', '.join(config.hosts) or 'none configured'}."
            ),
            parameters={
                "type": "object",
                "properties": {
                    "host": {"type": "string", "description": "a configured host, optionally user@host"},
                    "command": {"type": "string", "minLength": 1, "description": "the command line to run"},
                },
                "required": ["host", "command"],
                "additionalProperties": False,
            },
            risk="high",
            timeout_s=config.connect_timeout_s + config.command_timeout_s + 5,
        )

    def resolve(self, requested: str) -> Target:
        """The allowlist entry a request names, with the user and port filled in; ToolError otherwise."""
        allowed = ", ".join(self.config.hosts) or "none"
        refusal = (
            f"host {requested!r} is not in the ssh allowlist ({allowed}); "
            f"ask the user to add it to {HOSTS_KEY} in corral.yaml"
        )
        try:
            want = Target.parse(requested)
        except ValueError:
            raise ToolError(refusal) from None
        default_user = self.config.username or getpass.getuser()
        for entry in self.entries:
            user = entry.user or default_user
            port = entry.port or 22
            if entry.host != want.host:
                continue
            if want.user is not None and want.user != user:
                continue
            if want.port is not None and want.port != port:
                continue
            return Target(user, entry.host, port)
        raise ToolError(refusal)

    def _known_hosts(self, target: Target) -> Path:
        path = (self.config.known_hosts or Path("~/.ssh/known_hosts")).expanduser()
        if not path.is_file():
            raise ToolError(
                f"there is no known_hosts file at {path}, so the key of {target.host} cannot be checked; "
                f"check the host's key fingerprint, then add it with `ssh-keyscan -p {target.port} "
                f"{target.host} >> {path}` (or point agent.tools.ssh.known_hosts at a file that has it)"
            )
        return path

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        target = self.resolve(str(args["host"]))
        command = str(args["command"])
        known_hosts = self._known_hosts(target)
        cap = self.config.max_output_bytes
        options: dict[str, Any] = {}
        if self.config.client_keys:
            options["client_keys"] = [str(p.expanduser()) for p in self.config.client_keys]
        try:
            async with asyncio.timeout(self.config.connect_timeout_s):
                conn = await asyncssh.connect(
                    target.host,
                    target.port,
                    username=target.user,
                    known_hosts=str(known_hosts),
                    connect_timeout=self.config.connect_timeout_s,
                    **options,
                )
        except TimeoutError:
            raise ToolError(
                f"could not connect to {target} within {self.config.connect_timeout_s:g} s; "
                "check that the host is up and sshd listens on that port"
            ) from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise ToolError(
                f"the host key of {target} is not in {known_hosts} ({exc.reason}); check its fingerprint, "
                f"then add it with `ssh-keyscan -p {target.port} {target.host} >> {known_hosts}`"
            ) from None
        except asyncssh.PermissionDenied as exc:
            raise ToolError(
                f"{target} refused the login as {target.user} ({exc.reason}); install the public key of "
                "one of agent.tools.ssh.client_keys (or ~/.ssh/id_*) in its authorized_keys"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ToolError(f"could not connect to {target}: {exc}") from None
        async with conn:
            try:
                async with asyncio.timeout(self.config.command_timeout_s):
                    process = await conn.create_process(command, encoding=None)
                    process.stdin.write_eof()
                    (out, out_cut), (err, err_cut) = await asyncio.gather(
                        read_capped(process.stdout, cap), read_capped(process.stderr, cap)
                    )
                    completed = await process.wait(check=False)
            except TimeoutError:
                raise ToolError(
                    f"the command on {target} ran longer than {self.config.command_timeout_s:g} s and was "
                    "stopped; raise agent.tools.ssh.command_timeout_s or run a shorter command"
                ) from None
            except asyncssh.Error as exc:
                raise ToolError(f"running the command on {target} failed: {exc}") from None
        status = completed.exit_status
        signal = completed.exit_signal[0] if completed.exit_signal else None
        stdout = out.decode(errors="replace")
        stderr = err.decode(errors="replace")
        parts = [stdout.rstrip("\n")] if stdout else []
        if out_cut:
            parts.append(f"[stdout cut at {cap} bytes]")
        if stderr:
            parts.append(
                "[stderr]\n" + stderr.rstrip("\n") + (f"\n[stderr cut at {cap} bytes]" if err_cut else "")
            )
        ending = f"killed by signal {signal}" if signal else f"exit status {status}"
        parts.append(f"[{ending}]")
        data = {
            "host": str(target),
            "exit_status": status,
            "signal": signal,
            "stdout": stdout,
            "stderr": stderr,
            "truncated": out_cut or err_cut,
        }
        return ToolResult(status == 0, "\n".join(parts), data)
