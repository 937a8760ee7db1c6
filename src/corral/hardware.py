"""What this machine can do: cores, RAM, CPU flags, free disk and measured tokens/s (NodeProfile),
and how it is doing now (node_status, process_rss)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psutil

# Flags that change which llama.cpp kernels run and how fast; the rest of /proc/cpuinfo is noise.
INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512bw", "avx512vnni", "fma", "f16c", "sse4_2")


@dataclass(frozen=True)
class NodeProfile:
    hostname: str
    cpu_model: str
    cores_physical: int
    cores_logical: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int
    cpu_flags: frozenset[str]
    tokens_per_second: float | None = None  # measured decode speed on the bundled model

    def with_speed(self, tokens_per_second: float) -> NodeProfile:
        return replace(self, tokens_per_second=tokens_per_second)

    def default_threads(self, replicas: int) -> int:
        """Threads for one replica when `replicas` local replicas share this machine.

        Physical cores are split among all of them, never oversubscribed: llama.cpp's worker
        threads synchronise at every step, so a multi-threaded replica that loses a core to a
        busy neighbour stalls (measured: 8-10x slower, see docs/benchmarks.md), while
        single-threaded replicas sharing cores only slow down in proportion.
        """
        return max(1, self.cores_physical // max(1, replicas))

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["cpu_flags"] = sorted(self.cpu_flags)
        return data


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, interesting flags) from the text of /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model or platform.processor() or "unknown", frozenset(f for f in flags if f in INTERESTING_FLAGS)


def detect_profile(data_dir: Path, cpuinfo: Path = Path("/proc/cpuinfo")) -> NodeProfile:
    """Read this machine's profile now (no speed measurement: see engine.calibrate)."""
    try:
        model, flags = parse_cpuinfo(cpuinfo.read_text())
    except OSError:
        model, flags = platform.processor() or "unknown", frozenset()
    memory = psutil.virtual_memory()
    probe = data_dir if data_dir.exists() else Path.home()
    logical = psutil.cpu_count(logical=True) or 1
    return NodeProfile(
        hostname=socket.gethostname(),
        cpu_model=model,
        cores_physical=psutil.cpu_count(logical=False) or logical,
        cores_logical=logical,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        disk_free_bytes=shutil.disk_usage(probe).free,
        cpu_flags=flags,
    )


def load_measured_speed(cache: Path, fingerprint: str) -> float | None:
    """A tokens/s figure measured earlier on this machine for the same engine and model."""
    try:
        data = json.loads(cache.read_text())
    except (OSError, ValueError):
        return None
    if data.get("version") != 1 or data.get("fingerprint") != fingerprint:
        return None
    value = data.get("tokens_per_second")
    return float(value) if isinstance(value, int | float) else None


_BOOT = time.time()


def node_status(profile: NodeProfile, role: str = "head") -> dict[str, Any]:
    """This machine now, for the dashboard: memory and load change, the profile does not."""
    memory = psutil.virtual_memory()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "name": profile.hostname,
        "role": role,
        "cores": profile.cores_logical,
        "cores_physical": profile.cores_physical,
        "cpu_model": profile.cpu_model,
        "cpu_flags": sorted(profile.cpu_flags & frozenset(INTERESTING_FLAGS)),
        "memory_total": memory.total,
        "memory_available": memory.available,
        "load": load,
        "power": "awake",
        "tokens_per_second": profile.tokens_per_second,
        "uptime_s": round(time.time() - _BOOT, 1),
    }


def process_rss(pid: int | None) -> int | None:
    """Resident memory of a process (a replica), or None when it is gone."""
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None
