"""Campaigns: generations of select -> reflect -> staged evaluation over one suite, recorded in the
archive as they happen, so a campaign cut off midway continues where it stopped.

A generation: choose a parent among the candidates (variants that reached validation); score it on
a small train minibatch; let the mutating model revise its prompt from the failures; score the
child on the same minibatch; only a child at least as good (and not failing the whole minibatch)
goes on to validation and becomes a candidate. At the end the best candidate and the baseline
(the promoted or seed prompt) are scored on the held-out split, which exists only for promotion.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.agent.llm import LLMClient
from corral.agent.settings import AgentConfig
from corral.evolve.archive import Archive, CaseScore, Variant, mean
from corral.evolve.evaluate import Budget, BudgetSpent, Evaluator
from corral.evolve.mutate import Failure, describe_input, reflect
from corral.evolve.roles import seed as role_seed
from corral.evolve.selection import Candidate, check_method, select
from corral.evolve.suites import Case, Suite, load_suite

log = logging.getLogger("corral.evolve")

__all__ = ["Budget", "BudgetSpent", "CampaignResult", "run_campaign"]


@dataclass
class CampaignResult:
    campaign: str
    suite: str
    role: str
    selection: str
    seed: int
    generations: int  # generations completed (in this and earlier, interrupted, calls)
    root: str  # the baseline variant: the promoted prompt, else the seed
    best: str  # the best candidate on validation (the root when no child beat it)
    scores: dict[str, float]  # candidate id -> mean validation score
    heldout: dict[str, float]  # root and best -> mean held-out score, when evaluated
    children: list[str]  # every variant this campaign made
    failed_attempts: int
    stopped: str  # "done" or "budget"
    metric_calls: int
    llm_calls: int
    tokens: int

    @property
    def improved(self) -> bool:
        return self.best != self.root

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "improved": self.improved}


@dataclass
class _Settings:
    minibatch: int
    max_prompt_tokens: int
    mutation_model: str
    budget: Budget
    heldout: bool


def campaign_id(suite: Suite, root: Variant, selection: str, seed: int) -> str:
    """Same suite content, baseline, method and seed: the same campaign (so it resumes)."""
    digest = hashlib.sha256(f"{suite.hash}\0{root.id}".encode()).hexdigest()[:8]
    return f"c_{suite.name}_{selection}_s{seed}_{digest}"


def baseline(archive: Archive, suite: Suite) -> Variant:
    """The campaign's root: the promoted variant of the suite's role, else the seed prompt."""
    return archive.promoted(suite.role) or archive.ensure_root(suite.name, suite.role, role_seed(suite.role))


async def run_campaign(
    home: Path,
    suite: str,
    *,
    generations: int,
    selection: str = "dgm",
    budget: Budget | None = None,
    seed: int = 0,
    llm: LLMClient | None = None,
    minibatch: int = 3,
    max_prompt_tokens: int = 256,
    mutation_model: str = "auto",
    heldout: bool = True,
    agent_settings: AgentConfig | None = None,
) -> CampaignResult:
    """Run (or continue) a campaign to `generations` generations. Without `llm`, the models of
    this home's corral.yaml are started in-process for its duration (corral.evolve.host)."""
    check_method(selection)
    if generations < 0:
        raise ValueError("generations must be 0 or more")
    if llm is None:
        from corral.evolve.host import local_llm

        async with local_llm(home) as started:
            return await run_campaign(
                home, suite, generations=generations, selection=selection, budget=budget, seed=seed,
                llm=started, minibatch=minibatch, max_prompt_tokens=max_prompt_tokens,
                mutation_model=mutation_model, heldout=heldout, agent_settings=agent_settings,
            )  # fmt: skip
    archive = Archive(home)
    try:
        loaded = load_suite(home, suite)
        settings = _Settings(minibatch, max_prompt_tokens, mutation_model, budget or Budget(), heldout)
        async with Evaluator(home, llm, settings=agent_settings) as evaluator:
            return await _Campaign(archive, loaded, evaluator, selection, seed, settings).run(generations)
    finally:
        archive.close()


