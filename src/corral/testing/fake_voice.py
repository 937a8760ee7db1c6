"""Voice test doubles: a scripted Transcriber, a tone-making Synthesizer, an energy VAD and an
in-memory pipecat transport, for unit tests of the voice pipeline with no speech models."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pipecat.audio.vad.vad_analyzer import VADAnalyzer, VADParams
from pipecat.frames.frames import (
    InputAudioRawFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
)
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from corral.voice.engines import SAMPLE_RATE, Audio, Transcript

Script = str | BaseException | Callable[[Audio], str]


@dataclass
class FakeTranscriber:
    """Each `transcribe` takes the next scripted reply (then `default`): text, an exception to
    raise, or a function of the audio. Records the seconds of audio of every call."""

    replies: list[Script] = field(default_factory=list)
    default: str = ""
    delay_s: float = 0.0  # blocking time per call, like a real engine
    name: str = "fake-stt"
    calls: list[float] = field(default_factory=list)

    def transcribe(self, audio: Audio) -> Transcript:
        started = time.perf_counter()
        self.calls.append(len(audio) / SAMPLE_RATE)
        if self.delay_s:
            time.sleep(self.delay_s)
        reply: Script = self.replies.pop(0) if self.replies else self.default
        if isinstance(reply, BaseException):
            raise reply
        text = reply(audio) if callable(reply) else reply
        return Transcript(
            text=text,
            engine=self.name,
            audio_s=len(audio) / SAMPLE_RATE,
            elapsed_s=time.perf_counter() - started,
            words=text.split(),
        )


@dataclass
class FakeSynthesizer:
    """A 440 Hz tone, 60 ms per character (at most 3 s), one chunk per call. `fail_on`: raise
    RuntimeError for text that contains it."""

    sample_rate: int = 16_000
    name: str = "fake-tts"
    fail_on: str | None = None
    delay_s: float = 0.0
    calls: list[str] = field(default_factory=list)

    def synthesize(self, text: str) -> Iterator[bytes]:
        self.calls.append(text)
        if self.fail_on is not None and self.fail_on in text:
            raise RuntimeError(f"the fake synthesizer refuses {self.fail_on!r}")
        if self.delay_s:
            time.sleep(self.delay_s)
        seconds = min(3.0, 0.06 * max(1, len(text.strip())))
        yield tone(seconds, 440.0, self.sample_rate, 0.3)


def tone(seconds: float, freq: float = 220.0, rate: int = SAMPLE_RATE, level: float = 0.3) -> bytes:
    """PCM16 LE mono of a sine: loud enough for EnergyVAD to call it speech."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    wave = level * np.sin(2 * math.pi * freq * t)
    return (wave * 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int = SAMPLE_RATE) -> bytes:
    return bytes(int(seconds * rate) * 2)


def rms(pcm: bytes) -> float:
    if len(pcm) < 2:
        return 0.0
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32) / 32768.0
    return float(np.sqrt(np.mean(samples * samples)))


class EnergyVADAnalyzer(VADAnalyzer):
    """A VAD that calls any 20 ms window louder than `threshold` RMS speech (for tones in tests;
    Silero does not hear a sine as a voice)."""

    def __init__(self, *, threshold: float = 0.02, params: VADParams | None = None) -> None:
        super().__init__(params=params or VADParams(start_secs=0.06, stop_secs=0.2, min_volume=0.0))
        self._threshold = threshold

    def num_frames_required(self) -> int:
        return int((self.sample_rate or SAMPLE_RATE) * 0.02)

    def voice_confidence(self, buffer: bytes) -> float:
        return 1.0 if rms(buffer) > self._threshold else 0.0


@dataclass
class Sent:
    """What the in-memory transport's output received, in order."""

    kind: str  # "audio" | "message"
    at: float
    audio: bytes = b""
    message: Any = None


class _QueueInput(BaseInputTransport):
    def __init__(self, params: TransportParams) -> None:
        super().__init__(params, name="QueueInput")
        self.started = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.started.set()


