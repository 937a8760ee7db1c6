"""Mission Control end to end: Debian's chromium, driven by Playwright, against a real `corral up`
serving the bundled model.

Each test leaves a screenshot in artifacts/ui/ and fails on any console error. The chat runs the
`ui-chat` workflow (tests/fixtures/workflows): the model answers ordinary messages, streamed, and
a message starting with "tool:" calls the cluster_status tool, which this config gates behind
approval. So the test of the approval prompt does not depend on what a 270M model decides.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.integration.conftest import AGENT_CONFIG, RunningCorral, start_corral, stop_corral

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "ui"
WORKFLOWS = ROOT / "tests" / "fixtures" / "workflows"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 120_000  # a 270M model on a busy 2-core machine; waits end as soon as the UI is there
expect.set_options(timeout=TIMEOUT_MS)  # expect() has its own default (5 s), apart from the context's

CONFIG = (
    AGENT_CONFIG
    + """
agent:
  workflow: ui-chat
  tools:
    approval: {cluster_status: ask}
ui:
  links: [{name: Grafana, url: "http://grafana.home.arpa:3000"}]
"""
)


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCorral]:
    home = tmp_path_factory.mktemp("mission-control")
    (home / "workflows").mkdir()
    for workflow in WORKFLOWS.glob("*.yaml"):
        shutil.copy(workflow, home / "workflows" / workflow.name)
    running = start_corral(home, CONFIG)
    try:
        yield running
    finally:
        stop_corral(running)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed: `sudo apt-get install chromium` (./setup.sh test does it as root)"
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


class Console:
    """Collects what the page says is wrong: console errors and uncaught exceptions."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
def page(browser: Browser, corral: RunningCorral, request: pytest.FixtureRequest) -> Iterator[Page]:
    viewport = getattr(request, "param", {"width": 1280, "height": 800})
    context = browser.new_context(base_url=corral.url, viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_error)
    page.allowed_errors = []  # type: ignore[attr-defined]  # substrings a test expects (server away)
    try:
        yield page
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        context.close()
    allowed = page.allowed_errors  # type: ignore[attr-defined]
    unexpected = [e for e in console.errors if not any(a in e for a in allowed)]
    assert not unexpected, f"console errors: {unexpected}"


def login(page: Page, key: str) -> None:
    page.goto("/")
    page.get_by_label(re.compile("API key", re.I)).fill(key)
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    expect(page.get_by_test_id("dashboard")).to_be_visible()


def open_view(page: Page, hash_route: str, testid: str) -> None:
    page.evaluate("route => { location.hash = route }", hash_route)
    expect(page.get_by_test_id(testid)).to_be_visible()


