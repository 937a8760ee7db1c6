"""Adaptation: a "novel" failure becomes a test case of the reflection suite (its diagnostics and
the expected outcome in the train split, a paraphrase in validation), then a small evolution
campaign on the reflection prompt; the result is promoted only if it passes the new case and does
not regress on held-out. Every step is recorded (incident -> case -> campaign -> promotion or
refusal) in $CORRAL_HOME/supervisor/adaptation/<incident>.json, so a run cut off midway resumes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, Field

from corral.agent.llm import LLMClient
from corral.paths import atomic_write_text
from corral.supervisor.incidents import Incident, IncidentStore
from corral.supervisor.prompts import ROLE
from corral.supervisor.settings import AdaptationConfig
from corral.tasks import TaskOwner

if TYPE_CHECKING:
    from corral.agent.service import AgentService

log = logging.getLogger("corral.supervisor")

SUITE = "reflection"
Stage = Literal["case_written", "campaign_running", "promoted", "refused", "failed"]
DONE: frozenset[str] = frozenset({"promoted", "refused", "failed"})
_STOPWORDS = frozenset("error errors failed fatal while from with that this into unknown could".split())


class Record(BaseModel):
    incident: str
    stage: Stage = "case_written"
    cases: dict[str, str] = Field(default_factory=dict)  # case id -> file
    campaign: dict[str, Any] = Field(default_factory=dict)
    promotion: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)

    def note(self, stage: Stage, **detail: Any) -> None:
        self.stage = stage
        self.history.append({"time": time.time(), "stage": stage, **detail})


def keyword(incident: Incident) -> str:
    """The most telling word of the failure, which the expected answer's description must name
    ("novel" alone would be a check a guess passes): from its last error-looking log line, the
    first word the reflection's own description also used, else that line's longest word."""
    lines = [line for line in incident.bundle.log_tail.splitlines() if line.strip()]
    wanted = [line for line in lines if re.search(r"error|fail|fatal|abort|panic", line, re.I)] or lines
    described = str((incident.action or {}).get("description", "")).lower()
    for line in reversed(wanted):
        found: list[str] = re.findall(r"[A-Za-z][A-Za-z_]{4,}", line)
        words = [w.lower() for w in found if w.lower() not in _STOPWORDS]
        shared = [w for w in words if w in described]
        if shared:
            return shared[0]
        if words:
            return max(words, key=len)
    return (incident.bundle.signal or "exit").lower()


def paraphrase(text: str) -> str:
    """The same failure in other words (the validation twin): labels reworded, lines reordered,
    the log kept, so a prompt that only memorised the train case's layout does not pass it."""
    swaps = {
        "target:": "replica:",
        "ended:": "stopped with:",
        "crashes in window:": "recent crashes:",
        "memory:": "ram:",
        "context per slot:": "context tokens per slot:",
        "log tail:": "last log lines:",
    }
    head, _, tail = text.partition("\nlog tail:")
    lines = head.splitlines()
    for index, line in enumerate(lines):
        for old, new in swaps.items():
            if line.startswith(old):
                lines[index] = new + line[len(old) :]
    lines = lines[1:] + lines[:1]  # the target last
    out = "\n".join(lines)
    return out + ("\nlast log lines:" + tail if tail else "")


def case_files(incident: Incident) -> dict[str, dict[str, Any]]:
    """The train case and its validation paraphrase for a novel incident."""
    word = keyword(incident)
    diagnostics = incident.bundle.summary()
    note = (
        f"from incident {incident.id} ({incident.kind} on {incident.target}); expect: novel, naming {word!r}"
    )
    expect = [{"action": "novel"}, {"contains": word}]
    base = f"novel-{incident.id}"
    train = {
        "id": base,
        "split": "train",
        "input": {"diagnostics": diagnostics},
        "expect": expect,
        "note": note,
    }
    twin = {"diagnostics": paraphrase(diagnostics)}
    validation = {"id": f"{base}-para", "split": "validation", "input": twin, "expect": expect,
                  "note": note + " (paraphrase)"}  # fmt: skip
    return {base: train, f"{base}-para": validation}


