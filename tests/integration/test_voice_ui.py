"""Mission Control's Voice page end to end: Debian's chromium, driven by Playwright, talks to a real
`corral up` with its voice pipeline (Silero VAD, faster-whisper or pocketsphinx, the agent, Piper).

The microphone is chromium's fake capture device playing a WAV made at test time with Piper:
"What is the capital of France?" between stretches of silence (the leading one covers the time the
page takes to connect; the trailing one lets the server's turn detection end the turn). The
browser's own audio processing (echo cancellation, noise suppression, gain control) stays on, as
for a person. Nothing is timed: each wait ends as soon as the page shows what it waits for.
Screenshots go to artifacts/ui/voice_*.png.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from tests.integration.conftest import RunningCorral, start_corral, stop_corral
from tests.integration.test_mission_control import (
    ARTIFACTS,
    CHROMIUM,
    CONFIG,
    TIMEOUT_MS,
    WORKFLOWS,
    Console,
    login,
    open_view,
)

pytestmark = pytest.mark.slow

VOICE_CONFIG = (
    CONFIG
    + """
voice:
  enabled: true
"""
)
PHRASE = "What is the capital of France?"
LEAD_S = 3.0  # silence before the phrase: the page connects meanwhile
TAIL_S = 2.5  # silence after it: the server's turn detection ends the turn
PEAK = 0.1  # about -20 dBFS, a person at a laptop; louder, chromium's gain control clips it

# Recorded in the page before any of its scripts run: every microphone track, AudioContext and
# peer connection the page makes, so a test can see that Stop and leaving the page release them,
# and the seconds of PCM the page turns into audio buffers (corral's voice over the WebSocket).
TRACK_MEDIA = """
(() => {
  window.__voiceTracks = [];
  window.__voiceContexts = [];
  window.__voicePeers = [];
  window.__voiceBufferedS = 0;
  const createBuffer = BaseAudioContext.prototype.createBuffer;
  BaseAudioContext.prototype.createBuffer = function (channels, length, rate) {
    window.__voiceBufferedS += length / rate;
    return createBuffer.call(this, channels, length, rate);
  };
  const devices = navigator.mediaDevices;
  if (devices && devices.getUserMedia) {
    const getUserMedia = devices.getUserMedia.bind(devices);
    devices.getUserMedia = async (constraints) => {
      const stream = await getUserMedia(constraints);
      window.__voiceTracks.push(...stream.getTracks());
      return stream;
    };
  }
  const Context = window.AudioContext;
  window.AudioContext = class extends Context {
    constructor(...args) { super(...args); window.__voiceContexts.push(this); }
  };
  const Peer = window.RTCPeerConnection;
  if (Peer) {
    window.RTCPeerConnection = class extends Peer {
      constructor(...args) { super(...args); window.__voicePeers.push(this); }
    };
  }
})();
"""

# Every state of the character, and of the voice as the page shows it (data-voice: "speaking"
# while corral's voice plays), from the moment the page is on the Voice view.
RECORD_STATES = """() => {
  const figure = document.querySelector('[data-testid="character"]');
  const status = document.querySelector('[data-testid="voice-state"]');
  window.__characterStates = [figure.dataset.state];
  window.__voiceStates = [status.dataset.voice];
  new MutationObserver(() => window.__characterStates.push(figure.dataset.state))
    .observe(figure, {attributes: true, attributeFilter: ["data-state"]});
  new MutationObserver(() => window.__voiceStates.push(status.dataset.voice))
    .observe(status, {attributes: true, attributeFilter: ["data-voice"]});
}"""

# Energy of the audio the peer connection received: corral's voice over WebRTC.
RECEIVED_ENERGY = """async () => {
  let energy = 0;
  for (const peer of window.__voicePeers) {
    (await peer.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") energy += r.totalAudioEnergy || 0;
    });
  }
  return energy;
}"""

MEDIA_RELEASED = """() =>
  window.__voiceTracks.length > 0 &&
  window.__voiceTracks.every((t) => t.readyState === "ended") &&
  window.__voiceContexts.every((c) => c.state === "closed") &&
  window.__voicePeers.every((p) => p.signalingState === "closed")
