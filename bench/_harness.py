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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from corral.engine.binaries import locate
from corral.engine.replica import Replica, ReplicaSpec
from corral.gateway.auth import KeyStore
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
    extra_args: Sequence[str] = (),
) -> list[Replica]:
    """One llama-server per entry of `threads`, started concurrently, all ready or raise."""
    binaries = locate(home / "engine-lib")
    replicas = []
    for index, n in enumerate(threads):
        spec = ReplicaSpec(expert=EXPERT, index=index, model=model, slots=slots,
                           context_per_slot=context_per_slot, threads=n,
                           extra_args=tuple(extra_args))  # fmt: skip
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
    keys_dir: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.keys_dir, ignore_errors=True)


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
    log_path = log_dir / f"gateway-{balancer}-{port}.log"
    process = _spawn(spec, log_path)
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", secret, process, log_path, keys_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            shutil.rmtree(keys_dir, ignore_errors=True)
            raise RuntimeError(f"gateway exited:\n{log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(gateway.url + "/ready", timeout=1.0)).status_code == 200:
                return gateway
        await asyncio.sleep(0.1)
    gateway.stop()
    raise RuntimeError(f"gateway not ready after 30 s:\n{log_path.read_text()[-2000:]}")


def _spawn(spec: dict[str, Any], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _serve(spec: dict[str, Any]) -> None:
    """The gateway process: the same objects `corral up` builds, minus the engine."""
    import uvicorn

    from corral.backends import BackendState, HttpBackend
    from corral.config import CorralConfig, ExpertConfig
    from corral.gateway.app import Gateway, create_app
    from corral.gateway.registry import LocalRegistry
    from corral.gateway.router import Router, make_balancer
    from corral.runtime import http_client

    expert = ExpertConfig(name=EXPERT, model=MODEL, slots=spec["slots"])
    config = CorralConfig(experts=[expert])
    client = http_client(config)
    registry = LocalRegistry()
    http_backends = []
    for backend in spec["backends"]:
        state = BackendState(slots=backend["slots"])
        state.set_status("ready")
        http_backend = HttpBackend(backend["name"], EXPERT, spec["model_id"], backend["url"], client, state)
        http_backends.append(http_backend)
        registry.add(http_backend)
    router = Router(config.experts, registry, max_queue=config.server.max_queue,
                    balancer=make_balancer(spec["balancer"]))  # fmt: skip
    stops = tuple(spec["stops"])
    gateway = Gateway(router=router, keys=KeyStore(Path(spec["keys_file"])), stops=lambda _: stops,
                      required_experts=(EXPERT,))  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        # What the engine's monitor does for `corral up`: a replica marked unhealthy after a
        # failed request is marked ready again once /health answers (every 2 s).
        async def monitor() -> None:
            while True:
                await asyncio.sleep(2.0)
                for backend in http_backends:
                    with contextlib.suppress(httpx.TransportError):
                        ok = (await client.get(backend.base_url + "/health", timeout=2.0)).status_code == 200
                        if ok and not backend.state.healthy:
                            backend.state.set_status("ready")
                            print(f"monitor: {backend.name} ready again", file=sys.stderr, flush=True)

        task = asyncio.create_task(monitor())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()

    app = create_app(gateway, lifespan)
    run = lambda: uvicorn.run(  # noqa: E731
        app, host="127.0.0.1", port=spec["port"], log_level="warning", access_log=False
    )
    if not spec.get("profile"):
        run()
        return
    if spec["profile"].endswith(".prof"):  # cProfile, for `python -m pstats`
        import cProfile

        with cProfile.Profile() as cprofile:
            try:
                run()
            finally:
                cprofile.dump_stats(spec["profile"])
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

Real llama-server replicas of the bundled model (`{model}`) and the real gateway (the FastAPI
app under uvicorn, in its own process on loopback, built from `Gateway`, `Router`,
`LocalRegistry`, `HttpBackend` and `KeyStore`), driven by an `httpx.AsyncClient` load
generator. Each section is written by its script with `--write`:

    uv run python bench/gateway_overhead.py --write   # ## Gateway overhead, ~4 min
    uv run python bench/routing.py --write            # ## Routing, ~3.5 min
    uv run python bench/routing.py --threads 1,1 --slow-cpu 0.4 --write   # needs root (cgroup)

`--help` lists the knobs for longer, tighter runs (`--scale`, `--rounds`, `--requests`). The
assembled model and the replica and gateway logs live in `~/.cache/corral-bench` (`--home`).

Machine of the figures below: {machine}.
It is a small shared VM whose speed varies from minute to minute, so the scripts interleave what
they compare; read the figures as what this machine gives, and compare within one table only.
"""


def update_doc(heading: str, body: str, *, subheading: str | None = None, intro: str = "",
               path: Path = DOC) -> None:  # fmt: skip
    """Replace (or append) the section `## heading` of docs/benchmarks.md, or only its
    subsection `### subheading` (the section starts with `intro` when it is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else INTRO.format(model=MODEL, machine=machine())
    lines = text.splitlines()
    title = f"## {heading}"
    if title not in lines:
        if lines and lines[-1].strip():
            lines.append("")
        lines += [title, "", *([*intro.strip().splitlines(), ""] if intro.strip() else [])]
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = [*body.strip("\n").splitlines(), ""]
    if subheading is None:
        lines[start:end] = [title, "", *new]
    else:
        sub = f"### {subheading}"
        block = [sub, "", *new]
        inside = lines[start:end]
        if sub in inside:
            s0 = start + inside.index(sub)
            s1 = next((i for i in range(s0 + 1, end) if lines[i].startswith("### ")), end)
            lines[s0:s1] = block
        else:
            last = end
            while last > start and not lines[last - 1].strip():
                last -= 1
            lines[last:end] = ["", *block]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# --- CPU caps for a replica ------------------------------------------------------------------


def cap_cpu(pid: int, fraction: float, period_us: int = 20_000) -> Path:
    """Put process `pid` (all its threads) in a new cgroup limited to `fraction` of one CPU.

    Needs root and a cgroup v1 `cpu` or cgroup v2 hierarchy; returns the cgroup to remove.
    """
    quota = max(1000, int(period_us * fraction))
    v1 = Path("/sys/fs/cgroup/cpu")
    v2 = Path("/sys/fs/cgroup")
    try:
        if (v1 / "cpu.cfs_quota_us").exists():
            group = v1 / f"corral-bench-{pid}"
            group.mkdir(exist_ok=True)
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        elif "cpu" in (v2 / "cgroup.controllers").read_text().split():
            with contextlib.suppress(OSError):
                (v2 / "cgroup.subtree_control").write_text("+cpu")
            group = v2 / f"corral-bench-{pid}"
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {period_us}")
        else:
            raise OSError("no cgroup cpu controller")
        (group / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        raise SystemExit(f"cannot cap a replica's CPU here ({exc}); this needs root and a "
                         "cgroup cpu controller, or run without --slow-cpu") from None  # fmt: skip
    return group


def remove_cgroup(group: Path) -> None:
    with contextlib.suppress(OSError):
        group.rmdir()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
