"""The `agent:` section of corral.yaml: workflows, history retention, memory, approvals, tools.

Each tool's settings live here (not in the tool modules) so the whole file validates in one place
with line-numbered errors; the tools read their own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.integrations.settings import HomeAssistantConfig, WorldStateConfig

Decision = Literal["auto", "ask", "deny"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryConfig(_Strict):
    max_runs: int = Field(1000, ge=1, description="finished runs kept; the oldest go first")
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, description="stored bytes of run history")


class MemoryConfig(_Strict):
    embed_expert: str = Field("embed", description="the embedding expert that vectors come from")
    window_messages: int = Field(12, ge=0, description="recent messages of a session shown to the model")
    window_chars: int = Field(6000, ge=0)
    recall_k: int = Field(3, ge=0, le=50)
    min_score: float = Field(
        0.3, ge=-1, le=1, description="cosine similarity below which a memory is ignored"
    )


class SandboxConfig(_Strict):
    cpu_s: int = Field(10, ge=1, description="CPU seconds a sandboxed command may use")
    wall_s: float = Field(30.0, gt=0)
    memory_mb: int = Field(512, ge=16, description="address-space limit")
    max_processes: int = Field(64, ge=1)
    max_output_bytes: int = Field(64 * 1024, ge=1024)
    scratch_mb: int = Field(64, ge=1, description="size of the tmpfs work dir")


class WebConfig(_Strict):
    allow: list[str] = Field(
        default_factory=list,
        description="hosts or CIDRs that may be fetched even though they are private or link-local",
    )
    max_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    timeout_s: float = Field(15.0, gt=0)
    max_redirects: int = Field(5, ge=0)


class SshConfig(_Strict):
    hosts: list[str] = Field(default_factory=list, description="hosts (or user@host) the ssh tool may reach")
    known_hosts: Path | None = Field(None, description="known_hosts file; default ~/.ssh/known_hosts")
    client_keys: list[Path] = Field(default_factory=list)
    username: str | None = None
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(60.0, gt=0, description="how long a remote command may run")
    max_output_bytes: int = Field(64 * 1024, ge=1024, description="stdout and stderr kept per command")


class AnsibleConfig(_Strict):
    playbooks_dir: Path | None = Field(None, description="the only directory playbooks are run from")
    inventory: Path | None = None


class GitConfig(_Strict):
    repos: list[Path] = Field(default_factory=list, description="repositories the git tool may read")
    commit_repos: list[Path] = Field(default_factory=list, description="repositories it may also commit to")


class McpServerConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
    command: list[str] | None = Field(None, description="a stdio server: the command line to start")
    url: str | None = Field(None, description="a streamable-HTTP server's URL")
    env: dict[str, str] = Field(default_factory=dict)
    risk: Literal["low", "medium", "high"] = "medium"
    timeout_s: float = Field(60.0, gt=0, description="how long one tool call may take")
    connect_timeout_s: float = Field(30.0, gt=0, description="how long starting and listing tools may take")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of 'command' or 'url'")
        if self.command is not None and not self.command:
            raise ValueError(f"MCP server {self.name!r} has an empty 'command'")
        return self


class ToolsConfig(_Strict):
    enabled: list[str] | None = Field(
        None, description="tool names to offer; default all that are configured"
    )
    approval: dict[str, Decision] = Field(default_factory=dict, description="per-tool auto / ask / deny")
    sandbox: SandboxConfig = SandboxConfig()
    web: WebConfig = WebConfig()
    ssh: SshConfig = SshConfig()
    ansible: AnsibleConfig = AnsibleConfig()
    git: GitConfig = GitConfig()
    mcp: list[McpServerConfig] = Field(default_factory=list)
    world_state: WorldStateConfig = WorldStateConfig()
    home_assistant: HomeAssistantConfig = HomeAssistantConfig()


class AgentConfig(_Strict):
    workflow: str = Field("agent", description="the workflow the `corral-agent` model runs")
    workflows_dir: Path | None = Field(None, description="user workflows; default $CORRAL_HOME/workflows")
    model: str = Field("auto", description="the expert the agent's LLM nodes use unless a node says")
    gate_timeout_s: float = Field(300.0, gt=0, description="how long an approval waits before denying")
    history: HistoryConfig = HistoryConfig()
    memory: MemoryConfig = MemoryConfig()
    tools: ToolsConfig = ToolsConfig()
