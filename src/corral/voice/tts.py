"""Text to speech: Piper with a packaged voice (en_US-joe-medium), streamed sentence by sentence,
and the factory that loads the configured voice warm."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from corral.voice import assets
from corral.voice.engines import SpeechEngineError, Synthesizer
from corral.voice.settings import TtsConfig


class PiperSynthesizer:
    """One Piper voice on the CPU (onnxruntime). `synthesize` yields 16-bit mono PCM at
    `sample_rate`, one chunk per sentence as soon as Piper has it."""

    name = "piper"

    def __init__(self, model_path: Path, config_path: Path, *, speed: float = 1.0, warm: bool = True) -> None:
        from piper import PiperVoice, SynthesisConfig

        if speed <= 0:
            raise ValueError(f"speed must be above 0 (1.0 is normal), not {speed}")
        started = time.perf_counter()
        try:
            self._voice = PiperVoice.load(model_path, config_path)
        except Exception as exc:
            raise SpeechEngineError(
                f"Piper could not load the voice {model_path.name} ({exc}); reinstall its package "
                "or point voice.tts.voice at a working .onnx file"
            ) from exc
        self.voice_id = model_path.name.removesuffix(".onnx")
        # Piper voices are named language_REGION-name-quality ("en_US-joe-medium").
        self.languages = (self.voice_id.split("-")[0],)
        self.sample_rate = int(self._voice.config.sample_rate)
        self.speed = speed
        # The voice's own length scale (its natural pace) divided by the speed asked for.
        self._syn_config = SynthesisConfig(length_scale=self._voice.config.length_scale / speed)
        self.load_s = time.perf_counter() - started
        self.warm_s = 0.0
        if warm:
            started = time.perf_counter()
            for _ in self.synthesize("Ready."):
                pass
            self.warm_s = time.perf_counter() - started

    def synthesize(self, text: str) -> Iterator[bytes]:
        if not isinstance(text, str):
            raise ValueError(f"text to speak must be a str, not {type(text).__name__}")
        if not text.strip():
            return
        try:
            for chunk in self._voice.synthesize(text, self._syn_config):
                pcm = chunk.audio_int16_bytes
                if pcm:
                    yield pcm
        except Exception as exc:
            raise SpeechEngineError(
                f"Piper could not speak {_preview(text)} ({type(exc).__name__}: {exc}); the reply "
                "is shown as text instead"
            ) from exc


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def load_synthesizer(config: TtsConfig) -> Synthesizer:
    """The Piper voice `voice.tts` names (a packaged voice id or a .onnx path), loaded and warm."""
    model, voice_config = assets.piper_voice_files(config.voice)
    return PiperSynthesizer(model, voice_config, speed=config.speed)
