"""The archive as a tree for Mission Control: nodes (variants with scores, promoted and Pareto
marks) and parent edges, and one variant's full record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.evolve.archive import Archive, Variant, mean
from corral.evolve.selection import Candidate, pareto_front
from corral.evolve.suites import load_suite, suite_names


def tree(archive: Archive, home: Path, suite: str | None = None) -> dict[str, Any]:
    variants = archive.variants()
    suites = sorted({v.suite for v in variants} | set(suite_names(home)))
    chosen = suite or (variants[-1].suite if variants else (suites[0] if suites else ""))
    promoted = archive.promoted_ids()
    members = [v for v in variants if v.suite == chosen]
    ids = {v.id for v in members}
    # a promoted variant born in another suite but evaluated on this one is shown too
    nodes: list[dict[str, Any]] = []
    candidates: list[Candidate] = []
    for variant in members:
        scores = archive.scores(variant.id, chosen)
        splits = {
            split: mean(s.score for s in scores.values() if s.split == split)
            for split in ("train", "validation", "heldout")
            if any(s.split == split for s in scores.values())
        }
        vector = {c: s.score for c, s in scores.items() if s.split != "heldout"}
        if "validation" in splits:
            candidates.append(Candidate(variant.id, splits["validation"], 0, vector))
        nodes.append(
            {
                "id": variant.id,
                "parents": [p for p in variant.parent_ids if p in ids],
                "role": variant.role,
                "generation": variant.generation,
                "selection": variant.selection,
                "campaign": variant.campaign,
                "score": splits.get("validation", splits.get("train")),
                "splits": splits,
                "promoted": promoted.get(variant.role) == variant.id,
                "created": variant.created,
            }
        )
    front = pareto_front(candidates)
    for node in nodes:
        node["pareto"] = node["id"] in front
    return {"suite": chosen, "suites": suites, "promoted": promoted, "nodes": nodes}


def detail(archive: Archive, home: Path, variant_id: str) -> dict[str, Any]:
    variant: Variant = archive.variant(variant_id)
    cases = {}
    try:
        cases = {c.id: c.split for c in load_suite(home, variant.suite).cases}
    except Exception:  # a suite that no longer loads still shows the recorded scores
        cases = {}
    scores = sorted(
        (s.as_dict() for s in archive.scores(variant.id).values()),
        key=lambda s: (("train", "validation", "heldout").index(s["split"]), s["case"]),
    )
    return {
        **variant.as_dict(),
        "scores": scores,
        "cases_in_suite": len(cases),
        "promoted": archive.promoted_ids().get(variant.role) == variant.id,
        "history": [r for r in archive.promotion_log() if r["role"] == variant.role],
    }
