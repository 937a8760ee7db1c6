"""Prompt evolution on a held-out suite: for each selection strategy, a campaign from the seed
prompt with the same seed and budget, then the promoted variant against the seed prompt on the
held-out cases — pass-rate change and metric calls spent, side by side.

Real: the bundled model on llama-server (started in-process with corral's own Runtime, as
`corral evolve` does), every case a workflow run of corral's runner. Each strategy gets its own
fresh home (archive, run history), so its metric calls are its own; the LLM-call cache is shared
(a request already answered for another strategy, such as the seed prompt on a validation case,
is served from disk: it still counts as a metric call, it only saves wall time).

The suite's workflow is one tool_choice node with no tools and short answers (`quick`, below):
the shipped agent workflow offers every tool and costs ~30 s per case on a busy 2-core machine,
which would put one strategy's campaign past a quarter of an hour.

"Promoted" follows corral's rule: the best candidate on validation is promoted only if its
held-out score does not fall below the seed's; otherwise the seed stays (a change of 0).

    .venv/bin/python bench/evolve.py                     # ~30 min on a busy 2-core machine
    .venv/bin/python bench/evolve.py --generations 2 --max-metric-calls 6 --methods dgm,random
    .venv/bin/python bench/evolve.py --write             # and update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import bench_home, machine, update_doc
from corral.evolve.archive import Archive
from corral.evolve.campaign import evaluate_split, run_campaign
from corral.evolve.evaluate import Budget
from corral.evolve.host import local_llm
from corral.evolve.selection import STRATEGIES

CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    description: general questions
    replicas: 1
    slots: 2
    context: 2048
"""

WORKFLOW = """
version: 1
name: quick
description: one short answer from the tool-choice node, whose system prompt is the `system` role
inputs:
  messages: {type: messages}
nodes:
  decide:
    type: tool_choice
    in: {messages: $inputs.messages}
    params: {prompt_role: system, tools: [], max_tokens: 40, temperature: 0.2}
    on_error: branch
  answer:
    type: output
    in: {answer: $decide.answer}
  failed:
    type: output
    in: {answer: ""}
edges:
  - {from: decide, to: answer, when: final}
  - {from: decide, to: failed, when: error}
"""

CASES = [
    ("train", "capital-france", "What is the capital of France?", "Paris"),
    ("train", "sky-colour", "What colour is a clear daytime sky?", "blue"),
    ("train", "add-small", "What is 2 + 3? Answer with a number.", "5"),
    ("train", "opposite-hot", "What is the opposite of hot? One word.", "cold"),
    ("validation", "capital-italy", "What is the capital of Italy?", "Rome"),
    ("validation", "week-days", "How many days are in a week? Answer with a number.", "7"),
    ("heldout", "capital-japan", "What is the capital of Japan?", "Tokyo"),
    ("heldout", "grass-colour", "What colour is fresh grass?", "green"),
    ("heldout", "times-small", "What is 3 times 4? Answer with a number.", "12"),
]


def suite_text() -> str:
    lines = ["version: 1", "name: quick", "role: system", "workflow: quick", "output: answer", "cases:"]
    for split, cid, question, answer in CASES:
        lines += [
            f"  - id: {cid}",
            f"    split: {split}",
            f"    input: {{messages: [{{role: user, content: {question!r}}}]}}",
            f"    expect: [{{contains: {answer!r}}}]",
        ]
    return "\n".join(lines) + "\n"


def fresh_home(models: Path, cache: Path) -> Path:
    home = Path(tempfile.mkdtemp(prefix="corral-bench-evolve-"))
    (home / "models").symlink_to(models, target_is_directory=True)
    (home / "evolve").mkdir()
    (home / "evolve" / "cache").symlink_to(cache, target_is_directory=True)
    (home / "corral.yaml").write_text(CONFIG)
    (home / "workflows").mkdir()
    (home / "workflows" / "quick.yaml").write_text(WORKFLOW)
    (home / "evolve" / "suites").mkdir()
    (home / "evolve" / "suites" / "quick.yaml").write_text(suite_text())
    return home


@dataclass
class Row:
    method: str
    generations: int
    children: int
    failed: int
    stopped: str
    metric_calls: int
    tokens: int
    seed_pass: float
    best_pass: float
    promoted_pass: float
    heldout_calls: int
    wall_s: float