"""


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCorral]:
    home = tmp_path_factory.mktemp("voice-ui")
    (home / "workflows").mkdir()
    for workflow in WORKFLOWS.glob("*.yaml"):
        shutil.copy(workflow, home / "workflows" / workflow.name)
    running = start_corral(home, VOICE_CONFIG)
    try:
        yield running
    finally:
        stop_corral(running)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's input: 16 kHz mono PCM, silence, the phrase, silence."""
    from tests.fixtures.speech import silence, synthesize_wav, write_wav

    audio, _ = synthesize_wav(PHRASE)
    audio = audio * (PEAK / max(float(np.abs(audio).max()), 1e-6))
    clip = np.concatenate([silence(LEAD_S), audio, silence(TAIL_S)]).astype(np.float32)
    return write_wav(tmp_path_factory.mktemp("voice-wav") / "capital-of-france.wav", clip, 16_000)


def _launch_args(wav: Path | None) -> list[str]:
    """Chromium with a fake microphone: playing `wav` and allowed without asking, or (None) one
    that headless chromium refuses, as a person's "Block" would."""
    args = ["--no-sandbox", "--allow-loopback-in-peer-connection", "--use-fake-device-for-media-stream"]
    if wav is not None:
        args += ["--use-fake-ui-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop"]
    return args


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed: `sudo apt-get install chromium` (./setup.sh test does it as root)"
        )
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright, speech_wav: Path) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=_launch_args(speech_wav))
    try:
        yield launched
    finally:
        launched.close()


def _open_page(browser: Browser, corral: RunningCorral, viewport: dict[str, int]) -> tuple[Page, Console]:
    context = browser.new_context(base_url=corral.url, viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(TRACK_MEDIA)
    page = context.new_page()
    console = Console()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_error)
    expect.set_options(timeout=TIMEOUT_MS)
    return page, console


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"voice_{name}.png"), full_page=True)


