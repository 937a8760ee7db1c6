"""Models for evolution outside a running server: start this home's experts in-process (the same
Runtime and Engine as `corral up`, without the HTTP server) and hand out their LLMClient."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from corral.agent.llm import LLMClient
from corral.agent.router_llm import RouterLLM
from corral.config import default_config, load_config
from corral.errors import NoBackendError
from corral.hardware import detect_profile
from corral.paths import CorralPaths


@asynccontextmanager
async def local_llm(
    home: Path, config: Path | None = None, *, ready_timeout_s: float = 300.0
) -> AsyncIterator[LLMClient]:
    from corral.runtime import Runtime, engine_lifespan, http_client

    paths = CorralPaths(Path(home)).ensure()
    path = config or paths.config_file
    cfg = load_config(path) if path.exists() else default_config()
    runtime = Runtime(cfg, paths, detect_profile(paths.home), env=os.environ)
    client = http_client(cfg)
    gateway, engine = runtime.build(client)
    async with engine_lifespan(engine, client):
        deadline = time.monotonic() + ready_timeout_s
        while True:
            backends = [b for b in gateway.router.registry.all() if not b.name.endswith("/remote")]
            ok, problems = gateway.readiness()
            if ok and all(b.state.healthy for b in backends):
                break
            if time.monotonic() > deadline:
                why = "; ".join(problems) or "replicas still loading"
                raise NoBackendError(
                    f"the models did not load in {ready_timeout_s:.0f} s ({why}); "
                    f"see the replica logs in {paths.logs}"
                )
            await asyncio.sleep(0.5)
        yield RouterLLM(gateway.proxy)
