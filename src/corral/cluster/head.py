"""Starting and joining the Ray cluster: the token, `ray start` for head and workers, the driver
connection, and what the head builds from corral.yaml for the RayRegistry.

Ray runs with token authentication (`RAY_AUTH_MODE=token`): the head generates a random token
into $CORRAL_HOME/cluster.token (mode 0600) and every node must present the same one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import ray

from corral.cluster.agent import NAMESPACE, agent_name, ensure_agent
from corral.cluster.planner import ExpertDemand, NodeCapacity
from corral.cluster.registry import RayRegistry, ReplicaTemplate
from corral.cluster.token import TOKEN_FILE, ClusterError, ensure_token, ray_env, read_token
from corral.config import CorralConfig
from corral.models.catalog import Catalog, memory_needed
from corral.paths import CorralPaths

log = logging.getLogger("corral.cluster")


def _ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise ClusterError("the `ray` command is missing; reinstall corral with ./setup.sh")
    return found


class RayProcess:
    """`ray start --block` as our child, in its own process group: stopping it stops every Ray
    process it started on this machine (and nothing else: no machine-wide `ray stop`)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        full = {**os.environ, **env}
        full.pop("RAY_AUTH_TOKEN_PATH", None)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [_ray_cli(), *args, "--block"],
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_started(self, timeout: float = 180.0) -> None:
        """Until Ray says it started; ClusterError with its output when it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.output():
                return
            if self.process.poll() is not None:
                raise ClusterError(self.output()[-1500:])
            time.sleep(0.3)
        self.stop()
        raise ClusterError(f"Ray did not start within {timeout:.0f}s:\n{self.output()[-1500:]}")

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of the group is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def start_head(paths: CorralPaths, port: int, num_cpus: int) -> tuple[str, Path, RayProcess]:
    """`ray start --head` with token auth; (address to join, token file, the Ray process)."""
    token_file = ensure_token(paths)
    address = f"{_own_address()}:{port}"
    ray_process = RayProcess(
        ["start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
         "--disable-usage-stats"],
        {**ray_env(read_token(token_file, {})), "CORRAL_HOME": str(paths.home)},
        paths.logs / "ray-head.log",
    )  # fmt: skip
    try:
        ray_process.wait_started()
    except ClusterError as err:
        hint = (
            "a Ray instance already runs on this machine: stop it first"
            if "already" in err.message.lower()
            else f"is port {port} free? change cluster.port in corral.yaml"
        )
        raise ClusterError(f"the Ray head did not start ({hint}):\n{err.message}") from None
    return address, token_file, ray_process


def connect(address: str) -> None:
    """Connect this process to the cluster as a driver (namespace `corral`); `use_token` must
    have set the token before Ray was imported."""
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot connect to the Ray cluster at {address} ({exc}); is the token the head's "
            f"{TOKEN_FILE}, and is the head up?"
        ) from None


def check_reachable(address: str, timeout: float = 3.0) -> tuple[str, int]:
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise ClusterError(f"{address!r} is not HOST:PORT; `corral up --head` prints the address to join")
    try:
        with socket.create_connection((host, int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"the head at {address} is unreachable ({exc.strerror or exc}); check the address, that "
            "`corral up --head` runs there, and that the firewall lets this machine reach the port"
        ) from None
    return host, int(port_text)


def join(address: str, token: str, paths: CorralPaths, num_cpus: int) -> RayProcess:
    """`ray start --address` on this machine with the token; a wrong token is refused clearly."""
    check_reachable(address)
    ray_process = RayProcess(
        ["start", f"--address={address}", f"--num-cpus={num_cpus}", "--disable-usage-stats"],
        {**ray_env(token), "CORRAL_HOME": str(paths.home)},
        paths.logs / "ray-join.log",
    )
    try:
        ray_process.wait_started()
    except ClusterError as err:
        ray_process.stop(grace_s=5)
        output = err.message
        if "InvalidAuthToken" in output or "Unauthenticated" in output or "AuthenticationError" in output:
            raise ClusterError(
                f"the head at {address} refused this token; copy the head's $CORRAL_HOME/{TOKEN_FILE} "
                "here and pass it with --token-file"
            ) from None
        raise ClusterError(f"`ray start` could not join {address}:\n{output}") from None
    return ray_process


def start_agent_here(paths: CorralPaths) -> Any:
    """The agent on the node this driver is attached to (this machine)."""
    node_id = ray.get_runtime_context().get_node_id()
    return ensure_agent(node_id, home=str(paths.home))


def _own_address() -> str:
    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]


def demands(config: CorralConfig, catalog: Catalog) -> tuple[list[ExpertDemand], dict[str, ReplicaTemplate]]:
    """What each local-model expert asks of a node, and how to start one of its replicas."""
    out: list[ExpertDemand] = []
    templates: dict[str, ReplicaTemplate] = {}
    requires = config.cluster.requires
    for expert in config.experts:
        if expert.url is not None or expert.replicas == 0:
            continue
        pooled = bool(getattr(expert, "pooled", False))
        entry = catalog.resolve(expert.model)
        out.append(
            ExpertDemand(
                name=expert.name,
                replicas=expert.replicas,
                need_bytes=memory_needed(entry.info, expert.context * expert.slots),
                requires=frozenset(requires.get(expert.name, ())),
                always_loaded=expert.always_loaded,
                threads=expert.threads,
                pooled=pooled,
            )
        )
        templates[expert.name] = ReplicaTemplate(
            model=expert.model,
            model_id=entry.id,
            slots=expert.slots,
            context=expert.context,
            embedding=expert.kind == "embedding",
            extra_args=tuple(expert.extra_args),
        )
    return out, templates


def build_registry(
    config: CorralConfig,
    catalog: Catalog,
    client: httpx.AsyncClient,
    head_node_id: str | None,
    state_file: Path | None = None,
) -> RayRegistry:
    wanted, templates = demands(config, catalog)
    return RayRegistry(
        wanted, templates, client, config.cluster, head_node_id=head_node_id, state_file=state_file
    )


def live_capacities() -> list[NodeCapacity]:
    """The profiles the agents of the alive nodes report (nodes without an agent are skipped).

    Two machines with one hostname are told apart as the head's registry does: the later one
    (by its agent's start) gets its Ray node id's first six characters after the name."""
    found: list[tuple[float, str, dict[str, Any]]] = []
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if not node.get("Alive"):
            continue
        try:
            handle = ray.get_actor(agent_name(node["NodeID"]), namespace=NAMESPACE)
            info = cast(dict[str, Any], ray.get(handle.info.remote(), timeout=30))
        except (ValueError, ray.exceptions.RayError):
            continue
        found.append((float(info.get("started", 0)), str(node["NodeID"]), info))
    out: list[NodeCapacity] = []
    for started, node_id, info in sorted(found, key=lambda f: f[0]):
        name = str(info["name"])
        if any(n.name == name for n in out):
            name = f"{name}-{node_id[:6]}"
        p = info["profile"]
        out.append(
            NodeCapacity(
                name, int(p["ram_available_bytes"]), int(p["cores_physical"]),
                frozenset(p["cpu_flags"]), p.get("tokens_per_second"), -started,
            )
        )  # fmt: skip
    return out


@asynccontextmanager
async def cluster_lifespan(
    registry: RayRegistry, inner: AbstractAsyncContextManager[None], ray_process: RayProcess
) -> AsyncIterator[None]:
    """The head's lifespan: follow the cluster while serving; stop replicas, Ray on the way out."""
    await registry.start()
    try:
        async with inner:
            yield
    finally:
        await registry.stop()
        ray.shutdown()
        ray_process.stop()
