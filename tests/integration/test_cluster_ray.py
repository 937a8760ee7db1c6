"""The cluster on real Ray: several raylets on this machine (`ray.cluster_utils.Cluster`), a node
agent on each with a fake hardware profile (distinct names, speeds, CPU flags), real llama-server
replicas of the bundled model, and the real gateway (uvicorn) over the RayRegistry.

One cluster for the module; the tests run in order: placement, requests on different nodes, a
node killed mid-load, then power (a node put to sleep, woken by a Wake-on-LAN packet caught on a
loopback UDP socket, and the fallback when it does not come back in time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import corral.cluster  # noqa: F401  (before ray: workers run on this interpreter, not `uv run`)

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from corral.cluster.agent import ensure_agent  # noqa: E402
from corral.cluster.head import build_registry  # noqa: E402
from corral.cluster.registry import RayRegistry  # noqa: E402
from corral.config import parse_config  # noqa: E402
from corral.gateway.app import create_app  # noqa: E402
from corral.gateway.auth import KeyStore  # noqa: E402
from corral.hardware import detect_profile  # noqa: E402
from corral.models.catalog import Catalog  # noqa: E402
from corral.paths import CorralPaths  # noqa: E402
from corral.runtime import Runtime, http_client  # noqa: E402
from corral.supervisor.incidents import IncidentStore  # noqa: E402

pytestmark = pytest.mark.slow

GIB = 1024**3
GAMMA_MAC = "02:00:00:00:00:0c"

CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    replicas: 2
    slots: 1
    context: 512
    threads: 1
    fallback: [fallback]
  - name: big
    model: gemma3-270m
    replicas: 1
    slots: 1
    context: 512
    threads: 1
    auto: false
    fallback: [fallback]
  - name: fallback
    model: gemma3-270m
    always_loaded: true
    auto: false
    replicas: 1
    slots: 1
    context: 512
    threads: 1
cluster:
  reserve_bytes: 0
  requires:
    big: [avx512vnni]
  power:
    sleep_command: ["true"]
    wake_timeout_s: 240
    broadcast: 127.0.0.1
    wol_port: {port}
"""


def profile(name: str, tps: float, flags: tuple[str, ...] = ("avx", "avx2")) -> dict[str, Any]:
    return {
        "hostname": name, "cpu_model": "test cpu", "cores_physical": 1, "cores_logical": 1,
        "ram_total_bytes": 8 * GIB, "ram_available_bytes": 6 * GIB, "disk_free_bytes": 10 * GIB,
        "cpu_flags": list(flags), "tokens_per_second": tps,
    }  # fmt: skip


@dataclass
class Running:
    cluster: Any
    registry: RayRegistry
    url: str
    key: str
    nodes: dict[str, Any]
    wol: socket.socket
    home: Path

    def ask(self, model: str, max_tokens: int = 8, timeout: float = 300) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/chat/completions",
            json={"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}]},
            headers={"authorization": f"Bearer {self.key}"},
            timeout=timeout,
            trust_env=False,
        )

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.registry.status()}")
            time.sleep(0.5)

    def healthy(self, expert: str) -> list[str]:
        return [b.name for b in self.registry.backends(expert) if b.state.healthy]

    def add_node(
        self, name: str, tps: float, flags: tuple[str, ...] = ("avx", "avx2"), mac: str | None = None
    ) -> Any:
        node = _retry(lambda: self.cluster.add_node(num_cpus=1))
        ray.get(
            ensure_agent(
                node.node_id, home=str(self.home), profile=profile(name, tps, flags), mac=mac
            ).info.remote()
        )
        self.nodes[name] = node
        return node


def _retry(start: Callable[[], Any], attempts: int = 3) -> Any:
    """Ray gives a raylet 30 s (fixed) to register; a machine busy with other work can miss that."""
    for attempt in range(attempts):
        try:
            return start()
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _serve(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return server, thread


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("cluster-home")
    os.environ["CORRAL_HOME"] = str(home)  # the raylets' workers (the agents) inherit it
    wol = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wol.bind(("127.0.0.1", 0))
    wol.settimeout(240)
    config = parse_config(CONFIG.replace("{port}", str(wol.getsockname()[1])))
    paths = CorralPaths(home).ensure()
    cluster = _retry(
        lambda: Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 1,
                "include_dashboard": False,
                "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
            },
        )
    )
    ray.init(address=cluster.address, namespace="corral", log_to_driver=False)
    head_id = ray.get_runtime_context().get_node_id()
    ray.get(ensure_agent(head_id, home=str(home), profile=profile("head", 10.0)).info.remote())
    client = http_client(config)
    registry = build_registry(config, Catalog(paths.models), client, head_id)
    runtime = Runtime(config, paths, detect_profile(home), cluster=registry)
    gateway, _engine = runtime.build(client)
    key = KeyStore(paths.keys_file).create("tests", "admin")[1]

    @asynccontextmanager
    async def lifespan() -> Any:
        await registry.start()
        try:
            yield
        finally:
            await registry.stop()
            await client.aclose()

    port = _free_port()
    server, thread = _serve(create_app(gateway, lifespan), port)
    run = Running(cluster, registry, f"http://127.0.0.1:{port}", key, {}, wol, home)
    try:
        run.add_node("alpha", 30.0)
        run.add_node("beta", 20.0)
        run.add_node("gamma", 5.0, ("avx", "avx2", "avx512vnni"), GAMMA_MAC)
        yield run
    finally:
        server.should_exit = True
        thread.join(60)
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
        wol.close()


