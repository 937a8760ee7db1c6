"""Replica scaling: aggregate tokens/s of 1, 2, 4, 8 llama-server replicas against N x one replica.

Every replica is a real llama-server of the bundled model started by corral's engine code, with
the same `--threads` and `--parallel` (slots). A configuration of N replicas is driven by a
closed loop of N x slots clients (client i talks to replica i mod N directly, so the figure is
the engine's scaling, not the gateway's), each sending fixed-length completions (greedy,
`ignore_eos`, so every request generates exactly `--max-tokens` tokens). The aggregate is the
generated tokens of all clients over the wall time of the configuration. Configurations are
interleaved in rounds (order rotated each round) so that drift in the machine's speed hits them
alike; the efficiency of N replicas is aggregate(N) / (N x aggregate(1)) of the same round.

    uv run python bench/scaling.py                       # what this machine's cores allow
    uv run python bench/scaling.py --write               # and update docs/benchmarks.md
    uv run python bench/scaling.py --replicas 1,2,4,8 --threads 2 --save results.json
    uv run python bench/scaling.py --load results.json --write   # figures taken elsewhere

Idle replicas use no CPU, so the largest configuration's replicas are started once and the
smaller configurations use the first N of them. `--replicas` defaults to 1, 2, 4, 8 capped so
that replicas x threads fits the machine's cores.

Target (issue): aggregate(N) >= 0.9 x N x aggregate(1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    bench_home,
    install_signal_handlers,
    machine,
    median,
    resolve_model,
    spread,
    start_replicas,
    stop_replicas,
    update_doc,
)
from corral.models.catalog import Catalog, ModelEntry

PROMPT = "Write a long story about a lighthouse keeper and the sea."
TARGET = 0.9
SECTION_INTRO = """Aggregate generated tokens/s of N llama-server replicas of the bundled model, each
with the same `--threads` and slots, driven by N x slots closed-loop clients, against N x the
figure of one replica in the same round (`bench/scaling.py`). Target: >= 0.9 x N x single."""


async def _client(http: httpx.AsyncClient, url: str, requests: int, max_tokens: int) -> int:
    tokens = 0
    body = {
        "prompt": PROMPT,
        "n_predict": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "cache_prompt": True,
    }
    for _ in range(requests):
        response = await http.post(url + "/completion", json=body, timeout=600.0)
        response.raise_for_status()
        tokens += int(response.json()["timings"]["predicted_n"])
    return tokens


async def _configuration(
    http: httpx.AsyncClient, urls: Sequence[str], slots: int, requests: int, max_tokens: int
) -> float:
    """Aggregate tokens/s of the replicas at `urls`, each with `slots` busy clients."""
    clients = [urls[i % len(urls)] for i in range(len(urls) * slots)]
    started = time.perf_counter()
    counts = await asyncio.gather(*(_client(http, url, requests, max_tokens) for url in clients))
    return sum(counts) / (time.perf_counter() - started)


def _model(args: argparse.Namespace, home: Path) -> ModelEntry:
    if args.model:
        return Catalog(home / "models").resolve(args.model)
    return resolve_model(home)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    home = bench_home(args.home)
    model = _model(args, home)
    sizes: list[int] = args.replicas
    limits = httpx.Limits(max_connections=max(sizes) * args.slots + 8)
    async with httpx.AsyncClient(limits=limits) as http:
        replicas = await start_replicas(home, model, [args.threads] * max(sizes), slots=args.slots,
                                        context_per_slot=args.max_tokens + 64, client=http)  # fmt: skip
        try:
            urls = [r.url for r in replicas]
            # Warm every replica (page cache, first-request setup) before timing anything.
            await _configuration(http, urls, args.slots, 1, 8)
            rounds: list[dict[str, float]] = []
            for index in range(args.rounds):
                order = sizes[index % len(sizes) :] + sizes[: index % len(sizes)]
                figures: dict[str, float] = {}
                for n in order:
                    tps = await _configuration(http, urls[:n], args.slots, args.requests, args.max_tokens)
                    figures[str(n)] = tps
                    print(f"round {index + 1}: {n} replica(s) {tps:7.1f} tokens/s", file=sys.stderr)
                rounds.append(figures)
        finally:
            await stop_replicas(replicas)
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "slots": args.slots,
        "max_tokens": args.max_tokens,
        "requests": args.requests,
        "replicas": sizes,
        "rounds": rounds,
    }


def report(results: dict[str, Any]) -> str:
    rounds: list[dict[str, float]] = results["rounds"]
    lines = [
        f"Run {results['date']}: `--threads {results['threads']}`, {results['slots']} slots per "
        f"replica, {results['max_tokens']} tokens per request, {results['requests']} requests per "
        f"client, {len(rounds)} rounds. Machine: {results['machine']}.",
        "",
        "| replicas | clients | aggregate tokens/s, median (min..max) | N x single, median "
        "| efficiency, median (min..max) | >= 0.9 |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for n in results["replicas"]:
        aggregate = [r[str(n)] for r in rounds]
        ideal = [n * r["1"] for r in rounds if "1" in r]
        efficiency = [r[str(n)] / (n * r["1"]) for r in rounds if "1" in r]
        eff = median(efficiency)
        lines.append(
            f"| {n} | {n * results['slots']} | {median(aggregate):.1f} ({spread(aggregate)}) "
            f"| {median(ideal):.1f} | {eff:.3f} ({spread(efficiency)}) "
            f"| {'yes' if eff >= TARGET else 'no'} |"
        )
    return "\n".join(lines)


def _default_sizes(threads: int) -> list[int]:
    cores = os.cpu_count() or 1
    return [n for n in (1, 2, 4, 8) if n * threads <= cores] or [1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--home", help="cache for the model and logs [~/.cache/corral-bench]")
    add("--model", help="a .gguf path instead of the bundled model (same model, other machine)")
    add("--threads", type=int, default=1, help="llama-server --threads of every replica [1]")
    add("--replicas", type=lambda s: [int(x) for x in s.split(",")],
        help="replica counts to measure, 1 first [1,2,4,8 capped at the cores]")  # fmt: skip
    add("--slots", type=int, default=2, help="llama-server --parallel of every replica [2]")
    add("--max-tokens", type=int, default=64, help="tokens generated per request [64]")
    add("--requests", type=int, default=3, help="requests per client per configuration [3]")
    add("--rounds", type=int, default=3, help="rounds, each measuring every configuration [3]")
    add("--save", help="also write the raw figures to this JSON file")
    add("--load", help="report figures saved by --save instead of measuring")
    add("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args(argv)
    if args.replicas is None:
        args.replicas = _default_sizes(args.threads)
    if args.replicas[0] != 1:
        parser.error("--replicas must start with 1: every figure is compared with one replica")
    return args


def main() -> None:
    args = parse_args()
    install_signal_handlers()
    if args.load:
        results = json.loads(Path(args.load).read_text())
    else:
        started = time.monotonic()
        results = asyncio.run(measure(args))
        print(f"(total {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1) + "\n")
    text = report(results)
    cores = results["machine"].split(" ", 1)[0]
    subheading = f"{cores} cores, `--threads {results['threads']}`"
    print(f"### {subheading}\n\n{text}")
    if args.write:
        update_doc("Replica scaling", text, subheading=subheading, intro=SECTION_INTRO)
        print("updated docs/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
