"""The real speech models on speech synthesised at test time: Piper speaks, faster-whisper base and
pocketsphinx listen. Each model loads once for the module; nothing is timed here (see bench/)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from corral.errors import ConfigError
from corral.voice.engines import SAMPLE_RATE, SpeechEngineError, pcm16_to_float
from corral.voice.settings import SttConfig, TtsConfig
from corral.voice.stt import SILENCE_RMS, SphinxTranscriber, WhisperTranscriber, load_transcriber
from corral.voice.tts import PiperSynthesizer, load_synthesizer
from tests.fixtures.speech import noise, piper, rms, silence, synthesize_wav

pytestmark = pytest.mark.slow

PHRASES = {
    "turn on the kitchen lights": {"turn", "on", "kitchen", "lights"},
    "what is the weather like tomorrow": {"what", "weather", "tomorrow"},
    "set a timer for ten minutes": {"set", "timer", "ten", "minutes"},
}


def words(text: str) -> set[str]:
    normalised = re.sub(r"[^a-z0-9' ]+", " ", text.lower()).replace("10", "ten")
    return set(normalised.split())


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def whisper(models_dir: Path) -> WhisperTranscriber:
    transcriber = load_transcriber(
        SttConfig(engine="auto"), frozenset({"avx", "avx2"}), models_dir=models_dir
    )
    assert isinstance(transcriber, WhisperTranscriber)
    return transcriber


@pytest.fixture(scope="module")
def sphinx() -> SphinxTranscriber:
    transcriber = load_transcriber(SttConfig(engine="auto"), frozenset({"sse4_2"}))
    assert isinstance(transcriber, SphinxTranscriber)
    return transcriber


@pytest.mark.parametrize("phrase", list(PHRASES))
def test_whisper_hears_what_piper_says(whisper: WhisperTranscriber, phrase: str) -> None:
    audio, _ = synthesize_wav(phrase)
    clip = np.concatenate([silence(0.3), audio, silence(0.3)])
    transcript = whisper.transcribe(clip)
    assert PHRASES[phrase] <= words(transcript.text), transcript.text
    assert transcript.engine == "whisper"
    assert transcript.audio_s == pytest.approx(clip.size / SAMPLE_RATE)
    assert transcript.elapsed_s > 0
    assert transcript.words == transcript.text.split()


@pytest.mark.parametrize("phrase", ["set a timer for ten minutes", "what is the weather like tomorrow"])
def test_the_short_window_hears_what_the_full_window_hears(
    whisper: WhisperTranscriber, phrase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio, _ = synthesize_wav(phrase)
    short = whisper.transcribe(audio).text
    monkeypatch.setattr(whisper, "window_s", 30.0)  # faster-whisper's own 30 s path
    assert words(whisper.transcribe(audio).text) == words(short)


def test_speech_longer_than_the_window_takes_the_full_path(whisper: WhisperTranscriber) -> None:
    audio, _ = synthesize_wav("turn on the kitchen lights")
    long_clip = np.concatenate([audio, silence(whisper.window_s), audio])  # two commands, apart
    transcript = whisper.transcribe(long_clip)
    assert long_clip.size / SAMPLE_RATE > whisper.window_s
    assert {"kitchen", "lights"} <= words(transcript.text), transcript.text


def test_an_unknown_language_is_a_config_error(models_dir: Path, whisper: WhisperTranscriber) -> None:
    with pytest.raises(ConfigError, match=r"voice\.stt\.language 'klingon'"):
        WhisperTranscriber(models_dir / "whisper-base", language="klingon", warm=False)


@pytest.mark.parametrize("phrase", list(PHRASES))
def test_pocketsphinx_hears_some_of_it(sphinx: SphinxTranscriber, phrase: str) -> None:
    audio, _ = synthesize_wav(phrase)
    transcript = sphinx.transcribe(np.concatenate([silence(0.3), audio, silence(0.3)]))
    assert PHRASES[phrase] & words(transcript.text), transcript.text
    assert not any(w.startswith(("<", "[")) or "(" in w for w in transcript.words)


@pytest.mark.parametrize("engine", ["whisper", "sphinx"])
def test_silence_gives_an_empty_transcript(engine: str, request: pytest.FixtureRequest) -> None:
    transcriber = request.getfixturevalue(engine)
    for clip in (silence(2.0), noise(2.0, level=0.0005), np.zeros(0, dtype=np.float32)):
        assert transcriber.transcribe(clip).text == ""


def test_whisper_says_nothing_for_noise(whisper: WhisperTranscriber) -> None:
    # Audible hiss reaches the model: the no-speech and confidence filters must drop what it makes up.
    assert whisper.transcribe(noise(2.0, level=0.05)).text == ""


def test_whisper_hears_speech_in_moderate_noise(whisper: WhisperTranscriber) -> None:
    audio, _ = synthesize_wav("turn on the kitchen lights")
    noisy = np.clip(audio + noise(audio.size / SAMPLE_RATE, level=0.01, seed=3), -1, 1).astype(np.float32)
    assert {"kitchen", "lights"} <= words(whisper.transcribe(noisy).text)


def test_whisper_handles_clipped_audio(whisper: WhisperTranscriber) -> None:
    audio, _ = synthesize_wav("turn on the kitchen lights")
    clipped = np.clip(audio * 8.0, -1.0, 1.0).astype(np.float32)  # a mic gain far too high
    transcript = whisper.transcribe(clipped)
    assert "kitchen" in words(transcript.text), transcript.text


# --- Piper --------------------------------------------------------------------------------------


def test_piper_output_is_audible_speech_at_the_voice_rate() -> None:
    synthesizer = piper()
    assert synthesizer.sample_rate == 22050
    chunks = list(synthesizer.synthesize("Turn on the kitchen lights."))
    assert chunks and all(len(c) % 2 == 0 for c in chunks)
    audio = pcm16_to_float(b"".join(chunks))
    seconds = audio.size / synthesizer.sample_rate
    assert 0.8 < seconds < 4.0
    assert rms(audio) > 0.05  # about -26 dBFS or louder: speech, not a whisper or silence
    assert rms(audio) > 25 * SILENCE_RMS


def test_piper_streams_one_chunk_per_sentence() -> None:
    chunks = list(piper().synthesize("It is sunny. It will rain tomorrow! Take an umbrella?"))
    assert len(chunks) == 3
    assert all(rms(pcm16_to_float(c)) > 0.05 for c in chunks)


def test_piper_yields_before_the_whole_text_is_spoken() -> None:
    stream = piper().synthesize("First sentence. " + "Then a much longer second sentence follows it. " * 3)
    first = next(iter(stream))
    assert len(first) > 0  # the first sentence arrives on its own


def test_piper_says_nothing_for_empty_text() -> None:
    assert list(piper().synthesize("")) == []
    assert list(piper().synthesize("   \n")) == []


def test_speed_changes_the_length() -> None:
    fast = load_synthesizer(TtsConfig(speed=2.0))
    text = "Set a timer for ten minutes."
    normal_len = len(b"".join(piper().synthesize(text)))
    fast_len = len(b"".join(fast.synthesize(text)))
    assert fast_len < 0.7 * normal_len


def test_a_piper_failure_is_a_speech_engine_error(monkeypatch: pytest.MonkeyPatch) -> None:
    synthesizer = PiperSynthesizer(*_voice_files(), warm=False)

    def broken(*_args: object, **_kwargs: object) -> Iterator[object]:
        raise RuntimeError("onnxruntime exploded")

    monkeypatch.setattr(synthesizer._voice, "synthesize", broken)
    with pytest.raises(SpeechEngineError, match=r"Piper could not speak 'Hello there\.'"):
        list(synthesizer.synthesize("Hello there."))


def _voice_files() -> tuple[Path, Path]:
    from corral.voice.assets import piper_voice_files

    return piper_voice_files("en_US-joe-medium")