def test_experts_are_placed_across_nodes_by_speed_flags_and_reliability(running: Running) -> None:
    running.wait(
        "all replicas ready",
        lambda: all(b.state.healthy for b in running.registry.all()) and len(running.registry.all()) == 4,
    )
    where = {f"{p.expert}/{p.index}": p.node for p in running.registry.plan.placements}
    assert where["fallback/0"] == "head"  # the most reliable node
    assert where["big/0"] == "gamma"  # the only node with avx512vnni
    assert sorted([where["general/0"], where["general/1"]]) == ["alpha", "beta"]  # fastest, spread
    nodes = {n["name"]: n for n in running.registry.status()}
    assert nodes["gamma"]["mac"] == GAMMA_MAC and nodes["alpha"]["power"] == "awake"


def test_requests_are_served_by_replicas_on_different_nodes(running: Running) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: running.ask("general", 16), range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    served_on = {running.registry.node_of(r.headers["x-corral-replica"]) for r in responses}
    assert served_on == {"alpha", "beta"}


def test_a_node_lost_mid_load_fails_no_unstarted_request_and_is_re_placed(running: Running) -> None:
    beta = next(b for b in running.registry.backends("general") if running.registry.node_of(b.name) == "beta")
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(running.ask, "general", 64) for _ in range(6)]
        running.wait("a request on beta", lambda: beta.state.in_flight > 0, 120)
        running.cluster.remove_node(running.nodes.pop("beta"), allow_graceful=False)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 6, [r.text for r in responses]
    running.wait("general re-placed off beta", lambda: len(running.healthy("general")) == 2)
    assert "beta" not in {p.node for p in running.registry.plan.placements}
    assert {n["name"]: n["power"] for n in running.registry.status()}["beta"] == "lost"
    # The supervisor watches nodes too: the loss is an incident, recorded, since its replica moved.
    store = IncidentStore(running.home / "supervisor" / "incidents")
    running.wait("the supervisor's incident", lambda: any(i.target == "node/beta" for i in store.list()), 30)
    incident = next(i for i in store.list() if i.target == "node/beta")
    assert (incident.kind, incident.status) == ("node_lost", "recorded"), incident
    held = incident.bundle.spec["replicas"]
    assert beta.name in held and set(incident.bundle.spec["moved"]) == set(held), incident.bundle.spec


def _magic(mac: str) -> bytes:
    return b"\xff" * 6 + bytes.fromhex(mac.replace(":", "")) * 16


def _sleep_gamma(running: Running) -> None:
    asyncio.run_coroutine_threadsafe(running.registry.sleep_node("gamma"), _loop_of(running)).result(60)
    running.cluster.remove_node(running.nodes.pop("gamma"), allow_graceful=False)
    running.wait("gamma asleep, big unplaced", lambda: not running.registry.plan.of("big"))


def _loop_of(running: Running) -> asyncio.AbstractEventLoop:
    assert running.registry.loop is not None
    return running.registry.loop


def test_a_held_request_wakes_the_sleeping_node_and_completes_when_it_returns(running: Running) -> None:
    _sleep_gamma(running)
    assert {n["name"]: n["power"] for n in running.registry.status()}["gamma"] == "sleeping"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(running.ask, "big")
        packet, _ = running.wol.recvfrom(1024)
        assert packet == _magic(GAMMA_MAC)
        assert not held.done()  # held while the node wakes, not answered by the fallback
        running.add_node("gamma", 5.0, ("avx", "avx2", "avx512vnni"), GAMMA_MAC)  # it "wakes"
        response = held.result(300)
    assert response.status_code == 200
    assert response.headers["x-corral-expert"] == "big"


def test_a_held_request_falls_back_when_the_node_does_not_wake_in_time(running: Running) -> None:
    running.wait("big ready", lambda: bool(running.healthy("big")))
    _sleep_gamma(running)
    running.registry.config.power.wake_timeout_s = 3
    response = running.ask("big")
    assert response.status_code == 200
    assert response.headers["x-corral-expert"] == "fallback"
    packet, _ = running.wol.recvfrom(1024)
    assert packet == _magic(GAMMA_MAC)
