"""What the corral gateway adds over talking to llama-server directly, measured side by side.

One real llama-server replica of the bundled model, and the real gateway (uvicorn, its own
process) in front of it. Every measurement interleaves direct and via-gateway requests, and
alternates which goes first, so machine noise hits both equally:

1. latency of a 1-token `/v1/completions` request (p50 / p99, and the paired difference);
2. time to first token of a streamed `/v1/chat/completions` request;
3. throughput (completion tokens/s) at concurrency 1, 4 and 16, gateway / direct.

    uv run python bench/gateway_overhead.py            # ~4 minutes on 2 cores
    uv run python bench/gateway_overhead.py --write    # and update docs/benchmarks.md
    uv run python bench/gateway_overhead.py --scale 3  # 3x the requests, tighter figures
    uv run --with pyinstrument python bench/gateway_overhead.py --profile /tmp/gw.txt

Targets (issue): added p50 <= 1 ms, added p99 <= 5 ms, throughput ratio >= 0.97.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    EXPERT,
    bench_home,
    install_signal_handlers,
    machine,
    median,
    ms,
    pct,
    resolve_model,
    spread,
    start_gateway,
    start_replicas,
    stop_replicas,
    update_doc,
)

LATENCY_PROMPT = "The capital of France is"
CHAT_MESSAGES = [{"role": "user", "content": "Describe the solar system and its planets."}]
STORY_PROMPT = "Once upon a time, in a small village by the sea, there lived"

# llama-server (this build) closes the connection after every streamed answer although it
# advertises keep-alive; a request sent on that pooled connection within a few ms of the
# stream's end fails with "Server disconnected without sending a response" (httpx
# RemoteProtocolError). The gateway retries once on such a connection (HttpBackend.open); a
# plain client does not, so the load generator pauses this long after each stream and neither
# path meets a dead connection.
STREAM_GAP_S = 0.05

TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
TARGET_RATIO = 0.97


@dataclass
class Target:
    name: str  # direct | gateway
    url: str
    headers: dict[str, str]


@dataclass
class Results:
    latency: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "gateway": []})
    latency_pairs: list[float] = field(default_factory=list)  # gateway - direct, same pair
    latency_round_p50: list[float] = field(default_factory=list)  # added p50 per round
    ttft: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "gateway": []})
    ttft_pairs: list[float] = field(default_factory=list)
    ttft_round_p50: list[float] = field(default_factory=list)
    # concurrency -> target -> tokens/s per round; and gateway/direct per round
    throughput: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    ratios: dict[int, list[float]] = field(default_factory=dict)
    gateway_cpu_ms: float = 0.0  # gateway process CPU per 1-token request
    errors: dict[str, int] = field(default_factory=lambda: {"direct": 0, "gateway": 0})
    error_samples: list[str] = field(default_factory=list)

    def failed(self, target: Target, exc: Exception) -> None:
        self.errors[target.name] += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{target.name}: {exc}"[:300])


class RequestFailed(Exception):
    pass


def ordered(targets: Sequence[Target], flip: bool) -> list[Target]:
    return list(reversed(targets)) if flip else list(targets)


async def pair(
    targets: Sequence[Target],
    flip: bool,
    results: Results,
    request: Callable[[Target], Awaitable[float]],
) -> dict[str, float] | None:
    """One request to each target back to back; None (and counted) if either failed."""
    got = {}
    for target in ordered(targets, flip):
        try:
            got[target.name] = await request(target)
        except (RequestFailed, httpx.TransportError) as exc:
            results.failed(target, exc)
    return got if len(got) == len(targets) else None


async def paired_rounds(
    targets: Sequence[Target],
    rounds: int,
    pairs: int,
    results: Results,
    request: Callable[[Target], Awaitable[float]],
    samples: dict[str, list[float]],
    differences: list[float],
    round_p50: list[float],
) -> None:
    """`rounds` x `pairs` back-to-back pairs, alternating which target goes first."""
    for r in range(rounds):
        per_round: dict[str, list[float]] = {"direct": [], "gateway": []}
        for i in range(pairs):
            got = await pair(targets, (i + r) % 2 == 1, results, request)
            if got is None:
                continue
            for name, value in got.items():
                per_round[name].append(value)
                samples[name].append(value)
            differences.append(got["gateway"] - got["direct"])
        if pairs:
            round_p50.append(pct(per_round["gateway"], 50) - pct(per_round["direct"], 50))


async def completion_latency(client: httpx.AsyncClient, target: Target, body: bytes) -> float:
    started = time.perf_counter()
    response = await client.post(target.url + "/v1/completions", content=body, headers=target.headers)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RequestFailed(f"HTTP {response.status_code} {response.text[:300]}")
    return elapsed


async def stream_ttft(client: httpx.AsyncClient, target: Target, body: bytes) -> float:
    """Seconds until the first content token arrives; the rest of the stream is read too."""
    started = time.perf_counter()
    first = 0.0
    url = target.url + "/v1/chat/completions"
    async with client.stream("POST", url, content=body, headers=target.headers) as response:
        if response.status_code != 200:
            raise RequestFailed(f"HTTP {response.status_code} {await response.aread()!r}")
        async for line in response.aiter_lines():
            if first or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter() - started
    await asyncio.sleep(STREAM_GAP_S)  # see STREAM_GAP_S
    if not first:
        raise RequestFailed("the stream carried no content")
    return first


async def closed_loop(
    client: httpx.AsyncClient,
    target: Target,
    body: bytes,
    requests: int,
    concurrency: int,
    results: Results,
) -> tuple[float, int]:
    """Run `requests` completions with `concurrency` workers; (seconds, completion tokens)."""
    remaining = requests
    tokens = 0

    async def worker() -> None:
        nonlocal remaining, tokens
        while remaining > 0:
            remaining -= 1
            try:
                response = await client.post(
                    target.url + "/v1/completions", content=body, headers=target.headers
                )
            except httpx.TransportError as exc:
                results.failed(target, exc)
                continue
            if response.status_code != 200:
                results.failed(target, RequestFailed(f"HTTP {response.status_code} {response.text[:300]}"))
                continue
            tokens += int(response.json()["usage"]["completion_tokens"])

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, tokens


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def measure(args: argparse.Namespace, results: Results) -> dict[str, str]:
    home = bench_home(args.home)
    model = resolve_model(home)
    stops = list(model.prompt_format.stop)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(trust_env=False, timeout=300.0, limits=limits) as client:
        replicas = await start_replicas(home, model, [args.threads], slots=args.slots,
                                        context_per_slot=512, client=client)  # fmt: skip
        gateway = None
        try:
            gateway = await start_gateway(replicas, balancer="expected_finish_time", stops=stops,
                                          log_dir=home / "logs", client=client,
                                          profile=args.profile)  # fmt: skip
            auth = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
            targets = [Target("direct", replicas[0].url, auth), Target("gateway", gateway.url, auth)]
            await run_all(args, client, targets, stops, results, gateway.process.pid)
        finally:
            if gateway is not None:
                gateway.stop()
            await stop_replicas(replicas)
    recoveries = gateway.log_path.read_text().count("ready again")
    return {"threads": str(args.threads), "slots": str(args.slots), "recoveries": str(recoveries)}


async def run_all(
    args: argparse.Namespace,
    client: httpx.AsyncClient,
    targets: list[Target],
    stops: list[str],
    results: Results,
    gateway_pid: int,
) -> None:
    rounds = args.rounds
    scale = args.scale
    clock = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - clock:5.0f} s] {message}", file=sys.stderr, flush=True)

    # The same body both ways: the stop strings the gateway would add are already there, so
    # llama-server does identical work; the gateway still parses and re-serialises it.
    latency_body = json.dumps({"model": EXPERT, "prompt": LATENCY_PROMPT, "max_tokens": 1,
                               "temperature": 0, "stop": stops}).encode()  # fmt: skip
    ttft_body = json.dumps({"model": EXPERT, "messages": CHAT_MESSAGES, "max_tokens": 16,
                            "temperature": 0, "stream": True, "stop": stops}).encode()  # fmt: skip
    story_body = json.dumps({"model": EXPERT, "prompt": STORY_PROMPT, "max_tokens": 32,
                             "temperature": 0, "ignore_eos": True, "stop": stops}).encode()  # fmt: skip

    log("warm-up")
    # Warm up: connections, the prompt cache of every slot, the gateway's code paths.
    for _ in range(10):
        await pair(targets, False, results, lambda t: completion_latency(client, t, latency_body))
    await pair(targets, False, results, lambda t: stream_ttft(client, t, ttft_body))
    for target in targets:  # the first full batch is slow (KV cache pages touched first)
        await closed_loop(client, target, story_body, args.slots, args.slots, results)

    pairs = 100 * scale if "latency" in args.phases else 0
    log(f"1-token latency: {rounds} rounds x {pairs} pairs")
    cpu_before = cpu_seconds(gateway_pid)
    latency = lambda t: completion_latency(client, t, latency_body)  # noqa: E731
    await paired_rounds(targets, rounds, pairs, results, latency,
                        results.latency, results.latency_pairs, results.latency_round_p50)  # fmt: skip
    results.gateway_cpu_ms = (cpu_seconds(gateway_pid) - cpu_before) * 1000 / max(1, rounds * pairs)

    pairs = 15 * scale if "ttft" in args.phases else 0
    log(f"streaming TTFT: {rounds} rounds x {pairs} pairs")
    await paired_rounds(targets, rounds, pairs, results, lambda t: stream_ttft(client, t, ttft_body),
                        results.ttft, results.ttft_pairs, results.ttft_round_p50)  # fmt: skip

    for concurrency in args.concurrency if "throughput" in args.phases else []:
        requests = max(concurrency, 3) * scale
        log(f"throughput c={concurrency}: {args.throughput_rounds} rounds of ABBA runs x {requests} requests")
        per_target: dict[str, list[float]] = {"direct": [], "gateway": []}
        ratios: list[float] = []
        for r in range(args.throughput_rounds):
            # A B B A within a round cancels a linear drift of the machine's speed.
            seconds = {"direct": 0.0, "gateway": 0.0}
            tokens = {"direct": 0, "gateway": 0}
            first, second = ordered(targets, r % 2 == 1)
            for target in (first, second, second, first):
                took, got = await closed_loop(client, target, story_body, requests, concurrency, results)
                seconds[target.name] += took
                tokens[target.name] += got
            rate = {name: tokens[name] / seconds[name] for name in seconds}
            for name, value in rate.items():
                per_target[name].append(value)
            ratios.append(rate["gateway"] / rate["direct"])
            log(f"  round {r}: direct {rate['direct']:.1f} tok/s, gateway {rate['gateway']:.1f} tok/s")
        results.throughput[concurrency] = per_target
        results.ratios[concurrency] = ratios
    log("done")


def verdict(ok: bool | None) -> str:
    """met / missed, or "not measured" (None) when that phase did not run."""
    if ok is None:
        return "not measured"
    return "met" if ok else "**missed**"


def at_most(value: float, limit: float) -> bool | None:
    return None if math.isnan(value) else value <= limit


def report(args: argparse.Namespace, results: Results, setup: dict[str, str]) -> str:
    lat, ttft = results.latency, results.ttft
    rows = []
    for label, data, pairs, per_round in (
        ("1-token completion", lat, results.latency_pairs, results.latency_round_p50),
        ("streaming TTFT", ttft, results.ttft_pairs, results.ttft_round_p50),
    ):
        d50, d99 = pct(data["direct"], 50), pct(data["direct"], 99)
        g50, g99 = pct(data["gateway"], 50), pct(data["gateway"], 99)
        rows.append(
            f"| {label} | {len(data['direct'])} | {ms(d50)} / {ms(d99)} | {ms(g50)} / {ms(g99)} "
            f"| **{ms(g50 - d50)}** / **{ms(g99 - d99)}** | {ms(pct(pairs, 50))} / {ms(pct(pairs, 99))} "
            f"| {spread([x * 1000 for x in per_round])} |"
        )
    added50 = pct(lat["gateway"], 50) - pct(lat["direct"], 50)
    added99 = pct(lat["gateway"], 99) - pct(lat["direct"], 99)
    tput_rows = []
    ratio_ok: bool | None = None if not results.throughput else True
    for concurrency, per_target in results.throughput.items():
        ratios = results.ratios[concurrency]
        ratio = median(ratios)
        ratio_ok = bool(ratio_ok) and ratio >= TARGET_RATIO
        tput_rows.append(
            f"| {concurrency} | {median(per_target['direct']):.1f} | {median(per_target['gateway']):.1f} "
            f"| **{ratio:.3f}** | {spread(ratios)} | {verdict(ratio >= TARGET_RATIO)} |"
        )
    lines = [
        f"Run: `uv run python bench/gateway_overhead.py --write` ({time.strftime('%Y-%m-%d')}; "
        f"rounds {args.rounds}, throughput rounds {args.throughput_rounds}, scale {args.scale}).",
        f"Machine: {machine()}.",
        f"Setup: one llama-server replica of the bundled model (`--threads {setup['threads']}`, "
        f"`--parallel {setup['slots']}`), the gateway in its own uvicorn process on loopback, "
        "an `httpx.AsyncClient` load generator; direct and via-gateway requests interleaved, "
        "alternating which goes first. Request bodies already carry the expert's stop strings, "
        "so llama-server does the same work both ways. After each streamed request the load "
        f"generator pauses {STREAM_GAP_S * 1000:.0f} ms: llama-server closes the connection after "
        "a stream although it answers `Keep-Alive`, and a request sent on that pooled connection "
        "within a few ms fails with `RemoteProtocolError` (the gateway retries once on such a "
        "connection, a plain client does not).",
        "",
        "Latency (ms). *added* = gateway percentile - direct percentile over all rounds; "
        "*paired* = percentiles of (gateway - direct) over back-to-back pairs, which also "
        "carries both requests' noise; *per round* = range of the added p50 across rounds. "
        "TTFT = until the first content token of the stream.",
        "",
        "| request | n per side | direct p50 / p99 | gateway p50 / p99 | added p50 / p99 "
        "| paired p50 / p99 | added p50 per round |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Gateway CPU time per 1-token request: **{results.gateway_cpu_ms:.2f} ms** "
        "(user + system of the gateway process over the latency phase, including its /health "
        "poll of the replica every 2 s, as `corral up` also polls).",
        "",
        "Throughput (completion tokens/s, `/v1/completions`, 32 tokens each, `ignore_eos`; "
        "median of rounds; ratio = gateway / direct tokens/s, per round, each round running "
        "direct, gateway, gateway, direct or the reverse). Rounds disagree by several percent "
        "on this machine (see the per-round column): a ratio that close to 1 is noise:",
        "",
        "| concurrency | direct tok/s | gateway tok/s | ratio | ratio per round | target >= 0.97 |",
        "|---|---|---|---|---|---|",
        *tput_rows,
        "",
        f"Failed requests: direct {results.errors['direct']}, gateway {results.errors['gateway']}; "
        f"replica marked unhealthy by the gateway and restored by the monitor: "
        f"{setup['recoveries']} times.",
        *(f"- `{sample}`" for sample in results.error_samples),
        "",
        "Where the gateway's time goes: `uv run --with pyinstrument python "
        "bench/gateway_overhead.py --phases latency --profile /tmp/gateway.txt` (or a `.prof` "
        "path for cProfile).",
        "",
        f"Targets: added p50 <= {TARGET_P50_MS:g} ms: {verdict(at_most(added50 * 1000, TARGET_P50_MS))}; "
        f"added p99 <= {TARGET_P99_MS:g} ms: {verdict(at_most(added99 * 1000, TARGET_P99_MS))}; "
        f"throughput ratio >= {TARGET_RATIO}: {verdict(ratio_ok)}.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--home", help="cache for the model and logs [~/.cache/corral-bench]")
    add("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
        help="llama-server --threads [CPUs - 1: one core is left to the gateway and the load "
        "generator; with every core taken ggml's spinning workers stall]")  # fmt: skip
    add("--slots", type=int, default=16, help="llama-server --parallel [16]")
    add("--rounds", type=int, default=3, help="rounds of the latency and TTFT measurements [3]")
    add("--throughput-rounds", type=int, default=2,
        help="rounds of the throughput measurement, each direct-gateway-gateway-direct [2]")  # fmt: skip
    add("--scale", type=int, default=1,
        help="multiply request counts (1: 100 latency and 15 TTFT pairs per round) [1]")  # fmt: skip
    add("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16],
        help="throughput concurrencies [1,4,16]")  # fmt: skip
    add("--phases", type=lambda s: set(s.split(",")), default={"latency", "ttft", "throughput"},
        help="which measurements [latency,ttft,throughput]")  # fmt: skip
    add("--profile", help="run the gateway under a profiler and write its report here: "
        "NAME.prof for cProfile, else pyinstrument text (uv run --with pyinstrument ...); "
        "the figures of such a run are inflated, so --write is refused")  # fmt: skip
    add("--write", action="store_true", help="update docs/benchmarks.md")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.profile and args.write:
        raise SystemExit("--profile inflates the gateway's figures; run it without --write")
    install_signal_handlers()
    if max(args.concurrency) > args.slots:
        print(f"note: concurrency {max(args.concurrency)} > {args.slots} slots queues in llama-server",
              file=sys.stderr)  # fmt: skip
    results = Results()
    started = time.monotonic()
    setup = asyncio.run(measure(args, results))
    text = report(args, results, setup)
    print(text)
    print(f"\n(total {time.monotonic() - started:.0f} s)", file=sys.stderr)
    if args.write:
        update_doc("Gateway overhead", text)
        print("updated docs/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
