"""The registry of evolvable prompt roles: role name -> the seed prompt the agent uses until a
variant for that role is promoted (see corral.evolve.prompts)."""

from __future__ import annotations

from dataclasses import dataclass

from corral.agent.nodes.llm import TOOL_SYSTEM
from corral.supervisor.prompts import REFLECTION_SEED

# The system prompt of agent.yaml's `plain` node (its `system:` input says the same words).
ANSWER_SYSTEM = "Answer the user's last message directly and briefly, using what the tools found."


@dataclass(frozen=True)
class Role:
    name: str
    seed: str
    description: str


ROLES: dict[str, Role] = {}


def register(name: str, seed: str, description: str) -> Role:
    """Add a role (one line per role, at import time); registering a name twice is a bug."""
    if name in ROLES:
        raise ValueError(f"prompt role {name!r} is registered twice")
    ROLES[name] = Role(name, seed, description)
    return ROLES[name]


def seed(name: str) -> str:
    """The seed prompt of a role; a clear error names the known roles."""
    role = ROLES.get(name)
    if role is None:
        raise KeyError(f"no prompt role {name!r}; known roles: {', '.join(sorted(ROLES))}")
    return role.seed


register("system", TOOL_SYSTEM, "the agent's tool-choice system prompt (agent.yaml `decide`)")
register("answer", ANSWER_SYSTEM, "the agent's plain-answer system prompt (agent.yaml `plain`)")
register("reflection", REFLECTION_SEED, "the supervisor's reflection prompt (reflect.yaml `ask`)")
