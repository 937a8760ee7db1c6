"""Agent memory with FakeLLM embeddings: semantic store, index rebuilds, dimension changes, the window."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from corral.agent.memory.embedder import LLMEmbedder
from corral.agent.memory.longterm import EmbeddingMismatchError, LongTermMemory, Recollection
from corral.agent.memory.recall import format_recollections
from corral.agent.memory.window import SessionWindow
from corral.testing.fake_llm import FakeLLM

FACTS = [
    "Alice's birthday is 3 May",
    "The NAS backup runs every night at two",
    "Bob prefers tea over coffee",
    "The router admin password was rotated in June",
]


class CountingLLM(FakeLLM):
    def __init__(self, embed_dim: int = 64) -> None:
        super().__init__(embed_dim=embed_dim)
        self.batches: list[list[str]] = []

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        self.batches.append(list(texts))
        return await super().embed(texts, model)


def open_store(path: Path, dim: int = 64) -> LongTermMemory:
    return LongTermMemory.open(path, LLMEmbedder(FakeLLM(embed_dim=dim), "embed"))


async def test_embedder_batches_normalises_and_skips_blank_texts() -> None:
    llm = CountingLLM()
    embedder = LLMEmbedder(llm, "embed", batch_size=2)
    vectors = await embedder.embed(["one cat", "", "two dogs", "three birds", "  "])
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(norms, [1, 0, 1, 1, 0], atol=1e-6)
    assert llm.batches == [["one cat", "two dogs"], ["three birds"]]
    assert (await embedder.embed([])).shape == (0, 64)
    fresh = LLMEmbedder(CountingLLM(embed_dim=8), "embed")
    assert (await fresh.embed([""])).shape == (1, 8)  # dimension learned from a probe


async def test_remember_and_recall_ranked_with_citations(tmp_path: Path) -> None:
    with open_store(tmp_path / "memory.db") as memory:
        stored = [await memory.remember(fact, session="s1", source="chat") for fact in FACTS]
        found = await memory.recall("when is Alice's birthday?", k=3, min_score=0.1)
        assert found[0].id == stored[0].id and found[0].text == FACTS[0]
        assert found[0].cite == f"[m{stored[0].id}]" and found[0].source == "chat"
        assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)
        assert len(found) <= 3
        assert format_recollections(found[:1]) == f"[m{stored[0].id}] Alice's birthday is 3 May"


async def test_exact_repeats_are_stored_once(tmp_path: Path) -> None:
    llm = CountingLLM()
    with LongTermMemory.open(tmp_path / "memory.db", LLMEmbedder(llm, "embed")) as memory:
        first = await memory.remember("Bob prefers tea over coffee", session="s")
        again = await memory.remember("  Bob prefers tea over coffee ", session="s")
        assert again.id == first.id and memory.count() == 1
        assert len(llm.batches) == 1  # the repeat was not embedded again
        other = await memory.remember("Bob prefers tea over coffee", session="other")
        assert other.id != first.id and memory.count() == 2
        repeats = await asyncio.gather(*(memory.remember("same words", session="s") for _ in range(5)))
        assert len({m.id for m in repeats}) == 1 and memory.count() == 3


async def test_session_filter_and_min_score(tmp_path: Path) -> None:
    with open_store(tmp_path / "memory.db") as memory:
        await memory.remember("the backup server is called vault", session="work")
        await memory.remember("the backup of photos is on the blue disk", session="home")
        everywhere = await memory.recall("backup", k=5, min_score=0.1)
        assert {r.session for r in everywhere} == {"work", "home"}
        home = await memory.recall("backup", k=5, session="home", min_score=0.1)
        assert [r.session for r in home] == ["home"]
        assert await memory.recall("backup", k=5, min_score=0.99) == []
        assert await memory.recall("completely unrelated words", min_score=0.3) == []
        assert await memory.recall("   ") == []


async def test_many_sessions_filter_finds_matches_past_other_sessions(tmp_path: Path) -> None:
    with open_store(tmp_path / "memory.db") as memory:
        for i in range(60):
            await memory.remember(f"disk report number {i}", session="noise")
        wanted = await memory.remember("disk report for the garage", session="garage")
        found = await memory.recall("disk report", k=1, session="garage", min_score=0.1)
        assert [r.id for r in found] == [wanted.id]


async def test_forget_and_count(tmp_path: Path) -> None:
    with open_store(tmp_path / "memory.db") as memory:
        kept = await memory.remember("keep this memory about printers")
        gone = await memory.remember("forget this memory about printers")
        assert memory.forget(gone.id) and not memory.forget(gone.id)
        assert memory.count() == 1 and memory.get(gone.id) is None
        assert [r.id for r in await memory.recall("memory about printers", min_score=0.1)] == [kept.id]


async def test_persists_across_close_and_reopen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "memory.db"
    with open_store(path) as memory:
        ids = [(await memory.remember(fact, meta={"n": i})).id for i, fact in enumerate(FACTS)]
    assert memory.index_path.exists()
    caplog.set_level("INFO", logger="corral.agent.memory")
    with open_store(path) as reopened:
        assert reopened.count() == len(FACTS)
        found = await reopened.recall("the NAS backup schedule", k=1, min_score=0.1)
        assert found[0].id == ids[1] and found[0].meta == {"n": 1}
    assert "rebuilding" not in caplog.text  # the saved index was current


@pytest.mark.parametrize("damage", ["deleted", "corrupt", "truncated", "stale"])
async def test_index_file_rebuilt_from_sqlite(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "memory.db"
    memory = open_store(path)
    for fact in FACTS:
        await memory.remember(fact)
    memory.close()
    index_file = memory.index_path
    if damage == "deleted":
        index_file.unlink()
    elif damage == "corrupt":
        index_file.write_bytes(b"not a usearch index" * 10)
    elif damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:200])
    else:  # a crash after a new memory was committed, before the index was saved again
        crashed = open_store(path)
        await crashed.remember("The garage door code changed to 4711")
        crashed._conn.close()  # no close(): the index file still holds the old revision
    caplog.set_level("INFO", logger="corral.agent.memory")
    with open_store(path) as reopened:
        assert "rebuilding" in caplog.text
        found = await reopened.recall("Alice's birthday", k=1, min_score=0.1)
        assert found[0].text == FACTS[0]
        if damage == "stale":
            code = await reopened.recall("garage door code", k=1, min_score=0.1)
            assert code[0].text.startswith("The garage door code")
    assert index_file.exists()


async def test_dimension_change_needs_reembed(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    with open_store(path, dim=64) as memory:
        for fact in FACTS:
            await memory.remember(fact)
    with open_store(path, dim=32) as changed:
        with pytest.raises(EmbeddingMismatchError, match="re-embed"):
            await changed.recall("Alice's birthday")
        with pytest.raises(EmbeddingMismatchError, match="64-dimension"):
            await changed.remember("a new fact with new vectors")
        assert await changed.reembed() == len(FACTS)
        found = await changed.recall("Alice's birthday", k=1, min_score=0.1)
        assert found[0].text == FACTS[0]
        await changed.remember("a new fact with new vectors")
    with open_store(path, dim=32) as again:  # the re-embedded store reopens without complaint
        assert again.count() == len(FACTS) + 1


async def test_concurrent_remember_and_recall(tmp_path: Path) -> None:
    # 256 dimensions: at 64 the fake embedding hashes host17 and host34 to the same bin (a tie)
    with open_store(tmp_path / "memory.db", dim=256) as memory:
        memory.autosave_every = 5  # saves interleave with the writes
        texts = [f"fact number {i} about host{i}" for i in range(40)]
        recalls = [memory.recall("fact") for _ in range(10)]
        await asyncio.gather(*(memory.remember(t) for t in texts), *recalls)
        assert memory.count() == 40
        found = await memory.recall("host17", k=1, min_score=0.1)
        assert found[0].text == "fact number 17 about host17"


async def test_blank_and_closed(tmp_path: Path) -> None:
    memory = open_store(tmp_path / "memory.db")
    with pytest.raises(ValueError, match="empty"):
        await memory.remember("   ")
    assert await memory.recall("anything") == []  # nothing stored yet
    memory.close()
    memory.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        memory.count()


def test_format_recollections() -> None:
    assert format_recollections([]) == ""
    items = [
        Recollection(3, "Alice's birthday is 3 May", "s", "chat", 0.0, score=0.9),
        Recollection(17, "line one\nline two", "s", "", 0.0, score=0.5),
    ]
    assert format_recollections(items) == "[m3] Alice's birthday is 3 May\n[m17] line one line two"


def test_window_trims_by_messages_and_chars(tmp_path: Path) -> None:
    with SessionWindow(tmp_path / "memory.db") as window:
        for i in range(6):
            window.append("a", "user" if i % 2 == 0 else "assistant", f"message {i}")  # 9 chars each
        window.append("b", "user", "other session")
        contents = [m["content"] for m in window.window("a", 3, 10_000)]
        assert contents == ["message 3", "message 4", "message 5"]
        assert window.window("a", 3, 10_000)[0] == {"role": "assistant", "content": "message 3"}
        assert [m["content"] for m in window.window("a", 10, 20)] == ["message 4", "message 5"]
        assert window.window("a", 10, 5) == [] and window.window("a", 0, 100) == []
        assert window.sessions() == ["b", "a"]
        assert window.clear("a") == 6 and window.window("a", 10, 100) == []
        assert window.sessions() == ["b"]
    with SessionWindow(tmp_path / "memory.db") as reopened:  # persisted; shares the file with the store
        assert reopened.window("b", 5, 100) == [{"role": "user", "content": "other session"}]
