"""The archive: lineage and diffs, append-only rows, the versioned format, promotion rules,
rollback history and the PromptBook that the agent reads."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from corral.errors import BadRequestError, NotFoundError
from corral.evolve.archive import Archive, CaseScore, PromotionRefused, root_id
from corral.evolve.prompts import PromptBook
from corral.evolve.roles import seed

SUITE = """
version: 1
name: mini
role: system
cases:
  - {id: t1, split: train, input: {messages: []}, expect: [{contains: a}]}
  - {id: v1, split: validation, input: {messages: []}, expect: [{contains: a}]}
  - {id: h1, split: heldout, input: {messages: []}, expect: [{contains: a}]}
  - {id: h2, split: heldout, input: {messages: []}, expect: [{contains: a}]}
"""


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    (tmp_path / "evolve" / "suites").mkdir(parents=True)
    (tmp_path / "evolve" / "suites" / "mini.yaml").write_text(SUITE)
    return Archive(tmp_path)


def score(variant: str, case: str, value: float, split: str = "heldout") -> CaseScore:
    return CaseScore(variant, "mini", split, case, value, value == 1.0, "out", "fb", 1, 10, "r", "e", "s", "")


def test_lineage_diff_and_rationale_are_recorded(archive: Archive) -> None:
    root = archive.ensure_root("mini", "system", "Be brief.")
    assert root.id == root_id("mini", "system", "Be brief.")
    assert archive.ensure_root("mini", "system", "Be brief.") == root  # shared, not duplicated
    child = archive.add_variant(
        suite="mini", role="system", prompts={"system": "Be brief.\nName the city."}, parent_ids=[root.id],
        rationale="answers lacked the city", selection="dgm", seed=3, models=["general"], generation=1,
        calls=1, tokens=40,
    )  # fmt: skip
    grandchild = archive.add_variant(
        suite="mini", role="system", prompts={"system": "Name the city."}, parent_ids=[child.id]
    )
    got = archive.variant(child.id)
    assert got.parent_ids == [root.id] and got.rationale == "answers lacked the city"
    assert got.selection == "dgm" and got.seed == 3 and got.models == ["general"]
    assert "+Name the city." in got.diff and got.diff.startswith("--- a/system")
    assert "-Be brief." in archive.variant(grandchild.id).diff
    assert archive.children(root.id) == 1 and archive.children(child.id) == 1
    assert [v.id for v in archive.variants("mini")] == [root.id, child.id, grandchild.id]
    with pytest.raises(NotFoundError, match="corral evolve show"):
        archive.variant("v_nope")


def test_rows_can_never_be_rewritten(archive: Archive) -> None:
    root = archive.ensure_root("mini", "system", "x")
    archive.record_score(score(root.id, "h1", 1.0))
    raw = sqlite3.connect(archive.path, isolation_level=None)
    for statement in (
        "UPDATE variants SET prompts = '{}'",
        "DELETE FROM variants",
        "UPDATE evaluations SET score = 0",
        "DELETE FROM evaluations",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute(statement)
    raw.close()
    with pytest.raises(sqlite3.IntegrityError):
        archive.add_variant(suite="mini", role="system", prompts={"system": "y"}, variant_id=root.id)
    assert archive.variant(root.id).prompts == {"system": "x"}


def test_the_format_is_versioned(tmp_path: Path) -> None:
    Archive(tmp_path).close()
    raw = sqlite3.connect(tmp_path / "evolve" / "archive.sqlite3")
    assert raw.execute("SELECT value FROM meta WHERE key='format'").fetchone() == ("1",)
    raw.execute("UPDATE meta SET value = '99'")
    raw.commit()
    with pytest.raises(BadRequestError, match="newer than this corral"):
        Archive(tmp_path)


def test_latest_score_per_case_wins(archive: Archive) -> None:
    root = archive.ensure_root("mini", "system", "x")
    archive.record_score(score(root.id, "h1", 0.0))
    time.sleep(0.001)
    archive.record_score(score(root.id, "h1", 1.0))
    assert archive.scores(root.id)["h1"].score == 1.0
    assert archive.scores(root.id, split="train") == {}


def test_promotion_requires_cases_and_no_heldout_regression(archive: Archive) -> None:
    base = archive.ensure_root("mini", "system", seed("system"))
    worse = archive.add_variant(suite="mini", role="system", prompts={"system": "w"}, parent_ids=[base.id])
    better = archive.add_variant(suite="mini", role="system", prompts={"system": "b"}, parent_ids=[base.id])
    with pytest.raises(PromotionRefused, match="no held-out score"):
        archive.promote(better.id)
    for case, value in (("h1", 1.0), ("h2", 0.0)):
        archive.record_score(score(base.id, case, value))
    for case, value in (("h1", 0.0), ("h2", 0.0)):
        archive.record_score(score(worse.id, case, value))
    for case, value in (("h1", 1.0), ("h2", 1.0)):
        archive.record_score(score(better.id, case, value))
    with pytest.raises(PromotionRefused, match=r"regresses on held-out .* 0.00 against 0.50"):
        archive.promote(worse.id)
    with pytest.raises(PromotionRefused, match="never evaluated on required case 'new-case'"):
        archive.promote(better.id, require_case_ids=["new-case"])
    archive.record_score(score(better.id, "new-case", 0.5, "train"))
    with pytest.raises(PromotionRefused, match="fails required case 'new-case'"):
        archive.promote(better.id, require_case_ids=["new-case"])
    archive.record_score(score(better.id, "new-case", 1.0, "train"))
    assert archive.promote(better.id, require_case_ids=["new-case"]).id == better.id
    assert archive.promoted_ids() == {"system": better.id}
    with pytest.raises(PromotionRefused, match="already the promoted"):
        archive.promote(better.id)
    # the baseline is now the promoted variant: equal held-out scores are no regression
    equal = archive.add_variant(suite="mini", role="system", prompts={"system": "e"}, parent_ids=[better.id])
    for case in ("h1", "h2"):
        archive.record_score(score(equal.id, case, 1.0))
    archive.promote(equal.id)


def test_rollback_walks_the_history_back_to_the_seed(archive: Archive, tmp_path: Path) -> None:
    base = archive.ensure_root("mini", "system", seed("system"))
    first = archive.add_variant(
        suite="mini", role="system", prompts={"system": "first"}, parent_ids=[base.id]
    )
    second = archive.add_variant(
        suite="mini", role="system", prompts={"system": "second"}, parent_ids=[first.id]
    )
    for variant in (base, first, second):
        for case in ("h1", "h2"):
            archive.record_score(score(variant.id, case, 1.0))
    book = PromptBook(tmp_path)
    assert book.get("system", "the seed") == "the seed"
    archive.promote(first.id)
    assert book.get("system", "the seed") == "first"  # no restart: the file changed
    archive.promote(second.id)
    assert book.get("system", "the seed") == "second" and book.promoted("system") == second.id
    assert book.get("answer", "answer seed") == "answer seed"  # other roles keep their seed
    assert archive.rollback() == first.id
    assert book.get("system", "the seed") == "first"
    assert archive.rollback("system") is None
    assert book.get("system", "the seed") == "the seed"
    with pytest.raises(BadRequestError, match="nothing to roll back"):
        archive.rollback()
    actions = [(r["action"], r["variant"]) for r in archive.promotion_log()]
    assert actions == [
        ("promote", first.id), ("promote", second.id), ("rollback", second.id), ("rollback", first.id)
    ]  # fmt: skip
    pointer = json.loads((tmp_path / "evolve" / "promoted.json").read_text())
    assert pointer == {"format": 1, "roles": {}}


def test_a_damaged_pointer_file_falls_back_to_the_seed(tmp_path: Path) -> None:
    (tmp_path / "evolve").mkdir()
    (tmp_path / "evolve" / "promoted.json").write_text("{not json")
    assert PromptBook(tmp_path).get("system", "seed") == "seed"
