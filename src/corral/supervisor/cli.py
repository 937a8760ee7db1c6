"""`corral incidents`: the supervisor's incidents from the data directory (no server needed)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from corral.paths import default_home
from corral.supervisor.incidents import IncidentStore


def install(app: typer.Typer) -> None:
    @app.command()
    def incidents(
        incident: Annotated[
            str | None, typer.Argument(help="an incident id: print it whole, as JSON")
        ] = None,
        status: Annotated[str | None, typer.Option(help="only this status, e.g. proposed or failed")] = None,
        limit: Annotated[int, typer.Option(help="newest first, at most this many")] = 50,
        home: Annotated[
            Path | None,
            typer.Option("--home", help="data directory (default: $CORRAL_HOME or ~/.local/share/corral)"),
        ] = None,
    ) -> None:
        """List the supervisor's incidents (approve or reject in Mission Control, or over the API)."""
        store = IncidentStore((home or default_home()).expanduser() / "supervisor" / "incidents")
        if incident is not None:
            try:
                print(json.dumps(store.get(incident).model_dump(mode="json"), indent=1))
            except KeyError:
                Console(stderr=True).print(f"no incident {incident!r}; `corral incidents` lists them")
                raise typer.Exit(1) from None
            return
        table = Table()
        for column in ("id", "when", "replica", "kind", "action", "status", "outcome"):
            table.add_column(column)
        shown = [i for i in store.list(limit=10_000) if status is None or i.status == status][:limit]
        for i in shown:
            when = dt.datetime.fromtimestamp(i.created).strftime("%Y-%m-%d %H:%M:%S")
            action = (i.action or {}).get("action", "—")
            table.add_row(i.id, when, i.target, i.kind, str(action), i.status, i.outcome[:60])
        if not shown:
            Console().print("no incidents" + (f" with status {status!r}" if status else ""))
            return
        Console().print(table)
