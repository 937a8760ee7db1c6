"""Prompt evolution for real: `corral evolve campaign` with the bundled model evolves a prompt
through a real workflow run by the real runner, and records every variant; then Mission
Control's Archive page draws that archive in Debian's chromium (screenshot in artifacts/ui/).

The suite's workflow is a one-node tool_choice (no tools, small answers): the agent workflow with
all its tools shows a 270M model a ~550-token prompt per case, and a campaign of it takes many
minutes on two cores. The evolved node, its prompt_role and the evaluation path are the same.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, expect, sync_playwright

from corral.evolve.archive import Archive
from corral.evolve.evaluate import evaluator_hash
from corral.evolve.roles import seed
from tests.integration.conftest import start_corral, stop_corral

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 120_000
expect.set_options(timeout=TIMEOUT_MS)

CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    description: general questions
    replicas: 1
    slots: 2
    context: 2048
    threads: 1
"""

WORKFLOW = """
version: 1
name: quick
description: one short answer from the tool-choice node, whose system prompt is the `system` role
inputs:
  messages: {type: messages}
nodes:
  decide:
    type: tool_choice
    in: {messages: $inputs.messages}
    params: {prompt_role: system, tools: [], max_tokens: 40, temperature: 0.2}
    on_error: branch
  answer:
    type: output
    in: {answer: $decide.answer}
  failed:
    type: output
    in: {answer: ""}
edges:
  - {from: decide, to: answer, when: final}
  - {from: decide, to: failed, when: error}
"""

SUITE = """
version: 1
name: quick
role: system
workflow: quick
output: answer
cases:
  - id: capital-france
    split: train
    input: {messages: [{role: user, content: "What is the capital of France?"}]}
    expect: [{contains: Paris}]
  - id: sky-colour
    split: train
    input: {messages: [{role: user, content: "What colour is a clear daytime sky?"}]}
    expect: [{contains: blue}]
  - id: capital-italy
    split: validation
    input: {messages: [{role: user, content: "What is the capital of Italy?"}]}
    expect: [{contains: Rome}]
  - id: capital-japan
    split: heldout
    input: {messages: [{role: user, content: "What is the capital of Japan?"}]}
    expect: [{contains: Tokyo}]
"""


@pytest.fixture(scope="module")
def evolved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home where a two-generation campaign ran with the real model."""
    home = tmp_path_factory.mktemp("evolve-home")
    (home / "corral.yaml").write_text(CONFIG)
    (home / "workflows").mkdir()
    (home / "workflows" / "quick.yaml").write_text(WORKFLOW)
    (home / "evolve" / "suites").mkdir(parents=True)
    (home / "evolve" / "suites" / "quick.yaml").write_text(SUITE)
    env = {**os.environ, "CORRAL_HOME": str(home)}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "evolve", "campaign", "-g", "2", "--suite", "quick",
         "--minibatch", "1", "--max-prompt-tokens", "48", "--max-metric-calls", "12"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "campaign c_quick_dgm_s0_" in done.stdout
    return home


def test_a_real_campaign_records_its_variants(evolved: Path) -> None:
    archive = Archive(evolved)
    variants = archive.variants("quick")
    root = variants[0]
    assert root.selection == "seed" and root.prompts == {"system": seed("system")}
    (campaign,) = {e.campaign for e in archive.events()}
    generations = [e for e in archive.events(campaign) if e.kind == "generation"]
    stopped = [e for e in archive.events(campaign) if e.kind == "stopped"]
    assert sorted(e.generation for e in generations) == [0, 1, 2] or stopped
    # every generation made a child or recorded why not, and each child knows where it came from
    mutations = [e for e in archive.events(campaign) if e.kind == "mutation"]
    for child in variants[1:]:
        assert child.parent_ids and child.selection == "dgm" and child.campaign == campaign
        assert child.diff.startswith("--- a/system") and child.calls == 1 and child.tokens > 0
        assert child.models == ["general"]
    failed = [e for e in generations if e.data.get("outcome") == "failed"]
    assert len(mutations) == len(variants) - 1 + len(failed)
    assert all(e.data["reason"] for e in failed)
    # the root was scored by the real model through the quick workflow, each case a recorded run
    scores = archive.scores(root.id, "quick")
    assert "capital-italy" in scores
    for score in scores.values():
        assert score.run_id.startswith("r_") and score.evaluator_hash == evaluator_hash()
        assert score.calls + score.tokens >= 0 and score.feedback
    runs = (evolved / "evolve" / "agent" / "runs.sqlite3").exists()
    assert runs


def test_the_archive_page_draws_the_tree(evolved: Path) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `sudo apt-get install chromium` (./setup.sh test does it)")
    archive = Archive(evolved)
    variants = archive.variants("quick")
    running = start_corral(evolved, CONFIG)
    errors: list[str] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            context = browser.new_context(base_url=running.url, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    errors.append(message.text)

            page.on("console", on_console)
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            page.goto("/")
            page.get_by_label(re.compile("API key", re.I)).fill(running.key)
            page.get_by_role("button", name=re.compile("log in", re.I)).click()
            expect(page.get_by_test_id("dashboard")).to_be_visible()
            page.get_by_test_id("nav-archive").click()
            expect(page.get_by_test_id("archive-summary")).to_contain_text(
                f"{len(variants)} variant(s) of suite quick"
            )
            expect(page.locator("[data-testid='archive-graph'] canvas").first).to_be_visible()
            for variant in variants:
                expect(page.get_by_test_id(f"archive-node-{variant.id}")).to_be_visible()
            last = variants[-1]
            page.get_by_test_id(f"archive-node-{last.id}").click()
            expect(page.get_by_test_id("archive-variant-id")).to_contain_text(last.id)
            expect(page.get_by_test_id("archive-prompt")).to_contain_text(last.prompt.split("\n")[0][:40])
            if last.parent_ids:
                expect(page.get_by_test_id("archive-parent")).to_contain_text(last.parent_ids[0])
                expect(page.get_by_test_id("archive-diff")).to_be_visible()
            expect(page.get_by_test_id("archive-scores")).to_be_visible()
            expect(page.get_by_test_id("archive-promote")).to_be_visible()  # an admin key
            # nothing is promoted yet: rolling back says so instead of failing
            page.get_by_test_id("archive-rollback").click()
            expect(page.get_by_test_id("toasts")).to_contain_text("nothing is promoted")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "archive.png"), full_page=True)
            context.close()
            browser.close()
    finally:
        stop_corral(running)
    unexpected = [e for e in errors if "400" not in e]  # the refused rollback logs its 400
    assert not unexpected, f"console errors: {unexpected}"
