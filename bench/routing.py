"""Replica choice under load: two replicas of unequal speed, three balancers, one arrival schedule.

Two real llama-server replicas of the bundled model, one with `--threads 2` and one with
`--threads 1`, behind three gateways (expected_finish_time, round_robin, least_busy), each the
real app under uvicorn in its own process. First the capacity of the pair is measured (both
replicas saturated by a closed loop); then an open loop of Poisson arrivals at a fraction of it
(`--load`, 0.7) sends the same schedule of chat completions (same seed, same prompts) through
each balancer in turn, in rounds with the order rotated. Latency is measured from each request's
scheduled arrival, so a backlog shows up in the figures (no coordinated omission).

    uv run python bench/routing.py            # ~3.5 minutes on 2 cores
    uv run python bench/routing.py --write    # and update docs/benchmarks.md
    uv run python bench/routing.py --requests 100 --rounds 3   # longer, tighter
    sudo uv run python bench/routing.py --threads 1,1 --slow-cpu 0.4   # speeds 2.5 : 1, no
                                                                       # oversubscribed cores

Target (issue): p95(expected_finish_time) / p95(round_robin) <= 0.7.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    EXPERT,
    GatewayProcess,
    bench_home,
    cap_cpu,
    install_signal_handlers,
    machine,
    pct,
    remove_cgroup,
    resolve_model,
    start_gateway,
    start_replicas,
    stop_replicas,
    update_doc,
)

BALANCERS = ("expected_finish_time", "round_robin", "least_busy")
# Chat prompts the bundled model answers at some length (most reach max_tokens=24).
PROMPTS = (
    "List the countries of Europe, one per line.",
    "Describe the water cycle step by step.",
    "Explain how photosynthesis works in plants.",
    "Describe the solar system and its planets.",
    "Tell me about the life of Napoleon.",
    "List ten fruits and their colours.",
    "Explain in detail how a steam engine works.",
    "Tell me a long story about a dragon and a knight.",
)
TARGET_RATIO = 0.7


@dataclass
class Outcome:
    latencies: list[float] = field(default_factory=list)
    round_p95: list[float] = field(default_factory=list)
    round_p50: list[float] = field(default_factory=list)
    replicas: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


@dataclass
class Load:
    alone: list[float]  # req/s of each replica with only it busy
    together: list[float]  # req/s of each replica with both busy
    rate: float  # offered req/s

    @property
    def capacity(self) -> float:
        return sum(self.together)


def body(prompt: str, max_tokens: int, stop: Sequence[str] = ()) -> bytes:
    messages = [{"role": "user", "content": prompt}]
    extra = {"stop": list(stop)} if stop else {}
    return json.dumps({"model": EXPERT, "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0, **extra}).encode()  # fmt: skip


async def capacity(
    client: httpx.AsyncClient,
    urls: Sequence[str],
    slots: int,
    max_tokens: int,
    seconds: float,
    stop: Sequence[str],
) -> tuple[float, list[float]]:
    """Requests/s of all replicas together, each kept full (slots requests) for `seconds`.

    Sent to the replicas directly, with the stop strings the gateway would add."""
    done = [0] * len(urls)
    rng = random.Random(1)
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            response = await client.post(urls[index] + "/v1/chat/completions",
                                         content=body(rng.choice(PROMPTS), max_tokens, stop),
                                         headers={"content-type": "application/json"})  # fmt: skip
            response.raise_for_status()
            done[index] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(len(urls)) for _ in range(slots)))
    elapsed = time.perf_counter() - started
    per_replica = [n / elapsed for n in done]
    return sum(per_replica), per_replica


def schedule(seed: int, rate: float, count: int) -> list[tuple[float, str]]:
    """(arrival offset in seconds, prompt) for `count` Poisson arrivals at `rate` per second."""
    rng = random.Random(seed)
    at = 0.0
    out = []
    for _ in range(count):
        at += rng.expovariate(rate)
        out.append((at, rng.choice(PROMPTS)))
    return out


async def open_loop(
    client: httpx.AsyncClient,
    gateway: GatewayProcess,
    arrivals: list[tuple[float, str]],
    max_tokens: int,
    outcome: Outcome,
) -> list[float]:
    headers = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
    latencies: list[float] = []

    async def one(at: float, prompt: str, start: float) -> None:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            response = await client.post(gateway.url + "/v1/chat/completions",
                                         content=body(prompt, max_tokens), headers=headers)  # fmt: skip
        except httpx.TransportError as exc:
            outcome.errors += 1
            outcome.error_samples.append(repr(exc)[:200])
            return
        if response.status_code != 200:
            outcome.errors += 1
            outcome.error_samples.append(f"HTTP {response.status_code} {response.text[:200]}")
            return
        latencies.append(time.perf_counter() - (start + at))
        outcome.replicas[response.headers.get("x-corral-replica", "?")] += 1
        outcome.tokens += int(response.json()["usage"]["completion_tokens"])

    start = time.perf_counter() + 0.05
    await asyncio.gather(*(one(at, prompt, start) for at, prompt in arrivals))
    return latencies


async def measure(args: argparse.Namespace) -> tuple[dict[str, Outcome], Load]:
    home = bench_home(args.home)
    model = resolve_model(home)
    clock = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - clock:5.0f} s] {message}", file=sys.stderr, flush=True)

    outcomes = {name: Outcome() for name in BALANCERS}
    load = Load([], [], 0.0)
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(trust_env=False, timeout=600.0, limits=limits) as client:
        replicas = await start_replicas(home, model, args.threads, slots=args.slots,
                                        context_per_slot=512, client=client)  # fmt: skip
        gateways: dict[str, GatewayProcess] = {}
        cgroup = None
        try:
            if args.slow_cpu:
                pid = replicas[-1].pid
                assert pid is not None
                cgroup = cap_cpu(pid, args.slow_cpu)
            for name in BALANCERS:
                gateways[name] = await start_gateway(replicas, balancer=name,
                                                     stops=model.prompt_format.stop,
                                                     log_dir=home / "logs", client=client)  # fmt: skip
            urls = [r.url for r in replicas]
            log("warm-up")
            stop = model.prompt_format.stop
            await capacity(client, urls, args.slots, args.max_tokens, 3.0, stop)  # KV pages, caches
            for gateway in gateways.values():  # every balancer measures both replicas' speed
                warm = schedule(args.seed - 1, 100.0, args.slots * len(replicas))
                await open_loop(client, gateway, warm, args.max_tokens, Outcome())
            log("capacity")
            alone = [(await capacity(client, [url], args.slots, args.max_tokens, args.capacity_s, stop))[0]
                     for url in urls]  # fmt: skip
            total, per_replica = await capacity(
                client, urls, args.slots, args.max_tokens, args.capacity_s, stop
            )
            rate = args.rate or args.load * total
            load = Load(alone, per_replica, rate)
            log(f"capacity {total:.2f} req/s ({', '.join(f'{x:.2f}' for x in per_replica)}); "
                f"offering {rate:.2f} req/s")  # fmt: skip
            for r in range(args.rounds):
                arrivals = schedule(args.seed + r, rate, args.requests)
                order = BALANCERS[r % 3 :] + BALANCERS[: r % 3]
                for name in order:
                    outcome = outcomes[name]
                    got = await open_loop(client, gateways[name], arrivals, args.max_tokens, outcome)
                    outcome.latencies += got
                    outcome.round_p50.append(pct(got, 50))
                    outcome.round_p95.append(pct(got, 95))
                    log(f"round {r} {name:21s} p50 {pct(got, 50):6.2f} s  p95 {pct(got, 95):6.2f} s")
                    await asyncio.sleep(1.0)
        finally:
            for gateway in gateways.values():
                gateway.stop()
            await stop_replicas(replicas)
            if cgroup is not None:
                remove_cgroup(cgroup)
    return outcomes, load


def variant(args: argparse.Namespace) -> str:
    """The subsection title: which replicas were compared."""
    parts = [f"{EXPERT}/{i} `--threads {t}`" for i, t in enumerate(args.threads)]
    if args.slow_cpu:
        parts[-1] += f" capped at {args.slow_cpu:.0%} of a CPU"
    return "Two replicas: " + ", ".join(parts)


def report(args: argparse.Namespace, outcomes: dict[str, Outcome], load: Load) -> str:
    eft, rr = outcomes["expected_finish_time"], outcomes["round_robin"]
    ratio = pct(eft.latencies, 95) / pct(rr.latencies, 95)
    per_round = [e / r for e, r in zip(eft.round_p95, rr.round_p95, strict=True)]
    names = [f"{EXPERT}/{i}" for i in range(len(args.threads))]
    rows = []
    for name, o in outcomes.items():
        share = " / ".join(str(o.replicas.get(n, 0)) for n in names)
        rounds = ", ".join(f"{x:.2f}" for x in o.round_p95)
        tokens = o.tokens / max(1, len(o.latencies))
        rows.append(
            f"| {name} | {len(o.latencies)} | {pct(o.latencies, 50):.2f} | **{pct(o.latencies, 95):.2f}** "
            f"| {rounds} | {share} | {tokens:.1f} | {o.errors} |"
        )
    capacity, rate = load.capacity, load.rate
    errors = [s for o in outcomes.values() for s in o.error_samples][:5]
    fixed = lambda xs: " + ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    lines = [
        f"Run: `uv run python bench/routing.py --threads {','.join(map(str, args.threads))}"
        f"{f' --slow-cpu {args.slow_cpu}' if args.slow_cpu else ''} --write` "
        f"({time.strftime('%Y-%m-%d')}; {args.rounds} rounds x {args.requests} requests per "
        f"balancer, seed {args.seed}, `--parallel {args.slots}` per replica, `max_tokens` "
        f"{args.max_tokens}).",
        f"Machine: {machine()}.",
        f"Capacity (req/s, closed loop, every slot busy): each replica alone {fixed(load.alone)}; "
        f"both at once {fixed(load.together)} = {capacity:.2f}. Offered: Poisson arrivals at "
        f"{rate:.2f} req/s ({rate / capacity:.0%} of the joint capacity).",
        "",
        "| balancer | n | p50 (s) | p95 (s) | p95 per round | answers by replica "
        f"({' / '.join(names)}) | tokens per answer | errors |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"p95(expected_finish_time) / p95(round_robin) = **{ratio:.2f}** "
        f"(per round: {', '.join(f'{x:.2f}' for x in per_round)}); target <= {TARGET_RATIO}: "
        f"{'met' if ratio <= TARGET_RATIO else '**missed**'}.",
        *(f"- `{sample}`" for sample in errors),
    ]
    return "\n".join(lines)


SECTION_INTRO = """Two replicas of unequal speed behind the gateway, once per balancer
(`expected_finish_time`, the default; `round_robin`; `least_busy`), each balancer in its own
gateway process. `bench/routing.py` measures the joint capacity, then sends the same open-loop
schedule (Poisson arrivals at 70% of that capacity, same seed and prompts) of chat completions
through each balancer in turn, in rounds with the order rotated. Latency runs from a request's
scheduled arrival to its full answer, so a queue shows up in it. Target:
p95(expected_finish_time) / p95(round_robin) <= 0.7.

