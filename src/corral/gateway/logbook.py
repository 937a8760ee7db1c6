"""The live log: a logging handler that keeps the last lines in memory for Mission Control.

Lines are numbered so a client can ask for what it missed (`after=SEQ`) and follow new ones; the
ring is bounded, so a chatty process never grows it. Handlers run in any thread; subscribers are
asyncio queues fed through their loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import Any


class LogBook(logging.Handler):
    def __init__(self, capacity: int = 2000, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.capacity = capacity
        self._lines: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._seq = 0
        self._guard = threading.Lock()
        self._subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message += f" ({record.exc_info[0].__name__}: {record.exc_info[1]})"
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        with self._guard:
            self._seq += 1
            line = {
                "seq": self._seq,
                "ts": record.created,
                "level": record.levelname,
                "logger": record.name,
                "message": message[:4000],
            }
            self._lines.append(line)
            subscribers = list(self._subscribers)
        for loop, queue in subscribers:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(_offer, queue, line)

    def lines(self, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        with self._guard:
            newer = [line for line in self._lines if line["seq"] > after]
        return newer[-limit:]

    async def follow(self, backlog: int = 200) -> AsyncIterator[dict[str, Any]]:
        """The last `backlog` lines, then each new one as it is logged."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        entry = (asyncio.get_running_loop(), queue)
        with self._guard:
            past = list(self._lines)[-backlog:] if backlog else []
            self._subscribers.add(entry)
        try:
            last = 0
            for line in past:
                last = line["seq"]
                yield line
            while True:
                line = await queue.get()
                if line["seq"] > last:
                    last = line["seq"]
                    yield line
        finally:
            with self._guard:
                self._subscribers.discard(entry)


def _offer(queue: asyncio.Queue[dict[str, Any]], line: dict[str, Any]) -> None:
    if queue.full():  # a slow reader loses the oldest lines, never blocks logging
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(line)
