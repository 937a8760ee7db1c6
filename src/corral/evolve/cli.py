"""`corral evolve`: list and check suites, run campaigns (or one generation), show the archive,
promote and roll back prompts."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.errors import ConfigError, CorralError
from corral.evolve.archive import Archive
from corral.evolve.campaign import (
    CampaignResult,
    evaluate_split,
    generations_done,
    missing_heldout,
    run_campaign,
)
from corral.evolve.evaluate import Budget
from corral.evolve.selection import STRATEGIES, check_method
from corral.evolve.suites import load_suite, validate_all
from corral.paths import default_home

evolve_app = typer.Typer(help="Evolve the agent's prompts against test suites.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="data directory (default: $CORRAL_HOME or ~/.local/share/corral)"),
]
SuiteOpt = Annotated[str, typer.Option("--suite", "-s", help="the suite to evolve against")]
MethodOpt = Annotated[
    str, typer.Option("--selection-method", "-m", help=f"parent selection: {', '.join(STRATEGIES)}")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seeds selection, minibatches and mutation")]
CallsOpt = Annotated[int | None, typer.Option("--max-metric-calls", help="stop after this many case runs")]
TokensOpt = Annotated[int | None, typer.Option("--max-tokens", help="stop after this many LLM tokens")]
BatchOpt = Annotated[int, typer.Option("--minibatch", help="train cases a child is first tried on")]
CapOpt = Annotated[int, typer.Option("--max-prompt-tokens", help="a longer revised prompt is refused")]
MutatorOpt = Annotated[
    str, typer.Option("--mutation-model", help="the expert that rewrites prompts (default: auto)")
]


def _home(home: Path | None) -> Path:
    return (home or default_home()).expanduser()


def _fail(err: Exception) -> None:
    message = err.message if isinstance(err, CorralError) else str(err)
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def _campaign(home: Path, suite: str, generations: int, method: str, seed: int, budget: Budget,
              minibatch: int, cap: int, mutator: str = "auto") -> CampaignResult:  # fmt: skip
    return asyncio.run(
        run_campaign(
            home,
            suite,
            generations=generations,
            selection=method,
            budget=budget,
            seed=seed,
            minibatch=minibatch,
            max_prompt_tokens=cap,
            mutation_model=mutator,
        )
    )


def _report(result: CampaignResult) -> None:
    console.print(
        f"campaign [bold]{result.campaign}[/]: {result.generations} generation(s), "
        f"{len(result.children)} variant(s) made, {result.failed_attempts} failed mutation(s), "
        f"stopped: {result.stopped}; spent {result.metric_calls} metric calls, {result.llm_calls} LLM calls, "
        f"{result.tokens} tokens"
    )
    root, best = result.scores.get(result.root), result.scores.get(result.best)
    line = f"validation: seed/baseline {result.root} {root if root is not None else '-'}"
    if result.improved:
        line += f", best {result.best} {best:.2f}" if best is not None else f", best {result.best}"
    console.print(line)
    if result.heldout:
        console.print("held-out: " + ", ".join(f"{k} {v:.2f}" for k, v in result.heldout.items()))
    if result.improved:
        console.print(f"promote it with: corral evolve promote {result.best}")


@evolve_app.command("suites")
def suites_cmd(home: HomeOpt = None) -> None:
    """List the suites and check each one; a broken suite names its file and line."""
    found = validate_all(_home(home))
    table = Table("suite", "role", "workflow", "train", "validation", "heldout", "hash")
    broken = []
    for name, suite in found.items():
        if isinstance(suite, ConfigError):
            broken.append(suite)
            table.add_row(name, "[red]invalid[/]", "", "", "", "", "")
            continue
        counts = [str(len(suite.split(s))) for s in ("train", "validation", "heldout")]
        table.add_row(name, suite.role, suite.workflow, *counts, suite.hash)
    console.print(table)
    for err in broken:
        err_console.print(f"[bold red]error:[/] {err.message}")
    if broken:
        raise typer.Exit(2)


@evolve_app.command("campaign")
def campaign_cmd(
    generations: Annotated[int, typer.Option("--generations", "-g", help="generations to reach")] = 3,
    suite: SuiteOpt = "assistant",
    selection_method: MethodOpt = "dgm",
    seed: SeedOpt = 0,
    max_metric_calls: CallsOpt = None,
    max_tokens: TokensOpt = None,
    minibatch: BatchOpt = 3,
    max_prompt_tokens: CapOpt = 256,
    mutation_model: MutatorOpt = "auto",
    home: HomeOpt = None,
) -> None:
    """Run a campaign to N generations (an interrupted one continues); starts this home's models."""
    try:
        check_method(selection_method)
        budget = Budget(max_metric_calls, max_tokens)
        result = _campaign(
            _home(home),
            suite,
            generations,
            selection_method,
            seed,
            budget,
            minibatch,
            max_prompt_tokens,
            mutation_model,
        )
    except (CorralError, ValueError) as err:
        _fail(err)
        return
    _report(result)


@evolve_app.command("run")
def run_cmd(
    suite: SuiteOpt = "assistant",
    selection_method: MethodOpt = "dgm",
    seed: SeedOpt = 0,
    max_metric_calls: CallsOpt = None,
    max_tokens: TokensOpt = None,
    minibatch: BatchOpt = 3,
    max_prompt_tokens: CapOpt = 256,
    mutation_model: MutatorOpt = "auto",
    home: HomeOpt = None,
) -> None:
    """One more generation of the campaign for this suite, method and seed."""
    try:
        where = _home(home)
        done = generations_done(where, suite, check_method(selection_method), seed)
        result = _campaign(
            where, suite, done + 1, selection_method, seed, Budget(max_metric_calls, max_tokens), minibatch,
            max_prompt_tokens, mutation_model,
        )  # fmt: skip
    except (CorralError, ValueError) as err:
        _fail(err)
        return
    _report(result)


