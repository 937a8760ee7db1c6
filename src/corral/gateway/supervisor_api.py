"""The supervisor's HTTP surface under /api/supervisor: its mode, the incidents (list, one with
its diagnostics bundle and history), and approve/reject of a proposed action (admin scope)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import HTTPConnection

from corral.errors import BadRequestError
from corral.gateway.auth import Scope
from corral.supervisor.settings import Mode

if TYPE_CHECKING:
    from corral.supervisor.incidents import Incident
    from corral.supervisor.service import Supervisor

Authorize = Callable[[HTTPConnection, Scope], Any]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=500)


class ModeChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Mode


def summary(incident: Incident) -> dict[str, Any]:
    """What the incidents list shows (the bundle and history only in the single view)."""
    bundle = incident.bundle
    return {
        "id": incident.id,
        "created": incident.created,
        "updated": incident.updated,
        "kind": incident.kind,
        "target": incident.target,
        "status": incident.status,
        "mode": incident.mode,
        "classified_by": incident.classified_by,
        "reason": incident.reason,
        "action": incident.action,
        "outcome": incident.outcome,
        "ended": bundle.signal or (f"exit code {bundle.exit_code}" if bundle.exit_code is not None else ""),
        "adaptation": incident.adaptation,
    }


def install_supervisor_routes(app: FastAPI, supervisor: Supervisor, authorize: Authorize) -> None:
    async def decision(request: Request) -> Decision:
        raw = await request.body()
        if not raw.strip():
            return Decision()
        try:
            return Decision.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise BadRequestError(f'{where}: {first["msg"]}; send {{"reason": "..."}} or nothing') from None

    @app.get("/api/supervisor", tags=["supervisor"])
    async def supervisor_status(request: Request) -> dict[str, Any]:
        """The mode, the settings that bound healing, and how many incidents wait for a human."""
        authorize(request, "user")
        return supervisor.status()

    @app.put("/api/supervisor/mode", tags=["supervisor"])
    async def set_mode(request: Request) -> dict[str, Any]:
        """Switch {"mode": "observe"|"review"|"autonomous"} until the next start. Admin scope."""
        authorize(request, "admin")
        try:
            change = ModeChange.model_validate_json(await request.body())
        except ValidationError:
            raise BadRequestError(
                'send {"mode": "observe"}, {"mode": "review"} or {"mode": "autonomous"}', param="mode"
            ) from None
        supervisor.set_mode(change.mode)
        return supervisor.status()

    @app.get("/api/supervisor/incidents", tags=["supervisor"])
    async def list_incidents(request: Request, status: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Incidents, newest first; `status=proposed` lists those waiting for approval."""
        authorize(request, "user")
        incidents = supervisor.store.list(limit=max(1, min(limit, 1000)))
        if status:
            incidents = [i for i in incidents if i.status == status]
        return {"incidents": [summary(i) for i in incidents]}

    @app.get("/api/supervisor/incidents/{incident_id}", tags=["supervisor"])
    async def get_incident(request: Request, incident_id: str) -> dict[str, Any]:
        """One incident: its diagnostics bundle, the action, rejected answers and its history."""
        authorize(request, "user")
        return supervisor.get(incident_id).model_dump(mode="json")

    @app.post("/api/supervisor/incidents/{incident_id}/approve", tags=["supervisor"])
    async def approve(request: Request, incident_id: str) -> dict[str, Any]:
        """Carry out a proposed action now (review mode). Admin scope; 409 when not proposed."""
        key = authorize(request, "admin")
        await decision(request)
        return summary(supervisor.approve(incident_id, by=getattr(key, "name", "")))

    @app.post("/api/supervisor/incidents/{incident_id}/reject", tags=["supervisor"])
    async def reject(request: Request, incident_id: str) -> dict[str, Any]:
        """Refuse a proposed action; the replica stays with the Engine's restarts. Admin scope."""
        key = authorize(request, "admin")
        body = await decision(request)
        return summary(supervisor.reject(incident_id, by=getattr(key, "name", ""), reason=body.reason))
