"""The event bus: run and node events (started, token, output, finished, failed, gate) fanned out
to the UI, the API streams and voice, each subscriber with its own bounded queue.

Publishing never blocks a run: a subscriber that falls behind loses its oldest token events first,
then its oldest events of any kind, and is told how many it missed (`dropped` on the next event).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

EVENT_TYPES = (
    "run.started",
    "run.finished",
    "run.failed",
    "run.cancelled",
    "run.waiting",
    "node.started",
    "node.token",
    "node.output",
    "node.failed",
    "node.retry",
    "gate.waiting",
    "gate.resolved",
)


@dataclass(frozen=True)
class Event:
    type: str
    run_id: str
    node_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)
    seq: int = 0
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "run_id": self.run_id, "node_id": self.node_id}
        out["data"] = self.data
        out.update({"ts": self.ts, "seq": self.seq})
        if self.dropped:
            out["dropped"] = self.dropped
        return out


class Subscription:
    def __init__(self, bus: EventBus, accept: Callable[[Event], bool], maxsize: int) -> None:
        self._bus = bus
        self._accept = accept
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if not self._accept(event):
            return
        if self._queue.full():
            self._make_room()
        if self.dropped:
            event = Event(
                event.type, event.run_id, event.node_id, event.data, event.ts, event.seq, self.dropped
            )
            self.dropped = 0
        self._queue.put_nowait(event)

    def _make_room(self) -> None:
        items: list[Event | None] = []
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        victim = next((i for i, e in enumerate(items) if e is not None and e.type == "node.token"), 0)
        items.pop(victim)
        self.dropped += 1
        for item in items:
            self._queue.put_nowait(item)

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        if self._queue.full():
            self._make_room()
        self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        """The next event, None once closed."""
        return await self._queue.get()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._queue.get()
            if event is None:
                return
            yield event

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._seq = itertools.count(1)

    def publish(
        self, type: str, run_id: str, node_id: str = "", data: dict[str, Any] | None = None
    ) -> Event | None:
        if not self._subscribers:
            return None  # nobody listens: building the event would be wasted work
        event = Event(type, run_id, node_id, data or {}, time.time(), next(self._seq))
        for subscriber in list(self._subscribers):
            subscriber.offer(event)
        return event

    def subscribe(
        self, run_id: str | None = None, *, tokens: bool = True, maxsize: int = 1000
    ) -> Subscription:
        """Events of one run (and its sub-runs' events tagged with it) or of all runs."""

        def accept(event: Event) -> bool:
            if not tokens and event.type == "node.token":
                return False
            return run_id is None or event.run_id == run_id or event.data.get("root_run") == run_id

        subscription = Subscription(self, accept, maxsize)
        self._subscribers.add(subscription)
        return subscription

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
