"""What nodes may use while they run: the LLM, tools, memory, gates, the event bus and the
workflow library; built once by the AgentService (or by a test with fakes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from corral.agent.events import EventBus
from corral.agent.gates import GateBook
from corral.agent.llm import LLMClient
from corral.agent.settings import AgentConfig
from corral.agent.store import RunStore
from corral.agent.tools.base import ToolRegistry

if TYPE_CHECKING:
    from corral.agent.graph import CompiledWorkflow
    from corral.agent.runner import Runner


class Recollection(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def cite(self) -> str: ...


class LongTermStore(Protocol):
    async def remember(
        self, text: str, *, session: str = "", source: str = "", meta: dict[str, Any] | None = None
    ) -> Any: ...

    async def recall(
        self, query: str, *, k: int = 3, session: str | None = None, min_score: float = 0.3
    ) -> list[Any]: ...


class Window(Protocol):
    def append(self, session: str, role: str, content: str) -> None: ...

    def window(self, session: str, max_messages: int, max_chars: int) -> list[dict[str, Any]]: ...

    def messages(self, session: str, limit: int = 10_000) -> list[dict[str, Any]]: ...

    def summaries(self) -> list[dict[str, Any]]: ...

    def load(self, session: str, messages: list[dict[str, Any]]) -> int: ...

    def clear(self, session: str) -> int: ...


class PromptSource(Protocol):
    def get(self, role: str, seed: str) -> str: ...


class WorkflowSource(Protocol):
    def get(self, name: str, version: int | None = None) -> tuple[CompiledWorkflow, int]: ...


@dataclass
class AgentServices:
    settings: AgentConfig
    store: RunStore
    bus: EventBus = field(default_factory=EventBus)
    gates: GateBook | None = None
    llm: LLMClient | None = None
    tools: ToolRegistry | None = None
    memory: LongTermStore | None = None
    window: Window | None = None
    workflows: WorkflowSource | None = None
    workdir_root: Path | None = None
    prompts: PromptSource | None = None  # promoted prompts by role (corral.evolve.prompts.PromptBook)
    runner: Runner | None = None  # set by the Runner; sub-workflows start child runs through it

    def __post_init__(self) -> None:
        if self.gates is None:
            self.gates = GateBook(self.store, self.bus)
