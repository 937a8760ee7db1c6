"""Short-term memory: each session's conversation, persisted in SQLite, read back as a bounded window."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS window_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS window_messages_by_session ON window_messages (session, id);
"""


class SessionWindow:
    """Per-session message log; may share a database file with LongTermMemory (own table, WAL)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
        except BaseException:
            self._conn.close()
            raise

    def append(self, session: str, role: str, content: str) -> None:
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO window_messages (session, role, content, created_at) VALUES (?, ?, ?, ?)",
                (session, role, content, time.time()),
            )

    def window(self, session: str, max_messages: int, max_chars: int) -> list[dict[str, Any]]:
        """The most recent messages that fit both limits, oldest first.

        Counting back from the newest, a message that would pass `max_chars` ends the window, so
        the window is always an unbroken tail of the conversation.
        """
        if max_messages <= 0 or max_chars <= 0:
            return []
        with self._lock:
            rows = self._conn.execute(
                "SELECT role, content FROM window_messages WHERE session = ? ORDER BY id DESC LIMIT ?",
                (session, max_messages),
            ).fetchall()
        kept: list[dict[str, Any]] = []
        used = 0
        for role, content in rows:
            used += len(content)
            if used > max_chars:
                break
            kept.append({"role": role, "content": content})
        kept.reverse()
        return kept

    def clear(self, session: str) -> int:
        """Forget a session's messages; returns how many there were."""
        with self._lock, self._conn:
            return self._conn.execute("DELETE FROM window_messages WHERE session = ?", (session,)).rowcount

    def messages(self, session: str, limit: int = 10_000) -> list[dict[str, Any]]:
        """A session's whole log (up to `limit`, the newest kept), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT role, content, created_at FROM window_messages WHERE session = ? "
                "ORDER BY id DESC LIMIT ?",
                (session, limit),
            ).fetchall()
        return [{"role": r, "content": c, "created_at": t} for r, c, t in reversed(rows)]

    def summaries(self) -> list[dict[str, Any]]:
        """Each session with its message count and last activity, most recent first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT session, count(*), max(created_at) FROM window_messages GROUP BY session "
                "ORDER BY max(id) DESC"
            ).fetchall()
        return [{"id": s, "messages": n, "last_at": t} for s, n, t in rows]

    def load(self, session: str, messages: list[dict[str, Any]]) -> int:
        """Append saved messages to a session in one transaction (all or nothing)."""
        rows = [
            (session, m["role"], m["content"], float(m.get("created_at") or time.time())) for m in messages
        ]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO window_messages (session, role, content, created_at) VALUES (?, ?, ?, ?)", rows
            )
        return len(rows)

    def sessions(self) -> list[str]:
        """Sessions with messages, most recently active first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT session FROM window_messages GROUP BY session ORDER BY max(id) DESC"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SessionWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
