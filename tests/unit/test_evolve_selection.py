"""Selection strategies: each one's math, and the same parents for the same seed."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from corral.evolve.selection import (
    DGM_LAMBDA,
    STRATEGIES,
    Candidate,
    dgm_weights,
    distance,
    novelty,
    pareto_front,
    select,
)

POOL = [
    Candidate("a", 0.9, children=0, cases={"x": 1, "y": 1, "z": 0}),
    Candidate("b", 0.9, children=3, cases={"x": 1, "y": 1, "z": 0}),
    Candidate("c", 0.2, children=0, cases={"x": 0, "y": 0, "z": 1}),
    Candidate("d", 0.1, children=0, cases={"x": 0, "y": 0, "z": 0}),
]


def test_dgm_weight_is_sigmoid_of_score_over_one_plus_children() -> None:
    weights = dgm_weights(POOL)
    sigmoid = 1 / (1 + math.exp(-DGM_LAMBDA * (0.9 - 0.5)))
    assert weights[0] == pytest.approx(sigmoid)
    assert weights[1] == pytest.approx(sigmoid / 4)  # three children: a quarter of the weight
    assert weights[0] > weights[2] > weights[3]


def test_dgm_picks_in_proportion_to_its_weights() -> None:
    rng = random.Random(7)
    picks = Counter(select("dgm", POOL, rng).id for _ in range(4000))
    weights = dict(zip([c.id for c in POOL], dgm_weights(POOL), strict=True))
    total = sum(weights.values())
    for cid, weight in weights.items():
        assert picks[cid] / 4000 == pytest.approx(weight / total, abs=0.03)


def test_tournament_returns_the_best_entrant_and_prefers_fewer_children() -> None:
    rng = random.Random(1)
    for _ in range(50):
        winner = select("tournament", POOL, rng)
        assert winner.id != "d"  # d loses every tournament of three it could be in
    assert select("tournament", POOL[:2], random.Random(0)).id == "a"  # tie on score: fewer children


def test_novelty_is_mean_distance_to_the_nearest_neighbours() -> None:
    assert distance(POOL[0], POOL[2]) == pytest.approx(1.0)
    assert distance(POOL[0], POOL[3]) == pytest.approx(2 / 3)
    assert distance(Candidate("p", 0, cases={"q": 1}), POOL[0]) == 1.0  # nothing shared
    values = novelty(POOL, k=1)
    assert values == pytest.approx([0.0, 0.0, 1 / 3, 1 / 3])
    # with k=3, c (0.78) is further from the rest than d (0.56)
    assert select("novelty", POOL, random.Random(0)).id == "c"


def test_pareto_keeps_per_case_winners_that_are_not_dominated() -> None:
    front = pareto_front(POOL)
    assert front == {"a": 2, "b": 2, "c": 1}  # d is best on no case
    dominated = [*POOL, Candidate("e", 0.95, cases={"x": 1, "y": 1, "z": 1})]
    assert pareto_front(dominated) == {"e": 3}
    assert select("pareto", dominated, random.Random(3)).id == "e"


@pytest.mark.parametrize("method", sorted(STRATEGIES))
def test_every_strategy_is_deterministic_under_a_seed(method: str) -> None:
    shuffled = list(reversed(POOL))
    first = [select(method, POOL, random.Random(42)).id for _ in range(5)]
    again = [select(method, shuffled, random.Random(42)).id for _ in range(5)]  # order does not matter
    assert first == again
    seq_a = [select(method, POOL, rng).id for rng in [random.Random(9)] for _ in range(20)]
    rng = random.Random(9)
    seq_b = [select(method, POOL, rng).id for _ in range(20)]
    assert seq_a == seq_b


def test_random_covers_everyone_and_unknown_methods_are_refused() -> None:
    rng = random.Random(0)
    assert {select("random", POOL, rng).id for _ in range(200)} == {"a", "b", "c", "d"}
    with pytest.raises(ValueError, match="choose one of"):
        select("greedy", POOL, rng)
    with pytest.raises(ValueError, match="no candidate"):
        select("dgm", [], rng)
