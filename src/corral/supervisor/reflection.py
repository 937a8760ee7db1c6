"""Reflection: the reflect workflow asks a model for ONE healing action for a diagnostics bundle;
the answer is parsed into the closed action set or rejected with the reason, never acted on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.supervisor.actions import ActionRejected, HealingAction, parse_action
from corral.supervisor.diagnostics import Bundle

if TYPE_CHECKING:
    from corral.agent.service import AgentService

log = logging.getLogger("corral.supervisor")


@dataclass
class Reflection:
    action: HealingAction | None
    answer: Any = None  # what the model said, as it came
    rejected: str = ""  # why the answer was refused
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


async def reflect(
    agent: AgentService, bundle: Bundle, *, workflow: str = "reflect", model: str | None = None
) -> Reflection:  # fmt: skip
    """Run the reflect workflow on `bundle` (its llm node reads the `reflection` prompt role: the
    promoted variant, else the seed); a failed run or an answer outside the set is a
    Reflection with no action and the reason, for the incident's record."""
    inputs = {"diagnostics": bundle.summary(), "model": model or ""}
    try:
        handle = agent.start_run(workflow, inputs)
    except Exception as exc:  # an unknown or invalid workflow: say which, do not crash the supervisor
        return Reflection(None, rejected=f"the {workflow!r} workflow could not start: {exc}")
    record = await handle.result()
    if record.status != "succeeded":
        return Reflection(None, rejected=f"reflection run {record.id} {record.status}: {record.error}",
                          run_id=record.id)  # fmt: skip
    outputs = record.outputs or {}
    answer = outputs.get("answer") if outputs.get("answer") is not None else outputs.get("text", "")
    try:
        return Reflection(parse_action(answer), answer=answer, run_id=record.id)
    except ActionRejected as exc:
        return Reflection(None, answer=answer, rejected=str(exc), run_id=record.id)
