"""Prompt evolution's HTTP surface for Mission Control's Archive page: the tree, one variant, and
(admin) promote and rollback. Campaigns run from the CLI or the supervisor, not over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import HTTPConnection

from corral.errors import BadRequestError
from corral.evolve.archive import Archive
from corral.evolve.tree import detail, tree
from corral.gateway.auth import Scope
from corral.gateway.proxy import parse_body, read_body

Authorize = Callable[[HTTPConnection, Scope], Any]
M = TypeVar("M", bound=BaseModel)


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant_id: str = Field(min_length=1, max_length=64)
    require_case_ids: list[str] = Field(default_factory=list, max_length=100)


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str | None = Field(None, max_length=64)


def _parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate(parse_body(raw) if raw.strip() else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequestError(f"{where}: {first['msg']}", param=where) from None


def install_evolve_routes(app: FastAPI, home: Path, authorize: Authorize) -> None:
    def archive() -> Archive:
        return Archive(home)

    async def with_archive(action: Callable[[Archive], Any]) -> Any:
        def work() -> Any:
            opened = archive()
            try:
                return action(opened)
            finally:
                opened.close()

        return await asyncio.to_thread(work)

    @app.get("/api/evolve/tree", tags=["evolve"])
    async def evolve_tree(request: Request, suite: str | None = None) -> dict[str, Any]:
        """The evolutionary tree of a suite (default: the latest one evolved): variants with their
        scores per split, parent edges, the promoted and Pareto-front members."""
        authorize(request, "user")
        result: dict[str, Any] = await with_archive(lambda a: tree(a, home, suite))
        return result

    @app.get("/api/evolve/variants/{variant_id}", tags=["evolve"])
    async def evolve_variant(request: Request, variant_id: str) -> dict[str, Any]:
        """One variant: prompts, diff against its parent, rationale, per-case scores, cost, lineage."""
        authorize(request, "user")
        result: dict[str, Any] = await with_archive(lambda a: detail(a, home, variant_id))
        return result

    @app.post("/api/evolve/promote", tags=["evolve"])
    async def evolve_promote(request: Request) -> dict[str, Any]:
        """Point the variant's role at it (admin). 400 with the reason when it fails a required case
        or regresses on held-out cases; the agent uses the new prompt from its next node run."""
        authorize(request, "admin")
        body = _parse(PromoteBody, await read_body(request, 64 * 1024))

        def promote(a: Archive) -> dict[str, Any]:
            variant = a.promote(body.variant_id, require_case_ids=body.require_case_ids, reason="ui")
            return {"promoted": variant.id, "role": variant.role}

        result: dict[str, Any] = await with_archive(promote)
        return result

    @app.post("/api/evolve/rollback", tags=["evolve"])
    async def evolve_rollback(request: Request) -> dict[str, Any]:
        """Move a role's promoted pointer back (admin); `role` defaults to the last promoted role."""
        authorize(request, "admin")
        body = _parse(RollbackBody, await read_body(request, 4096))

        def rollback(a: Archive) -> dict[str, Any]:
            now = a.rollback(body.role)
            return {"promoted": now, "pointers": a.promoted_ids()}

        result: dict[str, Any] = await with_archive(rollback)
        return result
