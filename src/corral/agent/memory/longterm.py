"""Long-term semantic memory: texts with their vectors in SQLite, searched through a usearch index.

SQLite (WAL) is the source of truth: one row per memory with its float32 vector. The usearch
index (cosine) is a cache of those vectors kept in a file next to the database; it is saved
atomically on `close()` and every `autosave_every` changes, and a revision counter in SQLite says
whether the saved file is current. A missing, stale or unreadable index file is rebuilt from the
rows (no re-embedding). Stores under EXACT_SEARCH_BELOW memories are searched exhaustively (HNSW
may miss near-ties), larger ones approximately. The vector dimension is fixed by the first
memory; when the embedding model changes it, remember/recall refuse with `EmbeddingMismatchError`
until `reembed()` is run.

All SQLite and index work runs under one lock, in a worker thread for the async methods.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from usearch.index import Index

from corral.agent.memory.embedder import Embedder
from corral.errors import CorralError

log = logging.getLogger("corral.agent.memory")

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    meta TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (session, text)
);
CREATE TABLE IF NOT EXISTS memory_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_COLUMNS = "id, session, text, source, created_at, meta"
EXACT_SEARCH_BELOW = 20_000  # brute force is exact and still ~ms at this size; HNSW above it


class EmbeddingMismatchError(CorralError):
    """The store's vectors and the embedding model's disagree in dimension."""


@dataclass(frozen=True)
class Memory:
    id: int
    text: str
    session: str
    source: str
    created_at: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cite(self) -> str:
        return f"[m{self.id}]"


@dataclass(frozen=True)
class Recollection(Memory):
    score: float = 0.0  # cosine similarity to the query


class LongTermMemory:
    """A persistent semantic store; open it with `LongTermMemory.open(path, embedder)`."""

    def __init__(self, path: Path, embedder: Embedder, conn: sqlite3.Connection, autosave_every: int) -> None:
        self.path = path
        self.index_path = path.with_name(path.name + ".usearch")
        self.embedder = embedder
        self.autosave_every = autosave_every
        self._conn = conn
        self._lock = threading.RLock()
        self._index: Index | None = None
        self._unsaved = 0
        self._closed = False

    @classmethod
    def open(cls, path: Path, embedder: Embedder, *, autosave_every: int = 32) -> LongTermMemory:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            memory = cls(path, embedder, conn, autosave_every)
            memory._load_index()
        except BaseException:
            conn.close()
            raise
        return memory

    # --- public API ------------------------------------------------------------------------

    async def remember(
        self, text: str, *, session: str = "", source: str = "", meta: dict[str, Any] | None = None
    ) -> Memory:
        """Store a text (an exact repeat in the same session returns the existing memory)."""
        text = text.strip()
        if not text:
            raise ValueError("cannot remember an empty text")
        existing = await asyncio.to_thread(self._find, session, text)
        if existing is not None:
            return existing
        vector = (await self.embedder.embed([text]))[0]
        if not vector.any():
            raise ValueError("the embedding model gave a zero vector; nothing to remember")
        record = json.dumps(meta or {}, sort_keys=True)
        return await asyncio.to_thread(self._insert, session, text, source, record, vector)

    async def recall(
        self, query: str, *, k: int = 3, session: str | None = None, min_score: float = 0.3
    ) -> list[Recollection]:
        """Up to k memories most similar to the query (score >= min_score), best first.

        `session=None` searches every session; a string searches that session only.
        """
        query = query.strip()
        if not query or k <= 0 or await asyncio.to_thread(self.count) == 0:
            return []
        vector = (await self.embedder.embed([query]))[0]
        if not vector.any():
            return []
        return await asyncio.to_thread(self._search, vector, k, session, min_score)

    def forget(self, memory_id: int) -> bool:
        """Delete one memory; False when there was none with that id."""
        with self._lock:
            self._check_open()
            with self._conn:
                deleted = self._conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,)).rowcount
                if deleted:
                    self._bump_revision()
            if deleted and self._index is not None:
                self._index.remove(memory_id)
                self._changed()
            return bool(deleted)

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._conn.execute("SELECT count(*) FROM memories").fetchone()[0])

    def get(self, memory_id: int) -> Memory | None:
        with self._lock:
            self._check_open()
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,)).fetchone()
            return _memory(row) if row else None

    async def reembed(self, batch_size: int = 64) -> int:
        """Embed every stored text again with the current embedder (after a model change)."""
        for _attempt in range(3):
            rows = await asyncio.to_thread(self._all_texts)
            texts = [text for _, text in rows]
            vectors: list[NDArray[np.float32]] = []
            for start in range(0, len(texts), batch_size):
                vectors.append(await self.embedder.embed(texts[start : start + batch_size]))
            if await asyncio.to_thread(self._replace_vectors, rows, vectors):
                return len(rows)
        raise RuntimeError("memories kept changing while they were re-embedded; try again")

    def save_index(self) -> None:
        """Write the index file atomically and record which revision it holds."""
        with self._lock:
            self._check_open()
            if self._index is None:
                return
            revision = self._state("revision")
            tmp = self.index_path.with_name(f".{self.index_path.name}.tmp-{os.getpid()}")
            try:
                self._index.save(str(tmp))
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, self.index_path)
            finally:
                tmp.unlink(missing_ok=True)
            with self._conn:
                self._set_state("index_revision", revision)
            self._unsaved = 0

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if self._unsaved or (self._index is not None and not self.index_path.exists()):
                    self.save_index()
            finally:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> LongTermMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- worker-thread parts (all under the lock) ------------------------------------------

    def _find(self, session: str, text: str) -> Memory | None:
        with self._lock:
            self._check_open()
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM memories WHERE session = ? AND text = ?", (session, text)
            ).fetchone()
            return _memory(row) if row else None

    def _insert(self, session: str, text: str, source: str, meta: str, vector: NDArray[np.float32]) -> Memory:
        with self._lock:
            self._check_open()
            self._check_dim(len(vector))
            with self._conn:
                cursor = self._conn.execute(
                    "INSERT OR IGNORE INTO memories (session, text, source, created_at, meta, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (session, text, source, time.time(), meta, _blob(vector)),
                )
                if cursor.rowcount == 0:  # the same text arrived concurrently
                    found = self._find(session, text)
                    assert found is not None
                    return found
                memory_id = int(cursor.lastrowid or 0)
                if self._state("dim") == 0:
                    self._set_state("dim", len(vector))
                self._bump_revision()
            if self._index is None:
                self._index = _new_index(len(vector))
            self._index.add(memory_id, vector, threads=1)
            self._changed()
            found = self._find(session, text)
            assert found is not None
            return found

    def _search(
        self, vector: NDArray[np.float32], k: int, session: str | None, min_score: float
    ) -> list[Recollection]:
        with self._lock:
            self._check_open()
            self._check_dim(len(vector))
            index = self._index
            if index is None or len(index) == 0:
                return []
            total = len(index)
            want = min(total, max(4 * k, 16))
            while True:
                matches = index.search(vector, want, threads=1, exact=total <= EXACT_SEARCH_BELOW)
                ids = [int(key) for key, distance in zip(matches.keys, matches.distances, strict=True)
                       if 1.0 - float(distance) >= min_score - 1e-6]  # fmt: skip
                found = [r for r in self._rows(ids, vector) if session is None or r.session == session]
                exhausted = len(ids) < len(matches.keys) or want >= total
                if len(found) >= k or exhausted:
                    break
                want = min(total, want * 4)
            found = [r for r in found if r.score >= min_score]
            found.sort(key=lambda r: (-r.score, r.id))
            return found[:k]

    def _rows(self, ids: list[int], query: NDArray[np.float32]) -> Iterator[Recollection]:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                f"SELECT {_COLUMNS}, vector FROM memories WHERE id IN ({marks})", chunk
            ):
                score = float(np.dot(np.frombuffer(row[6], dtype="<f4"), query))
                yield Recollection(**vars(_memory(row[:6])), score=score)

    def _all_texts(self) -> list[tuple[int, str]]:
        with self._lock:
            self._check_open()
            rows = self._conn.execute("SELECT id, text FROM memories ORDER BY id").fetchall()
            return [(int(i), str(t)) for i, t in rows]

    def _replace_vectors(self, rows: list[tuple[int, str]], batches: Sequence[NDArray[np.float32]]) -> bool:
        with self._lock:
            if self._all_texts() != rows:
                return False  # something was remembered or forgotten meanwhile: embed again
            vectors = np.concatenate(batches) if batches else np.zeros((0, 0), dtype=np.float32)
            dim = int(vectors.shape[1]) if len(rows) else 0
            with self._conn:
                self._conn.executemany(
                    "UPDATE memories SET vector = ? WHERE id = ?",
                    [(_blob(v), memory_id) for (memory_id, _), v in zip(rows, vectors, strict=True)],
                )
                self._set_state("dim", dim)
                self._bump_revision()
            self._index = self._build_index(dim) if dim else None
            self.save_index()
            return True

    # --- the index -------------------------------------------------------------------------

    def _load_index(self) -> None:
        with self._lock:
            dim = self._state("dim")
            if dim == 0:
                return
            count = self.count()
            current = self._state("index_revision") == self._state("revision")
            if current and self.index_path.exists():
                try:
                    index = Index.restore(str(self.index_path))
                except Exception as exc:  # a damaged file: usearch raises RuntimeError/ValueError
                    log.warning("memory index %s is unreadable (%s); rebuilding it", self.index_path, exc)
                    index = None
                if index is not None and index.ndim == dim and len(index) == count:
                    self._index = index
                    return
            log.info("rebuilding the memory index %s from %d stored vectors", self.index_path, count)
            self._index = self._build_index(dim)
            self.save_index()

    def _build_index(self, dim: int) -> Index:
        index = _new_index(dim)
        cursor = self._conn.execute("SELECT id, vector FROM memories ORDER BY id")
        while batch := cursor.fetchmany(1024):
            good = [row for row in batch if len(row[1]) == 4 * dim]
            for row in batch:  # only a hand-edited database gets here: _insert checks the size
                if len(row[1]) != 4 * dim:
                    problem = self._mismatch_message(len(row[1]) // 4, dim)
                    log.warning("memory %s left out of the index: %s", row[0], problem)
            if good:
                keys = np.array([row[0] for row in good], dtype=np.uint64)
                index.add(keys, np.stack([np.frombuffer(row[1], dtype="<f4") for row in good]), threads=1)
        return index

    def _changed(self) -> None:
        self._unsaved += 1
        if self._unsaved >= self.autosave_every:
            self.save_index()

    # --- state -----------------------------------------------------------------------------

    def _check_dim(self, dim: int) -> None:
        stored = self._state("dim")
        if stored and stored != dim:
            raise EmbeddingMismatchError(self._mismatch_message(dim, stored))

    def _mismatch_message(self, got: int, stored: int) -> str:
        return (
            f"the memory store {self.path} holds {stored}-dimension vectors but the embedding model now "
            f"gives {got}: the embedding model was changed; run a re-embed of the stored memories "
            "(LongTermMemory.reembed()) or point memory at a new store file"
        )

    def _state(self, key: str) -> int:
        row = self._conn.execute("SELECT value FROM memory_state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_state(self, key: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO memory_state (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _bump_revision(self) -> None:
        self._set_state("revision", self._state("revision") + 1)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the memory store {self.path} is closed")


def _new_index(dim: int) -> Index:
    return Index(ndim=dim, metric="cos", dtype="f32")


def _blob(vector: NDArray[np.float32]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def _memory(row: Sequence[Any]) -> Memory:
    return Memory(
        id=int(row[0]),
        session=str(row[1]),
        text=str(row[2]),
        source=str(row[3]),
        created_at=float(row[4]),
        meta=json.loads(row[5]) if row[5] else {},
    )
