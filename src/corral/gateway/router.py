"""The Router: from a request's `model` to an ordered list of backends to try.

1. Expert: an explicit expert name or alias routes directly; `auto` asks the ExpertChooser.
2. Replica: healthy replicas of that expert ordered by the balancer. The default is expected
   finish time, `spt * (cost + queued / slots)`: measured seconds per token times this request's
   expected tokens plus the backlog already queued per slot, so a fast idle replica beats a slow
   one and a busy fast one loses to an idle slow one when its backlog says so.
3. Failover: then the healthy replicas of each expert along the fallback chain, in order.
Admission control bounds the requests each expert holds; beyond it callers get 429.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from corral.backends import Backend
from corral.config import ExpertConfig
from corral.errors import BadRequestError, NoBackendError, QueueFullError, UnknownModelError
from corral.gateway.moe import ExpertChooser, LexicalChooser, RouteChoice
from corral.gateway.registry import Registry

Balancer = Callable[[Sequence[Backend], float], list[Backend]]


def expected_finish_time(backend: Backend, cost: float) -> float:
    state = backend.state
    return state.seconds_per_token * (cost + state.queued_tokens / max(1, state.slots))


def by_expected_finish(backends: Sequence[Backend], cost: float) -> list[Backend]:
    return sorted(backends, key=lambda b: expected_finish_time(b, cost))


def by_least_busy(backends: Sequence[Backend], cost: float) -> list[Backend]:
    return sorted(backends, key=lambda b: b.state.in_flight / max(1, b.state.slots))


class RoundRobin:
    def __init__(self) -> None:
        self._counter = itertools.count()

    def __call__(self, backends: Sequence[Backend], cost: float) -> list[Backend]:
        if not backends:
            return []
        start = next(self._counter) % len(backends)
        return [*backends[start:], *backends[:start]]


BALANCERS = ("expected_finish_time", "least_busy", "round_robin")


def make_balancer(name: str) -> Balancer:
    if name == "expected_finish_time":
        return by_expected_finish
    if name == "least_busy":
        return by_least_busy
    if name == "round_robin":
        return RoundRobin()
    raise ValueError(f"unknown balancer {name!r}; use expected_finish_time, least_busy or round_robin")


class Holder(Protocol):
    """What can bring an expert's replicas up on demand (the cluster waking a sleeping node)."""

    async def hold(self, expert: str) -> bool:
        """Wait until `expert` has a ready replica, or return False (at once when nothing can
        be done for it, or when it gave up): the request then goes down the fallback chain."""
        ...


@dataclass(frozen=True)
class Candidate:
    backend: Backend
    expert: str  # the expert this backend serves (differs from the request's on fallback)


class Router:
    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        registry: Registry,
        *,
        max_queue: int = 32,
        chooser: ExpertChooser | None = None,
        balancer: Balancer = by_expected_finish,
        holder: Holder | None = None,
    ) -> None:
        self.experts = {e.name: e for e in experts}
        self._aliases = {alias: e.name for e in experts for alias in e.aliases}
        self.registry = registry
        self.max_queue = max_queue
        self.chooser = chooser or LexicalChooser(experts)
        self.balancer = balancer
        self.admitted: dict[str, int] = {e.name: 0 for e in experts}
        self.holder = holder

    def model_names(self) -> list[str]:
        return ["auto", *self.experts, *self._aliases]

    def resolve(self, model: object, kind: str, text: Callable[[], str]) -> RouteChoice:
        """Which expert serves `model` for an endpoint of `kind` (chat or embedding)."""
        if not isinstance(model, str) or not model:
            raise BadRequestError(
                '`model` is required: name an expert, an alias, or use "auto"', param="model"
            )
        if model == "auto":
            pool = self.auto_pool(kind)
            if not pool:
                raise UnknownModelError(f"no {kind} expert is configured", param="model")
            return self.chooser.choose(text(), pool)
        if model in self.experts:
            choice = RouteChoice(model, "explicit", f"model {model}")
        elif model in self._aliases:
            target = self._aliases[model]
            choice = RouteChoice(target, "alias", f"alias {model} -> {target}")
        else:
            known = ", ".join(self.model_names())
            raise UnknownModelError(
                f"model {model!r} does not exist; use one of: {known} (GET /v1/models lists them)",
                param="model",
            )
        expert = self.experts[choice.expert]
        if expert.kind != kind:
            raise BadRequestError(
                f"{choice.expert!r} is a {expert.kind} expert and cannot serve this endpoint; "
                f"pick a {kind} model from GET /v1/models",
                param="model",
            )
        return choice

    def auto_pool(self, kind: str) -> list[ExpertConfig]:
        """Experts `auto` chooses among: those of this kind with `auto: true` (all, if none)."""
        of_kind = [e for e in self.experts.values() if e.kind == kind]
        return [e for e in of_kind if e.auto] or of_kind

    def chain(self, expert: str) -> list[str]:
        """The expert followed by its fallback chain (depth-first, each expert once)."""
        order: list[str] = []
        stack = [expert]
        while stack:
            name = stack.pop(0)
            if name in order or name not in self.experts:
                continue
            order.append(name)
            stack = [*self.experts[name].fallback, *stack]
        return order

    async def hold_for(self, expert: str) -> None:
        """With no ready replica of `expert` itself, let the holder try to bring one up first
        (the request waits instead of going straight to a fallback)."""
        if self.holder is not None and not any(b.state.healthy for b in self.registry.backends(expert)):
            await self.holder.hold(expert)

    def candidates(self, expert: str, cost: float) -> list[Candidate]:
        out: list[Candidate] = []
        for name in self.chain(expert):
            healthy = [b for b in self.registry.backends(name) if b.state.healthy]
            out.extend(Candidate(b, name) for b in self.balancer(healthy, cost))
        return out

    def admit(self, expert: str, candidates: Sequence[Candidate]) -> Admission:
        """Take a place in the expert's bounded queue, or raise 429/503 saying when to retry."""
        if not candidates:
            states = ", ".join(
                f"{b.name}: {b.state.status}"
                for name in self.chain(expert)
                for b in self.registry.backends(name)
            )
            raise NoBackendError(
                f"no healthy replica for {expert!r} or its fallbacks ({states or 'none configured'}); "
                "corral is starting or restarting them: retry shortly, or check `corral status`",
                retry_after_s=2.0,
            )
        capacity = sum(c.backend.state.slots for c in candidates) + self.max_queue
        if self.admitted[expert] >= capacity:
            first = candidates[0].backend.state
            drain = first.seconds_per_token * first.queued_tokens / max(1, first.slots)
            raise QueueFullError(
                f"{expert!r} is at capacity ({capacity} requests admitted); retry after the "
                "Retry-After seconds or add replicas in corral.yaml",
                retry_after_s=max(1.0, drain),
            )
        self.admitted[expert] += 1
        return Admission(self.admitted, expert)


class Admission:
    """A place in an expert's queue; `release` (or leaving a `with` block) gives it back once."""

    def __init__(self, counts: dict[str, int], expert: str) -> None:
        self._counts = counts
        self._expert = expert
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._counts[self._expert] -= 1

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
