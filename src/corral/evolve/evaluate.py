"""Evaluation: runs a suite's cases through the real agent workflow with a candidate's prompts as
run overrides (nothing is promoted), scores them with the checks, and meters and caches every
LLM call. The evaluator's source and the suite's content are hashed into each score."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.agent.llm import LLMClient, LLMRequest, LLMResult, Route, TokenSink, ToolCall
from corral.agent.nodes.llm import parse_json
from corral.agent.service import AgentService
from corral.agent.settings import AgentConfig
from corral.errors import CorralError
from corral.evolve import checks
from corral.evolve.archive import CaseScore
from corral.evolve.suites import Case, Suite
from corral.paths import atomic_write_text

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"pass": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["pass", "reason"],
}


def evaluator_hash() -> str:
    """A hash of the evaluator's code (this module and the checks)."""
    digest = hashlib.sha256()
    for path in sorted([Path(__file__), Path(checks.__file__)]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class Budget:
    """Limits of one campaign; None is unlimited. Metric calls are case evaluations."""

    max_metric_calls: int | None = None
    max_tokens: int | None = None


class BudgetSpent(Exception):
    """The campaign's budget is used up; the campaign stops cleanly."""


@dataclass
class Meter:
    calls: int = 0
    tokens: int = 0
    cached: int = 0
    experts: set[str] = field(default_factory=set)


def estimate_tokens(request: LLMRequest, result: LLMResult) -> int:
    total = result.usage.get("total_tokens")
    if total:
        return int(total)
    chars = sum(len(str(m.get("content") or "")) for m in request.messages) + len(result.text)
    return max(1, chars // 4)


class MeteredLLM:
    """Counts calls and tokens; with a cache directory, answers repeated requests (same model,
    messages and parameters) from disk, which costs no call and makes evaluation repeatable."""

    def __init__(self, llm: LLMClient, cache_dir: Path | None = None, meter: Meter | None = None) -> None:
        self.llm = llm
        self.cache_dir = cache_dir
        self.meter = meter or Meter()

    def _key(self, request: LLMRequest) -> str:
        body = {
            "model": request.model, "messages": request.messages, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "stop": request.stop, "json_schema": request.json_schema,
            "grammar": request.grammar, "tools": request.tools, "extra": request.extra,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()

    async def complete(self, request: LLMRequest, on_token: TokenSink | None = None) -> LLMResult:
        path = None
        if self.cache_dir is not None:
            key = self._key(request)
            path = self.cache_dir / key[:2] / f"{key}.json"
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    calls = [ToolCall(**c) for c in data.pop("tool_calls", [])]
                    result = LLMResult(**data, tool_calls=calls)
                except (ValueError, TypeError):
                    result = None  # a damaged entry is recomputed
                if result is not None:
                    self.meter.cached += 1
                    if on_token is not None and result.text:
                        on_token(result.text)
                    return result
        result = await self.llm.complete(request, on_token)
        self.meter.calls += 1
        self.meter.tokens += estimate_tokens(request, result)
        if result.expert:
            self.meter.experts.add(result.expert)
        if path is not None:
            atomic_write_text(path, json.dumps(asdict(result)))
        return result

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        return await self.llm.embed(texts, model)

    def route(self, text: str, experts: Sequence[str] | None = None) -> Route:
        return self.llm.route(text, experts)


@dataclass(frozen=True)
class Outcome:
    score: float
    passed: bool
    output: str
    feedback: str
    calls: int
    tokens: int
    run_id: str


class Evaluator:
    """Runs cases through an in-process AgentService (no memory, its own run history under
    `evolve/agent/`); use as an async context manager."""

    def __init__(
        self, home: Path, llm: LLMClient, *, settings: AgentConfig | None = None, cache: bool = True
    ) -> None:
        self.home = Path(home)
        self.meter = Meter()
        cache_dir = self.home / "evolve" / "cache" if cache else None
        self.llm = MeteredLLM(llm, cache_dir, self.meter)
        self.hash = evaluator_hash()
        self.service = AgentService(
            settings or AgentConfig(), self.home / "evolve" / "agent", self.llm,
            workflows_dir=self.home / "workflows", memory=False,
        )  # fmt: skip
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Evaluator:
        await self.service.start()
        self._stack.push_async_callback(self.service.stop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run_case(self, suite: Suite, case: Case, prompts: Mapping[str, str]) -> Outcome:
        calls, tokens = self.meter.calls, self.meter.tokens
        output, run_id, problem = "", "", ""
        tool_calls: list[dict[str, Any]] = []
        try:
            handle = self.service.start_run(suite.workflow, dict(case.input), prompts=dict(prompts))
            run_id = handle.run_id
            record = await handle.result()
            outputs = record.outputs or {}
            output = pick_output(outputs, suite.output)
            if record.status != "succeeded":
                problem = f"the run {record.status}: {record.error}"
            tool_calls = [
                {"tool": s.outputs.get("tool"), "arguments": s.outputs.get("arguments")}
                for s in self.service.store.steps(run_id)
                if s.branch == "tool" and isinstance(s.outputs.get("tool"), str)
            ]
        except CorralError as exc:  # the case's input does not fit the workflow
            problem = f"the case could not run: {exc.message}"
        verdicts = [await checks.check(e, output, tool_calls, self._judge) for e in case.expect]
        held = sum(v.ok for v in verdicts)
        feedback = "; ".join(
            ([problem] if problem else []) + [("ok: " if v.ok else "FAIL: ") + v.detail for v in verdicts]
        )
        return Outcome(
            held / len(verdicts), held == len(verdicts), output[:4000], feedback,
            self.meter.calls - calls, self.meter.tokens - tokens, run_id,
        )  # fmt: skip

    async def _judge(self, rubric: str, output: str) -> tuple[bool, str]:
        request = LLMRequest(
            [
                {"role": "system", "content": "You grade an answer against a rubric. Reply in JSON."},
                {"role": "user", "content": f"Rubric: {rubric}\n\nAnswer:\n{output}\n\nDoes it pass?"},
            ],
            max_tokens=96, temperature=0.0, json_schema=JUDGE_SCHEMA,
        )  # fmt: skip
        result = await self.llm.complete(request)
        value = parse_json(result.text)
        if not isinstance(value, dict) or not isinstance(value.get("pass"), bool):
            return False, f"the judge's reply was not a verdict ({result.text[:80]!r})"
        return bool(value["pass"]), str(value.get("reason", ""))[:200]

    def score(self, variant: str, suite: Suite, case: Case, outcome: Outcome, campaign: str) -> CaseScore:
        return CaseScore(
            variant, suite.name, case.split, case.id, outcome.score, outcome.passed, outcome.output,
            outcome.feedback, outcome.calls, outcome.tokens, outcome.run_id, self.hash, suite.hash,
            campaign, time.time(),
        )  # fmt: skip


def pick_output(outputs: Mapping[str, Any], name: str | None) -> str:
    """The checked text: the named output, else `answer`, else the only output, else all as JSON."""
    if name is not None:
        value = outputs.get(name)
    elif "answer" in outputs:
        value = outputs["answer"]
    elif len(outputs) == 1:
        value = next(iter(outputs.values()))
    else:
        value = dict(outputs)
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, default=str)
