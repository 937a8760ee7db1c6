from __future__ import annotations

import pytest

from corral.config import ExpertConfig
from corral.errors import BadRequestError, NoBackendError, QueueFullError, UnknownModelError
from corral.gateway.moe import LexicalChooser
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import RoundRobin, Router, by_expected_finish, by_least_busy
from corral.testing import FakeBackend

EXPERTS = [
    ExpertConfig(
        name="general",
        model="m",
        description="general chat questions writing",
        aliases=["gpt-4o-mini"],
        fallback=["fallback"],
    ),
    ExpertConfig(name="coder", model="m", description="python code programming bugs functions"),
    ExpertConfig(name="fallback", model="m", description="tiny model", always_loaded=True, auto=False),
    ExpertConfig(name="embed", model="m", kind="embedding", description="embeddings"),
]


def make_router(*backends: FakeBackend, max_queue: int = 2) -> Router:
    registry = LocalRegistry()
    for backend in backends:
        registry.add(backend)
    return Router(EXPERTS, registry, max_queue=max_queue)


def test_explicit_alias_and_unknown() -> None:
    router = make_router()
    assert router.resolve("coder", "chat", str).method == "explicit"
    alias = router.resolve("gpt-4o-mini", "chat", str)
    assert (alias.expert, alias.method) == ("general", "alias")
    with pytest.raises(UnknownModelError, match="GET /v1/models"):
        router.resolve("gpt-17", "chat", str)
    with pytest.raises(BadRequestError, match="required"):
        router.resolve(None, "chat", str)
    with pytest.raises(BadRequestError, match="embedding expert"):
        router.resolve("embed", "chat", str)


def test_auto_picks_expert_by_description() -> None:
    router = make_router()
    choice = router.resolve("auto", "chat", lambda: "Why does my Python function raise a KeyError?")
    assert choice.expert == "coder"
    assert "python" in choice.reason
    plain = router.resolve("auto", "chat", lambda: "Tell me something nice")
    assert plain.expert == "general"  # nothing matched: the first chat expert
    assert router.resolve("auto", "embedding", lambda: "x").expert == "embed"


def test_lexical_chooser_ignores_words_every_expert_shares() -> None:
    experts = [
        ExpertConfig(name="a", model="m", description="model for math"),
        ExpertConfig(name="b", model="m", description="model for poetry"),
    ]
    chooser = LexicalChooser(experts)
    assert chooser.choose("a model that writes poetry", experts).expert == "b"


def test_expected_finish_time_prefers_fast_idle_then_spreads_load() -> None:
    fast = FakeBackend("general/0", "general", tokens_per_second=40)
    slow = FakeBackend("general/1", "general", tokens_per_second=10)
    for backend in (fast, slow):
        backend.state.observe_speed(100, 100 / backend.tokens_per_second)
    assert by_expected_finish([slow, fast], 100)[0] is fast
    fast.state.queued_tokens = 2000  # a long backlog on the fast one
    assert by_expected_finish([slow, fast], 100)[0] is slow


def test_least_busy_and_round_robin() -> None:
    a = FakeBackend("x/0", "general")
    b = FakeBackend("x/1", "general")
    a.state.in_flight = 2
    assert by_least_busy([a, b], 1)[0] is b
    rr = RoundRobin()
    firsts = [rr([a, b], 1)[0] for _ in range(4)]
    assert firsts == [a, b, a, b]


def test_candidates_follow_fallback_chain_and_skip_unhealthy() -> None:
    down = FakeBackend("general/0", "general", healthy=False)
    spare = FakeBackend("fallback/0", "fallback")
    router = make_router(down, spare)
    candidates = router.candidates("general", 10)
    assert [(c.backend.name, c.expert) for c in candidates] == [("fallback/0", "fallback")]


def test_admission_bounds_queue_then_429() -> None:
    backend = FakeBackend("general/0", "general", slots=1)
    router = make_router(backend, max_queue=1)
    candidates = router.candidates("general", 10)
    with router.admit("general", candidates), router.admit("general", candidates):
        with pytest.raises(QueueFullError) as info, router.admit("general", candidates):
            pass
        assert info.value.retry_after_s >= 1
    assert router.admitted["general"] == 0


def test_no_backend_says_what_is_down() -> None:
    router = make_router(FakeBackend("general/0", "general", healthy=False))
    candidates = router.candidates("general", 1)
    with pytest.raises(NoBackendError, match="general/0: crashed"), router.admit("general", candidates):
        pass


def test_chain_is_depth_first_without_repeats() -> None:
    experts = [
        ExpertConfig(name="a", model="m", fallback=["b", "c"]),
        ExpertConfig(name="b", model="m", fallback=["a", "c"]),
        ExpertConfig(name="c", model="m"),
    ]
    router = Router(experts, LocalRegistry())
    assert router.chain("a") == ["a", "b", "c"]


def test_auto_skips_experts_marked_auto_false() -> None:
    router = make_router()
    # "tiny" is in the fallback's description, but it is marked `auto: false`.
    assert router.resolve("auto", "chat", lambda: "a tiny model question").expert != "fallback"
    assert {e.name for e in router.auto_pool("chat")} == {"general", "coder"}
