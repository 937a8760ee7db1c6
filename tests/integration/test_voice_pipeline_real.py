"""Voice end to end: a real `corral up` (llama-server with the bundled model, faster-whisper or
pocketsphinx, Piper, Silero VAD, smart-turn) over the real /ws/voice WebSocket, fed speech that
Piper synthesises at test time, as 20 ms PCM16 chunks in real time like a microphone.

A question gets a transcript, a streamed answer and audible audio; silence makes no turn;
talking over the answer interrupts it (playback stops, the run is cancelled); a client that
goes away mid-turn leaves a healthy server and a cancelled run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from corral.voice.engines import float_to_pcm16, pcm16_to_float
from tests.fixtures.speech import silence, synthesize_wav
from tests.integration.conftest import AGENT_CONFIG, RunningCorral, start_corral, stop_corral

pytestmark = pytest.mark.slow

CONFIG = AGENT_CONFIG
COUNTING = """
version: 1
name: voice-count
inputs:
  messages: {type: messages}
  session: {type: string, required: false, default: ""}
nodes:
  speak:
    type: llm
    in:
      prompt: "Continue this list up to 500: 1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12."
    params: {max_tokens: 400, temperature: 0}
  out: {type: output, in: {answer: $speak.text}}
"""
CHUNK_S = 0.02
VOICE_READY_S = 300  # the first start assembles faster-whisper base (~145 MB) and warms it


@pytest.fixture(scope="module")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCorral]:
    home = tmp_path_factory.mktemp("voice")
    # A workflow with a long, steady answer, for the barge-in test to talk over (the shipped
    # one answers in a sentence or two: over before anyone could interrupt it).
    (home / "workflows").mkdir()
    (home / "workflows" / "voice-count.yaml").write_text(COUNTING)
    running = start_corral(home, CONFIG)
    try:
        deadline = time.monotonic() + VOICE_READY_S
        while True:
            status = _get(running, "/api/voice")
            if status["ready"]:
                break
            assert status["error"] is None, status["error"]
            assert time.monotonic() < deadline, f"voice not ready after {VOICE_READY_S} s: {status}"
            time.sleep(1)
        yield running
    finally:
        stop_corral(running)


def _get(corral: RunningCorral, path: str) -> Any:
    response = httpx.get(
        corral.url + path, headers={"authorization": f"Bearer {corral.key}"}, trust_env=False, timeout=10
    )
    response.raise_for_status()
    return response.json()


@dataclass
class Received:
    at: float
    audio: bytes = b""
    message: dict[str, Any] | None = None


@dataclass
class VoiceClient:
    """A microphone and a speaker on /ws/voice: speaks PCM16 in real time, records everything
    the server sends with its arrival time."""

    socket: ClientConnection
    rate: int = 0
    received: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None
    closed: bool = False

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            async for data in self.socket:
                now = time.monotonic()
                if isinstance(data, bytes):
                    self.received.append(Received(now, audio=data))
                else:
                    self.received.append(Received(now, message=json.loads(data)))
                self.changed.set()
        self.closed = True
        self.changed.set()

    async def send_audio(self, audio: np.ndarray) -> float:
        """Play `audio` (16 kHz float32) in 20 ms chunks at real-time pace; returns when its last
        chunk went out (time.monotonic())."""
        pcm = float_to_pcm16(audio.astype(np.float32))
        step = int(16_000 * CHUNK_S) * 2
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), step)):
            await self.socket.send(pcm[offset : offset + step])
            await asyncio.sleep(max(0.0, started + (index + 1) * CHUNK_S - time.monotonic()))
        return time.monotonic()

    async def wait(self, predicate: Callable[[Received], bool], *, start: int = 0, within: float = 60) -> int:
        """The index of the first item from `start` on that matches; the microphone keeps sending
        silence meanwhile, as a live one would."""
        index = start
        deadline = time.monotonic() + within
        while True:
            while index < len(self.received):
                if predicate(self.received[index]):
                    return index
                index += 1
            assert not self.closed, f"the server closed the socket; got {self.messages()}"
            assert time.monotonic() < deadline, f"nothing matched in {within} s; got {self.messages()}"
            self.changed.clear()
            await self.send_audio(silence(0.1))

    async def wait_message(self, kind: str, *, start: int = 0, within: float = 60, **fields: Any) -> int:
        def match(item: Received) -> bool:
            m = item.message
            return m is not None and m.get("type") == kind and all(m.get(k) == v for k, v in fields.items())

        return await self.wait(match, start=start, within=within)

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [r.message for r in self.received if r.message is not None]
        return [m for m in found if kind is None or m.get("type") == kind]

    def audio(self, start: int = 0, end: int | None = None) -> bytes:
        return b"".join(r.audio for r in self.received[start:end])


@contextlib.asynccontextmanager
async def voice_client(corral: RunningCorral, session: str, workflow: str | None = None) -> Any:
    url = corral.url.replace("http://", "ws://") + f"/ws/voice?token={corral.key}"
    async with connect(url, max_size=None, open_timeout=30) as socket:
        start = {"type": "start", "session": session, "sample_rate": 16000}
        if workflow:
            start["workflow"] = workflow
        await socket.send(json.dumps(start))
        ready = json.loads(await asyncio.wait_for(socket.recv(), 60))
        assert ready["type"] == "ready", ready
        client = VoiceClient(socket, rate=ready["sample_rate"])
        client.reader = asyncio.create_task(client.read())
        try:
            yield client
        finally:
            client.reader.cancel()
            with contextlib.suppress(BaseException):
                await client.reader


def spoken(text: str) -> np.ndarray:
    audio, _ = synthesize_wav(text)
    return np.concatenate([silence(0.3), audio])


def rms(pcm: bytes) -> float:
    samples = pcm16_to_float(pcm[: len(pcm) - len(pcm) % 2])
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def voice_runs(corral: RunningCorral, session: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = _get(corral, f"/api/runs?session={session}")["runs"]
    return runs


def metric(corral: RunningCorral, name: str) -> float:
    """A sample of GET /metrics (0 when it is not there)."""
    text = httpx.get(
        corral.url + "/metrics", headers={"authorization": f"Bearer {corral.key}"}, trust_env=False
    ).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_status(corral: RunningCorral, run_id: str, within: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        run: dict[str, Any] = _get(corral, f"/api/runs/{run_id}")
        if run["status"] != "running" or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


async def test_a_spoken_question_is_transcribed_answered_and_spoken(corral: RunningCorral) -> None:
    session = f"v-{uuid.uuid4().hex[:8]}"
    async with voice_client(corral, session) as client:
        await client.send_audio(spoken("What is the capital of France?"))
        final = await client.wait_message("transcript", final=True)
        text = str(client.received[final].message["text"]).lower()  # type: ignore[index]
        assert "capital" in text and "france" in text, text
        answered = await client.wait_message("answer", start=final, final=True, within=120)
        answer = client.received[answered].message
        assert answer is not None and answer["text"].strip()
        turn_at = await client.wait_message("turn", start=final, within=120)
        turn = client.received[turn_at].message
        assert turn is not None and turn["run_id"]
        for key in ("stt_s", "llm_ttft_s", "tts_first_audio_s", "voice_to_voice_s"):
            assert isinstance(turn[key], float), turn
        await client.wait_message("state", start=turn_at, state="idle", within=120)
        audio = client.audio(final)
        assert len(audio) > client.rate * 2 * 0.5, "less than half a second of answer audio"
        assert rms(audio) > 0.01, "the answer's audio is silent"
    run = wait_status(corral, turn["run_id"])
    assert run["workflow"] == "voice" and run["status"] == "succeeded", run
    assert run["inputs"]["messages"][-1]["role"] == "user"
    assert metric(corral, "corral_voice_turns_total") >= 1
    assert metric(corral, "corral_voice_to_voice_seconds_count") >= 1


async def test_silence_alone_makes_no_turn_and_no_run(corral: RunningCorral) -> None:
    session = f"v-{uuid.uuid4().hex[:8]}"
    async with voice_client(corral, session) as client:
        await client.send_audio(silence(4.0))
        await asyncio.sleep(1.0)
        assert client.messages("transcript") == []
        assert [m["state"] for m in client.messages("state")] == ["idle"]
    assert voice_runs(corral, session) == []


async def test_talking_over_the_answer_interrupts_it(corral: RunningCorral) -> None:
    session = f"v-{uuid.uuid4().hex[:8]}"
    async with voice_client(corral, session, workflow="voice-count") as client:
        await client.send_audio(spoken("Please count for me."))
        thinking = await client.wait_message("state", state="thinking", within=60)
        run_id = client.received[thinking].message["run_id"]  # type: ignore[index]
        first_audio = await client.wait(lambda r: bool(r.audio), start=thinking, within=120)
        await client.send_audio(spoken("Stop. What is two plus two?"))
        interrupted = await client.wait_message("interrupted", start=first_audio, within=60)
        next_turn = await client.wait_message("transcript", start=interrupted, final=True, within=60)
        late = client.audio(interrupted, next_turn)
        assert len(late) <= client.rate * 2 * 0.05, f"{len(late)} bytes of audio after the interruption"
        run = wait_status(corral, run_id)
        assert run["status"] == "cancelled", run
        await client.wait_message("turn", start=next_turn, within=120)
    assert metric(corral, "corral_voice_barge_ins_total") >= 1


async def test_a_client_that_leaves_mid_turn_cancels_the_run(corral: RunningCorral) -> None:
    session = f"v-{uuid.uuid4().hex[:8]}"
    async with voice_client(corral, session) as client:
        await client.send_audio(spoken("Tell me a very long story about the sea."))
        thinking = await client.wait_message("state", state="thinking", within=60)
        run_id = client.received[thinking].message["run_id"]  # type: ignore[index]
        await client.wait_message("answer", start=thinking, within=120)
        await client.socket.close()
    run = wait_status(corral, run_id)
    assert run["status"] == "cancelled", run
    assert _get(corral, "/health") == {"status": "ok"}
    for _ in range(100):  # the session ends as its pipeline is torn down
        if not _get(corral, "/api/voice")["sessions"]:
            break
        await asyncio.sleep(0.2)
    assert _get(corral, "/api/voice")["sessions"] == []
    async with voice_client(corral, session) as again:  # the server still takes a session
        await again.send_audio(silence(0.5))
