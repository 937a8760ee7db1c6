"""Corral's pipecat processors for a voice session: SpeechToText (transcribes while the user
speaks, or the whole utterance at the end in the baseline mode, and decides barge-in),
AgentBridge (runs the voice workflow in-process, streams its tokens to TTS, cancels on barge-in,
reports each turn's timings), SynthesizerTTS (a TTSService over our Synthesizer) and
VoiceSerializer (the WebSocket's simple PCM16 + JSON protocol)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputTransportMessageFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
    SystemFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService
from pipecat.utils.text.transforms import strip_markdown
from pipecat.utils.time import time_now_iso8601

from corral.agent.events import Subscription
from corral.agent.runner import new_run_id
from corral.agent.service import AgentService
from corral.voice.engines import SAMPLE_RATE, Synthesizer, Transcriber, Transcript, pcm16_to_float
from corral.voice.metrics import TurnTimings, VoiceMetrics
from corral.voice.phrases import FirstPhraseAggregator

log = logging.getLogger("corral.voice")

SttMode = Literal["incremental", "segmented"]
BYTES_PER_S = SAMPLE_RATE * 2  # PCM16 mono at 16 kHz
_T = TypeVar("_T")

RATE_HINT = "send 16 kHz mono PCM16 (little-endian) audio and announce it with "
RATE_HINT += '{"type": "start", "sample_rate": 16000}'


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text)


def clean_transcript(text: str) -> str:
    """One line of text; what has no word in it (engines' noise markers, lone punctuation) is ''."""
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>", " ", text)  # [noise], (music), <unk>
    text = " ".join(text.split())
    return text if words(text) else ""


async def run_blocking(executor: Executor | None, fn: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking engine call on its executor (one worker: calls queue, and a queued call
    whose caller went away is dropped before it runs)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, fn, *args)


@dataclass
class Conversation:
    """What the processors of one session share: who it is and whether the bot is busy."""

    session: str
    metrics: VoiceMetrics | None = None
    min_words_to_interrupt: int = 1
    turns: int = 0
    run_active: bool = False
    bot_speaking: bool = False
    speech_pending: bool = False  # answer text went to TTS; its audio has not started yet
    user_speaking: bool = False
    current: TurnTimings | None = None  # the turn being answered
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Thinking or speaking: a user who talks now is barging in."""
        return self.run_active or self.bot_speaking or self.speech_pending

    def next_turn(self, mode: SttMode) -> TurnTimings:
        self.turns += 1
        return TurnTimings(self.turns, stt_mode=mode)


def message_frame(message: dict[str, Any]) -> OutputTransportMessageUrgentFrame:
    return OutputTransportMessageUrgentFrame(message=message)


@dataclass
class SpeechFailedFrame(SystemFrame):
    """Upstream from SynthesizerTTS: the answer's audio will not come (the engine failed)."""

    error: str = ""


# --- speech to text ---------------------------------------------------------------------------


@dataclass
class _Turn:
    timings: TurnTimings
    audio: bytearray
    cut: int = 0  # bytes of `audio` already sent to the transcriber (incremental mode)
    jobs: list[asyncio.Task[str]] = field(default_factory=list)
    voiced_since_cut: bool = True
    speaking: bool = True
    interrupted: bool = False
    probe: asyncio.Task[None] | None = None
    probed_at: int = 0  # len(audio) at the last barge-in probe
    partial: list[str] = field(default_factory=list)
    pauses: list[bool] = field(default_factory=list)  # per job: did its stretch end at a pause
    whole: bool = False  # every job transcribes the turn from its start (a fixed-cost engine)

    @property
    def busy(self) -> bool:
        """A stretch is still being transcribed."""
        return any(not job.done() for job in self.jobs)

    def joined(self, texts: list[str]) -> str:
        """The stretches' texts as one: a stretch cut in unbroken speech loses the full stop or
        question mark the engine put at its end (it was not the end of a sentence)."""
        if self.whole:
            return texts[-1] if texts else ""  # the last pass heard everything
        parts = []
        for index, text in enumerate(texts):
            last = index == len(texts) - 1
            if text and not last and not self.pauses[index]:
                text = text.rstrip(" .?!,;")
            if text:
                parts.append(text)
        return " ".join(parts)


class SpeechToText(FrameProcessor):
    """Turns the user's audio into one TranscriptionFrame per turn.

    Sits after the VAD and the turn detector. `incremental` transcribes while the user speaks,
    in one of two ways, by engine (`Engines.stt_whole_passes`):

    - stretches (`proportional`: the cost grows with the audio, e.g. pocketsphinx): every pause
      the VAD reports inside the turn, and every `stretch_s` of unbroken speech (cut at its
      quietest moment), sends the finished stretch to the transcriber, so at the end of the turn
      only the last stretch is left;
    - whole passes (Whisper: it needs the sentence as context, and a call costs about the same
      for 2 s as for 10 s): every
      pause starts a transcription of the turn so far; if the pause turns out to be the end of
      the turn, its transcript is ready (or nearly) when the turn detector decides, otherwise
      the next pause starts another. Cutting would buy nothing here, and lose Whisper context.

    Either way at most one job runs while the user talks, so a slow engine never builds a queue
    the end of the turn would wait for. `segmented` (the baseline, pipecat's usual pattern for a
    local Whisper): the whole utterance is transcribed once the turn is over.

    It also decides barge-in: while the bot is thinking or speaking, user speech with at least
    `min_words_to_interrupt` words (0: any speech) broadcasts an InterruptionFrame.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        conversation: Conversation,
        *,
        executor: Executor | None = None,
        mode: SttMode = "incremental",
        stretch_s: float = 1.5,
        min_stretch_s: float = 0.5,
        proportional: bool = True,
        preroll_s: float = 0.5,
        probe_s: float = 0.5,
        metrics: VoiceMetrics | None = None,
    ) -> None:
        super().__init__(name=f"SpeechToText[{mode}]")
        self._transcriber = transcriber
        self._conversation = conversation
        self._executor = executor
        self.mode: SttMode = mode
        self._stretch = int(stretch_s * SAMPLE_RATE) * 2
        self._proportional = proportional
        self._min_stretch = int(min_stretch_s * SAMPLE_RATE) * 2
        self._preroll_bytes = int(preroll_s * SAMPLE_RATE) * 2
        self._probe = int(probe_s * SAMPLE_RATE) * 2
        self._voice_metrics = metrics
        self._preroll = bytearray()
        self._turn: _Turn | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._engine_name = getattr(transcriber, "name", "stt")

    # frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self._on_audio(frame)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            await self._on_speech_started()
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._on_speech_stopped(frame)
        elif isinstance(frame, UserStartedSpeakingFrame) and self._turn is None:
            await self._on_speech_started()  # a turn begun by something other than the VAD
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._on_turn_over()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._drop_all()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()  # type: ignore[no-untyped-call]
        await self._drop_all()

    # the turn's audio

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        turn = self._turn
        if turn is None:
            self._preroll += frame.audio
            if len(self._preroll) > self._preroll_bytes:
                del self._preroll[: len(self._preroll) - self._preroll_bytes]
            return
        turn.audio += frame.audio
        if turn.speaking:
            turn.voiced_since_cut = True
        if (
            self.mode == "incremental"
            and self._proportional
            and turn.speaking
            and len(turn.audio) - turn.cut >= self._stretch
            and not turn.busy
        ):
            self._cut(turn, self._quiet_point(turn), pause=False)
        await self._maybe_probe(turn)

    async def _on_speech_started(self) -> None:
        turn = self._turn
        if turn is not None:
            turn.speaking = True
            turn.voiced_since_cut = True
            return
        turn = _Turn(self._conversation.next_turn(self.mode), bytearray(self._preroll))
        turn.timings.engine = self._engine_name
        self._preroll.clear()
        self._turn = turn
        if self._conversation.busy and self._conversation.min_words_to_interrupt == 0:
            await self._barge_in(turn)

    def _on_speech_stopped(self, frame: VADUserStoppedSpeakingFrame) -> None:
        turn = self._turn
        if turn is None:
            return
        turn.speaking = False
        turn.timings.vad_stop = frame.timestamp
        turn.timings.speech_end = frame.timestamp - frame.stop_secs
        if self.mode == "incremental" and len(turn.audio) - turn.cut >= self._min_stretch and not turn.busy:
            self._cut(turn, len(turn.audio), whole=not self._proportional)

    def _on_turn_over(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        turn.timings.turn_end = time.time()
        if turn.timings.vad_stop is None:  # ended by a timeout while the VAD still heard speech
            turn.timings.vad_stop = turn.timings.speech_end = turn.timings.turn_end
        rest = len(turn.audio) > turn.cut and (turn.voiced_since_cut or not turn.jobs)
        if self.mode == "segmented" or rest:
            self._cut(turn, len(turn.audio), whole=self.mode == "incremental" and not self._proportional)
        task = self.create_task(self._finish(turn), name=f"stt-finish-{turn.timings.turn}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _quiet_point(self, turn: _Turn) -> int:
        """Where to cut unbroken speech: the quietest 20 ms in its last 400 ms (likely between
        words), so no word is split in two."""
        window = int(0.02 * SAMPLE_RATE) * 2
        end = len(turn.audio) - len(turn.audio) % 2
        start = max(turn.cut + self._min_stretch, end - int(0.4 * SAMPLE_RATE) * 2)
        best, best_energy = end, float("inf")
        for offset in range(start - start % 2, end - window + 1, window):
            chunk = np.frombuffer(bytes(turn.audio[offset : offset + window]), dtype="<i2")
            energy = float(np.mean(chunk.astype(np.float32) ** 2)) if len(chunk) else 0.0
            if energy < best_energy:
                best, best_energy = offset + window // 2, energy
        return best - best % 2

    def _cut(self, turn: _Turn, at: int, *, pause: bool = True, whole: bool = False) -> None:
        """Send turn.audio[cut:at] to the transcriber (`whole`: turn.audio[:at]); `pause`: it
        ends where the user paused (keep its closing punctuation), else in unbroken speech (drop
        it when joining)."""
        if at <= turn.cut:
            return
        turn.whole = turn.whole or whole
        pcm = bytes(turn.audio[0 if whole else turn.cut : at])
        turn.cut = at
        turn.voiced_since_cut = False
        job = self.create_task(self._transcribe(pcm, turn), name=f"stt-{turn.timings.turn}-{len(turn.jobs)}")
        turn.jobs.append(job)
        turn.pauses.append(pause)

    # transcription

    async def _run(self, pcm: bytes) -> Transcript:
        return await run_blocking(self._executor, self._transcriber.transcribe, pcm16_to_float(pcm))

    async def _transcribe(self, pcm: bytes, turn: _Turn) -> str:
        try:
            result = await self._run(pcm)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("speech-to-text failed on %.2f s of audio: %s", len(pcm) / BYTES_PER_S, exc)
            if self._voice_metrics is not None:
                self._voice_metrics.error("stt")
            await self.push_frame(message_frame({
                "type": "error",
                "message": f"speech-to-text failed ({exc}); the session goes on, say it again",
            }))  # fmt: skip
            return ""
        text = clean_transcript(result.text)
        if text and self.mode == "incremental":
            turn.partial.append(text)
            # in the order they finish (one job at a time); a whole pass says it all
            partial = text if turn.whole else " ".join(turn.partial)
            await self.push_frame(
                InterimTranscriptionFrame(text=partial, user_id="", timestamp=time_now_iso8601())
            )
        return text

    async def _finish(self, turn: _Turn) -> None:
        texts = [await job for job in turn.jobs]
        text = clean_transcript(turn.joined(texts))
        timings = turn.timings
        timings.transcript = time.time()
        timings.audio_s = len(turn.audio) / BYTES_PER_S
        timings.stretches = len(turn.jobs)
        timings.text = text
        if turn.probe is not None:
            turn.probe.cancel()
        if self._conversation.busy and not turn.interrupted:
            if text and len(words(text)) >= max(1, self._conversation.min_words_to_interrupt):
                await self._barge_in(turn)
            elif text:
                log.info("ignored %r said over the answer (under turn.min_words_to_interrupt)", text)
                return
        frame = TranscriptionFrame(text=text, user_id="", timestamp=time_now_iso8601(), finalized=True)
        frame.result = timings
        await self.push_frame(frame)

    # barge-in

    async def _maybe_probe(self, turn: _Turn) -> None:
        """While the bot is busy, transcribe what the user has said so far every `probe_s` of
        speech and interrupt once it has enough words."""
        need = self._conversation.min_words_to_interrupt
        if not self._conversation.busy or turn.interrupted or need == 0:
            return
        if turn.probe is not None and not turn.probe.done():
            return
        if len(turn.audio) - turn.probed_at < self._probe or not turn.speaking:
            return
        turn.probed_at = len(turn.audio)
        turn.probe = self.create_task(self._probe_words(turn, bytes(turn.audio), need), name="stt-probe")

    async def _probe_words(self, turn: _Turn, pcm: bytes, need: int) -> None:
        try:
            result = await self._run(pcm)
        except Exception as exc:
            log.debug("barge-in probe failed: %s", exc)
            return
        if len(words(clean_transcript(result.text))) >= need and self._turn is turn:
            await self._barge_in(turn)

    async def _barge_in(self, turn: _Turn) -> None:
        if turn.interrupted or not self._conversation.busy:
            return
        turn.interrupted = True
        log.info("barge-in: the user spoke over the answer; stopping it")
        await self.broadcast_interruption()  # type: ignore[no-untyped-call]

    async def _drop_all(self) -> None:
        turn, self._turn = self._turn, None
        tasks: list[asyncio.Task[Any]] = list(self._finishing)
        if turn is not None:
            tasks += turn.jobs
            if turn.probe is not None:
                tasks.append(turn.probe)
        for task in tasks:
            if not task.done():
                await self.cancel_task(task)


# --- the agent --------------------------------------------------------------------------------

TERMINAL = ("run.finished", "run.failed", "run.cancelled")
APOLOGY = "Sorry, I could not answer that. Please try again."


class AgentBridge(FrameProcessor):
    """Runs the voice workflow on each final transcript, in-process, and speaks its answer.

    Tokens of the workflow's `llm` nodes become LLMTextFrames as they arrive (TTS starts on the
    first sentence; the node's end flushes the last one); a workflow that does not stream is
    spoken from `outputs.answer` when the run finishes; a failed run is spoken as a short
    apology. Barge-in (an InterruptionFrame) cancels the run, which closes the model's stream.
    It also tells the client what is happening (transcripts, answer text, state, turn timings).
    """

    def __init__(
        self,
        agent: AgentService,
        conversation: Conversation,
        *,
        workflow: str,
        ready: dict[str, Any] | None = None,
        announce_interruptions: bool = False,
        history_messages: int = 6,
        metrics: VoiceMetrics | None = None,
    ) -> None:
        super().__init__(name="AgentBridge")
        self._agent = agent
        self._conversation = conversation
        self._workflow = workflow
        self._ready = ready
        self._announce_interruptions = announce_interruptions
        self._history_messages = history_messages
        self._voice_metrics = metrics
        self._run_task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._turn: TurnTimings | None = None
        self._client_state = ""
        self.run_ids: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._ready is not None:
                await self._send(self._ready)
            await self._set_state("idle")
            return
        if isinstance(frame, TranscriptionFrame):
            await self._on_transcript(frame)
            return
        if isinstance(frame, InterimTranscriptionFrame):
            await self._send({"type": "transcript", "text": frame.text, "final": False})
            return
        if isinstance(frame, InputTransportMessageFrame):
            await self._on_client_message(frame.message)
            return
        if isinstance(frame, InterruptionFrame):
            await self._interrupt()
        elif isinstance(frame, UserStartedSpeakingFrame):
            self._conversation.user_speaking = True
            if not self._conversation.busy:
                await self._set_state("listening")
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._conversation.user_speaking = False
        elif isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            await self._on_bot_started()
        elif isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            self._conversation.bot_speaking = False
            await self._set_state(self._resting_state())
        elif isinstance(frame, SpeechFailedFrame):
            await self._speech_over()
            return
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop_run()
        await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()  # type: ignore[no-untyped-call]
        await self._stop_run()

    # client messages

    async def _send(self, message: dict[str, Any]) -> None:
        await self.push_frame(message_frame(message))

    async def _set_state(self, state: str, **extra: Any) -> None:
        if state != self._client_state:
            self._client_state = state
            await self._send({"type": "state", "state": state, **extra})

    def _resting_state(self) -> str:
        conversation = self._conversation
        if conversation.bot_speaking:
            return "speaking"
        if conversation.run_active or conversation.speech_pending:
            return "thinking"
        return "listening" if conversation.user_speaking else "idle"

    async def _on_client_message(self, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "stop":
            await self._stop_run()
            await self._set_state("idle")
            await self.push_frame(EndWorkerFrame(reason="the client sent stop"), FrameDirection.UPSTREAM)
        elif kind == "start":
            rate = message.get("sample_rate", SAMPLE_RATE)
            if rate != SAMPLE_RATE or message.get("channels", 1) != 1:
                # Said, and ignored: the session goes on at 16 kHz (the rate it started with).
                await self._send({"type": "error", "message": f"{RATE_HINT}; got sample_rate {rate!r}"})
                return
            session = message.get("session")
            if isinstance(session, str) and session and session != self._conversation.session:
                await self._stop_run()
                self._conversation.session = session
                self._conversation.history.clear()
        elif kind == "invalid":
            await self._send({"type": "error", "message": str(message.get("error"))})
        else:
            await self._send({
                "type": "error",
                "message": f"unknown message type {kind!r}: send binary PCM16 audio, or JSON "
                '{"type": "start", "sample_rate": 16000} or {"type": "stop"}',
            })  # fmt: skip

    # turns

    async def _on_transcript(self, frame: TranscriptionFrame) -> None:
        turn = (
            frame.result
            if isinstance(frame.result, TurnTimings)
            else self._conversation.next_turn("incremental")
        )
        text = clean_transcript(frame.text)
        await self._send({"type": "transcript", "text": text, "final": True})
        if not text:
            await self._set_state(self._resting_state())
            return
        await self._stop_run()
        turn.text = text
        self._turn = self._conversation.current = turn
        if self._voice_metrics is not None:
            self._voice_metrics.turns.inc()
        self._conversation.run_active = True
        turn.run_id = new_run_id()
        self.run_ids.append(turn.run_id)
        await self._set_state("thinking", run_id=turn.run_id)
        self._run_task = self.create_task(
            self._converse(text, turn, turn.run_id), name=f"voice-turn-{turn.turn}"
        )

    async def _converse(self, text: str, turn: TurnTimings, run_id: str) -> None:
        conversation = self._conversation
        agent = self._agent
        messages: list[dict[str, Any]] = [*conversation.history[-self._history_messages :]]
        messages.append({"role": "user", "content": text})
        window = agent.services.window if agent.started else None
        session = conversation.session
        answer = ""
        handle = None
        try:
            workflow, version = agent.library.get(self._workflow)
            with agent.bus.subscribe(run_id) as events:  # before the run starts: no event is missed
                handle = agent.runner.start(
                    workflow,
                    version,
                    {"messages": messages, "session": session},
                    session=session,
                    run_id=run_id,
                )
                if window is not None and session:
                    window.append(session, "user", text)
                answer = await self._speak_run(events, run_id, turn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the workflow is missing or broken: say so, keep the session
            log.warning("voice turn failed: %s", exc)
            if self._voice_metrics is not None:
                self._voice_metrics.error("agent")
            await self._send({"type": "error", "message": f"the agent could not start: {exc}"})
            await self._say(APOLOGY, turn)
        finally:
            if handle is not None and not handle.task.done():
                handle.cancel()  # closes the model's stream: llama-server stops generating
            conversation.run_active = False
        if answer:
            conversation.history += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": answer},
            ]
            if window is not None and session:
                window.append(session, "assistant", answer)
        if conversation.speech_pending and turn.first_audio is None:
            self._watchdog = self.create_task(self._expect_speech(turn), name=f"voice-speech-{turn.turn}")
        elif turn.first_audio is None:
            await self._report(turn)  # no audio is coming: there was nothing to say
        await self._set_state(self._resting_state())

    async def _expect_speech(self, turn: TurnTimings, within: float = 15.0) -> None:
        """Report the turn without audio if the answer's audio never starts (TTS had nothing
        to say after stripping markdown, say)."""
        await asyncio.sleep(within)
        if not turn.reported:
            await self._speech_over()

    async def _speech_over(self) -> None:
        """The answer's audio is not coming: report the turn and settle the state."""
        self._conversation.speech_pending = False
        if self._turn is not None and self._turn.first_audio is None:
            await self._report(self._turn)
        await self._set_state(self._resting_state())

    async def _speak_run(self, events: Subscription, run_id: str, turn: TurnTimings) -> str:
        llm_nodes: set[tuple[str, str]] = set()
        spoken: list[str] = []
        streaming = False
        async for event in events:
            key = (event.run_id, event.node_id)
            if event.type == "node.started" and event.data.get("type") == "llm":
                llm_nodes.add(key)
            elif event.type == "node.token" and key in llm_nodes:
                piece = str(event.data.get("text") or "")
                if not piece:
                    continue
                if turn.first_token is None:
                    turn.first_token = time.time()
                if not streaming:
                    streaming = True
                    await self.push_frame(LLMFullResponseStartFrame())
                if not self._conversation.bot_speaking:
                    self._conversation.speech_pending = True
                await self.push_frame(LLMTextFrame(piece))
                spoken.append(piece)
                await self._send({"type": "answer", "text": piece, "final": False})
            elif event.type in ("node.output", "node.failed") and key in llm_nodes and streaming:
                streaming = False
                await self.push_frame(LLMFullResponseEndFrame())  # speak the last sentence now
            elif event.type in TERMINAL and event.run_id == run_id:
                if streaming:
                    await self.push_frame(LLMFullResponseEndFrame())
                return await self._finish_run(event, "".join(spoken).strip(), turn)
        return "".join(spoken).strip()

    async def _finish_run(self, event: Any, spoken: str, turn: TurnTimings) -> str:
        outputs = event.data.get("outputs") or {}
        if event.type == "run.finished":
            answer = outputs.get("answer") if isinstance(outputs, dict) else None
            if not spoken and isinstance(answer, str) and answer.strip():
                spoken = answer.strip()
                await self._say(spoken, turn)
            await self._send({"type": "answer", "text": spoken, "final": True})
            return spoken
        if event.type == "run.failed":
            if self._voice_metrics is not None:
                self._voice_metrics.error("agent")
            error = event.data.get("error") or "it failed"
            await self._send({
                "type": "error",
                "message": f"the agent could not answer ({error}); say it again, "
                f"or see GET /api/runs/{event.run_id}",
            })  # fmt: skip
            await self._say(APOLOGY, turn)
        return ""

    async def _say(self, text: str, turn: TurnTimings) -> None:
        if turn.first_token is None:
            turn.first_token = time.time()
        if not self._conversation.bot_speaking:
            self._conversation.speech_pending = True
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(text))
        await self.push_frame(LLMFullResponseEndFrame())

    async def _on_bot_started(self) -> None:
        self._conversation.bot_speaking = True
        self._conversation.speech_pending = False
        await self._cancel_watchdog()
        await self._set_state("speaking")
        turn = self._turn
        if turn is not None and turn.first_audio is None and turn.first_token is not None:
            turn.first_audio = time.time()
            await self._report(turn)

    async def _report(self, turn: TurnTimings) -> None:
        if turn.reported:
            return
        turn.reported = True
        summary = turn.summary()
        if self._voice_metrics is not None:
            self._voice_metrics.observe(turn)
        await self._send(summary)
        if self._agent.started and turn.run_id:
            self._agent.bus.publish(
                "voice.turn", turn.run_id, data={**summary, "session": self._conversation.session}
            )

    async def _interrupt(self) -> None:
        conversation = self._conversation
        if not conversation.busy:
            return
        if self._voice_metrics is not None:
            self._voice_metrics.barge_ins.inc()
        turn = self._turn
        if turn is not None:
            turn.interrupted = True
        await self._stop_run()
        conversation.bot_speaking = conversation.speech_pending = False
        if turn is not None and not turn.reported:
            await self._report(turn)
        if self._announce_interruptions:
            await self._send({"type": "interrupted"})
        await self._set_state("listening")

    async def _stop_run(self) -> None:
        task, self._run_task = self._run_task, None
        if task is not None and not task.done():
            await self.cancel_task(task)
        self._conversation.run_active = False
        await self._cancel_watchdog()

    async def _cancel_watchdog(self) -> None:
        task, self._watchdog = self._watchdog, None
        if task is not None and not task.done():
            await self.cancel_task(task)


