"""The closed set of healing actions (a pydantic discriminated union), how a model's answer is
parsed into one (anything else is rejected with the reason), the grammar that keeps a small model
inside the set, and the spec arithmetic each action performs (memory cap, context floor)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from corral.agent.grammar import BASE_RULES, literal
from corral.engine.replica import ReplicaSpec

MAX_MEMORY_FACTOR = 1.5


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reason: str = Field("", max_length=500, description="why this action, in one sentence")


class Restart(_Action):
    action: Literal["restart"] = "restart"


class IncreaseMemory(_Action):
    action: Literal["increase_memory"] = "increase_memory"
    factor: float = Field(MAX_MEMORY_FACTOR, gt=1.0, le=MAX_MEMORY_FACTOR)


class ReduceContext(_Action):
    action: Literal["reduce_context"] = "reduce_context"
    factor: float = Field(0.5, ge=0.25, le=0.75)


class Failover(_Action):
    action: Literal["failover"] = "failover"
    model: str = Field(min_length=1, max_length=300)


class Novel(_Action):
    action: Literal["novel"] = "novel"
    description: str = Field(min_length=8, max_length=1000, description="what is new about this failure")


HealingAction = Annotated[
    Restart | IncreaseMemory | ReduceContext | Failover | Novel, Field(discriminator="action")
]
ACTION_TYPES: tuple[type[_Action], ...] = (Restart, IncreaseMemory, ReduceContext, Failover, Novel)
ACTION_NAMES = tuple(t.model_fields["action"].default for t in ACTION_TYPES)
_ADAPTER: TypeAdapter[HealingAction] = TypeAdapter(HealingAction)


class ActionRejected(ValueError):
    """A reflection answer that is not one valid action (kept in the incident as it came)."""


class NotApplicable(ValueError):
    """A valid action that cannot be carried out on this target (no limit to raise, at the floor...)."""


def _field_rule(schema: dict[str, Any]) -> str:
    if schema.get("type") == "number":
        return "number"
    if schema.get("type") == "string":
        return "nonempty" if int(schema.get("minLength", 0) or 0) > 0 else "string"
    raise TypeError(f"no grammar rule for an action field of schema {schema}")


def action_grammar() -> str:
    """A GBNF grammar for exactly one action as compact JSON, {"action":"NAME",...fields}, with
    no whitespace to choose (the agent's tool grammar does the same for the same reason: the
    bundled 270M base model fills free whitespace with tabs). `reason` is left out: a small model
    spends its tokens rambling there, and the incident keeps the whole bundle instead."""
    alternatives = []
    for kind in ACTION_TYPES:
        name = kind.model_fields["action"].default
        schema = kind.model_json_schema()
        parts = [literal('{"action":' + json.dumps(name))]
        for field_name, field_schema in schema["properties"].items():
            if field_name not in ("action", "reason"):
                parts += [literal("," + json.dumps(field_name) + ":"), _field_rule(field_schema)]
        alternatives.append(" ".join([*parts, literal("}")]))
    # one line: llama.cpp's GBNF parser takes a newline inside a rule only after `|` or in parentheses
    root = "root ::= " + " | ".join(alternatives)
    return root + "\n" + BASE_RULES.lstrip("\n")


def parse_action(answer: Any) -> HealingAction:
    """An action from a model's answer: text or parsed JSON, as {"action": ..., ...} or as the
    grammar's {"tool": ..., "arguments": {...}}. Raises ActionRejected saying what was wrong."""
    value = answer
    if isinstance(answer, str):
        try:
            value = json.loads(answer.strip())
        except ValueError:
            raise ActionRejected(f"the answer is not JSON: {answer[:200]!r}") from None
    if isinstance(value, dict) and "tool" in value and "action" not in value:
        arguments = value.get("arguments")
        value = {"action": value["tool"], **(arguments if isinstance(arguments, dict) else {})}
    if not isinstance(value, dict):
        raise ActionRejected(f"the answer is not a JSON object: {str(answer)[:200]!r}")
    if value.get("action") not in ACTION_NAMES:
        raise ActionRejected(
            f"unknown action {value.get('action')!r}; the closed set is {', '.join(ACTION_NAMES)}"
        )
    try:
        return _ADAPTER.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "action"
        raise ActionRejected(f"{value.get('action')}: {where}: {first['msg']}") from None


def action_json(action: HealingAction) -> dict[str, Any]:
    return action.model_dump()


@dataclass(frozen=True)
class Limits:
    """What the machine and the configuration allow an action to take."""

    free_memory_bytes: int
    max_memory_bytes: int | None
    min_context: int
    failover_models: tuple[str, ...]


def increased_memory(current: int, factor: float, limits: Limits) -> int:
    """The new memory limit: at most x1.5 of `current`, and never more than `current` plus what
    the machine has free nor the configured ceiling. NotApplicable when it would not grow."""
    factor = min(factor, MAX_MEMORY_FACTOR)
    target = int(current * factor)
    target = min(target, current + max(0, limits.free_memory_bytes))
    if limits.max_memory_bytes is not None:
        target = min(target, limits.max_memory_bytes)
    if target <= current:
        raise NotApplicable(
            f"memory cannot grow past {current} bytes (free {limits.free_memory_bytes}, "
            f"ceiling {limits.max_memory_bytes})"
        )
    return target


def reduced_context(current: int, factor: float, floor: int) -> int:
    """The new context per slot: `current` times `factor` (halved by default), not below `floor`."""
    target = max(floor, int(current * factor))
    if target >= current:
        raise NotApplicable(f"the context is already at its floor ({current} <= {floor} tokens per slot)")
    return target


def planned_spec(
    action: HealingAction, spec: ReplicaSpec, limits: Limits, resolve_model: Any = None
) -> ReplicaSpec:
    """The replica spec after `action` (the same spec for restart). NotApplicable for novel (no
    mechanical fix), a missing memory limit, the context floor, or a model off the allowlist."""
    if isinstance(action, Restart):
        return spec
    if isinstance(action, IncreaseMemory):
        if spec.memory_limit_bytes is None:
            raise NotApplicable(
                "this replica has no memory limit to raise (set `memory_limit` for the expert)"
            )
        return replace(
            spec, memory_limit_bytes=increased_memory(spec.memory_limit_bytes, action.factor, limits)
        )
    if isinstance(action, ReduceContext):
        return replace(
            spec, context_per_slot=reduced_context(spec.context_per_slot, action.factor, limits.min_context)
        )
    if isinstance(action, Failover):
        if action.model not in limits.failover_models:
            raise NotApplicable(
                f"model {action.model!r} is not on the failover allowlist "
                f"({', '.join(limits.failover_models) or 'empty: set supervisor.failover_models'})"
            )
        if resolve_model is None:
            raise NotApplicable("no model catalog to resolve the failover model")
        return replace(spec, model=resolve_model(action.model))
    raise NotApplicable("a novel failure has no mechanical fix; it goes to adaptation")
