"""Cluster benchmarks: routing across heterogeneous nodes, and the node agent's memory.

1. Routing. Four simulated nodes of unequal speed (an old-PC spread: 40, 20, 10 and 5 tokens/s,
   one slot each), each a backend that really queues (one request decodes at a time per slot)
   and really sleeps for its decode time, behind corral's own Router and Proxy (in process: the
   routing code is what is measured, not HTTP). An open loop of Poisson arrivals at `--load`
   (0.7) of the four nodes' joint capacity sends the same schedule through expected finish time
   and round robin, in rounds with the order rotated. Latency counts from each request's
   scheduled arrival (no coordinated omission). Speeds are scaled by `--scale` (10) so that a
   run takes seconds: the ratios, not the absolute times, are the result.
2. Node agent memory. A real Ray cluster on this machine (`ray.cluster_utils.Cluster`, three
   nodes), the real NodeAgent actor on each (profile detection, no model loaded): the agent's
   RSS, and beside it the RSS of Ray's own processes on the node.

    uv run python bench/cluster_routing.py            # ~2 minutes on 2 cores
    uv run python bench/cluster_routing.py --write    # and update docs/benchmarks.md

Targets (issue): expected finish time beats round robin on p95; agent <= 150 MB RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corral.cluster  # noqa: F401  (before ray: workers run on this interpreter)
from _harness import machine, pct, update_doc
from corral.backends import BackendState
from corral.config import ExpertConfig
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.proxy import CHAT, Proxy
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router, make_balancer
from corral.testing.fake_backend import FakeResponse

SPEEDS = (40.0, 20.0, 10.0, 5.0)  # tokens/s of the simulated nodes
TOKENS = 24  # completion tokens per request


class SimNode:
    """A node's replica: `slots` requests decode at once, each at `tokens_per_second`."""

    def __init__(self, name: str, tokens_per_second: float, slots: int = 1) -> None:
        self.name = name
        self.expert = "general"
        self.model_id = "sim"
        self.upstream_model: str | None = None
        self.tps = tokens_per_second
        self.state = BackendState(slots=slots)
        self.state.set_status("ready")
        self._slots = asyncio.Semaphore(slots)

    async def open(self, path: str, body: bytes) -> FakeResponse:
        tokens = int(json.loads(body).get("max_tokens", TOKENS))
        async with self._slots:
            seconds = tokens / self.tps
            await asyncio.sleep(seconds)
        timings = {"predicted_n": tokens, "predicted_ms": seconds * 1000}
        data = {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"content": "x"}}],
            "timings": timings,
        }
        return FakeResponse(200, [json.dumps(data).encode()])


async def run_routing(
    balancer: str, speeds: list[float], arrivals: list[float]
) -> tuple[list[float], dict[str, int]]:
    registry = LocalRegistry()
    nodes = [SimNode(f"general/{i}", s) for i, s in enumerate(speeds)]
    for node in nodes:
        registry.add(node)
    router = Router(
        [ExpertConfig(name="general", model="sim")],
        registry,
        max_queue=10_000,
        balancer=make_balancer(balancer),
    )
    proxy = Proxy(router, GatewayMetrics(), lambda expert: ())
    body = {"model": "general", "max_tokens": TOKENS, "messages": [{"role": "user", "content": "hi"}]}
    latencies: list[float] = []
    served: dict[str, int] = {}
    start = time.perf_counter()

    async def one(at: float) -> None:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        response = await proxy.call(CHAT, body)
        latencies.append(time.perf_counter() - (start + at))
        replica = response.headers["x-corral-replica"]
        served[replica] = served.get(replica, 0) + 1

    await asyncio.gather(*(one(at) for at in arrivals))
    return latencies, served