@evolve_app.command("show")
def show_cmd(
    variant_id: Annotated[str | None, typer.Argument(help="a variant; without it, the suite's table")] = None,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="the suite to list")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False,
    home: HomeOpt = None,
) -> None:
    """The archive: a suite's variants with their scores, or one variant in full."""
    from corral.evolve.tree import detail, tree

    where = _home(home)
    archive = Archive(where)
    try:
        if variant_id is not None:
            data = detail(archive, where, variant_id)
            if as_json:
                console.print_json(json.dumps(data))
                return
            parents = ", ".join(data["parent_ids"]) or "none (seed)"
            mark = ", PROMOTED" if data["promoted"] else ""
            console.print(
                f"[bold]{data['id']}[/] ({data['suite']} / {data['role']}), parents: {parents}, "
                f"chosen by {data['selection']}, generation {data['generation']}{mark}"
            )
            console.print(f"rationale: {data['rationale']}")
            console.print(f"cost: {data['cost']['calls']} call(s), {data['cost']['tokens']} tokens; "
                          f"models: {', '.join(data['models']) or '-'}")  # fmt: skip
            console.print("[bold]prompt[/]:", markup=True)
            console.print(data["prompts"].get(data["role"], ""), markup=False, highlight=False)
            if data["diff"]:
                console.print("[bold]diff[/]:")
                console.print(data["diff"], markup=False, highlight=False)
            table = Table("split", "case", "score", "feedback")
            for s in data["scores"]:
                table.add_row(s["split"], s["case"], f"{s['score']:.2f}", s["feedback"][:100])
            console.print(table)
            return
        data = tree(archive, where, suite)
        if as_json:
            console.print_json(json.dumps(data))
            return
        table = Table("gen", "selection", "train", "validation", "heldout", "")
        table.add_column("variant", no_wrap=True, min_width=14)
        table.add_column("parent", no_wrap=True, min_width=14)
        for node in data["nodes"]:
            splits = node["splits"]
            marks = " ".join(
                m for m, on in (("promoted", node["promoted"]), ("pareto", node["pareto"])) if on
            )
            table.add_row(
                str(node["generation"]), node["selection"],
                *(f"{splits[s]:.2f}" if s in splits else "-" for s in ("train", "validation", "heldout")),
                marks, node["id"], ", ".join(node["parents"]) or "-",
            )  # fmt: skip
        console.print(
            f"suite [bold]{data['suite'] or '-'}[/] (suites: {', '.join(data['suites']) or 'none'})"
        )
        console.print(table)
    except CorralError as err:
        _fail(err)
    finally:
        archive.close()


@evolve_app.command("promote")
def promote_cmd(
    variant_id: Annotated[str | None, typer.Argument(help="the variant to promote")] = None,
    best: Annotated[bool, typer.Option("--best", help="the suite's best variant on validation")] = False,
    suite: Annotated[str, typer.Option("--suite", "-s", help="with --best: the suite")] = "assistant",
    require: Annotated[list[str] | None, typer.Option("--require", help="a case it must pass")] = None,
    home: HomeOpt = None,
) -> None:
    """Make a variant's prompt the one the agent uses (at once). Refused when it fails a required
    case or regresses on held-out cases; held-out cases not yet scored are run first."""
    where = _home(home)
    try:
        if (variant_id is None) == (not best):
            raise ConfigError("give a variant id or --best (not both)")
        if variant_id is None:
            variant_id = _best(where, suite)
        missing = missing_heldout(where, variant_id)
        if missing:
            console.print(f"scoring held-out cases for {', '.join(missing)} first")
            _score_heldout(where, variant_id, missing)
        archive = Archive(where)
        try:
            variant = archive.promote(variant_id, require_case_ids=require or [], reason="cli")
        finally:
            archive.close()
    except CorralError as err:
        _fail(err)
        return
    console.print(f"promoted {variant.id} for role {variant.role!r}; the agent uses it from its next step")


def _best(home: Path, suite: str) -> str:
    from corral.evolve.tree import tree

    load_suite(home, suite)
    archive = Archive(home)
    try:
        nodes = [n for n in tree(archive, home, suite)["nodes"] if "validation" in n["splits"]]
    finally:
        archive.close()
    if not nodes:
        raise ConfigError(f"no variant of suite {suite!r} reached validation yet; run a campaign first")
    top = max(nodes, key=lambda n: (n["splits"]["validation"], n["selection"] == "seed", n["created"]))
    return str(top["id"])


def _score_heldout(home: Path, variant_id: str, ids: list[str]) -> None:
    from corral.evolve.host import local_llm

    archive = Archive(home)
    try:
        suite = archive.variant(variant_id).suite
    finally:
        archive.close()

    async def score() -> dict[str, float]:
        async with local_llm(home) as llm:
            return await evaluate_split(home, suite, ids, "heldout", llm=llm)

    for vid, value in asyncio.run(score()).items():
        console.print(f"  {vid}: held-out {value:.2f}")


@evolve_app.command("rollback")
def rollback_cmd(
    role: Annotated[str | None, typer.Option("--role", help="default: the last promoted role")] = None,
    home: HomeOpt = None,
) -> None:
    """Move the promoted pointer back to the prompt before the last promotion."""
    archive = Archive(_home(home))
    try:
        now = archive.rollback(role)
    except CorralError as err:
        _fail(err)
        return
    finally:
        archive.close()
    console.print(f"rolled back; now promoted: {now or 'the seed prompt'}")
