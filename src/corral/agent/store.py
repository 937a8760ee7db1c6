"""Durable history in SQLite (WAL): versioned workflow definitions, runs, each node's checkpoint,
approval gates, and the retention that keeps a small disk from filling.

Each completed node is one committed row (inputs, outputs, branch, variable updates, timing), so a
run killed at any moment resumes from its last completed node. `synchronous=NORMAL` in WAL mode
survives a killed process (the case we design for); a power cut may lose the last few steps.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, yaml TEXT NOT NULL,
    saved_at REAL NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    session TEXT NOT NULL DEFAULT '', inputs TEXT NOT NULL, outputs TEXT, error TEXT,
    parent_id TEXT, forked_from TEXT, fork_seq INTEGER, created REAL NOT NULL, updated REAL NOT NULL,
    finished REAL, steps INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, node TEXT NOT NULL, trigger INTEGER NOT NULL,
    status TEXT NOT NULL, branch TEXT, inputs TEXT NOT NULL, outputs TEXT NOT NULL,
    var_updates TEXT NOT NULL, error TEXT, started REAL NOT NULL, finished REAL NOT NULL,
    attempts INTEGER NOT NULL, PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS gates (
    id TEXT PRIMARY KEY, run_id TEXT NOT NULL, node TEXT NOT NULL, title TEXT NOT NULL,
    details TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL,
    decided REAL, decided_by TEXT, reason TEXT
);
CREATE INDEX IF NOT EXISTS gates_status ON gates (status);
"""

