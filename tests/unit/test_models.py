"""GGUF metadata, bundled-model assembly and the fit check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter, LlamaFileType

from corral.errors import ModelFileError
from corral.hardware import NodeProfile, parse_cpuinfo
from corral.models.bundled import BundledWeights, assemble
from corral.models.catalog import Catalog, check_fit
from corral.models.gguf_info import read_gguf_info


def write_tiny_gguf(path: Path, *, context: int = 4096) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test")
    writer.add_context_length(context)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((64, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def profile(ram_gib: float, flags: tuple[str, ...] = ("avx", "avx2")) -> NodeProfile:
    return NodeProfile(
        "h", "cpu", 2, 4, int(ram_gib * 1024**3), int(ram_gib * 1024**3), 10**11, frozenset(flags)
    )


def test_reads_gguf_header(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "tiny.gguf"))
    assert (info.architecture, info.name, info.context_length) == ("llama", "tiny-test", 4096)
    assert info.parameters == 32 * 64 + 64 * 64
    assert info.quantization == "F16"
    assert (info.n_layer, info.n_head, info.n_head_kv, info.head_dim_k) == (2, 4, 2, 16)
    assert info.kv_cache_bytes(100) == 100 * 2 * 2 * (16 + 16) * 2


def test_bad_model_paths_explain(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        read_gguf_info(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 zip, not gguf")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        read_gguf_info(not_gguf)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()[:40])
    with pytest.raises(ModelFileError, match="damaged"):
        read_gguf_info(truncated)
    with pytest.raises(ModelFileError, match=r"not a bundled model \(gemma3-270m, all-minilm-l6-v2\)"):
        Catalog(tmp_path).resolve("no-such-model")


def test_fit_check_says_why(tmp_path: Path) -> None:
    info = read_gguf_info(write_tiny_gguf(tmp_path / "tiny.gguf", context=1024))
    assert check_fit(info, profile(8), 1024).fits
    small = check_fit(info, profile(0.5), 1024)
    assert not small.fits and "free after" in small.reasons[0]
    long = check_fit(info, profile(8), 8192)
    assert any("trained on 1024" in r for r in long.reasons)
    old_cpu = check_fit(info, profile(8, ("sse4_2",)), 1024)
    assert old_cpu.fits and any("AVX2" in r for r in old_cpu.reasons)


def test_assembly_is_verified_and_atomic(tmp_path: Path) -> None:
    parts = [tmp_path / "a.part", tmp_path / "b.part"]
    parts[0].write_bytes(b"hello ")
    parts[1].write_bytes(b"world")
    import hashlib

    good = BundledWeights("t", "t.gguf", hashlib.sha256(b"hello world").hexdigest(), lambda: parts)
    seen: list[tuple[int, int]] = []
    path = assemble(good, tmp_path / "models", lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == b"hello world" and seen[-1] == (11, 11)
    assert assemble(good, tmp_path / "models") == path  # verified marker: no second pass
    bad = BundledWeights("t", "bad.gguf", "0" * 64, lambda: parts)
    with pytest.raises(ModelFileError, match="damaged"):
        assemble(bad, tmp_path / "models")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["t.gguf", "t.gguf.sha256"]


def test_bundled_model_metadata(tmp_path: Path) -> None:
    entry = Catalog(tmp_path).resolve("gemma3-270m")
    assert entry.source == "bundled"
    assert entry.info.architecture == "gemma3"
    assert entry.info.quantization == "Q4_K_M"
    assert 200_000_000 < entry.info.parameters < 300_000_000
    assert entry.prompt_format.template_file is not None and entry.prompt_format.stop


def test_parse_cpuinfo_flags() -> None:
    model, flags = parse_cpuinfo("model name\t: Old Xeon\nflags\t\t: fpu sse4_2 avx f16c ht\n")
    assert model == "Old Xeon"
    assert flags == {"sse4_2", "avx", "f16c"}


def test_default_threads_never_oversubscribe() -> None:
    four_cores = NodeProfile("h", "cpu", 4, 8, 8 << 30, 8 << 30, 10**11, frozenset())
    assert four_cores.default_threads(1) == 4
    assert four_cores.default_threads(3) == 1
    assert four_cores.default_threads(2) == 2
    assert four_cores.default_threads(9) == 1