class _Campaign:
    def __init__(
        self,
        archive: Archive,
        suite: Suite,
        evaluator: Evaluator,
        method: str,
        seed: int,
        settings: _Settings,
    ) -> None:
        self.archive = archive
        self.suite = suite
        self.evaluator = evaluator
        self.method = method
        self.seed = seed
        self.settings = settings
        self.root = baseline(archive, suite)
        self.id = campaign_id(suite, self.root, method, seed)

    # --- budget -------------------------------------------------------------------------------

    def _spend(self) -> tuple[int, int, int]:
        return self.archive.spend(self.id)

    def _check_budget(self) -> None:
        metric, _, tokens = self._spend()
        budget = self.settings.budget
        if budget.max_metric_calls is not None and metric >= budget.max_metric_calls:
            raise BudgetSpent(f"{metric} metric calls of {budget.max_metric_calls} spent")
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            raise BudgetSpent(f"{tokens} tokens of {budget.max_tokens} spent")

    # --- evaluation ---------------------------------------------------------------------------

    async def evaluate(self, variant: Variant, cases: Sequence[Case]) -> dict[str, CaseScore]:
        """Scores on `cases`, running only those this evaluator has not scored yet."""
        known = self.archive.scores(variant.id, self.suite.name)
        out: dict[str, CaseScore] = {}
        for case in cases:
            have = known.get(case.id)
            if have is not None and have.evaluator_hash == self.evaluator.hash:
                out[case.id] = have
                continue
            self._check_budget()
            prompts = {**variant.prompts}
            outcome = await self.evaluator.run_case(self.suite, case, prompts)
            score = self.evaluator.score(variant.id, self.suite, case, outcome, self.id)
            self.archive.record_score(score)
            out[case.id] = score
        return out

    def candidates(self) -> list[Candidate]:
        validation = self.suite.split("validation") or self.suite.split("train")
        ids = {c.id for c in validation}
        out = []
        for variant in [self.root, *self._children()]:
            scores = self.archive.scores(variant.id, self.suite.name)
            if not ids or not ids <= set(scores):
                continue  # never reached validation (rejected on its minibatch, or cut off)
            vector = {c: s.score for c, s in scores.items() if s.split != "heldout"}
            out.append(
                Candidate(
                    variant.id, mean(scores[i].score for i in ids), self.archive.children(variant.id), vector
                )
            )
        return out

    def _children(self) -> list[Variant]:
        return [v for v in self.archive.variants(self.suite.name) if v.campaign == self.id]

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, generations: int) -> CampaignResult:
        done = {e.generation for e in self.archive.events(self.id) if e.kind == "generation"}
        stopped = "done"
        try:
            if 0 not in done:
                await self.evaluate(self.root, self.suite.split("validation") or self.suite.split("train"))
                self.archive.record_event(self.id, 0, "generation", variant=self.root.id, outcome="root")
            for generation in range(1, generations + 1):
                if generation not in done:
                    await self.generation(generation)
        except BudgetSpent as exc:
            stopped = "budget"
            self.archive.record_event(self.id, len(done), "stopped", reason=str(exc))
            log.info("campaign %s stopped: %s", self.id, exc)
        candidates = self.candidates()
        scores = {c.id: c.score for c in candidates}
        best = max(candidates, key=lambda c: (c.score, c.id == self.root.id), default=None)
        best_id = best.id if best is not None else self.root.id
        heldout_scores: dict[str, float] = {}
        cases = self.suite.split("heldout")
        if self.settings.heldout and best_id != self.root.id and cases:
            try:
                for variant_id in (self.root.id, best_id):
                    got = await self.evaluate(self.archive.variant(variant_id), cases)
                    heldout_scores[variant_id] = mean(s.score for s in got.values())
            except BudgetSpent as exc:
                stopped = "budget"
                log.info("campaign %s: no budget left for held-out cases: %s", self.id, exc)
        events = self.archive.events(self.id)
        completed = {e.generation for e in events if e.kind == "generation"} - {0}
        metric, calls, tokens = self._spend()
        return CampaignResult(
            self.id, self.suite.name, self.suite.role, self.method, self.seed, len(completed), self.root.id,
            best_id, scores, heldout_scores, [v.id for v in self._children()],
            sum(1 for e in events if e.kind == "generation" and e.data.get("outcome") == "failed"),
            stopped, metric, calls, tokens,
        )  # fmt: skip

    async def generation(self, generation: int) -> None:
        pick = random.Random(f"{self.id}:{generation}:select")
        batch_rng = random.Random(f"{self.id}:{generation}:batch")
        train = self.suite.split("train")
        batch = batch_rng.sample(train, min(self.settings.minibatch, len(train)))
        child = self.archive.campaign_variant(self.id, generation)
        if child is None:
            candidates = self.candidates() or [Candidate(self.root.id, 0.0)]
            parent = self.archive.variant(select(self.method, candidates, pick).id)
            before = await self.evaluate(parent, batch)
            failures = [
                Failure(c.id, describe_input(c.input), before[c.id].output, before[c.id].feedback)
                for c in batch
                if not before[c.id].passed
            ]
            if not failures:
                self.archive.record_event(
                    self.id, generation, "generation", variant=parent.id, outcome="perfect",
                    reason="the parent passes the whole minibatch; nothing to reflect on",
                )  # fmt: skip
                return
            self._check_budget()
            mutation = await reflect(
                self.evaluator.llm, self.suite.role, parent.prompts.get(self.suite.role, ""), failures,
                max_prompt_tokens=self.settings.max_prompt_tokens, model=self.settings.mutation_model,
                seed=pick.randrange(2**31),
            )  # fmt: skip
            self.archive.record_event(
                self.id, generation, "mutation", variant=parent.id, calls=mutation.calls,
                tokens=mutation.tokens, error=mutation.error, raw=mutation.raw,
            )  # fmt: skip
            if mutation.prompt is None:
                self.archive.record_event(
                    self.id,
                    generation,
                    "generation",
                    variant=parent.id,
                    outcome="failed",
                    reason=mutation.error,
                )
                return
            child = self.archive.add_variant(
                suite=self.suite.name, role=self.suite.role,
                prompts={**parent.prompts, self.suite.role: mutation.prompt}, parent_ids=[parent.id],
                rationale=mutation.rationale, selection=self.method, seed=self.seed,
                models=sorted(self.evaluator.meter.experts), campaign=self.id, generation=generation,
                calls=mutation.calls, tokens=mutation.tokens,
            )  # fmt: skip
        parent = self.archive.variant(child.parent_ids[0])
        before = await self.evaluate(parent, batch)
        after = await self.evaluate(child, batch)
        parent_mean = mean(s.score for s in before.values())
        child_mean = mean(s.score for s in after.values())
        if child_mean < parent_mean or child_mean == 0:  # worse, or no better than nothing
            self.archive.record_event(
                self.id, generation, "generation", variant=child.id, outcome="rejected",
                minibatch=[c.id for c in batch], parent_score=parent_mean, child_score=child_mean,
            )  # fmt: skip
            return
        validation = self.suite.split("validation") or self.suite.split("train")
        got = await self.evaluate(child, validation)
        self.archive.record_event(
            self.id, generation, "generation", variant=child.id, outcome="accepted",
            minibatch=[c.id for c in batch], parent_score=parent_mean, child_score=child_mean,
            validation=mean(s.score for s in got.values()),
        )  # fmt: skip


