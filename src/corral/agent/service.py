"""The AgentService: the agent runtime inside `corral up`. It opens the run store, memory and
tools, marks runs cut off by a crash as interrupted, and runs workflows for the API, the
`corral-agent` model, the WebSocket and voice."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.agent.events import EventBus
from corral.agent.library import WorkflowLibrary
from corral.agent.llm import LLMClient
from corral.agent.memory.embedder import LLMEmbedder
from corral.agent.memory.longterm import LongTermMemory
from corral.agent.memory.window import SessionWindow
from corral.agent.runner import RunHandle, Runner
from corral.agent.services import AgentServices, PromptSource
from corral.agent.settings import AgentConfig
from corral.agent.store import RunRecord, RunStore
from corral.agent.tools.factory import build_registry

log = logging.getLogger("corral.agent")


@dataclass(frozen=True)
class AgentPaths:
    root: Path

    @property
    def runs_db(self) -> Path:
        return self.root / "runs.sqlite3"

    @property
    def memory_db(self) -> Path:
        return self.root / "memory.sqlite3"

    @property
    def window_db(self) -> Path:
        return self.root / "sessions.sqlite3"

    @property
    def workdirs(self) -> Path:
        return self.root / "work"


class AgentService:
    def __init__(
        self,
        settings: AgentConfig,
        root: Path,
        llm: LLMClient,
        *,
        workflows_dir: Path | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        memory: bool = True,
        prompts: PromptSource | None = None,
    ) -> None:
        self.settings = settings
        self.paths = AgentPaths(root)
        self.llm = llm
        self.workflows_dir = workflows_dir
        self.status = status
        self.use_memory = memory
        self.prompts = prompts
        self.interrupted: list[str] = []
        self._stack = AsyncExitStack()
        self._services: AgentServices | None = None
        self._runner: Runner | None = None
        self._library: WorkflowLibrary | None = None

    @property
    def started(self) -> bool:
        return self._runner is not None

    @property
    def services(self) -> AgentServices:
        if self._services is None:
            raise RuntimeError("the agent service is not started")
        return self._services

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            raise RuntimeError("the agent service is not started")
        return self._runner

    @property
    def library(self) -> WorkflowLibrary:
        if self._library is None:
            raise RuntimeError("the agent service is not started")
        return self._library

    @property
    def bus(self) -> EventBus:
        return self.services.bus

    @property
    def store(self) -> RunStore:
        return self.services.store

    async def start(self) -> None:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        store = RunStore(self.paths.runs_db)
        self._stack.callback(store.close)
        self.interrupted = store.mark_interrupted()
        if self.interrupted:
            log.warning(
                "%d run(s) were cut off by the last shutdown; resume them with POST /api/runs/ID/resume",
                len(self.interrupted),
            )
        tools = await build_registry(
            self.settings.tools, self._stack, status=self.status, model=self.settings.model
        )
        memory = window = None
        if self.use_memory:
            embedder = LLMEmbedder(self.llm, self.settings.memory.embed_expert)
            memory = LongTermMemory.open(self.paths.memory_db, embedder)
            self._stack.callback(memory.close)
            window = SessionWindow(self.paths.window_db)
            self._stack.callback(window.close)
        library = WorkflowLibrary(store, self.workflows_dir)
        services = AgentServices(
            self.settings, store, llm=self.llm, tools=tools, memory=memory, window=window,
            workflows=library, workdir_root=self.paths.workdirs, prompts=self.prompts,
        )  # fmt: skip
        self._services, self._library = services, library
        self._runner = Runner(services)
        self._stack.push_async_callback(self._runner.shutdown)
        library.get(self.settings.workflow)  # fail at start, not at the first chat, if it is broken

    async def stop(self) -> None:
        await self._stack.aclose()

    def start_run(
        self,
        name: str,
        inputs: dict[str, Any],
        *,
        session: str = "",
        version: int | None = None,
        prompts: dict[str, str] | None = None,
    ) -> RunHandle:
        workflow, number = self.library.get(name, version)
        return self.runner.start(workflow, number, inputs, session=session, prompts=prompts)

    def chat(self, messages: list[dict[str, Any]], session: str = "") -> RunHandle:
        """Run the default workflow on a conversation; the window keeps the session's turns
        (the user's message now, the answer when the run succeeds), whichever door it came in by.

        A client that sends only its newest message (Mission Control, voice, a WebSocket) gets
        the session's recent turns put in front of it; a client that sends a whole history (the
        OpenAI way) is taken as it is."""
        window = self.services.window
        if window is not None and session and messages:
            last = messages[-1]
            if last.get("role") == "user" and isinstance(last.get("content"), str):
                if len(messages) == 1:
                    limits = self.settings.memory
                    earlier = window.window(session, limits.window_messages, limits.window_chars)
                    messages = [*earlier, *messages]
                window.append(session, "user", last["content"])
        handle = self.start_run(
            self.settings.workflow, {"messages": messages, "session": session}, session=session
        )
        if window is not None and session:
            handle.task.add_done_callback(lambda task: self._remember_answer(session, task))
        return handle

    def _remember_answer(self, session: str, task: asyncio.Task[RunRecord]) -> None:
        window = self.services.window
        if window is None or task.cancelled() or task.exception() is not None:
            return
        record = task.result()
        answer = str((record.outputs or {}).get("answer", "")) if record.status == "succeeded" else ""
        if answer:
            window.append(session, "assistant", answer)


@asynccontextmanager
async def running(service: AgentService) -> AsyncIterator[AgentService]:
    await service.start()
    try:
        yield service
    finally:
        await asyncio.shield(service.stop())