# --- text to speech ---------------------------------------------------------------------------


class SynthesizerTTS(TTSService):
    """Pipecat's TTSService over our Synthesizer: the answer's first phrase, then sentence by
    sentence (FirstPhraseAggregator cuts the LLM text), each synthesised on the engine's worker
    thread and resampled to the transport's rate. Interruption drops what is queued at once. A
    failure speaks nothing more of that answer, tells the client, and leaves the session
    working."""

    def __init__(
        self,
        synthesizer: Synthesizer,
        conversation: Conversation,
        *,
        executor: Executor | None = None,
        metrics: VoiceMetrics | None = None,
    ) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            stop_frame_timeout_s=2.0,
            max_consecutive_zero_audio_contexts=0,  # a failed sentence must not retire the voice
            text_transforms=[("*", strip_markdown)],
            settings=TTSSettings(model=None, voice=getattr(synthesizer, "name", "tts"), language=None),
            name="SynthesizerTTS",
        )
        # TTSService builds pipecat's sentence aggregator and offers no argument to pass another.
        self._text_aggregator = FirstPhraseAggregator()
        self._synthesizer = synthesizer
        self._conversation = conversation
        self._executor = executor
        self._voice_metrics = metrics
        self._failed_context: str | None = None

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        if context_id == self._failed_context:
            return  # this answer already failed to synthesise: do not try every sentence
        turn = self._conversation.current
        if turn is not None and turn.tts_start is None:
            turn.tts_start = time.time()
        try:
            started = await run_blocking(self._executor, self._begin_synthesis, text)
            async for frame in self._stream_audio_frames_from_iterator(
                self._chunks(started), in_sample_rate=self._synthesizer.sample_rate, context_id=context_id
            ):
                yield frame
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed_context = context_id
            log.warning("text-to-speech failed for %r: %s", text[:80], exc)
            if self._voice_metrics is not None:
                self._voice_metrics.error("tts")
            await self.push_frame(message_frame({
                "type": "error",
                "message": f"text-to-speech failed ({exc}); the answer is in the text above, "
                "and the session goes on",
            }))  # fmt: skip
            await self.push_frame(SpeechFailedFrame(error=str(exc)), FrameDirection.UPSTREAM)

    def _begin_synthesis(self, text: str) -> tuple[bytes | None, Iterator[bytes]]:
        """Start synthesis and produce the first chunk here too (a generator runs on next())."""
        iterator = iter(self._synthesizer.synthesize(text))
        return next(iterator, None), iterator

    async def _chunks(self, started: tuple[bytes | None, Iterator[bytes]]) -> AsyncIterator[bytes]:
        chunk, iterator = started
        while chunk is not None:
            if chunk:
                yield chunk
            chunk = await run_blocking(self._executor, next, iterator, None)