def routing(args: argparse.Namespace) -> str:
    speeds = [s * args.scale for s in SPEEDS]
    capacity = sum(speeds) / TOKENS  # requests/s the nodes finish together
    rate = args.load * capacity
    rng = random.Random(7)
    arrivals, t = [], 0.0
    for _ in range(args.requests):
        t += rng.expovariate(rate)
        arrivals.append(t)
    results: dict[str, list[tuple[float, float, dict[str, int]]]] = {
        "expected_finish_time": [],
        "round_robin": [],
    }
    order = list(results)
    for round_no in range(args.rounds):
        for balancer in order[round_no % 2 :] + order[: round_no % 2]:
            latencies, served = asyncio.run(run_routing(balancer, speeds, arrivals))
            results[balancer].append((pct(latencies, 50), pct(latencies, 95), served))
            print(
                f"round {round_no + 1} {balancer}: p50 {pct(latencies, 50):.3f}s "
                f"p95 {pct(latencies, 95):.3f}s {served}"
            )
    rows = []
    for balancer, runs in results.items():
        p50s = [r[0] * 1000 for r in runs]
        p95s = [r[1] * 1000 for r in runs]
        share = {k: sum(r[2].get(k, 0) for r in runs) for k in sorted(runs[0][2])}
        total = sum(share.values())
        split = " / ".join(f"{100 * v / total:.0f}%" for v in share.values())
        rows.append(
            f"| {balancer} | {statistics.median(p50s):.0f} | {statistics.median(p95s):.0f} "
            f"({min(p95s):.0f}-{max(p95s):.0f}) | {split} |"
        )
    eft = statistics.median(r[1] for r in results["expected_finish_time"])
    rr = statistics.median(r[1] for r in results["round_robin"])
    return "\n".join([
        f"Run: `uv run python bench/cluster_routing.py --write` ({time.strftime('%Y-%m-%d')}; "
        f"{args.requests} requests x {args.rounds} rounds per balancer, load {args.load}, "
        f"scale {args.scale}).",
        "",
        f"Four simulated nodes at {', '.join(f'{s:g}' for s in SPEEDS)} tokens/s (x{args.scale:g}), "
        f"one slot each, {TOKENS}-token answers, Poisson arrivals at {args.load:g} of their joint "
        "capacity; the real Router and Proxy pick the node. Latency in simulated ms (median of the "
        "rounds, p95 range across rounds); share: requests served by the 40 / 20 / 10 / 5 tokens/s node.",
        "",
        "| balancer | p50 (ms) | p95 (ms) | share by node |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"p95 expected finish time / round robin: **{eft / rr:.2f}** (lower is better). Round robin "
        "gives the 5 tokens/s node a quarter of the requests, which it cannot keep up with, so its "
        "queue sets the tail; expected finish time learns each node's speed from the answers' "
        "timings and sends a request to the slow node only when the fast ones' queues would make "
        "it finish later there.",
    ])  # fmt: skip


def agent_memory(args: argparse.Namespace) -> str:
    import psutil
    import ray
    from ray.cluster_utils import Cluster

    from corral.cluster.agent import ensure_agent

    os.environ.setdefault("CORRAL_HOME", str(Path.home() / ".cache" / "corral-bench"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        nodes = [cluster.head_node, *(cluster.add_node(num_cpus=1) for _ in range(args.agents - 1))]
        ray.init(address=cluster.address, namespace="corral", log_to_driver=False)
        handles = [ensure_agent(n.node_id) for n in nodes]
        infos: list[dict[str, Any]] = ray.get([h.info.remote() for h in handles], timeout=300)
        time.sleep(5)  # let the agents settle (imports done, first calls answered)
        infos = ray.get([h.info.remote() for h in handles], timeout=60)
        agent_rss = [i["rss_bytes"] / 1024**2 for i in infos]
        raylets = [
            p.memory_info().rss / 1024**2 for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"
        ]
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
    print(f"agent RSS MiB: {agent_rss}; raylet RSS MiB: {raylets}")
    return "\n".join([
        f"Run: `uv run python bench/cluster_routing.py --write` ({time.strftime('%Y-%m-%d')}; "
        f"{args.agents} nodes of a `ray.cluster_utils.Cluster` on this machine).",
        "",
        "| process | RSS (MiB), median (min-max) | target |",
        "| --- | --- | --- |",
        f"| corral node agent (Ray actor worker, no model) | {statistics.median(agent_rss):.0f} "
        f"({min(agent_rss):.0f}-{max(agent_rss):.0f}) | <= 150 MB |",
        f"| Ray's raylet beside it | {statistics.median(raylets):.0f} "
        f"({min(raylets):.0f}-{max(raylets):.0f}) | |",
        "",
        "The agent is one Ray worker process: Python, Ray's core worker, psutil, httpx and corral's "
        "engine modules; llama-server replicas it starts are separate processes (their RSS is the "
        "model's, shown per replica in `corral status`).",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    routing_text = routing(args)
    memory_text = None if args.skip_memory else agent_memory(args)
    print(routing_text)
    if memory_text:
        print(memory_text)
    if args.write:
        intro = f"Machine: {machine()}."
        update_doc("Cluster", routing_text, subheading="Routing across heterogeneous nodes", intro=intro)
        if memory_text:
            update_doc("Cluster", memory_text, subheading="Node agent memory", intro=intro)


if __name__ == "__main__":
    main()
