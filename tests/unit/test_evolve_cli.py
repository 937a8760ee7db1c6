"""`corral evolve` without a model: suites are checked with line numbers, the archive is shown,
promotion and rollback move the pointer, and mistakes exit 2 with a message that says what to do."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.evolve import cli as evolve_cli
from corral.evolve.archive import Archive, CaseScore
from corral.evolve.roles import seed

SUITE = """version: 1
name: mini
role: system
cases:
  - {id: v1, split: validation, input: {messages: []}, expect: [{contains: a}]}
  - {id: h1, split: heldout, input: {messages: []}, expect: [{contains: a}]}
"""


def run(home: Path, *args: str) -> tuple[int, str]:
    evolve_cli.console.width = 200  # rich reads COLUMNS only when the console is made
    result = CliRunner().invoke(app, ["evolve", *args, "--home", str(home)])
    return result.exit_code, result.output


def scored(archive: Archive, variant: str, split: str, case: str, value: float) -> None:
    archive.record_score(
        CaseScore(variant, "mini", split, case, value, value == 1, "o", "f", 1, 1, "r", "e", "s", "")
    )


def test_suites_are_listed_and_checked(tmp_path: Path) -> None:
    suites = tmp_path / "evolve" / "suites"
    suites.mkdir(parents=True)
    (suites / "mini.yaml").write_text(SUITE)
    code, out = run(tmp_path, "suites")
    assert code == 0 and "mini" in out and "assistant" in out
    (suites / "broken.yaml").write_text(
        "version: 1\nname: broken\nrole: system\ncases:\n  - id: x\n    split: test\n"
    )
    code, out = run(tmp_path, "suites")
    assert code == 2 and "broken.yaml:6: cases.0.split" in out.replace("\n", "")


def test_show_promote_and_rollback(tmp_path: Path) -> None:
    (tmp_path / "evolve" / "suites").mkdir(parents=True)
    (tmp_path / "evolve" / "suites" / "mini.yaml").write_text(SUITE)
    archive = Archive(tmp_path)
    root = archive.ensure_root("mini", "system", seed("system"))
    child = archive.add_variant(
        suite="mini", role="system", prompts={"system": "Answer with the city."}, parent_ids=[root.id],
        rationale="cities were missing", selection="pareto",
    )  # fmt: skip
    for variant, value in ((root, 0.0), (child, 1.0)):
        scored(archive, variant.id, "validation", "v1", value)
        scored(archive, variant.id, "heldout", "h1", value)
    code, out = run(tmp_path, "show", "--suite", "mini")
    assert code == 0 and root.id in out and child.id in out and "pareto" in out
    code, out = run(tmp_path, "show", child.id)
    assert code == 0 and "cities were missing" in out and "+Answer with the city." in out
    assert run(tmp_path, "show", "v_nope")[0] == 2
    code, out = run(tmp_path, "promote")
    assert code == 2 and "give a variant id or --best" in out
    code, out = run(tmp_path, "promote", "--best", "--suite", "mini")
    assert code == 0 and f"promoted {child.id}" in out
    assert Archive(tmp_path).promoted_ids() == {"system": child.id}
    code, out = run(tmp_path, "rollback")
    assert code == 0 and "the seed prompt" in out
    code, out = run(tmp_path, "rollback")
    assert code == 2 and "nothing is promoted" in out
    code, out = run(tmp_path, "campaign", "--selection-method", "greedy")
    assert code == 2 and "choose one of dgm" in out
