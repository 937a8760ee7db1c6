"""The placement planner: RAM with a reserve, CPU flags, speed, spread, fallback, reasons."""

from __future__ import annotations

from corral.cluster.planner import ExpertDemand, NodeCapacity, plan

GIB = 1024**3


def node(
    name: str, ram_gib: float, tps: float, *, flags: str = "avx avx2", cores: int = 4, rel: float = 0.0
) -> NodeCapacity:
    return NodeCapacity(name, int(ram_gib * GIB), cores, frozenset(flags.split()), tps, rel)


def test_bigger_model_goes_to_the_faster_node_and_replicas_spread() -> None:
    nodes = [node("slow", 8, 5), node("fast", 8, 20)]
    experts = [
        ExpertDemand("big", 1, 4 * GIB),
        ExpertDemand("small", 2, GIB // 2),
    ]
    result = plan(experts, nodes, reserve_bytes=GIB)
    assert [p.node for p in result.of("big")] == ["fast"]
    assert sorted(p.node for p in result.of("small")) == ["fast", "slow"]
    assert not result.unplaced


def test_ram_reserve_and_flags_are_respected_with_reasons() -> None:
    nodes = [node("old", 8, 30, flags="sse4_2"), node("tiny", 2, 10)]
    result = plan([ExpertDemand("big", 1, 3 * GIB, requires=frozenset({"avx2"}))], nodes, reserve_bytes=GIB)
    assert not result.placements
    (miss,) = result.unplaced
    assert "old: lacks CPU flag avx2" in miss.reason
    assert "tiny: needs 3.00 GiB, 1.00 GiB free after the reserve" in miss.reason


def test_an_expert_that_fits_nowhere_leaves_the_rest_placed() -> None:
    result = plan(
        [ExpertDemand("huge", 1, 64 * GIB), ExpertDemand("general", 1, GIB)],
        [node("a", 8, 10)],
        reserve_bytes=GIB,
    )
    assert [p.expert for p in result.placements] == ["general"]
    assert [u.expert for u in result.unplaced] == ["huge"]


def test_fallback_goes_to_the_most_reliable_node_first() -> None:
    nodes = [node("head", 8, 5, rel=100), node("fast", 8, 50, rel=1)]
    result = plan([ExpertDemand("fallback", 1, GIB, always_loaded=True)], nodes, reserve_bytes=0)
    assert result.of("fallback")[0].node == "head"
    assert "reliable" in result.of("fallback")[0].why


def test_replicas_share_a_node_only_when_no_other_fits_and_threads_split_cores() -> None:
    nodes = [node("a", 8, 10, cores=4), node("b", 1.5, 50)]
    result = plan([ExpertDemand("general", 3, GIB)], nodes, reserve_bytes=0)
    on = sorted(p.node for p in result.of("general"))
    assert on == ["a", "a", "b"]
    assert {p.threads for p in result.on("a")} == {2}


def test_replan_moves_only_what_gains_clearly_and_what_was_lost() -> None:
    general = [ExpertDemand("general", 2, GIB)]
    a, b, similar, fast = node("a", 8, 10), node("b", 8, 10), node("similar", 8, 11), node("fast", 8, 30)
    first = plan(general, [a], reserve_bytes=0)
    assert [p.node for p in first.placements] == ["a", "a"]  # alone: both share a
    # b joins: one replica spreads onto it, the other stays.
    spread = plan(general, [a, b], reserve_bytes=0, keep=first.placements)
    assert sorted(p.node for p in spread.placements) == ["a", "b"]
    assert [p.why for p in spread.placements].count("already running here") == 1
    # A node barely faster joins: nothing moves (a reload is not worth 10%).
    same = plan(general, [a, b, similar], reserve_bytes=0, keep=spread.placements)
    assert same.key() == spread.key()
    # A much faster node joins: a replica moves there.
    faster = plan(general, [a, b, fast], reserve_bytes=0, keep=spread.placements)
    assert "fast" in {p.node for p in faster.placements}
    # b leaves: only its replica moves.
    left = plan(general, [a, similar], reserve_bytes=0, keep=spread.placements)
    assert sorted(p.node for p in left.placements) == ["a", "similar"]
    assert left.of("general")[[p.node for p in left.placements].index("a")].why == "already running here"


def test_pooled_experts_are_skipped_not_crashed_on() -> None:
    result = plan([ExpertDemand("pool", 1, 100 * GIB, pooled=True)], [node("a", 8, 1)])
    assert "pooled" in result.skipped["pool"]
    assert not result.unplaced


def test_no_nodes_says_so() -> None:
    result = plan([ExpertDemand("general", 1, GIB)], [])
    assert "no node has joined" in result.unplaced[0].reason
