"""The model catalog: bundled and converted models by id, local GGUF files by path, and whether each fits."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from corral.errors import ModelFileError
from corral.hardware import NodeProfile
from corral.models import minilm
from corral.models.bundled import GEMMA3_270M, BundledWeights, Progress, assemble
from corral.models.gguf_info import GGUFInfo, read_gguf_info

RAM_RESERVE_BYTES = 512 * 1024 * 1024  # left for the OS, the gateway and page cache


@dataclass(frozen=True)
class PromptFormat:
    """How chat messages become a prompt: the model's own template, or a shipped one."""

    name: str
    template_file: Path | None = None
    stop: tuple[str, ...] = ()


NATIVE = PromptFormat("native")


def _template(name: str) -> Path:
    return Path(str(resources.files("corral.models").joinpath("templates", name)))


TRANSCRIPT = PromptFormat("transcript", _template("transcript.jinja"), ("\nUser:", "\n\n\n"))


@dataclass(frozen=True)
class BundledModel:
    weights: BundledWeights
    description: str
    prompt_format: PromptFormat


BUNDLED: dict[str, BundledModel] = {
    GEMMA3_270M.model_id: BundledModel(
        GEMMA3_270M,
        "Gemma 3 270M (base, Q4_K_M): tiny, fast on any CPU; answers through a transcript prompt",
        TRANSCRIPT,
    ),
}


@dataclass(frozen=True)
class ConvertedModel:
    """A model shipped in another format, converted to GGUF in the models dir on first use."""

    filename: str
    build: Callable[[Path, Progress | None], Path]  # (models dir, progress) -> the GGUF path
    description: str
    prompt_format: PromptFormat = NATIVE


CONVERTED: dict[str, ConvertedModel] = {
    minilm.MODEL_ID: ConvertedModel(
        minilm.FILENAME,
        minilm.ensure_gguf,
        "all-MiniLM-L6-v2 (BERT, F16): sentence embeddings, 384 dimensions, mean pooling",
    ),
}


@dataclass(frozen=True)
class ModelEntry:
    id: str
    source: str  # "bundled", "converted" or "local"
    info: GGUFInfo
    prompt_format: PromptFormat = NATIVE
    description: str = ""

    @property
    def path(self) -> Path:
        return self.info.path


@dataclass(frozen=True)
class FitVerdict:
    fits: bool
    need_bytes: int
    reasons: list[str] = field(default_factory=list)


def memory_needed(info: GGUFInfo, context_tokens: int) -> int:
    """Weights + f16 KV cache for all slots + compute buffers (a measured-ballpark 10%, >= 64 MiB)."""
    compute = max(64 * 1024 * 1024, info.size_bytes // 10)
    return info.size_bytes + info.kv_cache_bytes(context_tokens) + compute


def check_fit(
    info: GGUFInfo, profile: NodeProfile, context_tokens: int, *, already_committed: int = 0
) -> FitVerdict:
    """Does a model with this much context fit this node's free RAM? Say why not."""
    need = memory_needed(info, context_tokens)
    budget = profile.ram_available_bytes - RAM_RESERVE_BYTES - already_committed
    reasons: list[str] = []
    fits = need <= budget
    if not fits:
        reasons.append(
            f"needs {_gib(need)} (weights {_gib(info.size_bytes)} + KV cache for "
            f"{context_tokens} tokens), only {_gib(max(budget, 0))} free after a "
            f"{_gib(RAM_RESERVE_BYTES)} reserve: use a smaller quantisation, fewer slots or "
            "less context"
        )
    if info.context_length and context_tokens > info.context_length:
        reasons.append(
            f"asks for {context_tokens} tokens of context, the model was trained on {info.context_length}"
        )
    if "avx2" not in profile.cpu_flags:
        reasons.append("no AVX2 on this CPU: expect roughly half the speed")
    return FitVerdict(fits, need, reasons)


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


class Catalog:
    """Resolves a model reference (bundled id or GGUF path) to a ModelEntry with metadata."""

    def __init__(self, models_dir: Path, progress: Progress | None = None) -> None:
        self.models_dir = models_dir
        self._progress = progress
        self._cache: dict[str, ModelEntry] = {}

    def resolve(self, ref: str) -> ModelEntry:
        if ref in self._cache:
            return self._cache[ref]
        if ref in BUNDLED:
            bundled = BUNDLED[ref]
            path = assemble(bundled.weights, self.models_dir, self._progress)
            entry = ModelEntry(
                ref, "bundled", read_gguf_info(path), bundled.prompt_format, bundled.description
            )
        elif ref in CONVERTED:
            converted = CONVERTED[ref]
            path = converted.build(self.models_dir, self._progress)
            entry = ModelEntry(
                ref, "converted", read_gguf_info(path), converted.prompt_format, converted.description
            )
        else:
            path = Path(ref).expanduser()
            if not path.suffix == ".gguf" and not path.exists():
                raise ModelFileError(
                    f"unknown model {ref!r}: not a bundled model ({', '.join([*BUNDLED, *CONVERTED])}) "
                    "and not a path to a .gguf file"
                )
            info = read_gguf_info(path)
            entry = ModelEntry(str(path.resolve()), "local", info, NATIVE, info.name)
        self._cache[ref] = entry
        return entry

    def discover(self, extra_refs: Iterable[str] = ()) -> list[ModelEntry | ModelFileError]:
        """Bundled and converted models, GGUF files dropped in the models dir, and the refs given."""
        refs: list[str] = [*BUNDLED, *CONVERTED]
        bundled_files = {b.weights.filename for b in BUNDLED.values()}
        bundled_files |= {c.filename for c in CONVERTED.values()}
        if self.models_dir.is_dir():
            refs += [str(p) for p in sorted(self.models_dir.glob("*.gguf")) if p.name not in bundled_files]
        refs += [r for r in extra_refs if r not in refs]
        found: list[ModelEntry | ModelFileError] = []
        for ref in refs:
            try:
                found.append(self.resolve(ref))
            except ModelFileError as err:
                found.append(err)
        return found
