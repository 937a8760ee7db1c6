"""The evolution archive: every prompt variant, every evaluation, every campaign event and every
promotion, in one append-only SQLite file (WAL) under `$CORRAL_HOME/evolve/`.

Rows are only ever inserted: triggers refuse UPDATE and DELETE, so a variant, its scores and its
lineage can never be rewritten (by a bug, a crash or a mutation). The promoted pointer is the
replay of the promotion log (promote pushes, rollback pops), mirrored to `promoted.json` (written
atomically) so the agent's PromptBook reads it without opening the database.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BadRequestError, NotFoundError
from corral.paths import atomic_write_text

FORMAT_VERSION = 1

_TABLES = ("variants", "evaluations", "events", "promotions")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS variants (
    id TEXT PRIMARY KEY, suite TEXT NOT NULL, role TEXT NOT NULL, prompts TEXT NOT NULL,
    parent_ids TEXT NOT NULL, diff TEXT NOT NULL, rationale TEXT NOT NULL, selection TEXT NOT NULL,
    seed INTEGER NOT NULL, models TEXT NOT NULL, campaign TEXT NOT NULL, generation INTEGER NOT NULL,
    calls INTEGER NOT NULL, tokens INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, variant TEXT NOT NULL, suite TEXT NOT NULL,
    split TEXT NOT NULL, case_id TEXT NOT NULL, score REAL NOT NULL, passed INTEGER NOT NULL,
    output TEXT NOT NULL, feedback TEXT NOT NULL, calls INTEGER NOT NULL, tokens INTEGER NOT NULL,
    run_id TEXT NOT NULL, evaluator_hash TEXT NOT NULL, suite_hash TEXT NOT NULL,
    campaign TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_variant ON evaluations (variant, suite, case_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, campaign TEXT NOT NULL, generation INTEGER NOT NULL,
    kind TEXT NOT NULL, variant TEXT, data TEXT NOT NULL, created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_campaign ON events (campaign, generation);
CREATE TABLE IF NOT EXISTS promotions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, role TEXT NOT NULL, action TEXT NOT NULL,
    variant TEXT, reason TEXT NOT NULL, created REAL NOT NULL
);
"""


class PromotionRefused(BadRequestError):
    """A promotion that would break a required case or regress on held-out cases."""


@dataclass(frozen=True)
class Variant:
    id: str
    suite: str
    role: str
    prompts: dict[str, str]
    parent_ids: list[str]
    diff: str
    rationale: str
    selection: str
    seed: int
    models: list[str]
    campaign: str
    generation: int
    calls: int
    tokens: int
    created: float

    @property
    def prompt(self) -> str:
        """The prompt of the role this variant evolves."""
        return self.prompts.get(self.role, "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "suite": self.suite, "role": self.role, "prompts": self.prompts,
            "parent_ids": self.parent_ids, "diff": self.diff, "rationale": self.rationale,
            "selection": self.selection, "seed": self.seed, "models": self.models,
            "campaign": self.campaign, "generation": self.generation,
            "cost": {"calls": self.calls, "tokens": self.tokens}, "created": self.created,
        }  # fmt: skip


@dataclass(frozen=True)
class CaseScore:
    variant: str
    suite: str
    split: str
    case_id: str
    score: float
    passed: bool
    output: str
    feedback: str
    calls: int
    tokens: int
    run_id: str
    evaluator_hash: str
    suite_hash: str
    campaign: str
    created: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "split": self.split, "case": self.case_id, "score": self.score, "passed": self.passed,
            "output": self.output, "feedback": self.feedback, "calls": self.calls,
            "tokens": self.tokens, "run_id": self.run_id, "evaluator_hash": self.evaluator_hash,
            "suite_hash": self.suite_hash,
        }  # fmt: skip


@dataclass(frozen=True)
class Event:
    seq: int
    campaign: str
    generation: int
    kind: str
    variant: str | None
    data: dict[str, Any]
    created: float


