"""Incidents: one JSON file each under $CORRAL_HOME/supervisor/incidents/<id>.json, rewritten
atomically on every change, so a crash leaves the previous state and never half a file."""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from corral.paths import atomic_write_text
from corral.supervisor.diagnostics import Bundle

log = logging.getLogger("corral.supervisor")

INCIDENT_VERSION = 1

Status = Literal[
    "recorded",  # observe mode, or a plain crash the Engine's restart covers
    "proposed",  # review mode: waits for a human
    "acting",
    "verifying",
    "healed",
    "reverted",  # acted, did not help, put back
    "failed",  # acted, did not help, nothing to put back (or the action itself failed)
    "rejected",  # a human said no
    "skipped",  # cooldown or rate limit
    "unresolved",  # no valid action (reflection answered outside the schema)
    "adapting",  # novel: a test case and a campaign
    "interrupted",  # corral stopped while it was acting; see the history
]
OPEN: frozenset[str] = frozenset({"proposed", "acting", "verifying", "adapting"})


class Entry(BaseModel):
    time: float = Field(default_factory=time.time)
    event: str
    detail: dict[str, Any] = Field(default_factory=dict)


class Incident(BaseModel):
    version: int = INCIDENT_VERSION
    id: str
    created: float = Field(default_factory=time.time)
    updated: float = Field(default_factory=time.time)
    kind: str
    target: str
    status: Status = "recorded"
    mode: str = "observe"
    bundle: Bundle
    classified_by: Literal["rules", "reflection", "none"] = "rules"
    reason: str = ""
    action: dict[str, Any] | None = None
    rejected_answers: list[dict[str, Any]] = Field(default_factory=list)
    outcome: str = ""
    history: list[Entry] = Field(default_factory=list)
    adaptation: dict[str, Any] = Field(default_factory=dict)

    def note(self, event: str, **detail: Any) -> None:
        self.history.append(Entry(event=event, detail=detail))
        self.updated = time.time()


def new_id() -> str:
    """Time-ordered (to the microsecond, so names sort newest-last) and unique."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int(now % 1 * 1e6):06d}-{secrets.token_hex(2)}"


class IncidentStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, incident_id: str) -> Path:
        if not incident_id or "/" in incident_id or incident_id.startswith("."):
            raise KeyError(incident_id)
        return self.root / f"{incident_id}.json"

    def save(self, incident: Incident) -> None:
        atomic_write_text(self.path(incident.id), incident.model_dump_json(indent=1))

    def get(self, incident_id: str) -> Incident:
        path = self.path(incident_id)
        try:
            return Incident.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise KeyError(incident_id) from None

    def list(self, limit: int = 200) -> list[Incident]:
        """Newest first; a file that does not parse is skipped with a warning, not fatal."""
        if not self.root.is_dir():
            return []
        incidents: list[Incident] = []
        for path in sorted(self.root.glob("*.json"), reverse=True)[:limit]:
            try:
                incidents.append(Incident.model_validate_json(path.read_text(encoding="utf-8")))
            except (OSError, ValidationError, json.JSONDecodeError) as exc:
                log.warning("skipping unreadable incident %s: %s", path.name, exc)
        return incidents

    def mark_interrupted(self) -> builtins.list[str]:
        """At start: incidents left acting/verifying by a stop are marked interrupted (proposals
        keep waiting for their human; adaptation resumes from its own record)."""
        ids: list[str] = []
        for incident in self.list(limit=10_000):
            if incident.status in ("acting", "verifying"):
                incident.status = "interrupted"
                incident.note("interrupted", reason="corral stopped while this incident was being healed")
                self.save(incident)
                ids.append(incident.id)
        return ids