async def evaluate_split(
    home: Path, suite: str, variant_ids: Sequence[str], split: str, *, llm: LLMClient
) -> dict[str, float]:
    """Score variants on one split of a suite outside any campaign (e.g. held-out before a
    promotion); cases already scored by this evaluator are not run again."""
    archive = Archive(home)
    try:
        loaded = load_suite(home, suite)
        async with Evaluator(home, llm) as evaluator:
            runner = _Campaign(archive, loaded, evaluator, "dgm", 0, _Settings(0, 0, "auto", Budget(), False))
            runner.id = ""  # not a campaign's spend
            out = {}
            for variant_id in variant_ids:
                got = await runner.evaluate(archive.variant(variant_id), loaded.split(split))
                out[variant_id] = mean(s.score for s in got.values())
            return out
    finally:
        archive.close()


def generations_done(home: Path, suite: str, selection: str = "dgm", seed: int = 0) -> int:
    """How many generations the campaign for these arguments has completed (0 when new)."""
    archive = Archive(home)
    try:
        loaded = load_suite(home, suite)
        cid = campaign_id(loaded, baseline(archive, loaded), check_method(selection), seed)
        return len({e.generation for e in archive.events(cid) if e.kind == "generation"} - {0})
    finally:
        archive.close()


def missing_heldout(home: Path, variant_id: str) -> list[str]:
    """The variants (this one and the baseline it must not regress against) that lack a score on
    some held-out case of the variant's suite: what `promote` must evaluate first."""
    archive = Archive(home)
    try:
        variant = archive.variant(variant_id)
        loaded = load_suite(home, variant.suite)
        cases = {c.id for c in loaded.split("heldout")}
        if not cases:
            return []
        base = baseline(archive, loaded)
        out = []
        for vid in dict.fromkeys([variant.id, base.id]):
            have = {c for c, s in archive.scores(vid, loaded.name, "heldout").items()}
            if not cases <= have:
                out.append(vid)
        return out
    finally:
        archive.close()
