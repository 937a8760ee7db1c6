"""Imports every shipped node type so the registry holds them all."""

import corral.agent.nodes.control
import corral.agent.nodes.llm
import corral.agent.nodes.memory
import corral.agent.nodes.subflow
import corral.agent.nodes.tools  # noqa: F401
