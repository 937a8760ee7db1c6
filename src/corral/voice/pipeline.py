"""The pipecat pipeline of one voice session: transport in -> Silero VAD -> turn detection
(smart-turn v3, or a silence timeout) -> SpeechToText -> AgentBridge -> SynthesizerTTS (pipecat
aggregates sentences) -> transport out, with barge-in; and how it runs (a WorkerRunner)."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from loguru import logger as loguru_logger
from pipecat.audio.turn.base_turn_analyzer import BaseTurnAnalyzer
from pipecat.audio.turn.smart_turn.base_smart_turn import BaseSmartTurn, SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_start import VADUserTurnStartStrategy
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_stop.base_user_turn_stop_strategy import BaseUserTurnStopStrategy
from pipecat.turns.user_turn_processor import UserTurnProcessor
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

from corral.agent.service import AgentService
from corral.voice.engines import SAMPLE_RATE, Synthesizer, Transcriber
from corral.voice.metrics import VoiceMetrics
from corral.voice.processors import AgentBridge, Conversation, SpeechToText, SttMode, SynthesizerTTS
from corral.voice.settings import TurnConfig

log = logging.getLogger("corral.voice")
STRETCH_S = 1.5  # unbroken speech sent to the transcriber while the user goes on talking


@dataclass
class Engines:
    """The warm speech engines a session uses, each with its one worker thread (engines block:
    calls queue there, across sessions)."""

    transcriber: Transcriber
    synthesizer: Synthesizer
    stt_executor: Executor | None = None
    tts_executor: Executor | None = None
    # Seconds of transcription per extra second of audio, measured at load (None: unknown); shown
    # in GET /api/voice and the log, not used to choose: on a busy machine the timing swings.
    stt_cost_per_audio_s: float | None = None
    # Incremental STT re-reads the whole turn so far at each pause (True) or transcribes each
    # stretch once (False). None: by engine. Whisper needs the sentence as context (cut into
    # 1.5 s stretches it heard "capital of friends") and a short call costs about the same as a
    # long one; pocketsphinx reads words locally and its cost grows with the audio.
    stt_whole_passes: bool | None = None

    @property
    def stt_proportional(self) -> bool:
        """Whether incremental STT transcribes stretches (see `stt_whole_passes`)."""
        whole = self.stt_whole_passes
        if whole is None:
            whole = self.transcriber.name == "whisper"
        return not whole


class SharedSmartTurn(LocalSmartTurnAnalyzerV3):
    """Pipecat's smart-turn v3 analyzer with its ONNX session loaded once per process (each
    session still keeps its own audio buffer and worker thread)."""

    _sessions: ClassVar[dict[int, Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, cpu_count: int = 1, params: SmartTurnParams | None = None) -> None:
        BaseSmartTurn.__init__(self, params=params)  # LocalSmartTurnAnalyzerV3 would load the model again
        self._log_data = False
        self._session = self.model(cpu_count)

    @classmethod
    def model(cls, cpu_count: int = 1) -> Any:
        with cls._lock:
            session = cls._sessions.get(cpu_count)
            if session is None:
                probe = LocalSmartTurnAnalyzerV3(cpu_count=cpu_count)  # loads the bundled ONNX
                session = cls._sessions[cpu_count] = probe._session
            return session

    @classmethod
    def warm(cls, cpu_count: int = 1) -> None:
        """Load the model and run it once, so the first turn does not pay for either."""
        import numpy as np

        analyzer = cls(cpu_count=cpu_count)
        analyzer.set_sample_rate(SAMPLE_RATE)
        analyzer._predict_endpoint(np.zeros(SAMPLE_RATE, dtype=np.float32))


def stop_strategy(turn: TurnConfig, analyzer: BaseTurnAnalyzer | None = None) -> BaseUserTurnStopStrategy:
    """smart_turn: at each pause the model says whether the user has finished, and
    max_silence_s of silence ends the turn regardless; otherwise max_silence_s of silence does.

    The transcript comes after the turn ends (SpeechToText), so the strategy must not wait."""
    if turn.smart_turn or analyzer is not None:
        analyzer = analyzer or SharedSmartTurn(params=SmartTurnParams(stop_secs=turn.max_silence_s))
        return TurnAnalyzerUserTurnStopStrategy(turn_analyzer=analyzer, wait_for_transcript=False)
    return SpeechTimeoutUserTurnStopStrategy(
        user_speech_timeout=max(0.0, turn.max_silence_s - turn.vad_stop_s), wait_for_transcript=False
    )


@dataclass
class VoicePipeline:
    worker: PipelineWorker
    conversation: Conversation
    stt: SpeechToText
    agent: AgentBridge
    processors: list[Any] = field(default_factory=list)

    async def run(self) -> None:
        """Run until the transport ends it (disconnect, stop) or `cancel()`."""
        runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
        await runner.add_workers(self.worker)
        await runner.run()

    async def cancel(self, reason: str = "cancelled") -> None:
        await self.worker.cancel(reason=reason)


def build_pipeline(
    transport: BaseTransport,
    *,
    engines: Engines,
    agent: AgentService,
    workflow: str,
    session: str,
    turn: TurnConfig,
    out_sample_rate: int,
    metrics: VoiceMetrics | None = None,
    mode: SttMode = "incremental",
    ready: dict[str, Any] | None = None,
    announce_interruptions: bool = False,
    vad: VADAnalyzer | None = None,
    turn_analyzer: BaseTurnAnalyzer | None = None,
) -> VoicePipeline:
    """One session's pipeline over `transport` (its input must deliver 16 kHz mono PCM16)."""
    quiet_pipecat_logs()
    conversation = Conversation(
        session=session, metrics=metrics, min_words_to_interrupt=turn.min_words_to_interrupt
    )
    vad = vad or SileroVADAnalyzer(params=VADParams(stop_secs=turn.vad_stop_s))
    strategies = UserTurnStrategies(
        # barge-in is SpeechToText's call (it counts words), so a turn start interrupts nothing
        start=[VADUserTurnStartStrategy(enable_interruptions=False)],
        stop=[stop_strategy(turn, turn_analyzer)],
    )
    stt = SpeechToText(
        engines.transcriber,
        conversation,
        executor=engines.stt_executor,
        mode=mode,
        stretch_s=STRETCH_S,
        proportional=engines.stt_proportional,
        metrics=metrics,
    )
    bridge = AgentBridge(
        agent,
        conversation,
        workflow=workflow,
        ready=ready,
        announce_interruptions=announce_interruptions,
        metrics=metrics,
    )
    tts = SynthesizerTTS(engines.synthesizer, conversation, executor=engines.tts_executor, metrics=metrics)
    processors: list[Any] = [
        transport.input(),
        VADProcessor(vad_analyzer=vad),
        UserTurnProcessor(
            user_turn_strategies=strategies, user_turn_stop_timeout=max(5.0, turn.max_silence_s + 2)
        ),
        stt,
        bridge,
        tts,
        transport.output(),
    ]
    worker = PipelineWorker(
        Pipeline(processors),
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=out_sample_rate),
        enable_rtvi=False,  # the client speaks corral's small protocol, not RTVI
        idle_timeout_secs=None,  # a hands-free session may listen for a long time
        cancel_on_idle_timeout=False,
        enable_turn_tracking=False,
        name=f"voice-{session or 'anonymous'}",
    )
    return VoicePipeline(worker, conversation, stt, bridge, processors)


_quieted = False


def quiet_pipecat_logs() -> None:
    """Pipecat logs through loguru at DEBUG to stderr; send it through corral's logging instead,
    at WARNING (CORRAL_PIPECAT_LOG=DEBUG to see everything)."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    level = os.environ.get("CORRAL_PIPECAT_LOG", "WARNING").upper()
    target = logging.getLogger("pipecat")

    def forward(message: Any) -> None:
        record = message.record
        target.log(logging.getLevelNamesMapping().get(record["level"].name, logging.INFO), record["message"])

    loguru_logger.remove()
    loguru_logger.add(forward, level=level, format="{message}")