def api(corral: RunningCorral, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {corral.key}"}
    return httpx.request(method, corral.url + path, headers=headers, timeout=60, trust_env=False, **kwargs)  # type: ignore[arg-type]


# --- tests ------------------------------------------------------------------------------------


def test_login_keeps_the_key_out_of_javascript_and_shows_the_live_dashboard(
    page: Page, corral: RunningCorral
) -> None:
    page.goto("/")
    key_field = page.get_by_label(re.compile("API key", re.I))
    key_field.fill("crl_wrong_key")
    page.get_by_role("button", name=re.compile("log in", re.I)).click()
    expect(page.get_by_text(re.compile("not accepted", re.I))).to_be_visible()
    page.allowed_errors.append("401")  # type: ignore[attr-defined]  # the browser logs the refused login

    login(page, corral.key)
    assert "corral_session" not in page.evaluate("document.cookie")  # HttpOnly: JS cannot read it
    storage = page.evaluate("JSON.stringify([Object.keys(localStorage), Object.keys(sessionStorage)])")
    assert corral.key not in storage and corral.key not in page.content()
    cookie = next(c for c in page.context.cookies() if c["name"] == "corral_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    rows = page.get_by_test_id("replica-row")
    expect(rows.filter(has_text="general/0")).to_be_visible()
    expect(rows.filter(has_text="embed/0")).to_be_visible()
    expect(page.get_by_test_id("nodes-table")).to_contain_text(os.uname().nodename)
    expect(page.get_by_role("link", name="Grafana")).to_have_attribute("href", re.compile("grafana"))
    expect(page.get_by_test_id("stream-state")).to_contain_text(re.compile("live", re.I))
    expect(page.get_by_test_id("character")).to_have_attribute("data-state", "idle")

    page.get_by_role("button", name=re.compile("log ?out", re.I)).click()
    expect(page.get_by_label(re.compile("API key", re.I))).to_be_visible()
    assert api(corral, "GET", "/api/me").status_code == 200  # the key itself still works


def test_chat_streams_an_answer_then_clears_the_terminal(page: Page, corral: RunningCorral) -> None:
    login(page, corral.key)
    open_view(page, "#/chat", "chat")
    # Record every length the answer passes through, so the test sees it arrive in pieces.
    page.evaluate(
        """() => {
        window.__lengths = [];
        const transcript = document.querySelector('[data-testid="transcript"]');
        new MutationObserver(() => {
            const answers = transcript.querySelectorAll('[data-testid="msg-assistant"]');
            const last = answers[answers.length - 1];
            if (last) window.__lengths.push(last.innerText.trim().length);
        }).observe(transcript, {subtree: true, childList: true, characterData: true});
    }"""
    )
    page.get_by_test_id("chat-input").fill("Tell me a short fact about the moon.")
    page.get_by_test_id("chat-send").click()
    expect(page.get_by_test_id("msg-user").last).to_contain_text("fact about the moon")
    answer = page.get_by_test_id("msg-assistant").last
    expect(answer).to_have_text(re.compile(r"\w{2,}"))
    expect(page.get_by_test_id("character")).to_have_attribute("data-state", "idle")
    lengths = [n for n in page.evaluate("window.__lengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the answer arrived in one piece, not streamed: {lengths}"

    page.get_by_test_id("chat-clear").click()
    expect(page.get_by_test_id("msg-assistant")).to_have_count(0)
    expect(page.get_by_test_id("msg-user")).to_have_count(0)


def test_a_gated_tool_call_waits_for_approval_in_the_chat(page: Page, corral: RunningCorral) -> None:
    login(page, corral.key)
    open_view(page, "#/chat", "chat")
    page.get_by_test_id("chat-input").fill("tool: how is the cluster?")
    page.get_by_test_id("chat-input").press("Enter")
    gate = page.get_by_test_id("gate-card").last
    expect(gate).to_contain_text("cluster_status")
    expect(page.get_by_test_id("character")).to_have_attribute("data-state", "waiting")
    gate.get_by_test_id("gate-approve").click()
    expect(page.get_by_test_id("tool-card").last).to_contain_text("cluster_status")
    expect(page.get_by_test_id("msg-assistant").last).to_contain_text("the cluster_status tool ran")
    runs = api(corral, "GET", "/api/runs", params={"workflow": "ui-chat", "limit": 1}).json()["runs"]
    assert runs[0]["status"] == "succeeded"


def test_the_live_graph_colours_nodes_and_shows_who_served_them(page: Page, corral: RunningCorral) -> None:
    login(page, corral.key)
    open_view(page, "#/workflows/ui-gate", "workflows")
    expect(page.get_by_test_id("run-graph")).to_be_visible()
    page.get_by_test_id("run-button").click()
    expect(page.get_by_test_id("graph-node-ask")).to_have_attribute("data-state", "waiting")
    talk = page.get_by_test_id("graph-node-talk")
    expect(talk).to_have_attribute("data-state", "ok")
    expect(talk).to_contain_text("general/0")  # the cluster overlay: which replica served it
    expect(page.get_by_test_id("graph-node-done")).to_have_attribute("data-state", re.compile("pending|idle"))
    page.get_by_test_id("gate-approve").click()
    expect(page.get_by_test_id("graph-node-done")).to_have_attribute("data-state", "ok")
    expect(page.get_by_test_id("run-status")).to_contain_text("succeeded")
    talk.click()
    detail = page.get_by_test_id("node-detail")
    expect(detail).to_contain_text("general/0")
    expect(detail).to_contain_text(re.compile(r"elapsed\s*\d+(\.\d+)?\s*m?s"))


def test_history_opens_a_run_and_replays_it_with_edited_input(page: Page, corral: RunningCorral) -> None:
    first = api(
        corral, "POST", "/api/workflows/ui-echo/run", json={"inputs": {"topic": "cats"}, "wait": True}
    )
    run_id = first.json()["id"]
    login(page, corral.key)
    open_view(page, "#/history", "history")
    page.get_by_test_id("filter-workflow").select_option("ui-echo")
    row = page.locator(f'[data-testid="run-row"][data-run-id="{run_id}"]')
    expect(row).to_be_visible()
    row.click()
    detail = page.get_by_test_id("run-detail")
    expect(detail).to_contain_text("Echo: cats")
    expect(page.get_by_test_id("graph-node-say")).to_have_attribute("data-state", "ok")
    page.get_by_test_id("replay-inputs").fill('{"topic": "dogs"}')
    page.get_by_test_id("replay-button").click()
    expect(page.get_by_test_id("run-status")).to_contain_text("succeeded")
    expect(page.get_by_test_id("run-detail")).to_contain_text("Echo: dogs")
    replays = api(corral, "GET", "/api/runs", params={"workflow": "ui-echo"}).json()["runs"]
    assert any(r["forked_from"] == run_id and r["fork_seq"] == 0 for r in replays)  # a replay's lineage


def test_editor_builds_saves_reloads_and_runs_a_two_node_workflow(page: Page, corral: RunningCorral) -> None:
    login(page, corral.key)
    open_view(page, "#/editor", "editor")
    page.get_by_test_id("new-workflow").click()
    page.get_by_test_id("wf-name").fill("two-step")
    canvas = page.get_by_test_id("editor-canvas")
    box = canvas.bounding_box()
    assert box is not None
    page.get_by_test_id("palette-prompt").drag_to(canvas, target_position={"x": 120, "y": 120})
    page.get_by_test_id("palette-output").drag_to(canvas, target_position={"x": 480, "y": 160})
    expect(canvas.locator(".drawflow-node")).to_have_count(2)
    page.get_by_test_id("ed-node-prompt").click()
    form = page.get_by_test_id("node-form")
    form.get_by_label(re.compile("template", re.I)).fill("Hello from the editor")
    # connect prompt.text to the output node's "+ input" port: it becomes the input `text`
    page.get_by_test_id("port-out-prompt-text").drag_to(page.get_by_test_id("port-in-output-new"))
    expect(page.get_by_test_id("port-in-output-text")).to_be_visible()
    expect(page.get_by_test_id("problems")).to_have_attribute("data-valid", "true")
    page.get_by_test_id("save-workflow").click()
    expect(page.get_by_test_id("saved-version")).to_contain_text("1")

    page.reload()
    open_view(page, "#/editor/two-step", "editor")
    expect(page.get_by_test_id("editor-canvas").locator(".drawflow-node")).to_have_count(2)
    page.get_by_test_id("run-workflow").click()
    expect(page.get_by_test_id("run-status")).to_contain_text("succeeded")
    runs = api(corral, "GET", "/api/runs", params={"workflow": "two-step", "limit": 1}).json()["runs"]
    assert runs[0]["status"] == "succeeded"
    assert "Hello from the editor" in str(runs[0]["outputs"])


@pytest.mark.parametrize("page", [{"width": 390, "height": 844}], indirect=True)
def test_phone_width_and_keyboard_only_use(page: Page, corral: RunningCorral) -> None:
    page.goto("/")
    page.keyboard.press("Tab")
    page.keyboard.type(corral.key)
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("dashboard")).to_be_visible()
    wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
    assert not wide, "the page scrolls sideways at phone width"
    open_view(page, "#/chat", "chat")
    page.get_by_test_id("chat-input").focus()
    page.keyboard.type("Say hi.")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("msg-assistant").last).to_have_text(re.compile(r"\w"))


def test_an_expired_session_and_a_restarted_server_are_said_and_survived(
    browser: Browser, tmp_path: Path
) -> None:
    """Runs its own corral: it is stopped and started again under the open page."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "workflows").mkdir()
    for workflow in WORKFLOWS.glob("*.yaml"):
        shutil.copy(workflow, home / "workflows" / workflow.name)
    running = start_corral(home, CONFIG)
    context = browser.new_context(base_url=running.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        login(page, running.key)
        # The session is ended elsewhere (another tab logs out): the next call says so.
        page.request.post(running.url + "/api/logout")
        open_view(page, "#/history", "login")
        expect(page.get_by_text(re.compile("session (has )?expired", re.I))).to_be_visible()
        login(page, running.key)

        port = running.url.rsplit(":", 1)[1]
        stop_corral(running)
        expect(page.get_by_text(re.compile("lost contact", re.I))).to_be_visible()
        env = {**os.environ, "CORRAL_HOME": str(home)}
        with open(home / "corral-up-again.log", "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "corral.cli", "up", "--port", port],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        running.process = process
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(running.url + "/ready", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        # Same page, no reload: the banner goes, the live table comes back, the login held.
        expect(page.get_by_text(re.compile("lost contact", re.I))).to_be_hidden()
        expect(page.get_by_test_id("stream-state")).to_contain_text(re.compile("live", re.I))
        expect(page.get_by_test_id("replica-row").filter(has_text="general/0")).to_contain_text("ready")
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "server_restart.png"), full_page=True)
        context.close()
        stop_corral(running)