class AdaptationManager:
    def __init__(
        self,
        home: Path,
        settings: AdaptationConfig,
        agent: AgentService | None = None,
        *,
        llm: LLMClient | None = None,
        store: IncidentStore | None = None,
    ) -> None:
        self.home = Path(home)
        self.settings = settings
        self.agent = agent
        self._llm = llm
        self.store = store or IncidentStore(self.home / "supervisor" / "incidents")
        self.records = self.home / "supervisor" / "adaptation"
        self._lock = asyncio.Lock()  # one campaign at a time: old PCs have few cores

    @property
    def llm(self) -> LLMClient | None:
        return self._llm or (self.agent.llm if self.agent is not None else None)

    @property
    def suite_dir(self) -> Path:
        return self.home / "evolve" / "suites" / f"{SUITE}.d"

    def record(self, incident_id: str) -> Record | None:
        path = self.records / f"{incident_id}.json"
        try:
            return Record.model_validate_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def save(self, record: Record) -> None:
        atomic_write_text(self.records / f"{record.incident}.json", record.model_dump_json(indent=1))
        try:  # mirror the summary into the incident, which the UI shows
            incident = self.store.get(record.incident)
        except KeyError:
            return
        incident.adaptation = {
            "stage": record.stage,
            "cases": list(record.cases),
            "campaign": record.campaign,
            "promotion": record.promotion,
        }
        if record.stage in DONE and incident.status == "adapting":
            incident.status = "recorded"
        incident.note(f"adaptation_{record.stage}")
        self.store.save(incident)

    def write_cases(self, incident: Incident) -> Record:
        """Write the two case files (atomically; an existing one is kept) and record them."""
        record = self.record(incident.id) or Record(incident=incident.id)
        for case_id, case in case_files(incident).items():
            path = self.suite_dir / f"{case_id}.yaml"
            if not path.exists():
                atomic_write_text(path, yaml.safe_dump(case, sort_keys=False, width=100))
            record.cases[case_id] = str(path)
        record.note("case_written", cases=list(record.cases))
        self.save(record)
        return record

    def start(self, incident: Incident, tasks: TaskOwner) -> None:
        record = self.write_cases(incident)
        tasks.spawn(self.run(record), name=f"adapt-{incident.id}")

    def resume(self, tasks: TaskOwner) -> list[str]:
        """At start: adaptations cut off before their end run again (the campaign continues
        where the archive says it stopped)."""
        if not self.records.is_dir():
            return []
        resumed = []
        for path in sorted(self.records.glob("*.json")):
            try:
                record = Record.model_validate_json(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                log.warning("skipping unreadable adaptation record %s: %s", path.name, exc)
                continue
            if record.stage not in DONE:
                record.history.append({"time": time.time(), "stage": record.stage, "resumed": True})
                tasks.spawn(self.run(record), name=f"adapt-{record.incident}")
                resumed.append(record.incident)
        return resumed

    async def run(self, record: Record) -> Record:
        """Campaign, then promotion or its refusal; a failure is recorded, never raised. With no
        model given (no agent: the CLI, a test), the models of this home's corral.yaml are
        started for the campaign's duration (corral.evolve.host)."""
        async with self._lock:
            try:
                if self.llm is not None:
                    await self._campaign(record, self.llm)
                else:
                    from corral.evolve.host import local_llm

                    async with local_llm(self.home) as started:
                        await self._campaign(record, started)
            except asyncio.CancelledError:
                record.history.append({"time": time.time(), "stage": record.stage, "interrupted": True})
                self.save(record)
                raise
            except Exception as exc:  # a broken campaign is recorded; the incident stays readable
                log.exception("adaptation for incident %s failed", record.incident)
                record.note("failed", reason=f"{type(exc).__name__}: {exc}")
            self.save(record)
            return record

    async def _campaign(self, record: Record, llm: LLMClient) -> None:
        from corral.evolve.archive import Archive, PromotionRefused
        from corral.evolve.campaign import evaluate_split, run_campaign
        from corral.evolve.evaluate import Budget

        train_case = next(c for c in record.cases if not c.endswith("-para"))
        record.note(
            "campaign_running",
            generations=self.settings.generations,
            max_metric_calls=self.settings.max_metric_calls,
        )
        self.save(record)
        result = await run_campaign(
            self.home,
            SUITE,
            generations=self.settings.generations,
            selection=self.settings.selection,
            budget=Budget(max_metric_calls=self.settings.max_metric_calls),
            llm=llm,
            minibatch=self.settings.minibatch,
        )
        record.campaign = {k: v for k, v in result.as_dict().items() if k != "scores"}
        if not result.improved:
            record.promotion = {"promoted": False, "reason": "no variant beat the current prompt"}
            record.note("refused", campaign=result.campaign, reason=record.promotion["reason"])
            return
        # the required case must have been scored: the campaign's minibatch may have missed it
        await evaluate_split(self.home, SUITE, [result.best], "train", llm=llm)
        archive = Archive(self.home)
        try:
            archive.promote(
                result.best, require_case_ids=[train_case], reason=f"adaptation to incident {record.incident}"
            )
        except PromotionRefused as exc:
            record.promotion = {"promoted": False, "variant": result.best, "reason": exc.message}
            record.note("refused", variant=result.best, reason=exc.message)
        else:
            record.promotion = {"promoted": True, "variant": result.best, "role": ROLE}
            record.note("promoted", variant=result.best)
        finally:
            archive.close()