Read the capacity line of each run: each replica alone, and both at once. Where the replicas'
threads together outnumber the cores (`--threads 2,1` on the 2-CPU machine here), the 2-thread
replica is the fast one only while the other is idle: with both busy, three compute threads
share two cores, the 2-thread replica's two workers wait for each other at every synchronisation
point, and its throughput collapses (8-10x here). Speeds then depend on the load itself;
expected_finish_time's speed estimate (a moving average of measured time per token) follows the
collapsed figure and moves the load onto the 1-thread replica. The second run gets unequal
speeds without oversubscribing the cores: both replicas single-threaded, the second capped at
40% of a CPU with a cgroup (`--slow-cpu 0.4`, needs root)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--home", help="cache for the model and logs [~/.cache/corral-bench]")
    add("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[2, 1],
        help="llama-server --threads of each replica [2,1]")  # fmt: skip
    add("--slow-cpu", type=float, default=0.0,
        help="cap the last replica at this fraction of one CPU with a cgroup (needs root), e.g. "
        "--threads 1,1 --slow-cpu 0.4 for unequal speeds without oversubscribing 2 cores")  # fmt: skip
    add("--slots", type=int, default=2, help="llama-server --parallel of each replica [2]")
    add("--max-tokens", type=int, default=24, help="max_tokens of each request [24]")
    add("--requests", type=int, default=30, help="requests per balancer per round [30]")
    add("--rounds", type=int, default=2, help="rounds, each running every balancer once [2]")
    add("--load", type=float, default=0.7, help="offered load as a fraction of capacity [0.7]")
    add("--rate", type=float, help="offered load in requests/s (overrides --load)")
    add("--capacity-s", type=float, default=6.0, help="seconds of each capacity measurement [6]")
    add("--seed", type=int, default=7, help="seed of the arrival schedules [7]")
    add("--write", action="store_true", help="update docs/benchmarks.md")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    install_signal_handlers()
    started = time.monotonic()
    outcomes, load = asyncio.run(measure(args))
    text = report(args, outcomes, load)
    print(f"### {variant(args)}\n\n{text}")
    print(f"\n(total {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.write:
        update_doc("Routing", text, subheading=variant(args), intro=SECTION_INTRO)
        print("updated docs/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
