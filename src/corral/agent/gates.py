"""Human approval gates: a node asks, the run waits, a person approves or denies over the API,
the UI or voice; no answer within the timeout means deny."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from corral.agent.events import EventBus
from corral.agent.store import RunStore
from corral.errors import NotFoundError


@dataclass(frozen=True)
class GateDecision:
    approved: bool
    by: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"approved": self.approved, "by": self.by, "reason": self.reason}


class GateBook:
    def __init__(self, store: RunStore, bus: EventBus) -> None:
        self.store = store
        self.bus = bus
        self._waiting: dict[str, tuple[asyncio.Future[GateDecision], str, str]] = {}

    async def wait(
        self,
        run_id: str,
        node_id: str,
        title: str,
        details: Any,
        timeout_s: float,
        *,
        root_run: str = "",
    ) -> GateDecision:
        gate_id = f"g_{uuid.uuid4().hex[:12]}"
        expires = time.time() + timeout_s
        self.store.add_gate(gate_id, run_id, node_id, title, details, expires)
        future: asyncio.Future[GateDecision] = asyncio.get_running_loop().create_future()
        self._waiting[gate_id] = (future, run_id, node_id)
        data = {"gate_id": gate_id, "title": title, "details": details, "expires": expires}
        self.bus.publish("gate.waiting", run_id, node_id, {**data, "root_run": root_run or run_id})
        status, decision = "expired", GateDecision(False, "timeout", f"no answer within {timeout_s:g} s")
        try:
            decision = await asyncio.wait_for(asyncio.shield(future), timeout_s)
            status = "approved" if decision.approved else "denied"
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            status, decision = "cancelled", GateDecision(False, "system", "the run was cancelled")
            raise
        finally:
            self._waiting.pop(gate_id, None)
            self.store.resolve_gate(gate_id, status, decision.by, decision.reason)
            self.bus.publish(
                "gate.resolved",
                run_id,
                node_id,
                {"gate_id": gate_id, "status": status, **decision.to_json(), "root_run": root_run or run_id},
            )
        return decision

    def decide(self, gate_id: str, approve: bool, by: str = "user", reason: str = "") -> dict[str, Any]:
        """Answer a pending gate; unknown or already-answered gates are a 404 that says so."""
        entry = self._waiting.get(gate_id)
        if entry is None or entry[0].done():
            known = ", ".join(self._waiting) or "none"
            raise NotFoundError(
                f"no pending gate {gate_id!r} (it expired, was answered, or never existed); "
                f"pending gates: {known}; GET /api/gates lists them"
            )
        future, run_id, node_id = entry
        future.set_result(GateDecision(approve, by, reason or ("approved" if approve else "denied")))
        return {"gate_id": gate_id, "run_id": run_id, "node": node_id, "approved": approve}

    def pending(self) -> list[dict[str, Any]]:
        return self.store.gates(status="pending")

    def waiting_for(self, run_id: str) -> list[str]:
        return [g for g, (_, r, _) in self._waiting.items() if r == run_id]
