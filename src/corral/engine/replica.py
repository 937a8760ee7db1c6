"""One llama-server child process: command line, spawn, readiness, stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from corral.backends import BackendState
from corral.engine.binaries import EngineBinaries
from corral.models.catalog import ModelEntry


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything needed to start one replica of one expert."""

    expert: str
    index: int
    model: ModelEntry
    slots: int
    context_per_slot: int
    threads: int
    embedding: bool = False
    extra_args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    memory_limit_bytes: int | None = None  # address-space limit (RLIMIT_AS); the supervisor may raise it

    @property
    def name(self) -> str:
        return f"{self.expert}/{self.index}"

    def command(self, binaries: EngineBinaries, port: int) -> list[str]:
        args = [
            str(binaries.llama_server),
            "--model", str(self.model.path),
            "--host", self.host,
            "--port", str(port),
            "--alias", self.expert,
            "--parallel", str(self.slots),
            "--ctx-size", str(self.context_per_slot * self.slots),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
            "--metrics",
            "--slots",
            "--no-webui",
        ]  # fmt: skip
        if self.embedding:
            args += ["--embeddings", "--pooling", "mean", "--ubatch-size", str(self.context_per_slot)]
            args += ["--batch-size", str(self.context_per_slot)]
        else:
            args += ["--jinja"]
            template = self.model.prompt_format.template_file
            if template is not None:
                args += ["--chat-template-file", str(template)]
        return args + list(self.extra_args)

    def process(self, binaries: EngineBinaries, log_dir: Path) -> Replica:
        """The supervised process that runs this spec (a pooled spec: its leader and workers)."""
        return Replica(self, binaries, log_dir)


def _child_setup(memory_limit_bytes: int | None) -> Callable[[], None]:
    """What runs in the child before exec: die with corral, and the memory limit if one is set."""

    def setup() -> None:
        _die_with_parent()
        if memory_limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))

    return setup


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it if corral dies, even by SIGKILL.

    SIGKILL, not SIGTERM: llama-server's graceful shutdown can hang on a loaded machine
    (its HTTP pool waits on connections), and with corral gone nobody would ever follow up.
    A replica holds nothing that needs flushing, so the kernel's kill loses nothing.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1
LOG_ROTATE_BYTES = 10 * 1024 * 1024


def _rotate(log: Path) -> None:
    """Keep one previous log (name.1) once a replica's log passes 10 MiB."""
    try:
        if log.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    """A running (or restartable) llama-server; its `state` is shared with the gateway backend."""

    spec: ReplicaSpec
    binaries: EngineBinaries
    log_dir: Path
    state: BackendState = field(default_factory=BackendState)
    port: int = 0
    process: asyncio.subprocess.Process | None = None

    def __post_init__(self) -> None:
        self.state.slots = self.spec.slots
        self.port = free_port(self.spec.host)

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"llama-server-{self.spec.expert}-{self.spec.index}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_rotate, self.log_path)
        self.state.set_status("starting")
        log = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.command(self.binaries, self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.binaries.env(),
                start_new_session=True,  # our Ctrl-C is handled by us, not sent to children
                preexec_fn=_child_setup(self.spec.memory_limit_bytes),
            )
        finally:
            log.close()

    async def wait_ready(self, client: httpx.AsyncClient, timeout_s: float) -> bool:
        """Poll /health until 200, the process exits, or the timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.process is None or self.process.returncode is not None:
                self.state.set_status("crashed", error=self.log_tail())
                return False
            if await self.probe(client):
                self.state.set_status("ready")
                return True
            await asyncio.sleep(0.1)
        self.state.set_status("unhealthy", error=f"not ready after {timeout_s:.0f}s")
        return False

    async def probe(self, client: httpx.AsyncClient) -> bool:
        """One health check: llama-server answers /health with 200."""
        try:
            response = await client.get(self.url + "/health", timeout=2.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def stop(self, grace_s: float = 5.0) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            self.state.set_status("stopped")
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        self.state.set_status("stopped")

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 8192))
                text = log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