def pass_rate(home: Path, variant: str) -> float:
    archive = Archive(home)
    try:
        scores = archive.scores(variant, "quick", "heldout")
    finally:
        archive.close()
    return sum(s.passed for s in scores.values()) / len(scores) if scores else 0.0


async def one(method: str, models: Path, cache: Path, llm: object, args: argparse.Namespace) -> Row:
    home = fresh_home(models, cache)
    started = time.monotonic()
    result = await run_campaign(
        home, "quick", generations=args.generations, selection=method, seed=args.seed, llm=llm,  # type: ignore[arg-type]
        budget=Budget(max_metric_calls=args.max_metric_calls), minibatch=args.minibatch,
        max_prompt_tokens=args.max_prompt_tokens, heldout=False,
    )  # fmt: skip
    archive = Archive(home)
    before = archive.spend("")[0]
    archive.close()
    ids = list(dict.fromkeys([result.root, result.best]))
    await evaluate_split(home, "quick", ids, "heldout", llm=llm)  # type: ignore[arg-type]
    archive = Archive(home)
    heldout_calls = archive.spend("")[0] - before
    archive.close()
    seed_pass, best_pass = pass_rate(home, result.root), pass_rate(home, result.best)
    promoted = best_pass if best_pass >= seed_pass else seed_pass
    return Row(
        method, result.generations, len(result.children), result.failed_attempts, result.stopped,
        result.metric_calls, result.tokens, seed_pass, best_pass, promoted, heldout_calls,
        time.monotonic() - started,
    )  # fmt: skip


async def main(args: argparse.Namespace) -> list[Row]:
    cache = bench_home(args.home)
    models = cache / "models"
    models.mkdir(parents=True, exist_ok=True)
    host = Path(tempfile.mkdtemp(prefix="corral-bench-evolve-host-"))
    (host / "models").symlink_to(models, target_is_directory=True)
    (host / "corral.yaml").write_text(CONFIG)
    shared_cache = host / "llm-cache"
    shared_cache.mkdir()
    rows: list[Row] = []
    async with local_llm(host) as llm:
        for method in args.methods.split(","):
            row = await one(method, models, shared_cache, llm, args)
            print(
                f"{method}: seed {row.seed_pass:.2f} -> promoted {row.promoted_pass:.2f} "
                f"(best {row.best_pass:.2f}); {row.metric_calls} metric calls, {row.children} children, "
                f"{row.failed} failed, {row.wall_s:.0f} s",
                flush=True,
            )
            rows.append(row)
            if args.write:  # each strategy's row is kept even if a later one is cut off
                update_doc("Prompt evolution", table(rows, args))
    return rows


def table(rows: list[Row], args: argparse.Namespace) -> str:
    held = sum(1 for c in CASES if c[0] == "heldout")
    out = [
        f"Measured {time.strftime('%Y-%m-%d')} with `bench/evolve.py --generations {args.generations} "
        f"--max-metric-calls {args.max_metric_calls} --minibatch {args.minibatch} "
        f"--max-prompt-tokens {args.max_prompt_tokens} --seed {args.seed}` on {machine()}.",
        "",
        f"The `quick` suite: {len(CASES) - held} train/validation cases and {held} held-out cases of short "
        "factual questions; the `system` role of a one-node tool_choice workflow; the bundled gemma3-270m "
        "model both answers and mutates. Same seed and the same metric-call budget for every strategy; each "
        "in its own fresh home.",
        "",
        "| selection | generations | children (failed mutations) | metric calls (campaign) | tokens | "
        "held-out pass: seed | best candidate | promoted | change | held-out calls | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r.method} | {r.generations} ({r.stopped}) | {r.children} ({r.failed}) | {r.metric_calls} | "
            f"{r.tokens} | {r.seed_pass:.2f} | {r.best_pass:.2f} | {r.promoted_pass:.2f} | "
            f"{r.promoted_pass - r.seed_pass:+.2f} | {r.heldout_calls} | {r.wall_s:.0f} s |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(STRATEGIES))
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--max-metric-calls", type=int, default=8)
    parser.add_argument("--minibatch", type=int, default=2)
    parser.add_argument("--max-prompt-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", default=None, help="the bench cache (the assembled model)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    arguments = parser.parse_args()
    results = asyncio.run(main(arguments))
    body = table(results, arguments)
    print(body)
