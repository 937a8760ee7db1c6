"""The speech engine seams: a Transcriber turns 16 kHz mono audio into text, a Synthesizer turns
text into PCM audio. The pipecat pipeline, the Wyoming server and the benchmarks use only these."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from corral.errors import CorralError

SAMPLE_RATE = 16_000  # what every Transcriber takes: mono float32 in [-1, 1]
Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Transcript:
    text: str
    engine: str  # "whisper" | "pocketsphinx"
    audio_s: float  # seconds of audio transcribed
    elapsed_s: float  # seconds it took
    words: list[str] = field(default_factory=list)


class Transcriber(Protocol):
    name: str

    def transcribe(self, audio: Audio) -> Transcript:
        """Text for `audio` (16 kHz mono float32); blocking, call it from a worker thread."""
        ...


class Synthesizer(Protocol):
    name: str
    sample_rate: int  # of the PCM it produces (Piper joe-medium: 22050)

    def synthesize(self, text: str) -> Iterator[bytes]:
        """16-bit little-endian mono PCM for `text`, in chunks as they are produced (one per
        sentence at least); blocking, call it from a worker thread."""
        ...


def pcm16_to_float(pcm: bytes) -> Audio:
    return (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


def float_to_pcm16(audio: Audio) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class SpeechEngineError(CorralError):
    """A speech engine failed on this input (a Piper or Whisper error): end the turn with a message,
    keep the session; the message says what happened and what to try."""


def check_audio(audio: object) -> Audio:
    """`audio` if it is what a Transcriber takes (1-D float32 without NaN or inf), else a ValueError
    that says what to send instead."""
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy float32 array, not {type(audio).__name__}")
    if audio.dtype != np.float32:
        raise ValueError(
            f"audio must be float32 in [-1, 1], not {audio.dtype}; convert int16 PCM with pcm16_to_float"
        )
    if audio.ndim != 1:
        raise ValueError(
            f"audio must be 1-D mono at {SAMPLE_RATE} Hz, not shape {audio.shape}; mix the channels down"
        )
    if audio.size and not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples; drop or repair the damaged frames")
    return audio


def rms(audio: Audio) -> float:
    """Root mean square level of `audio` (0.0 for no samples)."""
    if audio.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
