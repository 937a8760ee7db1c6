"""The PromptBook: which prompt the agent uses for a role right now — the promoted variant's,
else the seed its node was given. It re-reads `evolve/promoted.json` when the file changes, so a
promotion or rollback takes effect at the next node run, with no restart."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("corral.evolve")


class PromptBook:
    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.file = self.home / "evolve" / "promoted.json"
        self._stamp: tuple[int, int] | None = None
        self._roles: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, role: str, seed: str) -> str:
        """The promoted prompt for `role`, else `seed`."""
        entry = self._current().get(role)
        prompt = entry.get("prompt") if isinstance(entry, dict) else None
        return prompt if isinstance(prompt, str) and prompt.strip() else seed

    def promoted(self, role: str) -> str | None:
        """The promoted variant's id for `role`, if any."""
        entry = self._current().get(role)
        variant = entry.get("variant") if isinstance(entry, dict) else None
        return variant if isinstance(variant, str) else None

    def _current(self) -> dict[str, Any]:
        try:
            stat = os.stat(self.file)
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    data = json.loads(self.file.read_text(encoding="utf-8"))
                    roles = data.get("roles") if isinstance(data, dict) else None
                    self._roles = roles if isinstance(roles, dict) else {}
                except (OSError, ValueError):
                    log.exception("cannot read %s; the agent keeps its seed prompts", self.file)
                    self._roles = {}
                self._stamp = stamp
            return self._roles