# --- the WebSocket's protocol ---------------------------------------------------------------


class VoiceSerializer(FrameSerializer):
    """The /ws/voice protocol, simple enough for a browser AudioWorklet or a 20-line Python
    client. Client to server: binary = PCM16 LE mono 16 kHz; text = JSON objects ({"type":
    "start"|"stop", ...}). Server to client: binary = PCM16 LE mono at `out_sample_rate` (the
    "ready" message announces it); text = JSON messages; an interruption becomes
    {"type": "interrupted"} exactly where the audio it cuts off ends."""

    def __init__(self, out_sample_rate: int) -> None:
        super().__init__()
        self.out_sample_rate = out_sample_rate

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            return frame.audio
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            if self.should_ignore_frame(frame):
                return None
            return json.dumps(frame.message, default=str)
        if isinstance(frame, InterruptionFrame):
            return json.dumps({"type": "interrupted"})
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, (bytes, bytearray)):
            if len(data) < 2:
                return None
            pcm = bytes(data[: len(data) - len(data) % 2])
            return InputAudioRawFrame(audio=pcm, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            message = {"type": "invalid", "error": 'text messages must be JSON objects like {"type": "stop"}'}
        return InputTransportMessageFrame(message=message)


def parse_start(message: Any) -> tuple[str | None, str]:
    """The session of a client's first message, or (None, what is wrong with it)."""
    if not isinstance(message, dict) or message.get("type") != "start":
        return None, 'send {"type": "start", "session": "...", "sample_rate": 16000} first'
    rate = message.get("sample_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE or message.get("channels", 1) != 1:
        return None, f"{RATE_HINT}; got sample_rate {rate!r}"
    session = message.get("session")
    return (session if isinstance(session, str) else ""), ""


async def cancel_quietly(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
