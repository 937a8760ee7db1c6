"""Whisper's fitted window without the model: which decode a clip gets (the fitted window, or the
15 s window again when the fitted decode is garbled or unsure), on a fake decoder that answers
what each window would have heard. The thresholds come from bench/stt_window.py."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from corral.voice.engines import SAMPLE_RATE
from corral.voice.stt import FIT_MAX_NO_SPEECH, FIT_MIN_LOGPROB, WhisperTranscriber, _Piece

SURE = _Piece(" What is the capital of France?", 0.02, -0.08)
FULL = _Piece(" What is the capital of France?", 0.01, -0.05)  # what the 15 s window hears

Decoder = Callable[[float], tuple[_Piece, bool]]


class Fake:
    """A WhisperTranscriber whose `_decode_window` answers `fitted` for a fitted window and `FULL`
    for the 15 s one, and records the windows asked for."""

    def __init__(self, fitted: _Piece, *, capped: bool = False, **settings: float) -> None:
        whisper = WhisperTranscriber.__new__(WhisperTranscriber)
        whisper.window_s = 15.0
        whisper.fit_pad_s = 2.0
        whisper.fit_min_logprob = FIT_MIN_LOGPROB
        whisper.fit_max_no_speech = FIT_MAX_NO_SPEECH
        for name, value in settings.items():
            setattr(whisper, name, value)
        whisper.refits = 0
        whisper._lock = threading.Lock()
        self.windows: list[float] = []

        def decode(audio: np.ndarray, seconds: float, window_s: float, cap: int) -> tuple[_Piece, bool]:
            self.windows.append(round(window_s, 3))
            if window_s < whisper.window_s:
                return fitted, capped
            return FULL, False

        whisper._decode_window = decode  # type: ignore[method-assign]
        self.whisper = whisper


def speech(seconds: float = 2.5) -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 0.1, round(seconds * SAMPLE_RATE)).astype(np.float32)


def test_a_sure_fitted_decode_is_kept() -> None:
    fake = Fake(SURE)
    assert fake.whisper.transcribe(speech(2.5)).text == "What is the capital of France?"
    assert fake.windows == [4.5]  # the clip plus the 2 s pad, once
    assert fake.whisper.refits == 0


@pytest.mark.parametrize(
    "fitted",
    [
        # the study's misses all decoded under -0.2: "Romino", "Borland egg", "colors green"
        _Piece(" What is the capital of friends?", 0.02, -0.35),
        _Piece(" What is the capital of France?", 0.02, FIT_MIN_LOGPROB - 0.01),
        # a short clip in a short window: nearer the no-speech limit that drops a transcript
        _Piece(" How do I boil an egg?", 0.58, -0.11),
        _Piece(" How do I boil an egg?", FIT_MAX_NO_SPEECH + 0.01, -0.11),
    ],
)
def test_an_unsure_fitted_decode_is_done_again_in_the_15_s_window(fitted: _Piece) -> None:
    fake = Fake(fitted)
    assert fake.whisper.transcribe(speech(2.5)).text == FULL.text.strip()
    assert fake.windows == [4.5, 15.0]
    assert fake.whisper.refits == 1


def test_the_thresholds_are_the_sure_side_inclusive() -> None:
    fake = Fake(_Piece(" Fine.", FIT_MAX_NO_SPEECH, FIT_MIN_LOGPROB))
    assert fake.whisper.transcribe(speech()).text == "Fine."
    assert fake.windows == [4.5]


def test_the_doubt_check_can_be_turned_off() -> None:
    unsure = _Piece(" What is the capital of friends?", 0.5, -0.35)
    fake = Fake(unsure, fit_min_logprob=float("-inf"), fit_max_no_speech=float("inf"))
    assert fake.whisper.transcribe(speech()).text == "What is the capital of friends?"
    assert fake.windows == [4.5]


def test_a_capped_decode_without_a_loop_to_drop_is_done_again() -> None:
    fake = Fake(_Piece(" What is the capital of France and the", 0.02, -0.1), capped=True)
    assert fake.whisper.transcribe(speech()).text == FULL.text.strip()
    assert fake.windows == [4.5, 15.0]


@pytest.mark.parametrize(
    "looped",
    [
        " What is the capital of France? What is the capital of France? What is",
        # the loop without punctuation the study met once (2 s pad, clean audio)
        " what is the capital of France what is the capital of France what is the",
    ],
)
def test_a_loop_is_cut_to_its_first_saying_without_a_second_decode(looped: str) -> None:
    fake = Fake(_Piece(looped, 0.02, -0.12), capped=True)
    words = fake.whisper.transcribe(speech()).text.lower().strip("?").split()
    assert words == "what is the capital of france".split()
    assert fake.windows == [4.5]


def test_without_a_pad_only_the_15_s_window_decodes() -> None:
    fake = Fake(SURE, fit_pad_s=0.0)
    fake.whisper.transcribe(speech())
    assert fake.windows == [15.0]


def test_a_clip_whose_fitted_window_is_not_shorter_takes_the_15_s_window() -> None:
    fake = Fake(SURE)
    fake.whisper.transcribe(speech(13.5))  # 13.5 + 2 s is no shorter than 15 s
    assert fake.windows == [15.0]


def test_the_constructor_keeps_its_old_keywords() -> None:
    import inspect

    params = inspect.signature(WhisperTranscriber).parameters
    for name in ("threads", "language", "beam_size", "window_s", "fit_pad_s", "warm"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["fit_min_logprob"].default == FIT_MIN_LOGPROB
    assert params["fit_max_no_speech"].default == FIT_MAX_NO_SPEECH