class _CollectOutput(BaseOutputTransport):
    def __init__(self, params: TransportParams, realtime: bool) -> None:
        super().__init__(params, name="CollectOutput")
        self.realtime = realtime
        self.sent: list[Sent] = []
        self.changed = asyncio.Event()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def send_message(
        self, frame: OutputTransportMessageFrame | OutputTransportMessageUrgentFrame
    ) -> None:
        self._record(Sent("message", time.time(), message=frame.message))

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self._record(Sent("audio", time.time(), audio=frame.audio))
        if self.realtime:
            await asyncio.sleep(len(frame.audio) / 2 / frame.sample_rate)
        return True

    def _record(self, sent: Sent) -> None:
        self.sent.append(sent)
        self.changed.set()


class QueueTransport(BaseTransport):
    """A pipecat transport in memory: `feed()` plays PCM16 16 kHz into the pipeline in 20 ms
    frames (in real time or as fast as it can), the output keeps what was sent (`sent`,
    `wait_for`), pacing audio in real time if asked so barge-in has something to interrupt."""

    def __init__(self, *, out_sample_rate: int = 16_000, realtime_output: bool = True) -> None:
        super().__init__(name="QueueTransport")
        params = TransportParams(
            audio_in_enabled=True,
            audio_in_sample_rate=SAMPLE_RATE,
            audio_out_enabled=True,
            audio_out_sample_rate=out_sample_rate,
            audio_out_end_silence_secs=0,
        )
        self._input = _QueueInput(params)
        self._output = _CollectOutput(params, realtime_output)

    def input(self) -> _QueueInput:
        return self._input

    def output(self) -> _CollectOutput:
        return self._output

    @property
    def sent(self) -> list[Sent]:
        return self._output.sent

    async def feed(self, pcm: bytes, *, realtime: bool = False, chunk_s: float = 0.02) -> None:
        await self._input.started.wait()
        step = int(SAMPLE_RATE * chunk_s) * 2
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), step)):
            frame = InputAudioRawFrame(
                audio=pcm[offset : offset + step], sample_rate=SAMPLE_RATE, num_channels=1
            )
            await self._input.push_audio_frame(frame)
            if realtime:
                await asyncio.sleep(max(0.0, started + (index + 1) * chunk_s - time.monotonic()))
            else:
                await asyncio.sleep(0)

    async def send(self, message: dict[str, Any]) -> None:
        """A JSON message from the client, as the WebSocket serializer would deliver it."""
        await self._input.started.wait()
        await self._input.broadcast_frame(InputTransportMessageFrame, message=message)

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [s.message for s in self.sent if s.kind == "message" and isinstance(s.message, dict)]
        return [m for m in found if kind is None or m.get("type") == kind]

    async def wait_for(
        self, predicate: Callable[[Sent], bool], *, start: int = 0, within: float = 10.0
    ) -> int:
        """The index in `sent` of the first item from `start` on that matches, waiting for it."""
        output = self._output
        index = start
        async with asyncio.timeout(within):
            while True:
                while index < len(output.sent):
                    if predicate(output.sent[index]):
                        return index
                    index += 1
                output.changed.clear()
                await output.changed.wait()

    async def wait_message(
        self, kind: str, *, start: int = 0, within: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        """The first JSON message of type `kind` from `start` on: (its index, the message)."""
        return await self.wait_message_where(lambda m: m.get("type") == kind, start=start, within=within)

    async def wait_message_where(
        self, predicate: Callable[[dict[str, Any]], bool], *, start: int = 0, within: float = 10.0
    ) -> tuple[int, dict[str, Any]]:
        """The first JSON message from `start` on that matches: (its index, the message)."""
        index = await self.wait_for(
            lambda s: s.kind == "message" and isinstance(s.message, dict) and predicate(s.message),
            start=start,
            within=within,
        )
        message: dict[str, Any] = self.sent[index].message
        return index, message
