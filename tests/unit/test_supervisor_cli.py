"""`corral incidents`: the list, one incident as JSON, a clear error for an unknown id."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app
from corral.supervisor.diagnostics import Bundle
from corral.supervisor.incidents import Incident, IncidentStore, new_id


def test_incidents_lists_and_shows(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path / "supervisor" / "incidents")
    incident = Incident(
        id=new_id(), kind="oom_kill", target="general/0", status="proposed",
        bundle=Bundle(target="general/0", source="replica", exit_code=-9, signal="SIGKILL"),
        action={"action": "reduce_context", "factor": 0.5, "reason": ""},
    )  # fmt: skip
    store.save(incident)
    runner = CliRunner(env={"COLUMNS": "200"})
    listed = runner.invoke(app, ["incidents", "--home", str(tmp_path)])
    assert listed.exit_code == 0 and "oom_kill" in listed.output and "reduce_context" in listed.output
    none = runner.invoke(app, ["incidents", "--home", str(tmp_path), "--status", "healed"])
    assert "no incidents with status 'healed'" in none.output
    shown = runner.invoke(app, ["incidents", incident.id, "--home", str(tmp_path)])
    assert json.loads(shown.output)["bundle"]["signal"] == "SIGKILL"
    missing = runner.invoke(app, ["incidents", "nope", "--home", str(tmp_path)])
    assert missing.exit_code == 1 and "corral incidents" in missing.output
