"""Shared pieces of the benchmarks: real replicas, a gateway in its own process, stats, the doc.

Replicas are started with corral's own engine code (`locate`, `Catalog`, `Replica`); the gateway
is the real FastAPI app under uvicorn, in a separate process so that its CPU time is not shared
with the load generator's event loop. The gateway process is this file run as a script:

    python bench/_harness.py '<json spec>'
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from corral.engine.binaries import locate
from corral.engine.replica import Replica, ReplicaSpec
from corral.models.catalog import Catalog, ModelEntry

MODEL = "gemma3-270m"
EXPERT = "general"
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"

# --- where things live ----------------------------------------------------------------------


def bench_home(home: str | None) -> Path:
    """The cache for the assembled model and replica logs (the model file is ~240 MB)."""
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "corral-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_model(home: Path) -> ModelEntry:
    return Catalog(home / "models").resolve(MODEL)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    ram = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        ram = f", {kib / 1024**2:.0f} GiB RAM"
    return f"{os.cpu_count()} CPUs (nproc) · {cpu}{ram} · Python {platform.python_version()}"


# --- replicas ---------------------------------------------------------------------------------

_LIVE: list[Replica] = []


def _kill_leftovers() -> None:
    """Last resort at interpreter exit: no llama-server outlives the benchmark."""
    for replica in _LIVE:
        process = replica.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


atexit.register(_kill_leftovers)


def _sigterm_to_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C, so the try/finally blocks stop the children."""
    signal.signal(signal.SIGTERM, _sigterm_to_exit)


async def start_replicas(
    home: Path,
    model: ModelEntry,
    threads: Sequence[int],
    *,
    slots: int,
    context_per_slot: int,
    client: httpx.AsyncClient,
) -> list[Replica]:
    """One llama-server per entry of `threads`, started concurrently, all ready or raise."""
    binaries = locate(home / "engine-lib")
    replicas = []
    for index, n in enumerate(threads):
        spec = ReplicaSpec(expert=EXPERT, index=index, model=model, slots=slots,
                           context_per_slot=context_per_slot, threads=n)  # fmt: skip
        replica = Replica(spec, binaries, home / "logs")
        _LIVE.append(replica)
        replicas.append(replica)
    await asyncio.gather(*(r.start() for r in replicas))
    ready = await asyncio.gather(*(r.wait_ready(client, 180.0) for r in replicas))
    for replica, ok in zip(replicas, ready, strict=True):
        if not ok:
            raise RuntimeError(f"replica {replica.spec.name} did not start:\n{replica.log_tail()}")
    return replicas


async def stop_replicas(replicas: Sequence[Replica]) -> None:
    await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)


# --- the gateway in its own process ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayProcess:
    url: str
    key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def start_gateway(
    replicas: Sequence[Replica],
    *,
    balancer: str,
    stops: Sequence[str],
    log_dir: Path,
    client: httpx.AsyncClient,
    profile: str | None = None,
) -> GatewayProcess:
    """Run the corral gateway (uvicorn, loopback) in front of `replicas`; wait until /ready."""
    keys_dir = Path(tempfile.mkdtemp(prefix="corral-bench-keys-"))
    from corral.gateway.auth import KeyStore

    _, secret = KeyStore(keys_dir / "keys.json").create("bench", "user")
    port = free_port()
    spec = {
        "port": port,
        "keys_file": str(keys_dir / "keys.json"),
        "balancer": balancer,
        "stops": list(stops),
        "model_id": replicas[0].spec.model.id,
        "slots": replicas[0].spec.slots,
        "backends": [{"name": r.spec.name, "url": r.url, "slots": r.spec.slots} for r in replicas],
        "profile": profile,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"gateway-{balancer}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", secret, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(gateway.url + "/ready", timeout=1.0)).status_code == 200:
                return gateway
        await asyncio.sleep(0.1)
    gateway.stop()
    raise RuntimeError(f"gateway not ready after 30 s:\n{log_path.read_text()[-2000:]}")


def _serve(spec: dict[str, Any]) -> None:
    """The gateway process: the same objects `corral up` builds, minus the engine."""
    import uvicorn

    from corral.backends import BackendState, HttpBackend
    from corral.config import CorralConfig, ExpertConfig
    from corral.gateway.app import Gateway, create_app
    from corral.gateway.auth import KeyStore
    from corral.gateway.registry import LocalRegistry
    from corral.gateway.router import Router, make_balancer
    from corral.runtime import http_client

    expert = ExpertConfig(name=EXPERT, model=MODEL, slots=spec["slots"])
    config = CorralConfig(experts=[expert])
    client = http_client(config)
    registry = LocalRegistry()
    for backend in spec["backends"]:
        state = BackendState(slots=backend["slots"])
        state.set_status("ready")
        registry.add(HttpBackend(backend["name"], EXPERT, spec["model_id"], backend["url"], client, state))
    router = Router(config.experts, registry, max_queue=config.server.max_queue,
                    balancer=make_balancer(spec["balancer"]))  # fmt: skip
    stops = tuple(spec["stops"])
    gateway = Gateway(router=router, keys=KeyStore(Path(spec["keys_file"])), stops=lambda _: stops,
                      required_experts=(EXPERT,))  # fmt: skip
    app = create_app(gateway)
    run = lambda: uvicorn.run(  # noqa: E731
        app, host="127.0.0.1", port=spec["port"], log_level="warning", access_log=False
    )
    if not spec.get("profile"):
        run()
        return
    from pyinstrument import Profiler  # only with --profile: `uv run --with pyinstrument`

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        run()
    finally:
        profiler.stop()
        Path(spec["profile"]).write_text(profiler.output_text(unicode=False, color=False, show_all=False))


# --- statistics -------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def spread(values: Sequence[float]) -> str:
    """min..max of per-round figures, to show how much the rounds agree."""
    if not values:
        return "-"
    return f"{min(values):.2f}..{max(values):.2f}"


# --- the results document ---------------------------------------------------------------------

INTRO = """# Benchmarks

Measured with real llama-server replicas of the bundled model (`{model}`) and the real gateway
(FastAPI under uvicorn, in its own process on loopback), driven by an `httpx.AsyncClient`.
The scripts live in `bench/`; each section says how to reproduce it. Figures are from a small,
shared (noisy) machine, so read them as orders of magnitude and compare within one table only.
"""


def update_doc(heading: str, body: str, path: Path = DOC) -> None:
    """Replace (or append) the section `## heading` of docs/benchmarks.md."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else INTRO.format(model=MODEL)
    lines = text.splitlines()
    title = f"## {heading}"
    section = [title, "", *body.strip("\n").splitlines(), ""]
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section
    else:
        if lines and lines[-1].strip():
            lines.append("")
        lines += section
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
