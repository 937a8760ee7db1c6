"""The voice pipeline with fakes (no speech models, no llama-server): incremental and segmented
speech to text, the agent bridge streaming tokens to TTS and cancelling on barge-in, silence,
noise and engine failures, the WebSocket protocol's serializer, its route (auth, start, wrong
sample rate, stop, disconnect) and the metrics on /metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
)
from prometheus_client import CollectorRegistry
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from corral.agent.service import AgentService
from corral.agent.settings import AgentConfig
from corral.gateway.app import Gateway, create_app
from corral.gateway.auth import KeyStore
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router
from corral.testing import FakeLLM
from corral.testing.fake_voice import (
    EnergyVADAnalyzer,
    FakeSynthesizer,
    FakeTranscriber,
    QueueTransport,
    silence,
    tone,
)
from corral.voice.metrics import VoiceMetrics
from corral.voice.pipeline import Engines, VoicePipeline, build_pipeline
from corral.voice.processors import APOLOGY, SttMode, VoiceSerializer, parse_start
from corral.voice.service import VoiceService
from corral.voice.settings import TurnConfig, VoiceConfig

# The silence timeout ends turns here (smart-turn needs real speech): 0.2 s for the VAD to call
# the speech over, then 0.4 s more.
TURN = TurnConfig(smart_turn=False, vad_stop_s=0.2, max_silence_s=0.6, min_words_to_interrupt=1)
ANSWER = "Paris is the capital of France. It is a lovely city on the Seine."


@dataclass
class Rig:
    agent: AgentService
    llm: FakeLLM
    stt: FakeTranscriber
    tts: FakeSynthesizer
    transport: QueueTransport
    pipeline: VoicePipeline
    metrics: VoiceMetrics
    task: asyncio.Task[None]

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return self.transport.messages(kind)


@asynccontextmanager
async def voice_rig(
    tmp_path: Path,
    *,
    heard: list[Any] | None = None,
    llm: FakeLLM | None = None,
    tts: FakeSynthesizer | None = None,
    mode: SttMode = "incremental",
    turn: TurnConfig = TURN,
    realtime_output: bool = False,
    whole_passes: bool | None = None,
) -> AsyncIterator[Rig]:
    llm = llm or FakeLLM(default=ANSWER)
    agent = AgentService(AgentConfig(), tmp_path / "agent", llm, workflows_dir=tmp_path / "wf")
    await agent.start()
    stt = FakeTranscriber(replies=list(heard or []))
    tts = tts or FakeSynthesizer()
    metrics = VoiceMetrics(CollectorRegistry())
    transport = QueueTransport(out_sample_rate=tts.sample_rate, realtime_output=realtime_output)
    pipeline = build_pipeline(
        transport,
        engines=Engines(stt, tts, stt_whole_passes=whole_passes),
        agent=agent,
        workflow="voice",
        session="unit",
        turn=turn,
        out_sample_rate=tts.sample_rate,
        metrics=metrics,
        mode=mode,
        ready={"type": "ready", "sample_rate": tts.sample_rate},
        announce_interruptions=True,
        vad=EnergyVADAnalyzer(),
    )
    task = asyncio.create_task(pipeline.run())
    try:
        yield Rig(agent, llm, stt, tts, transport, pipeline, metrics, task)
    finally:
        await pipeline.cancel()
        await asyncio.wait_for(task, 15)
        await agent.stop()


def utterance(*parts: float, pause: float = 0.3) -> bytes:
    """Tones (speech to the energy VAD) of these lengths with short pauses, then the silence
    that ends the turn."""
    pcm = silence(0.2)
    for index, seconds in enumerate(parts):
        if index:
            pcm += silence(pause)
        pcm += tone(seconds, 200.0 + 60 * index)
    return pcm + silence(1.0)


def sample(metrics: VoiceMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def final_transcript(rig: Rig, start: int = 0) -> tuple[int, dict[str, Any]]:
    return await rig.transport.wait_message_where(
        lambda m: m.get("type") == "transcript" and m.get("final") is True, start=start
    )


# --- speech to text ---------------------------------------------------------------------------


async def test_incremental_stt_transcribes_each_stretch_while_the_user_speaks(tmp_path: Path) -> None:
    async with voice_rig(tmp_path, heard=["what is", "the capital", "of France"]) as rig:
        # 0.8 s, a pause, then 2.2 s of unbroken speech: cut at the pause and after about 1.5 s
        await rig.transport.feed(utterance(0.8, 2.2))
        _, final = await final_transcript(rig)
        assert final["text"] == "what is the capital of France"
        calls = rig.stt.calls
        assert len(calls) == 3, calls
        total = sum(calls)
        assert all(call < total / 2 for call in calls)  # stretches, not the whole utterance
        partials = [m["text"] for m in rig.messages("transcript") if m["final"] is False]
        assert partials[:2] == ["what is", "what is the capital"]
        _, turn = await rig.transport.wait_message("turn")
        assert turn["stt_mode"] == "incremental" and turn["stretches"] == 3
        assert turn["text"] == "what is the capital of France"


async def test_with_a_fixed_cost_engine_each_pause_transcribes_the_turn_so_far(tmp_path: Path) -> None:
    # Whisper costs about the same for 1 s as for 10 s: cutting stretches would buy nothing, so
    # each pause starts a pass over the whole turn so far; the last one is the transcript.
    heard = ["what is", "what is the capital of France"]
    async with voice_rig(tmp_path, heard=heard, whole_passes=True) as rig:
        await rig.transport.feed(utterance(0.8, 2.2))
        _, final = await final_transcript(rig)
        assert final["text"] == "what is the capital of France"
        first, second = rig.stt.calls
        assert first < 1.5 and second > first + 2.0  # the second pass covers the whole turn
        partials = [m["text"] for m in rig.messages("transcript") if m["final"] is False]
        assert partials[0] == "what is"


async def test_segmented_baseline_transcribes_the_whole_utterance_once(tmp_path: Path) -> None:
    async with voice_rig(tmp_path, heard=["what is the capital of France"], mode="segmented") as rig:
        await rig.transport.feed(utterance(0.8, 2.2))
        _, final = await final_transcript(rig)
        assert final["text"] == "what is the capital of France"
        assert len(rig.stt.calls) == 1
        assert rig.stt.calls[0] > 3.0  # the pause, both stretches and their pre-roll
        assert not [m for m in rig.messages("transcript") if m["final"] is False]


async def test_silence_makes_no_turn_and_noise_no_run(tmp_path: Path) -> None:
    async with voice_rig(tmp_path, heard=[""]) as rig:
        await rig.transport.feed(silence(2.0))
        await asyncio.sleep(1.0)
        assert rig.stt.calls == [] and rig.messages("transcript") == []
        await rig.transport.feed(utterance(1.0))  # noise the transcriber hears no word in
        _, final = await final_transcript(rig)
        assert final["text"] == ""
        await asyncio.sleep(0.3)
        assert rig.pipeline.agent.run_ids == [] and rig.agent.store.runs() == []
        assert sample(rig.metrics, "corral_voice_turns_total") == 0
        assert rig.messages("state")[-1]["state"] == "idle"


async def test_a_transcriber_failure_ends_the_turn_with_a_message(tmp_path: Path) -> None:
    async with voice_rig(tmp_path, heard=[RuntimeError("engine on fire"), "hello there"]) as rig:
        await rig.transport.feed(utterance(1.0))
        _, error = await rig.transport.wait_message("error")
        assert "speech-to-text failed (engine on fire)" in error["message"]
        assert sample(rig.metrics, "corral_voice_errors_total", {"stage": "stt"}) == 1
        start = len(rig.transport.sent)
        await rig.transport.feed(utterance(1.0))
        _, final = await final_transcript(rig, start)
        assert final["text"] == "hello there"
        await rig.transport.wait_message("turn", start=start)


# --- the agent and TTS ------------------------------------------------------------------------


async def test_the_answer_streams_and_speech_starts_on_the_first_sentence(tmp_path: Path) -> None:
    llm = FakeLLM(default=ANSWER, delay_s=0.1)
    async with voice_rig(tmp_path, heard=["what is the capital of France"], llm=llm) as rig:
        await rig.transport.feed(utterance(1.2))
        final_at, _ = await rig.transport.wait_message_where(
            lambda m: m.get("type") == "answer" and m.get("final") is True, within=20
        )
        first_audio = await rig.transport.wait_for(lambda s: s.kind == "audio")
        assert first_audio < final_at  # the first sentence was spoken before the answer ended
        assert rig.tts.calls[0] == "Paris is the capital of France."
        pieces = [m for m in rig.messages("answer") if m["final"] is False]
        assert len(pieces) > 5 and "".join(p["text"] for p in pieces).strip() == ANSWER
        assert rig.messages("answer")[-1]["text"] == ANSWER
        _, turn = await rig.transport.wait_message("turn")
        for key in ("vad_s", "stt_s", "llm_ttft_s", "tts_first_audio_s", "voice_to_voice_s"):
            assert isinstance(turn[key], float), (key, turn)
        assert turn["voice_to_voice_s"] >= turn["stt_s"] + turn["llm_ttft_s"]
        states = [m["state"] for m in rig.messages("state")]
        assert states[:4] == ["idle", "listening", "thinking", "speaking"]
        assert rig.messages()[0] == {"type": "ready", "sample_rate": 16000}
        run_id = rig.pipeline.agent.run_ids[0]
        if run_id in rig.agent.runner.active:
            await rig.agent.runner.active[run_id].result()
        record = rig.agent.store.run(run_id)
        assert record is not None and record.workflow == "voice" and record.status == "succeeded"
        assert record.inputs["messages"][-1] == {"role": "user", "content": "what is the capital of France"}
        for name in (
            "corral_voice_stt_seconds",
            "corral_voice_llm_ttft_seconds",
            "corral_voice_to_voice_seconds",
        ):
            assert sample(rig.metrics, f"{name}_count") == 1
        assert sample(rig.metrics, "corral_voice_turns_total") == 1
        # the next turn (once this one is over) carries the conversation so far
        await rig.transport.wait_message_where(
            lambda m: m.get("type") == "state" and m["state"] == "idle", start=final_at, within=20
        )
        start = len(rig.transport.sent)
        rig.stt.replies.append("and of Germany")
        await rig.transport.feed(utterance(1.0))
        await rig.transport.wait_message("turn", start=start, within=20)
        messages = rig.llm.requests[-1].messages
        assert [m["role"] for m in messages[-3:]] == ["user", "assistant", "user"]
        assert messages[-1]["content"] == "and of Germany"


@pytest.mark.parametrize(
    ("answer", "spoken"),
    [
        # a clause mark after 3 words ends the first phrase; the rest goes by sentences
        (
            "The capital of France, as you may know, is Paris. It is lovely in spring.",
            ["The capital of France,", "as you may know, is Paris.", "It is lovely in spring."],
        ),
        # a short first sentence goes as it is; "Sure," is too short to say alone
        ("Sure, I can. Spiders have eight legs.", ["Sure, I can.", "Spiders have eight legs."]),
        # no clause mark: the first 8 words
        (
            "Spiders have eight legs and they use them to climb walls. Yes.",
            ["Spiders have eight legs and they use them", "to climb walls.", "Yes."],
        ),
        # a number's comma is not a clause
        ("It costs 1,000 dollars or so, I think.", ["It costs 1,000 dollars or so,", "I think."]),
    ],
)
async def test_speech_starts_on_the_first_phrase_then_goes_by_sentences(
    answer: str, spoken: list[str]
) -> None:
    from corral.voice.phrases import FirstPhraseAggregator

    aggregator = FirstPhraseAggregator()
    for _ in range(2):  # each answer starts with a phrase again
        pieces = []
        for i in range(0, len(answer), 3):  # tokens of 3 characters
            pieces += [a.text async for a in aggregator.aggregate(answer[i : i + 3])]
        rest = await aggregator.flush()
        pieces += [rest.text] if rest else []
        assert pieces == spoken


async def test_barge_in_cancels_the_run_and_stops_playback(tmp_path: Path) -> None:
    story = " ".join(f"Sentence number {i} of a very long story." for i in range(40))
    llm = FakeLLM(replies=[story, "Sure."], delay_s=0.05)
    heard = ["tell me a long story", "stop please", "stop please"]
    async with voice_rig(tmp_path, heard=heard, llm=llm, realtime_output=True) as rig:
        await rig.transport.feed(utterance(1.0))
        first_audio = await rig.transport.wait_for(lambda s: s.kind == "audio", within=20)
        run_id = rig.pipeline.agent.run_ids[0]
        assert run_id in rig.agent.runner.active  # still generating while it speaks
        await rig.transport.feed(utterance(1.0), realtime=True)  # the user talks over it
        at, _ = await rig.transport.wait_message("interrupted", start=first_audio, within=20)
        next_turn, final = await final_transcript(rig, at)
        assert final["text"] == "stop please"
        after = [s for s in rig.transport.sent[at:next_turn] if s.kind == "audio"]
        assert sum(len(s.audio) for s in after) <= 2 * 640 * 2  # at most a chunk was in flight
        for _ in range(100):
            record = rig.agent.store.run(run_id)
            if record is not None and record.status != "running":
                break
            await asyncio.sleep(0.05)
        assert record is not None and record.status == "cancelled"
        assert sample(rig.metrics, "corral_voice_barge_ins_total") == 1
        await rig.transport.wait_message("turn", start=next_turn, within=20)
        assert rig.llm.requests[-1].messages[-1]["content"] == "stop please"


async def test_speech_under_min_words_does_not_interrupt(tmp_path: Path) -> None:
    story = " ".join(f"Part {i} of the story goes on." for i in range(30))
    turn = TURN.model_copy(update={"min_words_to_interrupt": 3})
    llm = FakeLLM(replies=[story], delay_s=0.05)
    async with voice_rig(
        tmp_path, heard=["tell me a story"], llm=llm, turn=turn, realtime_output=True
    ) as rig:
        rig.stt.default = "hmm"
        await rig.transport.feed(utterance(1.0))
        await rig.transport.wait_for(lambda s: s.kind == "audio", within=20)
        await rig.transport.feed(utterance(0.6), realtime=True)
        await asyncio.sleep(1.0)
        assert rig.messages("interrupted") == []
        assert len(rig.pipeline.agent.run_ids) == 1
        assert sample(rig.metrics, "corral_voice_barge_ins_total") == 0


async def test_a_tts_failure_ends_the_turn_with_an_error_and_the_session_goes_on(tmp_path: Path) -> None:
    llm = FakeLLM(replies=["Paris is big. It is old.", "Berlin is the capital of Germany."])
    heard = ["tell me about Paris", "and Germany"]
    async with voice_rig(tmp_path, heard=heard, llm=llm, tts=FakeSynthesizer(fail_on="Paris")) as rig:
        await rig.transport.feed(utterance(1.0))
        _, error = await rig.transport.wait_message("error")
        assert "text-to-speech failed" in error["message"]
        await rig.transport.wait_message("turn")
        assert rig.tts.calls == ["Paris is big."]  # the rest of a failed answer is not tried
        assert sample(rig.metrics, "corral_voice_errors_total", {"stage": "tts"}) == 1
        start = len(rig.transport.sent)
        await rig.transport.feed(utterance(1.0))
        await rig.transport.wait_for(lambda s: s.kind == "audio", start=start, within=20)
        assert rig.tts.calls[-1] == "Berlin is the capital of Germany."


async def test_a_failed_run_is_spoken_as_an_apology(tmp_path: Path) -> None:
    llm = FakeLLM(replies=[RuntimeError("the model fell over")])
    async with voice_rig(tmp_path, heard=["hello"], llm=llm) as rig:
        await rig.transport.feed(utterance(1.0))
        _, error = await rig.transport.wait_message("error", within=20)
        assert "the agent could not answer" in error["message"] and "/api/runs/" in error["message"]
        spoken = await rig.transport.wait_for(lambda s: s.kind == "audio", within=20)
        await rig.transport.wait_message_where(
            lambda m: m.get("type") == "state" and m["state"] == "idle", start=spoken, within=20
        )
        assert " ".join(rig.tts.calls) == APOLOGY
        assert sample(rig.metrics, "corral_voice_errors_total", {"stage": "agent"}) == 1


async def test_cancelling_the_session_mid_turn_cancels_the_run_and_leaves_no_task(tmp_path: Path) -> None:
    llm = FakeLLM(default="a slow answer " * 50, delay_s=0.2)
    async with voice_rig(tmp_path, heard=["hello"], llm=llm) as rig:
        before = {t for t in asyncio.all_tasks() if not t.done()}
        await rig.transport.feed(utterance(1.0))
        await rig.transport.wait_message_where(
            lambda m: m.get("type") == "state" and m["state"] == "thinking"
        )
        await rig.transport.wait_message("answer", within=20)
        run_id = rig.pipeline.agent.run_ids[0]
        await rig.pipeline.cancel("the client went away")
        for _ in range(100):
            record = rig.agent.store.run(run_id)
            if record is not None and record.status != "running":
                break
            await asyncio.sleep(0.05)
        assert record is not None and record.status == "cancelled"
        assert run_id not in rig.agent.runner.active
    await asyncio.sleep(0.1)
    left = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not [t for t in left if "voice" in t.get_name() or "stt" in t.get_name()], left


async def test_a_wrong_sample_rate_mid_session_is_refused_and_stop_ends_it(tmp_path: Path) -> None:
    async with voice_rig(tmp_path) as rig:
        await rig.transport.send({"type": "start", "sample_rate": 44100})
        index, error = await rig.transport.wait_message("error")
        assert error["message"].startswith("send 16 kHz mono PCM16") and "44100" in error["message"]
        assert not rig.task.done()  # said, and the session goes on at 16 kHz
        await rig.transport.send({"type": "dance"})
        _, error = await rig.transport.wait_message("error", start=index + 1)
        assert "unknown message type 'dance'" in error["message"]
    async with voice_rig(tmp_path / "2") as rig:
        await rig.transport.send({"type": "dance"})
        _, error = await rig.transport.wait_message("error")
        assert "unknown message type 'dance'" in error["message"]
        await rig.transport.send({"type": "stop"})
        await asyncio.wait_for(asyncio.shield(rig.task), 10)  # the session ends by itself


# --- the WebSocket protocol -------------------------------------------------------------------


async def test_serializer_round_trip() -> None:
    serializer = VoiceSerializer(22050)
    pcm = tone(0.02, rate=22050)
    assert await serializer.serialize(OutputAudioRawFrame(pcm, 22050, 1)) == pcm
    message = {"type": "transcript", "text": "héllo", "final": True}
    encoded = await serializer.serialize(OutputTransportMessageUrgentFrame(message=message))
    assert isinstance(encoded, str) and json.loads(encoded) == message
    assert json.loads(str(await serializer.serialize(InterruptionFrame()))) == {"type": "interrupted"}
    frame = await serializer.deserialize(tone(0.02) + b"\x01")  # an odd byte is dropped
    assert isinstance(frame, InputAudioRawFrame)
    assert frame.sample_rate == 16000 and frame.num_channels == 1 and frame.audio == tone(0.02)
    control = await serializer.deserialize(json.dumps({"type": "stop"}))
    assert isinstance(control, InputTransportMessageFrame) and control.message == {"type": "stop"}
    junk = await serializer.deserialize("not json")
    assert isinstance(junk, InputTransportMessageFrame) and junk.message["type"] == "invalid"
    assert await serializer.deserialize(b"\x00") is None
    assert parse_start({"type": "start", "session": "s1", "sample_rate": 16000}) == ("s1", "")
    session, problem = parse_start({"type": "start", "sample_rate": 48000})
    assert session is None and problem.startswith("send 16 kHz mono PCM16") and "48000" in problem
    assert parse_start({"type": "stop"})[0] is None


class SocketHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.keys = KeyStore(tmp_path / "keys.json")
        _, self.key = self.keys.create("test", "user")
        self.gateway = Gateway(router=Router([], LocalRegistry()), keys=self.keys)
        self.agent = AgentService(
            AgentConfig(), tmp_path / "agent", FakeLLM(default="ok"), workflows_dir=tmp_path / "wf"
        )
        self.gateway.agent = self.agent
        self.tts = FakeSynthesizer(sample_rate=22050)
        self.voice = VoiceService(
            VoiceConfig(),
            self.agent,
            registry=self.gateway.metrics.registry,
            engines=Engines(FakeTranscriber(), self.tts),
        )
        self.gateway.voice = self.voice
        self.app = create_app(self.gateway)


def test_the_websocket_authorizes_checks_start_and_runs_a_session(tmp_path: Path) -> None:
    harness = SocketHarness(tmp_path)
    with TestClient(harness.app) as client:
        client.portal.call(harness.agent.start)  # type: ignore[union-attr]
        try:
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect("/ws/voice") as socket,
            ):
                socket.receive_json()
            assert refused.value.code == 1008
            url = f"/ws/voice?token={harness.key}"
            with client.websocket_connect(url) as socket:
                socket.send_json({"type": "start", "session": "s1", "sample_rate": 44100})
                error = socket.receive_json()
                assert error["type"] == "error" and error["message"].startswith("send 16 kHz mono PCM16")
                with pytest.raises(WebSocketDisconnect) as closed:
                    socket.receive_json()
                assert closed.value.code == 1003
            with client.websocket_connect(url) as socket:
                socket.send_bytes(silence(0.02))
                assert "first" in socket.receive_json()["message"]
            with client.websocket_connect(url) as socket:
                socket.send_json({"type": "start", "workflow": "nope"})
                error = socket.receive_json()["message"]
                assert "no workflow 'nope'" in error and "voice" in error
            with client.websocket_connect(url) as socket:
                socket.send_json({"type": "start", "session": "s1", "sample_rate": 16000, "mode": "ptt"})
                ready = socket.receive_json()
                assert ready["type"] == "ready" and ready["sample_rate"] == 22050 and ready["session"] == "s1"
                assert socket.receive_json() == {"type": "state", "state": "idle"}
                status = client.get("/api/voice", headers={"authorization": f"Bearer {harness.key}"}).json()
                assert status["ready"] is True and [s["session"] for s in status["sessions"]] == ["s1"]
                for _ in range(25):
                    socket.send_bytes(silence(0.02))
                socket.send_text("{oops")
                assert "JSON objects" in socket.receive_json()["message"]
                socket.send_json({"type": "stop"})
                with pytest.raises(WebSocketDisconnect):
                    while True:
                        socket.receive_json()
            with client.websocket_connect(url) as socket:  # a client that just goes away
                socket.send_json({"type": "start", "session": "s2"})
                assert socket.receive_json()["type"] == "ready"
                socket.send_bytes(silence(0.1))
            for _ in range(100):
                if not harness.voice.sessions:
                    break
                client.portal.call(asyncio.sleep, 0.05)  # type: ignore[union-attr]
            assert harness.voice.sessions == {}
            metrics = client.get("/metrics", headers={"authorization": f"Bearer {harness.key}"}).text
            for name in (
                "corral_voice_stt_seconds_bucket",
                "corral_voice_llm_ttft_seconds_count",
                "corral_voice_tts_first_audio_seconds_sum",
                "corral_voice_to_voice_seconds_count",
                "corral_voice_turns_total",
                "corral_voice_barge_ins_total",
            ):
                assert name in metrics, name
        finally:
            client.portal.call(harness.agent.stop)  # type: ignore[union-attr]


def test_offer_routes_need_a_key_and_an_offer(tmp_path: Path) -> None:
    harness = SocketHarness(tmp_path)
    with TestClient(harness.app) as client:
        assert client.post("/api/voice/offer", json={"sdp": "x", "type": "offer"}).status_code == 401
        headers = {"authorization": f"Bearer {harness.key}"}
        bad = client.post("/api/voice/offer", json={"type": "offer"}, headers=headers)
        assert bad.status_code == 400 and '"sdp"' in bad.json()["error"]["message"]
        patch = client.patch("/api/voice/offer", json={"pc_id": "nope", "candidates": []}, headers=headers)
        assert patch.status_code == 400 and "POST /api/voice/offer first" in patch.json()["error"]["message"]


async def test_the_service_serves_wyoming_with_its_engines_when_asked(tmp_path: Path) -> None:
    import socket

    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    agent = AgentService(AgentConfig(), tmp_path / "agent", FakeLLM(), workflows_dir=tmp_path / "wf")
    config = VoiceConfig.model_validate({"wyoming": {"enabled": True, "host": "127.0.0.1", "port": port}})
    voice = VoiceService(
        config, agent, registry=CollectorRegistry(), engines=Engines(FakeTranscriber(), FakeSynthesizer())
    )
    await voice.start()
    try:
        info = None
        for _ in range(100):
            try:
                async with AsyncTcpClient("127.0.0.1", port) as client:
                    await client.write_event(Describe().event())
                    event = await client.read_event()
                    assert event is not None
                    info = Info.from_event(event)
                    break
            except OSError:
                await asyncio.sleep(0.05)
        assert info is not None and info.asr[0].models[0].name == "fake-stt"
    finally:
        await voice.stop()
    with pytest.raises(OSError):
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())


async def test_a_webrtc_peer_gets_an_answer_and_the_session_talks_on_its_data_channel(tmp_path: Path) -> None:
    import httpx
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack

    harness = SocketHarness(tmp_path)
    await harness.agent.start()
    await harness.voice.start()
    peer = RTCPeerConnection()
    try:
        peer.addTrack(AudioStreamTrack())  # a silent microphone
        channel = peer.createDataChannel("chat", ordered=True)
        received: asyncio.Queue[Any] = asyncio.Queue()
        channel.on("message", received.put_nowait)
        await peer.setLocalDescription(await peer.createOffer())
        transport = httpx.ASGITransport(app=harness.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://corral") as client:
            headers = {"authorization": f"Bearer {harness.key}"}
            offer = {"sdp": peer.localDescription.sdp, "type": "offer", "session": "rtc-1"}
            response = await client.post("/api/voice/offer", json=offer, headers=headers)
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["type"] == "answer" and answer["pc_id"] and answer["session"] == "rtc-1"
            await peer.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
            async with asyncio.timeout(20):
                while True:
                    message = json.loads(await received.get())
                    if message.get("type") == "ready":
                        break
            assert message["sample_rate"] == 24000 and message["session"] == "rtc-1"
            status = (await client.get("/api/voice", headers=headers)).json()
            assert [(s["session"], s["transport"]) for s in status["sessions"]] == [("rtc-1", "webrtc")]
    finally:
        await peer.close()
        await harness.voice.stop()
        await harness.agent.stop()
    assert harness.voice.sessions == {}


async def test_a_missing_voice_workflow_is_reported_at_start(tmp_path: Path) -> None:
    agent = AgentService(AgentConfig(), tmp_path / "agent", FakeLLM(), workflows_dir=tmp_path / "wf")
    await agent.start()
    engines = Engines(FakeTranscriber(), FakeSynthesizer())
    try:
        for workflow, error in (("voice", None), ("no-such-flow", "voice.workflow 'no-such-flow'")):
            config = VoiceConfig.model_validate({"workflow": workflow})
            voice = VoiceService(config, agent, registry=CollectorRegistry(), engines=engines)
            await voice.start()
            try:
                status = voice.status()
                if error is None:
                    assert status["workflow_error"] is None
                else:
                    assert status["workflow_error"].startswith(error)
                    assert "the workflows are:" in status["workflow_error"]
            finally:
                await voice.stop()
    finally:
        await agent.stop()
