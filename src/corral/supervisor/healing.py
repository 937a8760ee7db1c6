"""Healing: carry out one action on one replica with a cooldown and an hourly rate limit per
target, check afterwards that it is healthy and the failure did not recur, and put the old
settings back when the action did not help. Runs and nodes have no settings to change: for them
only "restart" applies (resume the run, wake the node), under the same cooldown and rate limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from corral.engine.replica import ReplicaSpec
from corral.models.catalog import ModelEntry
from corral.supervisor.actions import HealingAction, Limits, NotApplicable, Restart, planned_spec
from corral.supervisor.settings import SupervisorConfig

Outcome = Literal["healed", "reverted", "failed", "skipped", "not_applicable"]
HOUR_S = 3600.0


class Targets(Protocol):
    """The replicas the healer acts on (the Engine in `corral up`, a fake in unit tests)."""

    def spec(self, name: str) -> ReplicaSpec: ...

    def apply(self, name: str, spec: ReplicaSpec) -> None: ...

    async def restart(self, name: str, reason: str) -> bool: ...

    def healthy(self, name: str) -> bool: ...

    def exits(self, name: str) -> int:
        """How many exits of `name` have been seen so far (a recurrence raises it)."""
        ...


@dataclass
class Result:
    outcome: Outcome
    detail: str
    before: dict[str, object] = field(default_factory=dict)
    after: dict[str, object] = field(default_factory=dict)


def _settings_of(spec: ReplicaSpec) -> dict[str, object]:
    return {
        "model": spec.model.id,
        "context_per_slot": spec.context_per_slot,
        "memory_limit_bytes": spec.memory_limit_bytes,
    }


@dataclass
class Healer:
    targets: Targets
    settings: SupervisorConfig
    limits: Callable[[], Limits]
    resolve_model: Callable[[str], ModelEntry] | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    poll_s: float = 0.5
    acted: dict[str, list[float]] = field(default_factory=dict)  # action times per target

    def admit(self, target: str) -> str | None:
        """Why an action on `target` must wait now (cooldown, rate limit), or None."""
        now = self.clock()
        times = [t for t in self.acted.get(target, []) if now - t < HOUR_S]
        self.acted[target] = times
        if times and now - times[-1] < self.settings.cooldown_s:
            wait = self.settings.cooldown_s - (now - times[-1])
            return f"cooldown: the last action on {target} was {now - times[-1]:.0f}s ago; wait {wait:.0f}s"
        if len(times) >= self.settings.max_actions_per_hour:
            return (
                f"rate limit: {len(times)} actions on {target} in the last hour "
                f"(supervisor.max_actions_per_hour is {self.settings.max_actions_per_hour})"
            )
        return None

    def plan(self, target: str, action: HealingAction) -> ReplicaSpec:
        return planned_spec(action, self.targets.spec(target), self.limits(), self.resolve_model)

    async def heal(self, target: str, action: HealingAction) -> Result:
        wait = self.admit(target)
        if wait is not None:
            return Result("skipped", wait)
        old = self.targets.spec(target)
        try:
            new = self.plan(target, action)
        except NotApplicable as exc:
            return Result("not_applicable", str(exc))
        self.acted.setdefault(target, []).append(self.clock())
        before, after = _settings_of(old), _settings_of(new)
        self.targets.apply(target, new)
        exits = self.targets.exits(target)
        ok = await self.targets.restart(target, f"supervisor: {action.action}")
        if ok and await self._holds(target, exits):
            detail = f"{target} is healthy {self.settings.verify_s:.0f}s after {action.action}"
            return Result("healed", detail, before, after)
        why = "did not come back ready" if not ok else "failed again or stayed unhealthy"
        if isinstance(action, Restart) or new == old:
            return Result("failed", f"{target} {why} after {action.action}", before, after)
        self.targets.apply(target, old)
        back = await self.targets.restart(target, f"supervisor: revert {action.action}")
        state = "is back on its old settings" if back else "did not come back on its old settings either"
        return Result("reverted", f"{target} {why} after {action.action}; it {state}", before, after)

    async def restart_only(
        self, target: str, action: HealingAction, restart: Callable[[], Awaitable[Result]], *, key: str = ""
    ) -> Result:
        """Heal a target whose only action is a restart (a run, a node); `restart` acts and checks.
        `key` is what the cooldown and rate limit count (a run's workflow, so a storm of failing
        runs cannot buy a storm of resumes); the target by default."""
        kind = target.split("/", 1)[0]
        if not isinstance(action, Restart):
            return Result(
                "not_applicable",
                f"{action.action} changes a replica's settings; a {kind} can only be restarted "
                f"({'resumed' if kind == 'run' else 'woken'})",
            )
        key = key or target
        wait = self.admit(key)
        if wait is not None:
            return Result("skipped", wait)
        self.acted.setdefault(key, []).append(self.clock())
        return await restart()

    async def _holds(self, target: str, exits_before: int) -> bool:
        """Healthy, with no new exit, for verify_s."""
        deadline = self.clock() + self.settings.verify_s
        while self.clock() < deadline:
            if self.targets.exits(target) > exits_before:
                return False
            await self.sleep(self.poll_s)
        return self.targets.exits(target) == exits_before and self.targets.healthy(target)
