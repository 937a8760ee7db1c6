"""Pooled inference: one model spread over several machines' memory with llama.cpp RPC.

A pooled expert runs one *leader* llama-server started with `--rpc host:port,...`; llama.cpp
places the model's layers on the RPC devices (each a `ggml-rpc-server` process) by their free
memory and runs each layer where its weights are. Workers are either started here, beside the
leader (`pooled: {workers: N}`, bound to 127.0.0.1), or already running on other machines
(`pooled: {rpc: [host:port, ...]}`, started there with `corral rpc-worker`).

The leader and its local workers are one supervised unit: `PooledReplica` is a `Replica` (the
Engine starts, health-checks, restarts and stops it like any other) whose start brings its
workers up first, whose stop takes them down after the leader, and whose health probe fails as
soon as a worker is gone. Each worker is itself a `Replica` subclass (`RpcWorker`), so there is
one way to run a child process: the same spawn, log rotation, death-with-parent and stop.

ggml RPC has no authentication and no encryption: anyone who can reach a worker's port can run
computations on it and read what it holds. Keep workers on 127.0.0.1 or a trusted LAN.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console

from corral.engine.binaries import EngineBinaries, locate
from corral.engine.replica import Replica, ReplicaSpec, free_port
from corral.errors import CorralError

WORKER_READY_TIMEOUT_S = 30.0


class PooledConfig(BaseModel):
    """The `pooled:` field of an expert in corral.yaml."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(
        0, ge=0, le=16, description="ggml-rpc-server processes to start on this machine, beside the leader"
    )
    worker_threads: int | None = Field(None, ge=1, description="threads of each local worker; default 1")
    rpc: list[str] = Field(
        default_factory=list,
        description="host:port of ggml-rpc-server workers on other machines (`corral rpc-worker`); "
        "trusted LAN only: RPC has no authentication",
    )

    @field_validator("rpc")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_address(value)
        if len(set(values)) != len(values):
            raise ValueError("each rpc worker address may appear once")
        return values

    @model_validator(mode="after")
    def _some_worker(self) -> PooledConfig:
        if self.workers == 0 and not self.rpc:
            raise ValueError(
                "a pooled expert needs workers: set `workers: N` (local ggml-rpc-server "
                "processes) and/or `rpc: [host:port, ...]` (workers on other machines)"
            )
        return self


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:50052`) -> (host, port), or ValueError saying what is wrong."""
    host, sep, port_text = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"rpc worker {value!r} is not host:port (e.g. 192.168.1.20:50052, port 1-65535)")
    if any(c.isspace() or c in "/,@" for c in host):
        raise ValueError(f"rpc worker {value!r}: {host!r} is not a host name or IP address")
    return host, int(port_text)


def rpc_server_command(binaries: EngineBinaries, host: str, port: int, threads: int) -> list[str]:
    """The ggml-rpc-server command line of one worker (local, or `corral rpc-worker` elsewhere)."""
    return [
        str(binaries.rpc_server),
        "--host", host,
        "--port", str(port),
        "--threads", str(threads),
    ]  # fmt: skip


@dataclass(frozen=True)
class RpcWorkerSpec(ReplicaSpec):
    """One local ggml-rpc-server of a pooled expert (its model is the leader's, for reference)."""

    port: int = 0

    @property
    def name(self) -> str:
        return f"{self.expert}/rpc{self.index}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self, binaries: EngineBinaries, port: int) -> list[str]:
        return rpc_server_command(binaries, self.host, port, self.threads)


@dataclass(frozen=True)
class PooledReplicaSpec(ReplicaSpec):
    """The leader llama-server of a pooled expert, with its local workers and remote ones."""

    workers: tuple[RpcWorkerSpec, ...] = ()
    remote: tuple[str, ...] = ()

    @property
    def rpc_addresses(self) -> list[str]:
        return [w.address for w in self.workers] + list(self.remote)

    def command(self, binaries: EngineBinaries, port: int) -> list[str]:
        return [*super().command(binaries, port), "--rpc", ",".join(self.rpc_addresses)]

    def process(self, binaries: EngineBinaries, log_dir: Path) -> Replica:
        return PooledReplica(self, binaries, log_dir)


def pooled_spec(leader: ReplicaSpec, config: PooledConfig) -> PooledReplicaSpec:
    """The leader's spec with `--rpc`: local workers get free loopback ports now."""
    workers = tuple(
        RpcWorkerSpec(
            expert=leader.expert,
            index=i,
            model=leader.model,
            slots=1,
            context_per_slot=0,
            threads=config.worker_threads or 1,
            host="127.0.0.1",
            port=free_port("127.0.0.1"),
        )
        for i in range(config.workers)
    )
    fields = {f.name: getattr(leader, f.name) for f in dataclasses.fields(leader)}
    return PooledReplicaSpec(**fields, workers=workers, remote=tuple(config.rpc))


class RpcWorker(Replica):
    """A ggml-rpc-server child: ready when its port accepts a connection."""

    spec: RpcWorkerSpec

    def __post_init__(self) -> None:
        super().__post_init__()
        self.port = self.spec.port

    @property
    def url(self) -> str:
        return f"tcp://{self.spec.address}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"rpc-server-{self.spec.expert}-{self.spec.index}.log"

    async def probe(self, client: httpx.AsyncClient) -> bool:
        if self.process is None or self.process.returncode is not None:
            return False
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.spec.host, self.port), 2.0)
        except (OSError, TimeoutError):
            return False
        # The server reads a hello first; a connection closed before it is dropped quietly.
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True


class PooledReplica(Replica):
    """A leader llama-server and its local RPC workers, supervised as one replica."""

    spec: PooledReplicaSpec

    def __post_init__(self) -> None:
        super().__post_init__()
        self.workers = [RpcWorker(w, self.binaries, self.log_dir) for w in self.spec.workers]

    async def start(self) -> None:
        """Workers first (the leader connects to them while it loads the model), then the leader."""
        self.state.set_status("starting")
        await asyncio.gather(*(w.start() for w in self.workers))
        async with httpx.AsyncClient() as client:
            ready = await asyncio.gather(
                *(w.wait_ready(client, WORKER_READY_TIMEOUT_S) for w in self.workers)
            )
        failed = [w for w, ok in zip(self.workers, ready, strict=True) if not ok]
        if failed:
            for worker in failed:
                self.state.set_status(
                    "crashed", error=f"rpc worker {worker.spec.name} did not start:\n{worker.log_tail()}"
                )
            self.process = None  # wait_ready then reports the crash instead of waiting
            return
        await super().start()

    async def wait_ready(self, client: httpx.AsyncClient, timeout_s: float) -> bool:
        if self.process is None and self.state.status == "crashed":
            return False
        return await super().wait_ready(client, timeout_s)

    async def probe(self, client: httpx.AsyncClient) -> bool:
        """The leader answers /health and every local worker is alive.

        A dead worker takes the leader down with it (SIGKILL): the leader cannot compute without
        the worker's layers, and the Engine then restarts the whole unit at once instead of
        waiting out the unhealthy-restart delay.
        """
        dead = [w for w in self.workers if w.process is None or w.process.returncode is not None]
        if dead and self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return False
        return await super().probe(client)

    async def stop(self, grace_s: float = 5.0) -> None:
        await super().stop(grace_s)
        await asyncio.gather(*(w.stop(grace_s) for w in self.workers))
        self.state.set_status("stopped")


def install(app: typer.Typer, engine_libs: Callable[[Path | None], Path]) -> None:
    """Register `corral rpc-worker` on the CLI (`engine_libs(home)`: where library links go)."""

    @app.command("rpc-worker")
    def rpc_worker(
        host: Annotated[
            str, typer.Option(help="address to listen on: 127.0.0.1, or a trusted LAN address")
        ] = ("127.0.0.1"),
        port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 50052,
        threads: Annotated[int, typer.Option(min=1, help="CPU threads for the layers held here")] = 1,
        home: Annotated[Path | None, typer.Option("--home", help="corral's data directory")] = None,
    ) -> None:
        """Serve this machine's memory and CPU to a pooled expert's leader (ggml-rpc-server).

        Runs in the foreground (under systemd or a terminal) until stopped. RPC has no
        authentication: bind a trusted LAN address only, and firewall the port to the leader.
        """
        errors = Console(stderr=True)
        try:
            binaries = locate(engine_libs(home))
        except CorralError as err:
            errors.print(f"[bold red]error:[/] {err.message}")
            raise typer.Exit(2) from None
        if host not in ("127.0.0.1", "::1", "localhost"):
            errors.print(
                f"[yellow]warning:[/] ggml RPC has no authentication: anyone who reaches {host}:{port} "
                "can run computations here and read what this worker holds; keep it on a trusted LAN"
            )
        command = rpc_server_command(binaries, host, port, threads)
        os.execve(command[0], command, binaries.env())
