"""Real embeddings: llama-server on the converted all-MiniLM-L6-v2 GGUF, checked against a numpy BERT."""

from __future__ import annotations

import math
import re
import subprocess
import time
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file

from corral.agent.memory.embedder import LLMEmbedder
from corral.agent.memory.longterm import LongTermMemory
from corral.engine.binaries import locate
from corral.engine.replica import ReplicaSpec, free_port
from corral.models import minilm
from corral.models.catalog import Catalog

pytestmark = pytest.mark.slow

SENTENCES = [
    "The cat sits on the mat",
    "A cat is sitting on a rug",
    "Stock markets fell sharply",
    "Café naïve résumé, don't panic!",
    "Kubernetes pods restart when the liveness probe fails.",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server started with exactly the command line corral gives an embedding replica."""
    home = tmp_path_factory.mktemp("embed-home")
    entry = Catalog(home / "models").resolve(minilm.MODEL_ID)
    binaries = locate(home / "engine-lib")
    spec = ReplicaSpec("embed", 0, entry, slots=2, context_per_slot=512, threads=2, embedding=True)
    port = free_port()
    log = home / "llama-server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            spec.command(binaries, port), env=binaries.env(), stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def embed(url: str, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    body = {"input": list(texts), "model": "embed"}
    response = httpx.post(url + "/v1/embeddings", json=body, trust_env=False)
    response.raise_for_status()
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float64)


class ServerLLM:
    """The LLMClient's embedding half, straight to the llama-server."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        async with httpx.AsyncClient(trust_env=False) as client:
            body = {"input": list(texts), "model": model}
            response = await client.post(self.url + "/v1/embeddings", json=body)
            response.raise_for_status()
            return [item["embedding"] for item in response.json()["data"]]


# --- a numpy reference of the model: BERT's basic + WordPiece tokenizer, then the forward pass ----


class ReferenceMiniLM:
    def __init__(self, model_dir: Path) -> None:
        self.w = load_file(str(model_dir / "model.safetensors"))
        words = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
        self.vocab = {word: i for i, word in enumerate(words) if word}

    def tokenize(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        ids = [self.vocab["[CLS]"]]
        for word in re.findall(r"\w+|[^\w\s]", text):
            start = 0
            while start < len(word):
                end = len(word)
                while end > start and ("##" * (start > 0) + word[start:end]) not in self.vocab:
                    end -= 1
                if end == start:
                    ids.append(self.vocab["[UNK]"])
                    break
                ids.append(self.vocab["##" * (start > 0) + word[start:end]])
                start = end
        return [*ids, self.vocab["[SEP]"]]

    def _norm(self, x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _dense(self, x: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, text: str) -> np.ndarray[Any, Any]:
        ids = self.tokenize(text)
        n, heads, width = len(ids), 12, 32
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        ).astype(np.float64)
        x = self._norm(x, "embeddings.LayerNorm")
        erf = np.vectorize(math.erf)
        for i in range(6):
            p = f"encoder.layer.{i}."
            q, k, v = (
                self._dense(x, p + "attention.self." + part).reshape(n, heads, width).transpose(1, 0, 2)
                for part in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(width)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, heads * width)
            attended = x + self._dense(context, p + "attention.output.dense")
            x = self._norm(attended, p + "attention.output.LayerNorm")
            hidden = self._dense(x, p + "intermediate.dense")
            hidden = 0.5 * hidden * (1 + erf(hidden / math.sqrt(2)))  # exact GELU
            x = self._norm(x + self._dense(hidden, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return np.asarray(pooled / np.linalg.norm(pooled))


def test_embeddings_rank_by_meaning(server: str) -> None:
    vectors = embed(server, SENTENCES)
    assert vectors.shape == (5, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6  # the two cat sentences
    assert similarity[0, 1] > similarity[0, 2] + 0.4
    assert similarity[1, 0] > max(similarity[1, 2], similarity[1, 3], similarity[1, 4])


def test_llama_server_matches_numpy_reference(server: str) -> None:
    reference = ReferenceMiniLM(minilm.source_dir())
    vectors = embed(server, SENTENCES)
    for text, vector in zip(SENTENCES, vectors, strict=True):
        tokens = httpx.post(
            server + "/tokenize", json={"content": text, "add_special": True}, trust_env=False
        ).json()["tokens"]
        assert tokens == reference.tokenize(text), text
        cosine = float(reference.embed(text) @ vector)
        assert cosine > 0.999, (text, cosine)


async def test_long_term_memory_semantic_recall(server: str, tmp_path: Path) -> None:
    facts = [
        "Alice's birthday is on the third of May",
        "The NAS takes a full backup every night at 2 am",
        "The guest wifi password is printed under the router",
        "Bob is allergic to peanuts",
        "The old ThinkPad runs the Home Assistant server",
    ]
    queries = {
        "When was Alice born?": 0,
        "what time do the nightly backups happen": 1,
        "how do visitors get on the wireless network": 2,
        "which foods should Bob avoid": 3,
        "where is home automation hosted": 4,
    }
    embedder = LLMEmbedder(ServerLLM(server), "embed")
    with LongTermMemory.open(tmp_path / "memory.db", embedder) as memory:
        stored = [await memory.remember(fact, session="home") for fact in facts]
        for query, want in queries.items():
            found = await memory.recall(query, k=3, min_score=0.2)
            assert found and found[0].id == stored[want].id, (query, [(r.text, r.score) for r in found])