def unified_diff(before: str, after: str, name: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{name}", f"b/{name}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def root_id(suite: str, role: str, prompt: str) -> str:
    """The seed variant's id is a hash of what it holds, so every campaign on a suite shares it."""
    return "v_" + hashlib.sha256(f"{suite}\0{role}\0{prompt}".encode()).hexdigest()[:12]


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


class Archive:
    """Open (and create) the archive of a corral home; safe to share between threads."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "evolve"
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "archive.sqlite3"
        self.pointer_file = self.root / "promoted.json"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)
            for table in _TABLES:
                for op in ("UPDATE", "DELETE"):
                    self._db.execute(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, 'the evolve archive is append-only'); END"
                    )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT_VERSION),))
            elif int(row[0]) > FORMAT_VERSION:
                raise BadRequestError(
                    f"{self.path} is archive format {row[0]}, newer than this corral's "
                    f"{FORMAT_VERSION}; upgrade corral to read it"
                )

    def close(self) -> None:
        self._db.close()

    # --- variants -----------------------------------------------------------------------------

    def add_variant(
        self,
        *,
        suite: str,
        role: str,
        prompts: Mapping[str, str],
        parent_ids: Sequence[str] = (),
        rationale: str = "",
        selection: str = "",
        seed: int = 0,
        models: Sequence[str] = (),
        campaign: str = "",
        generation: int = 0,
        calls: int = 0,
        tokens: int = 0,
        variant_id: str | None = None,
    ) -> Variant:
        diff = ""
        if parent_ids:
            parent = self.variant(parent_ids[0])
            diff = unified_diff(parent.prompts.get(role, ""), prompts.get(role, ""), role)
        variant = Variant(
            variant_id or "v_" + uuid.uuid4().hex[:12], suite, role, dict(prompts), list(parent_ids),
            diff, rationale, selection, seed, list(models), campaign, generation, calls, tokens, time.time(),
        )  # fmt: skip
        with self._lock:
            self._db.execute(
                "INSERT INTO variants VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    variant.id, suite, role, json.dumps(variant.prompts), json.dumps(variant.parent_ids),
                    diff, rationale, selection, seed, json.dumps(variant.models), campaign, generation,
                    calls, tokens, variant.created,
                ),
            )  # fmt: skip
        return variant

    def ensure_root(self, suite: str, role: str, prompt: str) -> Variant:
        """The seed variant of a suite (one per distinct seed prompt), created on first use."""
        variant_id = root_id(suite, role, prompt)
        existing = self.find(variant_id)
        if existing is not None:
            return existing
        try:
            return self.add_variant(
                suite=suite, role=role, prompts={role: prompt}, rationale="the seed prompt",
                selection="seed", variant_id=variant_id,
            )  # fmt: skip
        except sqlite3.IntegrityError:  # another process made it first
            return self.variant(variant_id)

    def find(self, variant_id: str) -> Variant | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM variants WHERE id = ?", (variant_id,)).fetchone()
        return _variant(row) if row is not None else None

    def variant(self, variant_id: str) -> Variant:
        found = self.find(variant_id)
        if found is None:
            raise NotFoundError(f"no variant {variant_id!r} in the archive; `corral evolve show` lists them")
        return found

    def variants(self, suite: str | None = None) -> list[Variant]:
        query, args = "SELECT * FROM variants", tuple[str, ...]()
        if suite is not None:
            query, args = query + " WHERE suite = ?", (suite,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, id", args).fetchall()
        return [_variant(r) for r in rows]

    def children(self, variant_id: str) -> int:
        with self._lock:
            rows = self._db.execute("SELECT parent_ids FROM variants").fetchall()
        return sum(1 for r in rows if variant_id in json.loads(r[0]))

    def campaign_variant(self, campaign: str, generation: int) -> Variant | None:
        """The child a campaign made in a generation (to resume a generation cut off midway)."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM variants WHERE campaign = ? AND generation = ? AND selection != 'seed'",
                (campaign, generation),
            ).fetchone()
        return _variant(row) if row is not None else None

    # --- evaluations --------------------------------------------------------------------------

    def record_score(self, score: CaseScore) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO evaluations (variant, suite, split, case_id, score, passed, output, feedback, "
                "calls, tokens, run_id, evaluator_hash, suite_hash, campaign, created) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    score.variant, score.suite, score.split, score.case_id, score.score, int(score.passed),
                    score.output, score.feedback, score.calls, score.tokens, score.run_id,
                    score.evaluator_hash, score.suite_hash, score.campaign, score.created,
                ),
            )  # fmt: skip

    def scores(
        self, variant_id: str, suite: str | None = None, split: str | None = None
    ) -> dict[str, CaseScore]:
        """The latest score of a variant on each case (of a suite and split)."""
        query, args = "SELECT * FROM evaluations WHERE variant = ?", [variant_id]
        if suite is not None:
            query += " AND suite = ?"
            args.append(suite)
        if split is not None:
            query += " AND split = ?"
            args.append(split)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return {r["case_id"]: _score(r) for r in rows}

    def spend(self, campaign: str) -> tuple[int, int, int]:
        """(metric calls, LLM calls, tokens) a campaign has spent so far, from its own rows."""
        with self._lock:
            ev = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(calls),0), COALESCE(SUM(tokens),0) FROM evaluations "
                "WHERE campaign = ?",
                (campaign,),
            ).fetchone()
            mu = self._db.execute(
                "SELECT COALESCE(SUM(json_extract(data,'$.calls')),0), "
                "COALESCE(SUM(json_extract(data,'$.tokens')),0) FROM events WHERE campaign = ? "
                "AND kind = 'mutation'",
                (campaign,),
            ).fetchone()
        return int(ev[0]), int(ev[1]) + int(mu[0]), int(ev[2]) + int(mu[1])

    # --- campaign events ----------------------------------------------------------------------

    def record_event(
        self, campaign: str, generation: int, kind: str, *, variant: str | None = None, **data: Any
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO events (campaign, generation, kind, variant, data, created) "
                "VALUES (?,?,?,?,?,?)",
                (campaign, generation, kind, variant, json.dumps(data), time.time()),
            )

    def events(self, campaign: str | None = None) -> list[Event]:
        query, args = "SELECT * FROM events", tuple[str, ...]()
        if campaign is not None:
            query, args = query + " WHERE campaign = ?", (campaign,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        return [
            Event(r["seq"], r["campaign"], r["generation"], r["kind"], r["variant"], json.loads(r["data"]),
                  r["created"])
            for r in rows
        ]  # fmt: skip

    # --- promotion ----------------------------------------------------------------------------

    def promotion_log(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM promotions ORDER BY seq").fetchall()
        return [dict(r) for r in rows]

    def promoted_ids(self) -> dict[str, str]:
        """role -> the promoted variant's id (roles with nothing promoted are absent)."""
        return {role: stack[-1] for role, stack in self._stacks().items() if stack}

    def promoted(self, role: str) -> Variant | None:
        variant_id = self.promoted_ids().get(role)
        return self.variant(variant_id) if variant_id else None

    def _stacks(self) -> dict[str, list[str]]:
        stacks: dict[str, list[str]] = {}
        for row in self.promotion_log():
            stack = stacks.setdefault(row["role"], [])
            if row["action"] == "promote":
                stack.append(row["variant"])
            elif stack:
                stack.pop()
        return stacks

    def promote(self, variant_id: str, *, require_case_ids: Sequence[str] = (), reason: str = "") -> Variant:
        """Point the variant's role at it. Refused (PromotionRefused, saying why) unless it passed
        every case in `require_case_ids` and its mean held-out score is not below the currently
        promoted variant's (or the seed's) on the suite's held-out cases."""
        from corral.evolve.suites import load_suite

        variant = self.variant(variant_id)
        current = self.promoted(variant.role)
        if current is not None and current.id == variant.id:
            raise PromotionRefused(f"{variant.id} is already the promoted {variant.role!r} prompt")
        mine = self.scores(variant.id)
        for case_id in require_case_ids:
            got = mine.get(case_id)
            if got is None:
                raise PromotionRefused(
                    f"{variant.id} was never evaluated on required case {case_id!r}; evaluate it first "
                    f"(`corral evolve promote` runs the evaluation)"
                )
            if not got.passed:
                raise PromotionRefused(
                    f"{variant.id} fails required case {case_id!r} (score {got.score:.2f}: {got.feedback})"
                )
        heldout = [c.id for c in load_suite(self.root.parent, variant.suite).cases if c.split == "heldout"]
        if heldout:
            baseline = current or self.find(root_id(variant.suite, variant.role, _seed(variant.role)))
            ours = self._heldout_mean(variant.id, variant.suite, heldout)
            if baseline is None:
                raise PromotionRefused(
                    f"there is no seed variant for suite {variant.suite!r} to compare held-out scores with; "
                    "run a campaign on the suite first"
                )
            theirs = self._heldout_mean(baseline.id, variant.suite, heldout)
            if ours < theirs:
                raise PromotionRefused(
                    f"{variant.id} regresses on held-out cases of {variant.suite!r}: {ours:.2f} against "
                    f"{theirs:.2f} for {baseline.id} (the {'promoted' if current else 'seed'} prompt)"
                )
        self._log(variant.role, "promote", variant.id, reason)
        return variant

    def _heldout_mean(self, variant_id: str, suite: str, case_ids: list[str]) -> float:
        scores = self.scores(variant_id, suite, "heldout")
        missing = [c for c in case_ids if c not in scores]
        if missing:
            raise PromotionRefused(
                f"{variant_id} has no held-out score on {', '.join(missing)}; held-out cases run only for "
                "promotion: `corral evolve promote` evaluates them, or pass the variant through a campaign"
            )
        return mean(scores[c].score for c in case_ids)

    def rollback(self, role: str | None = None) -> str | None:
        """Move a role's pointer back to what it was before its last promotion (None: the seed).
        With no role, the role of the latest promotion. Returns the variant now promoted."""
        stacks = self._stacks()
        if role is None:
            log = [r for r in self.promotion_log() if stacks.get(r["role"])]
            if not log:
                raise BadRequestError("nothing is promoted, so there is nothing to roll back")
            role = str(log[-1]["role"])
        stack = stacks.get(role) or []
        if not stack:
            raise BadRequestError(f"nothing is promoted for role {role!r}, so there is nothing to roll back")
        self._log(role, "rollback", stack[-1], "rollback")
        return stack[-2] if len(stack) > 1 else None

    def _log(self, role: str, action: str, variant: str | None, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO promotions (role, action, variant, reason, created) VALUES (?,?,?,?,?)",
                (role, action, variant, reason, time.time()),
            )
            self.write_pointer()

    def write_pointer(self) -> None:
        """Mirror the promoted pointers to promoted.json: {role: {variant, prompt}}."""
        pointer = {}
        for role, variant_id in self.promoted_ids().items():
            pointer[role] = {"variant": variant_id, "prompt": self.variant(variant_id).prompts.get(role, "")}
        atomic_write_text(
            self.pointer_file, json.dumps({"format": FORMAT_VERSION, "roles": pointer}, indent=1)
        )


def _seed(role: str) -> str:
    from corral.evolve.roles import seed

    return seed(role)


def _variant(row: sqlite3.Row) -> Variant:
    return Variant(
        row["id"], row["suite"], row["role"], json.loads(row["prompts"]), json.loads(row["parent_ids"]),
        row["diff"], row["rationale"], row["selection"], row["seed"], json.loads(row["models"]),
        row["campaign"], row["generation"], row["calls"], row["tokens"], row["created"],
    )  # fmt: skip


def _score(row: sqlite3.Row) -> CaseScore:
    return CaseScore(
        row["variant"], row["suite"], row["split"], row["case_id"], row["score"], bool(row["passed"]),
        row["output"], row["feedback"], row["calls"], row["tokens"], row["run_id"], row["evaluator_hash"],
        row["suite_hash"], row["campaign"], row["created"],
    )  # fmt: skip
