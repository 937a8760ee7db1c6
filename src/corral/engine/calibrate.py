"""A short measured decode on this machine: tokens/s of the bundled model, cached per engine+CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from corral.engine.binaries import EngineBinaries
from corral.engine.replica import Replica, ReplicaSpec
from corral.hardware import NodeProfile, load_measured_speed
from corral.models.catalog import ModelEntry
from corral.paths import atomic_write_text

PROMPT = "The history of the printing press begins"
TOKENS = 48


def fingerprint(binaries: EngineBinaries, model: ModelEntry, profile: NodeProfile) -> str:
    parts = (binaries.fingerprint, model.id, model.info.size_bytes, profile.cpu_model, profile.cores_physical)
    return "|".join(str(p) for p in parts)


async def measure_tokens_per_second(
    binaries: EngineBinaries, model: ModelEntry, profile: NodeProfile, log_dir: Path, cache: Path
) -> float:
    """Decode speed with all physical cores on one slot; read from cache when already measured."""
    key = fingerprint(binaries, model, profile)
    cached = load_measured_speed(cache, key)
    if cached is not None:
        return cached
    spec = ReplicaSpec("calibrate", 0, model, slots=1, context_per_slot=512, threads=profile.cores_physical)
    replica = Replica(spec, binaries, log_dir)
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        await replica.start()
        try:
            if not await replica.wait_ready(client, 120):
                raise RuntimeError(f"llama-server did not start for calibration:\n{replica.log_tail()}")
            best = 0.0
            for _ in range(2):  # the first run warms caches; keep the better of two
                started = time.perf_counter()
                response = await client.post(replica.url + "/completion", json={
                    "prompt": PROMPT, "n_predict": TOKENS, "temperature": 0, "ignore_eos": True,
                    "cache_prompt": False,
                })  # fmt: skip
                response.raise_for_status()
                timings = response.json().get("timings", {})
                tps = float(timings.get("predicted_per_second") or 0) or (
                    TOKENS / (time.perf_counter() - started)
                )
                best = max(best, tps)
        finally:
            await replica.stop()
    atomic_write_text(cache, json.dumps({"version": 1, "fingerprint": key, "tokens_per_second": best}))
    return best