ACTIVE = ("running", "waiting")
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class StepRecord:
    seq: int
    node: str
    trigger: int  # the edge index that triggered the node, -1 for a start node
    status: str  # ok | error
    branch: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    var_updates: dict[str, Any]
    error: str | None
    started: float
    finished: float
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "node": self.node,
            "trigger": self.trigger,
            "status": self.status,
            "branch": self.branch,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "var_updates": self.var_updates,
            "error": self.error,
            "started": self.started,
            "finished": self.finished,
            "elapsed_s": round(self.finished - self.started, 6),
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class RunRecord:
    id: str
    workflow: str
    version: int
    status: str
    session: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] | None
    error: str | None
    parent_id: str | None
    forked_from: str | None
    fork_seq: int | None
    created: float
    updated: float
    finished: float | None
    steps: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class RunStore:
    def __init__(self, path: Path | str) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=OFF")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # --- workflow definitions ------------------------------------------------------------------

    def save_workflow(self, name: str, text: str) -> int:
        """Store a definition; the same text as the latest version is not a new version."""
        digest = hashlib.sha256(text.encode()).hexdigest()
        row = self.db.execute(
            "SELECT version, sha256 FROM workflows WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
        ).fetchone()
        if row is not None and row[1] == digest:
            return int(row[0])
        version = (int(row[0]) if row else 0) + 1
        self.db.execute(
            "INSERT INTO workflows (name, version, sha256, yaml, saved_at) VALUES (?, ?, ?, ?, ?)",
            (name, version, digest, text, time.time()),
        )
        return version

    def workflow(self, name: str, version: int | None = None) -> tuple[int, str] | None:
        if version is None:
            row = self.db.execute(
                "SELECT version, yaml FROM workflows WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT version, yaml FROM workflows WHERE name = ? AND version = ?", (name, version)
            ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def workflow_versions(self, name: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT version, sha256, saved_at FROM workflows WHERE name = ? ORDER BY version", (name,)
        ).fetchall()
        return [{"version": r[0], "sha256": r[1], "saved_at": r[2]} for r in rows]

    # --- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        workflow: str,
        version: int,
        inputs: dict[str, Any],
        *,
        session: str = "",
        parent_id: str | None = None,
        forked_from: str | None = None,
        fork_seq: int | None = None,
    ) -> None:
        now = time.time()
        text = dumps(inputs)
        self.db.execute(
            "INSERT INTO runs (id, workflow, version, status, session, inputs, parent_id, forked_from, "
            "fork_seq, created, updated, bytes) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, workflow, version, session, text, parent_id, forked_from, fork_seq, now, now, len(text)),
        )

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = time.time()
        out = dumps(outputs) if outputs is not None else None
        self.db.execute(
            "UPDATE runs SET status = ?, outputs = COALESCE(?, outputs), error = ?, updated = ?, "
            "finished = CASE WHEN ? IN ('succeeded', 'failed', 'cancelled') THEN ? ELSE finished END "
            "WHERE id = ?",
            (status, out, error, now, status, now, run_id),
        )
        if status not in ACTIVE:
            self._recount(run_id)

    def _recount(self, run_id: str) -> None:
        """Fold the run's checkpoint rows into its `steps` and `bytes` columns."""
        self.db.execute(
            "UPDATE runs SET steps = (SELECT COUNT(*) FROM steps WHERE run_id = ?1), "
            "bytes = LENGTH(inputs) + COALESCE(LENGTH(outputs), 0) + COALESCE(LENGTH(error), 0) + "
            "(SELECT COALESCE(SUM(LENGTH(inputs) + LENGTH(outputs) + LENGTH(var_updates) + "
            "COALESCE(LENGTH(error), 0)), 0) FROM steps WHERE run_id = ?1) WHERE id = ?1",
            (run_id,),
        )

    def record_step(self, run_id: str, step: StepRecord) -> int:
        """Checkpoint one completed node (one committed row); returns the bytes written."""
        inputs, outputs, updates = dumps(step.inputs), dumps(step.outputs), dumps(step.var_updates)
        size = len(inputs) + len(outputs) + len(updates) + len(step.error or "")
        # One autocommitted INSERT per checkpoint; the run's step and byte counters are summed
        # from these rows when the run ends (set_status), so no second page is rewritten here.
        self.db.execute(
                "INSERT INTO steps (run_id, seq, node, trigger, status, branch, inputs, outputs, "
                "var_updates, error, started, finished, attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id, step.seq, step.node, step.trigger, step.status, step.branch, inputs, outputs,
                    updates, step.error, step.started, step.finished, step.attempts,
                ),
            )  # fmt: skip
        return size

    def steps(self, run_id: str, *, upto: int | None = None) -> list[StepRecord]:
        query = (
            "SELECT seq, node, trigger, status, branch, inputs, outputs, var_updates, error, started, "
            "finished, attempts FROM steps WHERE run_id = ?"
        )
        args: tuple[Any, ...] = (run_id,)
        if upto is not None:
            query += " AND seq <= ?"
            args = (run_id, upto)
        rows = self.db.execute(query + " ORDER BY seq", args).fetchall()
        return [_step(r) for r in rows]

    def run(self, run_id: str) -> RunRecord | None:
        row = self.db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run(row) if row else None

    def runs(
        self,
        *,
        workflow: str | None = None,
        status: str | None = None,
        session: str | None = None,
        parent_id: str | None = None,
        limit: int = 50,
        before: float | None = None,
        since: float | None = None,
    ) -> list[RunRecord]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("workflow", workflow), ("status", status), ("session", session)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if parent_id is not None:
            where.append("parent_id = ?")
            args.append(parent_id)
        if before is not None:
            where.append("created < ?")
            args.append(before)
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs {clause} ORDER BY created DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [_run(r) for r in rows]

    def mark_interrupted(self) -> list[str]:
        """At start-up: runs still marked active were cut off by a crash; say so (and expire
        their gates). They can be resumed from their last completed node."""
        ids = [r[0] for r in self.db.execute("SELECT id FROM runs WHERE status IN ('running', 'waiting')")]
        for run_id in ids:
            self._recount(run_id)
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "UPDATE runs SET status = 'interrupted', updated = ? WHERE status IN ('running', 'waiting')",
                (now,),
            )
            self.db.execute(
                "UPDATE gates SET status = 'expired', decided = ?, reason = 'corral restarted' "
                "WHERE status = 'pending'",
                (now,),
            )
        return ids

    def truncate_steps(self, run_id: str, after_seq: int) -> None:
        self.db.execute("DELETE FROM steps WHERE run_id = ? AND seq > ?", (run_id, after_seq))

    def enforce_retention(self, max_runs: int, max_bytes: int) -> int:
        """Delete the oldest finished runs (with their steps and gates) beyond either limit."""
        rows = self.db.execute(
            "SELECT id, bytes FROM runs WHERE status NOT IN ('running', 'waiting') ORDER BY created DESC"
        ).fetchall()
        active_bytes = self.db.execute(
            "SELECT COALESCE(SUM(bytes), 0) FROM runs WHERE status IN ('running', 'waiting')"
        ).fetchone()[0]
        total, doomed = int(active_bytes), []
        for index, (run_id, size) in enumerate(rows):
            total += int(size)
            if index >= max_runs or total > max_bytes:
                doomed.append(run_id)
        if doomed:
            with self.db:
                self.db.execute("BEGIN")
                for chunk in range(0, len(doomed), 500):
                    part = doomed[chunk : chunk + 500]
                    marks = ",".join("?" * len(part))
                    for table, column in (("steps", "run_id"), ("gates", "run_id"), ("runs", "id")):
                        self.db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", part)
        return len(doomed)

    def total_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM runs").fetchone()[0])

    # --- gates --------------------------------------------------------------------------------

    def add_gate(
        self, gate_id: str, run_id: str, node: str, title: str, details: Any, expires: float
    ) -> None:
        self.db.execute(
            "INSERT INTO gates (id, run_id, node, title, details, status, created, expires) "
            "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (gate_id, run_id, node, title, dumps(details), time.time(), expires),
        )

    def resolve_gate(self, gate_id: str, status: str, by: str, reason: str) -> None:
        self.db.execute(
            "UPDATE gates SET status = ?, decided = ?, decided_by = ?, reason = ? WHERE id = ?",
            (status, time.time(), by, reason, gate_id),
        )

    def gates(self, *, status: str | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if run_id is not None:
            where.append("run_id = ?")
            args.append(run_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.execute(
            "SELECT id, run_id, node, title, details, status, created, expires, decided, decided_by, reason "
            f"FROM gates {clause} ORDER BY created",
            args,
        ).fetchall()
        keys = ("id", "run_id", "node", "title", "details", "status", "created", "expires", "decided")
        out = []
        for row in rows:
            item = dict(zip((*keys, "decided_by", "reason"), row, strict=True))
            item["details"] = json.loads(item["details"])
            out.append(item)
        return out


_RUN_COLUMNS = (
    "id, workflow, version, status, session, inputs, outputs, error, parent_id, forked_from, fork_seq, "
    "created, updated, finished, steps, bytes"
)


def _step(r: tuple[Any, ...]) -> StepRecord:
    return StepRecord(
        r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), json.loads(r[6]), json.loads(r[7]),
        r[8], r[9], r[10], r[11],
    )  # fmt: skip


def _run(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        row[0], row[1], row[2], row[3], row[4], json.loads(row[5]),
        json.loads(row[6]) if row[6] else None, row[7], row[8], row[9], row[10], row[11], row[12],
        row[13], row[14], row[15],
    )  # fmt: skip
