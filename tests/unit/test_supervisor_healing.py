"""Healing: cooldown and hourly rate limit per target, the check after acting, and the revert
when the action did not help (with a scripted set of replicas and a fake clock)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import pytest

from corral.engine.replica import ReplicaSpec
from corral.supervisor.actions import Limits, ReduceContext, Restart
from corral.supervisor.healing import Healer
from corral.supervisor.settings import SupervisorConfig


@dataclass
class FakeTargets:
    """One replica whose restarts succeed or not, and which may crash again while watched."""

    current: ReplicaSpec
    restart_ok: bool = True
    recur_on: set[int] = field(default_factory=set)  # context sizes that crash again
    healthy_now: bool = True
    applied: list[ReplicaSpec] = field(default_factory=list)
    restarts: list[str] = field(default_factory=list)
    crashes: int = 0

    def spec(self, name: str) -> ReplicaSpec:
        return self.current

    def apply(self, name: str, spec: ReplicaSpec) -> None:
        self.current = spec
        self.applied.append(spec)

    async def restart(self, name: str, reason: str) -> bool:
        self.restarts.append(reason)
        if self.current.context_per_slot in self.recur_on:
            self.crashes += 1  # it comes up, then dies again during the check
        return self.restart_ok

    def healthy(self, name: str) -> bool:
        return self.healthy_now

    def exits(self, name: str) -> int:
        return self.crashes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def make(targets: FakeTargets, **settings: object) -> tuple[Healer, Clock]:
    clock = Clock()
    config = SupervisorConfig.model_validate({"verify_s": 5, "cooldown_s": 60, **settings})
    limits = Limits(free_memory_bytes=10**10, max_memory_bytes=None, min_context=512, failover_models=())
    return Healer(targets, config, lambda: limits, clock=clock, sleep=clock.sleep), clock


def base() -> ReplicaSpec:
    return ReplicaSpec("general", 0, SimpleNamespace(id="m"), 1, 2048, 2)  # type: ignore[arg-type]


async def test_an_action_that_holds_is_healed() -> None:
    targets = FakeTargets(base())
    healer, _ = make(targets)
    result = await healer.heal("general/0", ReduceContext())
    assert result.outcome == "healed"
    assert targets.current.context_per_slot == 1024
    assert result.before["context_per_slot"] == 2048 and result.after["context_per_slot"] == 1024


async def test_recurrence_during_the_check_reverts_to_the_old_settings() -> None:
    targets = FakeTargets(base(), recur_on={1024})
    healer, _ = make(targets)
    result = await healer.heal("general/0", ReduceContext())
    assert result.outcome == "reverted"
    assert targets.current.context_per_slot == 2048  # put back
    assert [s.context_per_slot for s in targets.applied] == [1024, 2048]
    assert targets.restarts == ["supervisor: reduce_context", "supervisor: revert reduce_context"]


async def test_unhealthy_after_the_check_reverts_too() -> None:
    targets = FakeTargets(base(), healthy_now=False)
    healer, _ = make(targets)
    assert (await healer.heal("general/0", ReduceContext())).outcome == "reverted"


async def test_a_restart_that_fails_has_nothing_to_revert() -> None:
    targets = FakeTargets(base(), restart_ok=False)
    healer, _ = make(targets)
    result = await healer.heal("general/0", Restart())
    assert result.outcome == "failed" and "did not come back" in result.detail
    assert targets.applied == [base()]  # the same spec, never a second one


async def test_an_action_that_cannot_apply_changes_nothing_and_spends_no_budget() -> None:
    targets = FakeTargets(replace(base(), context_per_slot=512))
    healer, _ = make(targets)
    result = await healer.heal("general/0", ReduceContext())
    assert result.outcome == "not_applicable" and "floor" in result.detail
    assert targets.restarts == [] and healer.admit("general/0") is None


async def test_cooldown_then_rate_limit_per_target() -> None:
    targets = FakeTargets(base())
    healer, clock = make(targets, cooldown_s=60, max_actions_per_hour=2)
    assert (await healer.heal("general/0", Restart())).outcome == "healed"
    skipped = await healer.heal("general/0", Restart())
    assert skipped.outcome == "skipped" and skipped.detail.startswith("cooldown")
    assert healer.admit("code/0") is None  # per target
    clock.now += 61
    assert (await healer.heal("general/0", Restart())).outcome == "healed"
    clock.now += 61
    limited = await healer.heal("general/0", Restart())
    assert limited.outcome == "skipped" and limited.detail.startswith("rate limit")
    clock.now += 3600
    assert healer.admit("general/0") is None  # the hour has passed


@pytest.mark.parametrize("cooldown", [0.0])
async def test_zero_cooldown_still_rate_limits(cooldown: float) -> None:
    healer, _ = make(FakeTargets(base()), cooldown_s=cooldown, max_actions_per_hour=1)
    await healer.heal("general/0", Restart())
    assert (healer.admit("general/0") or "").startswith("rate limit")
