"""Parent selection strategies behind one interface, `select(method, candidates, rng)`:
dgm (score-child-proportional), tournament, novelty, pareto and a random baseline. Every strategy
sorts its candidates by id first and draws only from the given `random.Random`, so a seed
reproduces the same parents."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

DGM_LAMBDA = 10.0  # sigmoid steepness, as in the Darwin Goedel Machine
DGM_MIDPOINT = 0.5  # score at which the sigmoid is one half
TOURNAMENT_K = 3
NOVELTY_K = 3


@dataclass(frozen=True)
class Candidate:
    id: str
    score: float  # mean score on the selection split (validation)
    children: int = 0
    cases: dict[str, float] = field(default_factory=dict)  # per-case scores (pass/fail vector)


def dgm_weights(candidates: Sequence[Candidate]) -> list[float]:
    """sigmoid(lambda * (score - midpoint)) * 1 / (1 + children): good parents with few children."""
    return [
        1.0 / (1.0 + math.exp(-DGM_LAMBDA * (c.score - DGM_MIDPOINT))) / (1.0 + c.children)
        for c in candidates
    ]


def distance(a: Candidate, b: Candidate) -> float:
    """Mean absolute difference over the cases both were scored on (1.0 when none are shared)."""
    shared = sorted(set(a.cases) & set(b.cases))
    if not shared:
        return 1.0
    return sum(abs(a.cases[c] - b.cases[c]) for c in shared) / len(shared)


def novelty(candidates: Sequence[Candidate], k: int = NOVELTY_K) -> list[float]:
    """Each candidate's mean distance to its k nearest neighbours in pass/fail space."""
    out = []
    for a in candidates:
        dists = sorted(distance(a, b) for b in candidates if b.id != a.id)
        near = dists[:k]
        out.append(sum(near) / len(near) if near else 0.0)
    return out


def pareto_front(candidates: Sequence[Candidate]) -> dict[str, int]:
    """GEPA's frontier: candidates that are best on at least one case and not dominated, each with
    how many cases it is best on."""
    cases = sorted({c for cand in candidates for c in cand.cases})
    wins: dict[str, int] = {}
    for case in cases:
        scored = [c for c in candidates if case in c.cases]
        if not scored:
            continue
        best = max(c.cases[case] for c in scored)
        for c in scored:
            if c.cases[case] == best:
                wins[c.id] = wins.get(c.id, 0) + 1
    front = [c for c in candidates if c.id in wins]

    def dominates(a: Candidate, b: Candidate) -> bool:
        keys = set(a.cases) | set(b.cases)
        ge = all(a.cases.get(k, 0.0) >= b.cases.get(k, 0.0) for k in keys)
        return ge and any(a.cases.get(k, 0.0) > b.cases.get(k, 0.0) for k in keys)

    return {c.id: wins[c.id] for c in front if not any(dominates(o, c) for o in front if o.id != c.id)}


def _weighted(candidates: Sequence[Candidate], weights: Sequence[float], rng: random.Random) -> Candidate:
    total = sum(weights)
    if total <= 0:
        return rng.choice(list(candidates))
    return rng.choices(list(candidates), weights=list(weights), k=1)[0]


def _dgm(cands: Sequence[Candidate], rng: random.Random) -> Candidate:
    return _weighted(cands, dgm_weights(cands), rng)


def _tournament(cands: Sequence[Candidate], rng: random.Random) -> Candidate:
    entrants = rng.sample(list(cands), min(TOURNAMENT_K, len(cands)))
    return max(entrants, key=lambda c: (c.score, -c.children, c.id))


def _novelty(cands: Sequence[Candidate], rng: random.Random) -> Candidate:
    scores = novelty(cands)
    best = max(scores)
    tied = [c for c, s in zip(cands, scores, strict=True) if s == best]
    top = max(c.score for c in tied)
    return rng.choice([c for c in tied if c.score == top])


def _pareto(cands: Sequence[Candidate], rng: random.Random) -> Candidate:
    front = pareto_front(cands)
    members = [c for c in cands if c.id in front]
    if not members:
        return rng.choice(list(cands))
    return _weighted(members, [front[c.id] for c in members], rng)


def _random(cands: Sequence[Candidate], rng: random.Random) -> Candidate:
    return rng.choice(list(cands))


STRATEGIES: dict[str, Callable[[Sequence[Candidate], random.Random], Candidate]] = {
    "dgm": _dgm,
    "tournament": _tournament,
    "novelty": _novelty,
    "pareto": _pareto,
    "random": _random,
}


def check_method(method: str) -> str:
    if method not in STRATEGIES:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(STRATEGIES)}")
    return method


def select(method: str, candidates: Sequence[Candidate], rng: random.Random) -> Candidate:
    """The parent chosen by `method` among `candidates` (deterministic for a seeded rng)."""
    if not candidates:
        raise ValueError("there is no candidate to select a parent from")
    ordered = sorted(candidates, key=lambda c: c.id)
    return STRATEGIES[check_method(method)](ordered, rng)
