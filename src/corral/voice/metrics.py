"""Voice metrics: per-turn latency histograms (STT, LLM time to first token, TTS first audio,
voice to voice), turn, barge-in and error counters and open sessions, on the gateway's Prometheus
registry so `GET /metrics` exports them with everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Voice latencies live between 50 ms and a few seconds; finer buckets there than the gateway's.
VOICE_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

ErrorStage = Literal["stt", "agent", "tts", "transport"]


class VoiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stt = Histogram(
            "corral_voice_stt_seconds",
            "From the end of the user's speech (VAD stop) to the final transcript of the turn",
            buckets=VOICE_BUCKETS,
            registry=r,
        )
        self.llm_ttft = Histogram(
            "corral_voice_llm_ttft_seconds",
            "From the final transcript (the agent run starts) to the first answer token",
            buckets=VOICE_BUCKETS,
            registry=r,
        )
        self.tts_first_audio = Histogram(
            "corral_voice_tts_first_audio_seconds",
            "From the first answer token to the first audio byte sent (first sentence + synthesis)",
            buckets=VOICE_BUCKETS,
            registry=r,
        )
        self.voice_to_voice = Histogram(
            "corral_voice_to_voice_seconds",
            "From the end of the user's speech to the first audio byte of the answer",
            buckets=VOICE_BUCKETS,
            registry=r,
        )
        self.turns = Counter("corral_voice_turns", "User turns that started an agent run", registry=r)
        self.barge_ins = Counter(
            "corral_voice_barge_ins", "Answers the user interrupted by speaking over them", registry=r
        )
        self.errors = Counter(
            "corral_voice_errors",
            "Voice failures by stage (stt, agent, tts, transport)",
            ["stage"],
            registry=r,
        )
        self.sessions = Gauge("corral_voice_sessions", "Open voice sessions", ["transport"], registry=r)

    def error(self, stage: ErrorStage) -> None:
        self.errors.labels(stage).inc()

    def observe(self, turn: TurnTimings) -> None:
        """Record a turn's latencies once its first audio went out (or it ended without any)."""
        for histogram, value in (
            (self.stt, turn.stt_s),
            (self.llm_ttft, turn.llm_ttft_s),
            (self.tts_first_audio, turn.tts_first_audio_s),
            (self.voice_to_voice, turn.voice_to_voice_s),
        ):
            if value is not None:
                histogram.observe(value)


def _gap(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)


@dataclass
class TurnTimings:
    """Wall-clock marks (time.time()) of one user turn, from speech to the answer's first audio.

    voice_to_voice = vad + stt + llm_ttft + tts_first_audio, where `vad` is the silence the VAD
    waits for before it calls the speech over (turn.vad_stop_s)."""

    turn: int
    stt_mode: str = "incremental"
    speech_end: float | None = None  # the last voiced audio: VAD stop minus its stop_secs
    vad_stop: float | None = None  # the VAD said the user stopped
    turn_end: float | None = None  # the turn detector said the turn is over
    transcript: float | None = None  # the final transcript was ready (the run starts now)
    first_token: float | None = None  # the first answer token (or the whole answer) arrived
    tts_start: float | None = None  # the first sentence went to the synthesizer
    first_audio: float | None = None  # the first audio byte went to the client
    audio_s: float = 0.0  # seconds of user audio in the turn
    stretches: int = 0  # transcriptions it took (incremental: one per stretch)
    engine: str = ""
    run_id: str | None = None
    text: str = ""
    interrupted: bool = False
    reported: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vad_s(self) -> float | None:
        return _gap(self.speech_end, self.vad_stop)

    @property
    def stt_s(self) -> float | None:
        return _gap(self.vad_stop, self.transcript)

    @property
    def llm_ttft_s(self) -> float | None:
        return _gap(self.transcript, self.first_token)

    @property
    def tts_first_audio_s(self) -> float | None:
        return _gap(self.first_token, self.first_audio)

    @property
    def voice_to_voice_s(self) -> float | None:
        return _gap(self.speech_end, self.first_audio)

    def summary(self) -> dict[str, Any]:
        """The `turn` message for the client and the `voice.turn` event (seconds, 3 decimals)."""

        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 3)

        return {
            "type": "turn",
            "turn": self.turn,
            "run_id": self.run_id,
            "text": self.text,
            "stt_mode": self.stt_mode,
            "stt_engine": self.engine,
            "audio_s": round(self.audio_s, 3),
            "stretches": self.stretches,
            "vad_s": r(self.vad_s),
            "stt_s": r(self.stt_s),
            "llm_ttft_s": r(self.llm_ttft_s),
            "tts_first_audio_s": r(self.tts_first_audio_s),
            "first_sentence_s": r(_gap(self.first_token, self.tts_start)),
            "voice_to_voice_s": r(self.voice_to_voice_s),
            "interrupted": self.interrupted,
        }
