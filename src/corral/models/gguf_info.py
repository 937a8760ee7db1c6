"""Facts about a GGUF file read from its header: architecture, parameters, quantisation, context."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import ModelFileError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    name: str
    parameters: int
    quantization: str
    context_length: int
    size_bytes: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int

    def kv_cache_bytes(self, tokens: int, bytes_per_value: int = 2) -> int:
        """Memory of an f16 KV cache holding `tokens` tokens (keys + values, all layers)."""
        per_token = self.n_layer * self.n_head_kv * (self.head_dim_k + self.head_dim_v)
        return tokens * per_token * bytes_per_value

    @property
    def parameters_human(self) -> str:
        count = float(self.parameters)
        for unit in ("", "K", "M", "B", "T"):
            if count < 1000:
                return f"{count:.0f}{unit}" if unit in ("", "K") else f"{count:.1f}{unit}"
            count /= 1000
        return f"{count:.1f}P"


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read a GGUF header; raise ModelFileError with the fix when the file is wrong."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelFileError(f"{path} does not exist; check the path or download the GGUF file")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file; name the .gguf file itself")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelFileError(f"cannot read {path}: {exc.strerror}; check its permissions") from None
    if magic != GGUF_MAGIC:
        raise ModelFileError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            "convert it with llama.cpp's convert_hf_to_gguf.py or pick a .gguf file"
        )
    from gguf import GGUFReader  # imported here: numpy-heavy, and only needed for local files

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader raises bare ValueError/struct errors on corrupt files
        raise ModelFileError(f"{path} has a damaged GGUF header ({exc}); download the file again") from None

    fields = {name: _field_value(field) for name, field in reader.fields.items()}
    arch = str(fields.get("general.architecture", "unknown"))

    def arch_int(key: str, default: int = 0) -> int:
        value = fields.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer arrays (e.g. head_count_kv) -> take the max
            value = max(value) if value else default
        return int(value)

    n_embd = arch_int("embedding_length")
    n_head = arch_int("attention.head_count", 1) or 1
    n_head_kv = arch_int("attention.head_count_kv", n_head) or n_head
    head_dim = n_embd // n_head if n_head else 0
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=str(fields.get("general.name", path.stem)),
        parameters=parameters,
        quantization=_file_type_name(fields.get("general.file_type")),
        context_length=arch_int("context_length"),
        size_bytes=path.stat().st_size,
        n_layer=arch_int("block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=arch_int("attention.key_length", head_dim) or head_dim,
        head_dim_v=arch_int("attention.value_length", head_dim) or head_dim,
    )


def _field_value(field: Any) -> Any:
    """Decode a GGUFReader field to a plain Python value (str, int, float or list)."""
    from gguf import GGUFValueType

    types = list(field.types)
    if not types:
        return None
    if types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if types[0] == GGUFValueType.ARRAY:
        if len(types) > 1 and types[1] == GGUFValueType.STRING:
            return None  # token lists: large and not needed here
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[0]].tolist()[0]


def _file_type_name(value: Any) -> str:
    if value is None:
        return "unknown"
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except ValueError:
        return f"type-{value}"
