"""The Registry seam: where the gateway finds backends. LocalRegistry serves one machine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from corral.backends import Backend


class Registry(Protocol):
    def backends(self, expert: str) -> Sequence[Backend]:
        """Every backend of an expert, healthy or not."""
        ...

    def all(self) -> Sequence[Backend]: ...


class LocalRegistry:
    """Backends known to this process: the engine's replicas and configured remote URLs."""

    def __init__(self) -> None:
        self._by_expert: dict[str, list[Backend]] = {}

    def add(self, backend: Backend) -> None:
        self._by_expert.setdefault(backend.expert, []).append(backend)

    def backends(self, expert: str) -> Sequence[Backend]:
        return self._by_expert.get(expert, ())

    def all(self) -> Sequence[Backend]:
        return [b for group in self._by_expert.values() for b in group]
