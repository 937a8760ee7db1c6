"""The `supervisor:` section of corral.yaml: mode, healing limits, failover allowlist, adaptation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Mode = Literal["observe", "review", "autonomous"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdaptationConfig(_Strict):
    """What a "novel" failure starts: a new reflection test case and a small prompt campaign."""

    enabled: bool = Field(True, description="write a test case and start a campaign for novel failures")
    generations: int = Field(2, ge=1, le=20, description="campaign generations per novel failure")
    max_metric_calls: int = Field(24, ge=1, description="evaluation calls one campaign may spend")
    minibatch: int = Field(
        2, ge=1, le=20, description="train cases a parent and its child are first scored on"
    )
    selection: str = Field("dgm", description="parent selection strategy of the campaign")


class SupervisorConfig(_Strict):
    enabled: bool = Field(True, description="watch replicas and runs and record incidents")
    mode: Mode = Field(
        "review",
        description="observe: record only; review: propose an action a human approves in Mission "
        "Control; autonomous: act at once",
    )
    cooldown_s: float = Field(120.0, ge=0, description="least time between two actions on one target")
    max_actions_per_hour: int = Field(3, ge=1, description="actions per target in any hour")
    verify_s: float = Field(30.0, gt=0, description="after acting: healthy and no recurrence this long")
    repeat_window_s: float = Field(600.0, gt=0, description="crashes counted together as repeated")
    repeat_threshold: int = Field(3, ge=2, description="plain crashes in the window that open an incident")
    failover_models: list[str] = Field(
        default_factory=list, description="models a replica may fail over to (catalog names or GGUF paths)"
    )
    max_memory_bytes: int | None = Field(
        None, ge=1, description="ceiling for increase_memory; default what the machine has free"
    )
    min_context: int = Field(512, ge=64, description="reduce_context never goes below this per slot")
    reflection_workflow: str = Field("reflect", description="the workflow that asks the model for an action")
    reflection_model: str | None = Field(None, description="expert for reflection; default agent.model")
    log_tail_lines: int = Field(40, ge=1, le=1000, description="replica log lines kept in a bundle")
    adaptation: AdaptationConfig = AdaptationConfig()