@pytest.fixture
def page(browser: Browser, corral: RunningCorral, request: pytest.FixtureRequest) -> Iterator[Page]:
    viewport = getattr(request, "param", {"width": 1280, "height": 800})
    page, console = _open_page(browser, corral, viewport)
    try:
        yield page
    finally:
        name = request.node.name.removeprefix("test_")
        _screenshot(page, re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_"))
        page.context.close()
    assert not console.errors, f"console errors: {console.errors}"


def words_apart(heard: str, said: str) -> int:
    """How many words one must insert, drop or change to turn `heard` into `said` (case and
    punctuation aside). Whisper base hears a word wrong on a few takes in a hundred through the
    browser's audio path and Opus ("capital of friends", see docs/voice.md), so the page is
    held to within one word: what is under test is that speech crosses the page, the transport
    and the pipeline, not Whisper's accuracy (tests/integration/test_voice_engines_real.py checks
    that on clean audio)."""
    a, b = re.findall(r"[\w']+", heard.lower()), re.findall(r"[\w']+", said.lower())
    row = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def _converse(page: Page, corral: RunningCorral, transport: str, shown: str) -> None:
    """Log in, open #/voice, pick `transport`, press Start and wait for the whole turn."""
    login(page, corral.key)
    open_view(page, "#/voice", "voice")
    # The speech models load after corral is up; the fake microphone starts its WAV at Start.
    expect(page.get_by_test_id("voice-engines")).to_have_attribute("data-ready", "true")
    page.evaluate(RECORD_STATES)
    page.get_by_test_id("voice-transport").select_option(transport)
    page.get_by_test_id("voice-start").click()

    state = page.get_by_test_id("voice-state")
    expect(state).to_have_attribute("data-conn", "connected")
    expect(state).to_contain_text(shown)  # the transport asked for, not a fallback
    final = page.locator('[data-testid="voice-user"][data-final="true"]')
    heard = final.filter(has_text=re.compile("capital", re.I)).first
    expect(heard).to_be_visible()
    said = heard.inner_text().split("›")[-1]
    assert words_apart(said, PHRASE) <= 1, f"heard {said!r} for {PHRASE!r}"
    expect(page.get_by_test_id("voice-assistant").first).to_have_text(re.compile(r"\w{2,}"))
    metrics = page.get_by_test_id("voice-metrics")
    expect(metrics).to_have_attribute("data-turns", re.compile(r"^[1-9]"))
    for name in ("stt", "llm", "tts", "v2v"):
        expect(page.get_by_test_id(f"voice-metric-{name}")).to_have_text(re.compile(r"^\d+ ms$"))
    page.wait_for_function("() => window.__voiceStates.includes('speaking')")  # corral's voice played
    page.wait_for_function(
        "() => ['listening', 'thinking', 'speaking'].every((s) => window.__characterStates.includes(s))"
    )


def test_a_spoken_question_over_the_websocket_is_heard_answered_and_timed(
    page: Page, corral: RunningCorral
) -> None:
    _converse(page, corral, "websocket", "WebSocket")
    _screenshot(page, "websocket_turn")
    page.wait_for_function("() => window.__voiceBufferedS > 0.5")  # seconds of corral's voice played
    page.get_by_test_id("voice-stop").click()
    expect(page.get_by_test_id("voice-start")).to_be_visible()
    expect(page.get_by_test_id("voice-state")).to_have_attribute("data-conn", "off")
    page.wait_for_function(MEDIA_RELEASED)  # the microphone and the AudioContext are let go
    expect(page.get_by_test_id("character")).to_have_attribute("data-state", "idle")


def test_a_spoken_question_over_webrtc_is_heard_answered_and_timed(page: Page, corral: RunningCorral) -> None:
    _converse(page, corral, "webrtc", "WebRTC")
    _screenshot(page, "webrtc_turn")
    # corral's voice came down the peer connection (the stats trail the audio, so wait for them)
    energy, deadline = 0.0, time.monotonic() + 60
    while energy <= 0.01 and time.monotonic() < deadline:
        energy = page.evaluate(RECEIVED_ENERGY)
        page.wait_for_timeout(250)
    assert energy > 0.01, f"no audible audio arrived over WebRTC (energy {energy})"
    # Leaving the page while connected hangs up: microphone, peer connection and AudioContext.
    page.get_by_test_id("nav-dashboard").click()
    expect(page.get_by_test_id("dashboard")).to_be_visible()
    page.wait_for_function(MEDIA_RELEASED)
    assert page.evaluate("window.__voicePeers.length") >= 1


@pytest.mark.parametrize("page", [{"width": 390, "height": 844}], indirect=True)
def test_phone_width_keyboard_push_to_talk_controls(page: Page, corral: RunningCorral) -> None:
    """At 390 px and by keyboard alone: the mode switch, Start, the Talk button held with Space."""
    login(page, corral.key)
    open_view(page, "#/voice", "voice")
    assert not page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
    page.get_by_test_id("voice-mode-ptt").focus()
    page.keyboard.press("Space")
    expect(page.get_by_test_id("voice-mode-ptt")).to_be_checked()
    talk = page.get_by_test_id("voice-ptt")
    expect(talk).to_be_visible()
    expect(talk).to_be_disabled()
    page.get_by_test_id("voice-transport").select_option("websocket")
    page.get_by_test_id("voice-start").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("voice-state")).to_have_attribute("data-conn", "connected")
    expect(talk).to_be_focused()  # Start hands the focus to Talk
    page.keyboard.down("Space")
    expect(talk).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("character")).to_have_attribute("data-state", "listening")
    page.keyboard.up("Space")
    expect(talk).to_have_attribute("aria-pressed", "false")
    character = page.get_by_test_id("character")
    expect(character).to_have_attribute("data-state", re.compile("idle|thinking|speaking"))
    assert not page.evaluate("document.documentElement.scrollWidth > window.innerWidth + 1")
    page.get_by_test_id("voice-stop").click()
    page.wait_for_function(MEDIA_RELEASED)


def test_a_blocked_microphone_says_how_to_allow_it(playwright: Playwright, corral: RunningCorral) -> None:
    """Without the fake-UI flag headless chromium refuses the microphone (NotAllowedError)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=_launch_args(None))
    try:
        page, console = _open_page(browser, corral, {"width": 1280, "height": 800})
        login(page, corral.key)
        open_view(page, "#/voice", "voice")
        page.get_by_test_id("voice-start").click()
        error = page.get_by_test_id("voice-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text(re.compile(r"allow", re.I))
        expect(page.get_by_test_id("voice-start")).to_be_visible()
        expect(page.get_by_test_id("voice-state")).to_have_attribute("data-conn", "off")
        page.wait_for_function("() => window.__voiceContexts.every((c) => c.state === 'closed')")
        _screenshot(page, "microphone_blocked")
        assert not console.errors, f"console errors: {console.errors}"
    finally:
        browser.close()
