"""Builds the agent's ToolRegistry from the `agent.tools` settings: which tools exist on this
machine (ssh, ansible, git and MCP only when configured), which are enabled, and the approval
policy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

from corral.agent.settings import ToolsConfig
from corral.agent.tools.ansible import AnsibleTool
from corral.agent.tools.base import ApprovalPolicy, Tool, ToolRegistry
from corral.agent.tools.basic import ClusterStatusTool, FinalAnswerTool, SummariseTool
from corral.agent.tools.git import GitTool
from corral.agent.tools.ha import HaServiceTool, HaStateTool
from corral.agent.tools.mcp import connect_mcp_servers
from corral.agent.tools.sandbox import PythonTool, ShellTool
from corral.agent.tools.ssh import SshTool
from corral.agent.tools.web import WebFetchTool
from corral.agent.tools.world_state import WorldCommandTool, WorldStateTool
from corral.errors import ConfigError
from corral.integrations.ha_rest import HomeAssistantClient
from corral.integrations.world import WorldState

log = logging.getLogger("corral.agent.tools")


def builtin_tools(
    config: ToolsConfig, *, status: Callable[[], dict[str, Any]] | None = None, model: str = "auto"
) -> list[Tool]:
    tools: list[Tool] = [
        FinalAnswerTool(),
        SummariseTool(model),
        WebFetchTool(config.web),
        ShellTool(config.sandbox),
        PythonTool(config.sandbox),
    ]
    if status is not None:
        tools.append(ClusterStatusTool(status))
    if config.ssh.hosts:
        tools.append(SshTool(config.ssh))
    if config.ansible.playbooks_dir is not None:
        tools.append(AnsibleTool(config.ansible))
    if config.git.repos or config.git.commit_repos:
        tools.append(GitTool(config.git))
    world = config.world_state
    if world.broker is None and (world.read or world.write):
        log.warning(
            "agent.tools.world_state lists topics but has no broker: set mqtt.enabled: true (or "
            "world_state.broker) in corral.yaml; world_state and world_command are off"
        )
    if world.broker is not None and (world.read or world.write):
        state = WorldState(world, world.broker)
        tools += [WorldStateTool(state)] if world.read else []
        tools += [WorldCommandTool(state)] if world.write else []
    home = config.home_assistant
    if home.url is not None:
        client = HomeAssistantClient(home, home.token())
        tools += [HaStateTool(client), HaServiceTool(client, home)]
    return tools


def make_registry(config: ToolsConfig, tools: list[Tool]) -> ToolRegistry:
    names = {t.spec.name for t in tools}
    if config.enabled is not None:
        unknown = [n for n in config.enabled if n not in names]
        if unknown:
            raise ConfigError(
                f"agent.tools.enabled names {unknown[0]!r}, which is not available here; the tools are: "
                f"{', '.join(sorted(names))} (ssh, ansible_playbook, git, world_state, world_command, "
                "ha_state and ha_service appear once configured)"
            )
        tools = [t for t in tools if t.spec.name in config.enabled or t.spec.name == "final_answer"]
    unknown = [n for n in config.approval if n not in names]
    if unknown:
        log.warning("agent.tools.approval names %s, which is not available here", ", ".join(unknown))
    return ToolRegistry(tools, ApprovalPolicy(config.approval))


async def build_registry(
    config: ToolsConfig,
    stack: AsyncExitStack,
    *,
    status: Callable[[], dict[str, Any]] | None = None,
    model: str = "auto",
) -> ToolRegistry:
    """All tools, MCP servers' included (their connections close with `stack`)."""
    tools = builtin_tools(config, status=status, model=model)
    worlds = {id(t.world): t.world for t in tools if isinstance(t, WorldStateTool | WorldCommandTool)}
    for world in worlds.values():  # connect now, so retained values are cached when first asked
        world.start()
        stack.callback(world.stop)
    if config.mcp:
        mcp_tools, mcp_stack = await connect_mcp_servers(config.mcp)
        stack.push_async_callback(mcp_stack.aclose)
        tools.extend(mcp_tools)
    return make_registry(config, tools)
