"""Where corral keeps its state: one data directory, chosen once at the edge (CLI or tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_home() -> Path:
    """`$CORRAL_HOME`, else `$XDG_DATA_HOME/corral`, else `~/.local/share/corral`."""
    explicit = os.environ.get("CORRAL_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "corral"


@dataclass(frozen=True)
class CorralPaths:
    """Every file corral writes lives under `home`; nothing reads the environment past here."""

    home: Path

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def keys_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def engine_libs(self) -> Path:
        return self.home / "engine-lib"

    @property
    def profile_cache(self) -> Path:
        return self.home / "profile.json"

    @property
    def config_file(self) -> Path:
        return self.home / "corral.yaml"

    def ensure(self) -> CorralPaths:
        for directory in (self.home, self.models, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        return self


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Write a file so a crash leaves either the old or the new content, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
