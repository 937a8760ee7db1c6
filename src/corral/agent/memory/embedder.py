"""Text -> unit vectors for memory: the Embedder protocol and its implementation over the LLM seam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from corral.agent.llm import LLMClient

Vectors = NDArray[np.float32]  # shape (n, dim), each row L2-normalised (or all zeros for empty text)


class Embedder(Protocol):
    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One L2-normalised float32 row per text, shape (len(texts), dim)."""
        ...


def normalise(rows: NDArray[np.floating]) -> Vectors:
    """Scale each row to unit length; all-zero rows stay zero (they match nothing)."""
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("the embedding model returned NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    out: Vectors = np.zeros_like(matrix)
    np.divide(matrix, norms, out=out, where=norms > 0)
    return out


class LLMEmbedder:
    """Embeds through an LLMClient's embedding expert, `batch_size` texts per request.

    Blank texts are not sent (some servers reject them): they get a zero row, which scores 0
    against everything. The dimension is learned from the first answer.
    """

    def __init__(self, llm: LLMClient, expert: str, *, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.llm = llm
        self.expert = expert
        self.batch_size = batch_size
        self.dim: int | None = None

    async def embed(self, texts: Sequence[str]) -> Vectors:
        wanted = [i for i, text in enumerate(texts) if text.strip()]
        rows: list[list[float]] = []
        for start in range(0, len(wanted), self.batch_size):
            batch = [texts[i] for i in wanted[start : start + self.batch_size]]
            vectors = await self.llm.embed(batch, self.expert)
            if len(vectors) != len(batch):
                raise ValueError(
                    f"embedding expert {self.expert!r} returned {len(vectors)} vectors for {len(batch)} texts"
                )
            rows.extend(vectors)
        if rows:
            dims = {len(row) for row in rows}
            if len(dims) != 1 or 0 in dims:
                raise ValueError(f"embedding expert {self.expert!r} returned vectors of sizes {sorted(dims)}")
            self.dim = dims.pop()
        elif self.dim is None and texts:
            probe = await self.llm.embed(["."], self.expert)  # only blanks so far: learn the dimension
            self.dim = len(probe[0])
        out = np.zeros((len(texts), self.dim or 0), dtype=np.float32)
        if rows:
            out[wanted] = normalise(np.asarray(rows, dtype=np.float32))
        return out
