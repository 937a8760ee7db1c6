"""The self-adaptation loop with real processes: a real llama-server that fails in a way no rule
knows (it refuses an argument) becomes a novel incident; the adaptation manager writes its test
case and paraphrase into the user's reflection suite and runs a small campaign on the reflection
prompt with the bundled model, which records its variants and ends in a promotion or a refusal."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from corral.engine.binaries import locate
from corral.engine.replica import Replica, ReplicaSpec
from corral.evolve.archive import Archive
from corral.evolve.suites import load_suite
from corral.models.catalog import Catalog
from corral.paths import CorralPaths
from corral.supervisor.actions import Novel
from corral.supervisor.adaptation import AdaptationManager
from corral.supervisor.diagnostics import replica_bundle
from corral.supervisor.incidents import Incident, IncidentStore, new_id
from corral.supervisor.settings import AdaptationConfig

pytestmark = pytest.mark.slow

CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    description: general questions
    replicas: 1
    slots: 1
    context: 2048
"""


async def crash_for_real(paths: CorralPaths) -> tuple[ReplicaSpec, int, str]:
    """Start llama-server with an argument it does not know; return its spec, exit code and log."""
    model = Catalog(paths.models).resolve("gemma3-270m")
    spec = replace(ReplicaSpec("general", 0, model, 1, 1024, 1), extra_args=("--frobnicate-the-cache",))
    replica = Replica(spec, locate(paths.engine_libs), paths.logs)
    await replica.start()
    assert replica.process is not None
    returncode = await asyncio.wait_for(replica.process.wait(), 120)
    return spec, returncode, replica.log_tail()


async def test_a_novel_failure_becomes_a_test_case_and_a_recorded_campaign(tmp_path: Path) -> None:
    paths = CorralPaths(tmp_path).ensure()
    paths.config_file.write_text(CONFIG)
    spec, returncode, tail = await crash_for_real(paths)
    assert returncode != 0 and "frobnicate" in tail
    store = IncidentStore(tmp_path / "supervisor" / "incidents")
    novel = Novel(description="llama-server refuses an argument it does not know")
    incident = Incident(
        id=new_id(), kind="repeated_crash", target=spec.name, status="adapting", classified_by="reflection",
        bundle=replica_bundle(spec, returncode, tail, crashes_in_window=3), action=novel.model_dump(),
    )  # fmt: skip
    store.save(incident)

    manager = AdaptationManager(
        tmp_path, AdaptationConfig(generations=1, max_metric_calls=8, minibatch=2), store=store
    )
    record = manager.write_cases(incident)
    train, para = (
        tmp_path / "evolve" / "suites" / "reflection.d" / f"novel-{incident.id}{s}.yaml"
        for s in ("", "-para")
    )
    case = yaml.safe_load(train.read_text())
    assert case["split"] == "train" and case["expect"] == [{"action": "novel"}, {"contains": "argument"}]
    assert "frobnicate" in case["input"]["diagnostics"]
    assert yaml.safe_load(para.read_text())["split"] == "validation"
    suite = load_suite(tmp_path, "reflection")
    assert {f"novel-{incident.id}", f"novel-{incident.id}-para"} <= {c.id for c in suite.cases}

    record = await manager.run(record)  # starts the bundled model from corral.yaml for the campaign
    assert record.stage in ("promoted", "refused"), record.history
    campaign = record.campaign
    assert campaign["suite"] == "reflection" and campaign["role"] == "reflection"
    assert 0 < campaign["metric_calls"] <= 8 + 3  # the budget is checked before each case
    archive = Archive(tmp_path)
    try:
        variants = archive.variants("reflection")
        assert campaign["root"] in {v.id for v in variants}
        assert set(campaign["children"]) <= {v.id for v in variants}
        scores = archive.scores(campaign["root"], "reflection")
        assert scores, "the seed prompt was scored"
        # the reflect workflow really answered (llama-server accepted the grammar): actions, not errors
        assert any('"action"' in s.output for s in scores.values()), [s.feedback for s in scores.values()]
        assert archive.events(campaign["campaign"]), "the campaign recorded its generations"
        promoted = archive.promoted("reflection")
        assert (promoted is not None) == (record.stage == "promoted")
    finally:
        archive.close()
    mirrored = store.get(incident.id)
    assert mirrored.adaptation["stage"] == record.stage and mirrored.status == "recorded"
    assert [h["stage"] for h in record.history] == ["case_written", "campaign_running", record.stage]
