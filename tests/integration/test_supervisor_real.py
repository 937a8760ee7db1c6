"""The supervisor against a real `corral up`: a replica started under too small a memory limit
gets a larger one; a llama-server replica SIGKILLed (what the kernel's OOM killer does) is
recognised, healed with a smaller context and verified healthy, first in autonomous mode and then
in review mode, where an admin approves the action in Mission Control (Debian's chromium, driven
by Playwright)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration.conftest import RunningCorral, start_corral, stop_corral
from tests.integration.test_mission_control import ARTIFACTS, CHROMIUM, TIMEOUT_MS, Console, login

pytestmark = pytest.mark.slow

NAME = "general/0"
CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    description: general questions
    replicas: 1
    slots: 1
    context: 2048
    threads: 1
  - name: tight
    model: gemma3-270m
    description: a replica started under too small a memory limit
    auto: false
    replicas: 1
    slots: 1
    context: 1024
    threads: 1
    memory_limit_mb: 650  # llama-server maps ~850 MiB: its mmap fails, "Cannot allocate memory"
supervisor:
  mode: autonomous
  verify_s: 5
  cooldown_s: 0
  min_context: 256
  adaptation: {enabled: false}
"""


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCorral]:
    running = start_corral(tmp_path_factory.mktemp("supervisor"), CONFIG)
    try:
        yield running
    finally:
        stop_corral(running)


def call(corral: RunningCorral, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"authorization": f"Bearer {corral.key}"}
    response = httpx.request(
        method, corral.url + path, headers=headers, trust_env=False, timeout=30, **kwargs
    )
    response.raise_for_status()
    return response.json()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def incident_with(
    corral: RunningCorral, status: str, seen: set[str], target: str = NAME
) -> dict[str, Any] | None:
    for incident in call(corral, "GET", "/api/supervisor/incidents")["incidents"]:
        if incident["id"] not in seen and incident["status"] == status and incident["target"] == target:
            return dict(incident)
    return None


def kill_replica(corral: RunningCorral) -> int:
    replica = corral.wait_healthy(NAME)
    pid = int(str(replica["pid"]))
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_replica_under_too_small_a_memory_limit_gets_more_memory(corral: RunningCorral) -> None:
    healed = wait_for(
        "the tight replica to be healed", lambda: incident_with(corral, "healed", set(), "tight/0")
    )
    assert healed["kind"] == "alloc_failure" and healed["action"]["action"] == "increase_memory"
    full = call(corral, "GET", f"/api/supervisor/incidents/{healed['id']}")
    assert "Cannot allocate memory" in full["bundle"]["log_tail"]
    limit = 650 * 1024 * 1024
    assert full["bundle"]["memory"]["limit_bytes"] == limit
    after = next(e for e in full["history"] if e["event"] == "healed")["detail"]["after"]
    assert limit < after["memory_limit_bytes"] <= limit * 1.5
    assert corral.wait_healthy("tight/0")["healthy"]


def test_a_sigkilled_replica_is_healed_and_verified_in_autonomous_mode(corral: RunningCorral) -> None:
    assert corral.replica(NAME)["context_per_slot"] == 2048
    old_pid = kill_replica(corral)
    healed = wait_for("the incident to be healed", lambda: incident_with(corral, "healed", set()))
    assert healed["kind"] == "oom_kill" and healed["ended"] == "SIGKILL"
    assert healed["action"]["action"] == "reduce_context" and healed["classified_by"] == "rules"
    replica = corral.replica(NAME)
    assert replica["healthy"] and replica["pid"] != old_pid and replica["context_per_slot"] == 1024
    full = call(corral, "GET", f"/api/supervisor/incidents/{healed['id']}")
    events = [e["event"] for e in full["history"]]
    assert events[:2] == ["opened", "acting"] and events[-1] == "healed", events
    assert full["bundle"]["spec"]["context_per_slot"] == 2048 and full["bundle"]["memory"]["total_bytes"] > 0
    answer = call(
        corral,
        "POST",
        "/v1/chat/completions",
        json={"model": "general", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8},
    )
    assert answer["choices"][0]["message"]["content"] is not None  # it serves again
    metrics = httpx.get(
        corral.url + "/metrics", headers={"authorization": f"Bearer {corral.key}"}, trust_env=False
    ).text
    assert 'corral_supervisor_actions_total{action="reduce_context",outcome="healed"} 1.0' in metrics
    assert 'corral_supervisor_actions_total{action="increase_memory",outcome="healed"} 1.0' in metrics
    assert 'corral_supervisor_incidents_total{kind="oom_kill"} 1.0' in metrics


@pytest.fixture
def page(corral: RunningCorral, request: pytest.FixtureRequest) -> Iterator[Page]:
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed: `sudo apt-get install chromium` (./setup.sh test does it as root)"
        )
    console = Console()
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(base_url=corral.url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        page.on("console", console.on_console)
        page.on("pageerror", console.on_error)
        try:
            yield page
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            browser.close()
    assert not console.errors, f"console errors: {console.errors}"


def test_review_mode_waits_for_an_admin_who_approves_in_mission_control(
    corral: RunningCorral, page: Page
) -> None:
    expect.set_options(timeout=TIMEOUT_MS)
    seen = {i["id"] for i in call(corral, "GET", "/api/supervisor/incidents")["incidents"]}
    assert call(corral, "PUT", "/api/supervisor/mode", json={"mode": "review"})["mode"] == "review"
    kill_replica(corral)
    proposed = wait_for("a proposed action", lambda: incident_with(corral, "proposed", seen))
    assert proposed["action"]["action"] == "reduce_context"
    corral.wait_healthy(NAME)  # the Engine restarted it meanwhile; nothing changed yet
    assert corral.replica(NAME)["context_per_slot"] == 1024

    login(page, corral.key)
    page.get_by_test_id("nav-incidents").click()
    expect(page.get_by_test_id("supervisor-mode")).to_contain_text("review")
    row = page.locator(f'[data-testid="incident-row"][data-id="{proposed["id"]}"]')
    expect(row.get_by_test_id("incident-status")).to_have_text("proposed")
    expect(row.get_by_test_id("incident-action")).to_contain_text("reduce_context")
    row.get_by_test_id("incident-approve").click()
    expect(row.get_by_test_id("incident-status")).to_have_text(re.compile("healed"))
    row.get_by_role("link", name=NAME).click()
    expect(page.get_by_test_id("incident-log")).to_be_visible()
    expect(page.get_by_test_id("incident-outcome")).to_contain_text("healthy")
    assert corral.replica(NAME)["context_per_slot"] == 512 and corral.replica(NAME)["healthy"]
    approved = call(corral, "GET", f"/api/supervisor/incidents/{proposed['id']}")
    assert [e["event"] for e in approved["history"]][-3:] == ["approved", "acting", "healed"]
