"""Speech to text: which engine this CPU runs (faster-whisper base with AVX, pocketsphinx without),
the two Transcribers, and the factory that loads the configured one warm."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from corral.errors import ConfigError, ModelFileError
from corral.voice import assets
from corral.voice.engines import (
    SAMPLE_RATE,
    Audio,
    SpeechEngineError,
    Transcriber,
    Transcript,
    check_audio,
    float_to_pcm16,
    rms,
)
from corral.voice.settings import SttConfig

log = logging.getLogger(__name__)

SttEngine = Literal["whisper", "pocketsphinx"]

# Audio quieter than this (about -55 dBFS RMS) is treated as silence and never reaches a model:
# whisper invents "Thank you." on silence and pocketsphinx a stray word.
SILENCE_RMS = 10 ** (-55 / 20)
# Whisper segments it doubts are dropped: mostly no speech, or decoded with low confidence.
NO_SPEECH_PROB_MAX = 0.6
AVG_LOGPROB_MIN = -1.0


def choose_stt_engine(
    setting: Literal["auto", "whisper", "pocketsphinx"], cpu_flags: frozenset[str]
) -> SttEngine:
    """The engine for `voice.stt.engine` on a CPU with these flags (corral.hardware's cpu_flags).

    auto picks faster-whisper where the CPU has AVX (CTranslate2's kernels are slow without it)
    and pocketsphinx elsewhere; an explicit whisper on a CPU without AVX is refused.
    """
    if setting == "pocketsphinx":
        return "pocketsphinx"
    has_avx = "avx" in cpu_flags
    if setting == "whisper":
        if not has_avx:
            raise ConfigError(
                "voice.stt.engine is whisper, but this CPU has no AVX, which faster-whisper needs to "
                "run in real time; set voice.stt.engine to auto or pocketsphinx in corral.yaml"
            )
        return "whisper"
    if setting == "auto":
        return "whisper" if has_avx else "pocketsphinx"
    raise ConfigError(f"voice.stt.engine must be auto, whisper or pocketsphinx, not {setting!r}")


def _empty(engine: str, audio: Audio, started: float) -> Transcript:
    return Transcript("", engine, audio.size / SAMPLE_RATE, time.perf_counter() - started)


# The fitted window's decode stops after this many tokens: fast speech is about 6 a second.
FIT_TOKENS_BASE = 10
FIT_TOKENS_PER_S = 6.0
# A fitted decode less sure than this is done again in the `window_s` window. bench/stt_window.py
# (400 Piper clips, most through Opus): most of the 2 s pad's misses that the 15 s window got
# right decoded under -0.2, and a 2 s pad on a short clip pushed the no-speech probability up
# to 0.58, near the 0.6 that drops a transcript. Not a clean split: an inserted "I" ("I recommend
# a good book...") decoded at -0.17 among right transcripts; only -0.15 caught every miss, by
# redoing 30 % of the clips. See docs/voice.md.
FIT_MIN_LOGPROB = -0.2
FIT_MAX_NO_SPEECH = 0.3

_WORD = re.compile(r"[^\w]+")
_SENTENCE_END = re.compile(r"[.?!]$")


def drop_repeats(text: str, *, min_words: int = 3) -> str:
    """`text` without the loop Whisper falls into when it cannot see where speech ends: the words
    (case and punctuation aside) repeat the start again and again, possibly cut short. The loop
    starts at a sentence end, or, unpunctuated ("recommend a good book for a long train ride
    recommend a good book for a long"), repeats at least `min_words` words of the start. Keeps
    the start (at least `min_words` words); anything else unchanged."""
    tokens = text.split()
    words = [_WORD.sub("", t.lower()) for t in tokens]
    for period in range(min_words, len(words) - 1):
        at_sentence_end = bool(_SENTENCE_END.search(tokens[period - 1]))
        if not at_sentence_end and len(words) - period < min_words:
            continue
        if all(words[j] == words[j % period] for j in range(period, len(words))):
            return " ".join(tokens[:period])
    return text.strip()


class _Piece(NamedTuple):
    text: str
    no_speech_prob: float
    avg_logprob: float


class WhisperTranscriber:
    """faster-whisper base on the CPU (int8), one model shared by the callers, warm after load.

    Whisper's encoder is built for 30 s windows and faster-whisper pads every clip to one: on two
    cores that encoder pass is most of the time a short command takes. We encode a window fitted
    to the clip instead (the clip plus `fit_pad_s` of silence), then decode once as
    faster-whisper decodes a segment at temperature 0.

    A window that short leaves the decoder unsure where the speech ends: it tends to say the
    sentence again ("Say something nice. Say something nice. Say..."). Two guards handle that:
    the decode is capped near the longest plausible transcript (`FIT_TOKENS_*`), and a
    transcript that repeats its start (`drop_repeats`) keeps its first saying only. A decode
    that still runs into the cap without a repeat to drop is garbled, and one less sure than
    `fit_min_logprob` (average log-probability) or `fit_max_no_speech` (no-speech probability)
    is unsure: either is done again in the `window_s` window (15 s).

    It is off by default (`fit_pad_s=0`). bench/stt_window.py put 400 Piper clips through Opus
    (as WebRTC carries a browser's microphone) and other variants: a 2 s pad took 0.54 of the
    15 s window's time (per-clip median) but missed words on 6-8 clips in 200 that the 15 s
    window heard right; with the redo rule about 0.66 of the mean time, still 0-3 misses per
    200 on fresh takes; no threshold that caught every miss kept much of the speed. See
    docs/voice.md. Clips longer than `window_s - 1`, and window_s=30, take faster-whisper's own
    path.
    """

    name = "whisper"

    def __init__(
        self,
        model_dir: Path,
        *,
        threads: int | None = None,
        language: str = "en",
        beam_size: int = 1,
        window_s: float = 15.0,
        fit_pad_s: float = 0.0,
        fit_min_logprob: float = FIT_MIN_LOGPROB,
        fit_max_no_speech: float = FIT_MAX_NO_SPEECH,
        warm: bool = True,
    ) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        if not (model_dir / assets.WHISPER_MODEL_FILE).is_file():
            # faster-whisper would treat anything but a folder as a hub id and try to download it.
            raise ModelFileError(
                f"no faster-whisper model in {model_dir}; assemble it with corral.voice.assets."
                "assemble_whisper (load_transcriber does)"
            )
        self.language = language
        self.languages = (language,)
        self.model_id = assets.WHISPER_MODEL_ID
        self.beam_size = beam_size
        self.threads = threads or os.cpu_count() or 1
        started = time.perf_counter()
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=self.threads
        )
        try:
            self._tokenizer = Tokenizer(
                self._model.hf_tokenizer, self._model.model.is_multilingual, "transcribe", language
            )
        except ValueError:
            raise ConfigError(
                f"voice.stt.language {language!r} is not a language whisper knows; use a code such "
                "as en, de or fr"
            ) from None
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, (-1,)))
        self.window_s = window_s
        self.fit_pad_s = fit_pad_s
        self.fit_min_logprob = fit_min_logprob
        self.fit_max_no_speech = fit_max_no_speech
        self.refits = 0  # fitted decodes that were garbled or unsure and done again in the safe window
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - started
        self.warm_s = 0.0
        if warm:
            started = time.perf_counter()
            # A real decode of quiet noise: the silence short-cut must not skip the warm-up.
            quiet = np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE // 2).astype(np.float32)
            self._pieces(quiet)
            self.warm_s = time.perf_counter() - started

    def _pieces(self, audio: Audio) -> list[_Piece]:
        seconds = audio.size / SAMPLE_RATE
        with self._lock:
            if self.window_s < 30.0 and seconds <= self.window_s - 1.0:
                fitted = seconds + self.fit_pad_s
                if self.fit_pad_s > 0 and fitted < self.window_s:
                    cap = FIT_TOKENS_BASE + int(FIT_TOKENS_PER_S * seconds)
                    piece, capped = self._decode_window(audio, seconds, fitted, cap)
                    text = drop_repeats(piece.text)
                    why = self._doubt(piece, capped and text == piece.text.strip())
                    if not why:
                        return [piece._replace(text=text)]
                    self.refits += 1
                    log.debug(
                        "fitted whisper window %s (%r); decoding in %.0f s", why, piece.text, self.window_s
                    )
                cap = 32 + int(12 * seconds)  # speech is under 8 tokens a second: stops a loop
                return [self._decode_window(audio, seconds, self.window_s, cap)[0]]
            segments, _info = self._model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                temperature=0.0,  # one pass: the fallback temperatures multiply the time on noise
                vad_filter=False,  # our VAD runs upstream
                without_timestamps=True,
                condition_on_previous_text=False,
            )
            # The generator decodes lazily: finish it under the lock.
            return [_Piece(s.text, s.no_speech_prob, s.avg_logprob) for s in segments]

    def _doubt(self, piece: _Piece, garbled: bool) -> str:
        """Why a fitted decode is not to be trusted (it is done again in the `window_s` window),
        or "" if it is: it ran into the token cap without a loop to drop, or it is unsure."""
        if garbled:
            return "garbled"
        if piece.avg_logprob < self.fit_min_logprob:
            return f"unsure (avg_logprob {piece.avg_logprob:.2f})"
        if piece.no_speech_prob > self.fit_max_no_speech:
            return f"unsure (no_speech_prob {piece.no_speech_prob:.2f})"
        return ""

    def _decode_window(self, audio: Audio, seconds: float, window_s: float, cap: int) -> tuple[_Piece, bool]:
        """One greedy (or beam) decode of `audio` encoded in a `window_s` window, as faster-whisper
        decodes one 30 s segment at temperature 0, with at most `cap` new tokens; and whether it
        stopped at the cap rather than at its end of text."""
        features = self._model.feature_extractor(audio)
        frames = round(window_s * SAMPLE_RATE / self._model.feature_extractor.hop_length)
        window = np.zeros((features.shape[0], frames), dtype=np.float32)
        used = min(frames, features.shape[1])
        window[:, :used] = features[:, :used]
        encoded = self._model.encode(window)
        new_tokens = min(self._model.max_length - len(self._prompt), cap)
        result = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size,
            patience=1,
            length_penalty=1,
            max_length=len(self._prompt) + new_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        piece = _Piece(self._tokenizer.decode(tokens), float(result.no_speech_prob), float(avg_logprob))
        return piece, len(tokens) >= new_tokens

    def transcribe(self, audio: Audio) -> Transcript:
        started = time.perf_counter()
        check_audio(audio)
        if rms(audio) < SILENCE_RMS:
            return _empty(self.name, audio, started)
        try:
            pieces = self._pieces(audio)
        except Exception as exc:
            raise SpeechEngineError(
                f"faster-whisper failed on {audio.size / SAMPLE_RATE:.1f} s of audio ({exc}); "
                "the turn is dropped, speak again"
            ) from exc
        kept = [
            p.text.strip()
            for p in pieces
            if p.no_speech_prob <= NO_SPEECH_PROB_MAX and p.avg_logprob >= AVG_LOGPROB_MIN
        ]
        text = " ".join(t for t in kept if t)
        return Transcript(
            text, self.name, audio.size / SAMPLE_RATE, time.perf_counter() - started, text.split()
        )


_ALTERNATE = re.compile(r"\(\d+\)$")  # pocketsphinx marks pronunciation variants: "on(2)"


class SphinxTranscriber:
    """pocketsphinx with the en-us model from its wheel: weaker, but fast on any CPU."""

    name = "pocketsphinx"

    def __init__(self, model_dir: Path | None = None, *, warm: bool = True) -> None:
        from pocketsphinx import Decoder

        model = model_dir or assets.sphinx_model_dir()
        self.language = "en"
        self.languages = ("en",)
        self.model_id = assets.SPHINX_MODEL_ID
        started = time.perf_counter()
        self._decoder = Decoder(
            hmm=str(model / "en-us"),
            lm=str(model / "en-us.lm.bin"),
            dict=str(model / "cmudict-en-us.dict"),
            samprate=SAMPLE_RATE,
            loglevel="FATAL",
        )
        self._lock = threading.Lock()
        self.load_s = time.perf_counter() - started
        self.warm_s = 0.0
        if warm:
            started = time.perf_counter()
            self._decode(np.random.default_rng(0).normal(0.0, 0.01, SAMPLE_RATE // 2).astype(np.float32))
            self.warm_s = time.perf_counter() - started

    def _decode(self, audio: Audio) -> list[str]:
        with self._lock:
            self._decoder.start_utt()
            self._decoder.process_raw(float_to_pcm16(audio), full_utt=True)
            self._decoder.end_utt()
            words = [str(s.word) for s in self._decoder.seg()]
        return [
            _ALTERNATE.sub("", w)
            for w in words
            if not (w.startswith("<") or w.startswith("[") or w.startswith("++"))
        ]

    def transcribe(self, audio: Audio) -> Transcript:
        started = time.perf_counter()
        check_audio(audio)
        if rms(audio) < SILENCE_RMS:
            return _empty(self.name, audio, started)
        try:
            words = self._decode(audio)
        except Exception as exc:
            raise SpeechEngineError(
                f"pocketsphinx failed on {audio.size / SAMPLE_RATE:.1f} s of audio ({exc}); "
                "the turn is dropped, speak again"
            ) from exc
        return Transcript(
            " ".join(words), self.name, audio.size / SAMPLE_RATE, time.perf_counter() - started, words
        )


def load_transcriber(
    config: SttConfig, profile_flags: frozenset[str], *, models_dir: Path | None = None
) -> Transcriber:
    """The Transcriber `voice.stt` asks for on a CPU with `profile_flags`, loaded and warm.

    `models_dir` is where faster-whisper base is assembled (default: the corral home's models/).
    """
    engine = choose_stt_engine(config.engine, profile_flags)
    if engine == "pocketsphinx":
        if config.language.split("-")[0].lower() != "en":
            log.warning("pocketsphinx ships only en-us; voice.stt.language %r is ignored", config.language)
        return SphinxTranscriber()
    if models_dir is None:
        from corral.paths import default_home

        models_dir = default_home() / "models"
    model_dir = assets.assemble_whisper(models_dir)
    return WhisperTranscriber(
        model_dir, threads=config.threads, language=config.language, beam_size=config.beam_size
    )
