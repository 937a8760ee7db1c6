"""The cluster token: generated on the head (0600), read on the nodes, handed to Ray.

Ray reads its auth settings (`RAY_AUTH_MODE`, `RAY_AUTH_TOKEN`) from the environment once, when
it is imported, so `use_token` must run before anything imports ray. This module imports no Ray.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from corral.errors import CorralError
from corral.paths import CorralPaths, atomic_write_text

TOKEN_FILE = "cluster.token"
TOKEN_ENV = "CORRAL_CLUSTER_TOKEN"


class ClusterError(CorralError):
    """The cluster cannot be started or joined; the message says what to do."""


def ensure_token(paths: CorralPaths) -> Path:
    """The head's token file, generated (0600) on first use."""
    path = paths.home / TOKEN_FILE
    if not path.exists():
        atomic_write_text(path, secrets.token_hex(32), mode=0o600)
    return path


def read_token(token_file: Path | None, env: Mapping[str, str]) -> str:
    """The token from a file (--token-file), else $CORRAL_CLUSTER_TOKEN; stripped."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ClusterError(
                f"cannot read the token file {token_file} ({exc.strerror}); copy "
                f"$CORRAL_HOME/{TOKEN_FILE} from the head there, readable by this user"
            ) from None
    else:
        token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ClusterError(
            f"no cluster token: pass --token-file PATH (the head's $CORRAL_HOME/{TOKEN_FILE}) "
            f"or set {TOKEN_ENV}"
        )
    return token


def ray_env(token: str) -> dict[str, str]:
    """Ray's settings for token auth. The token itself, not a path: Ray compares it byte for
    byte, so a file copied with a trailing newline would not match."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }


def use_token(token: str) -> dict[str, str]:
    """Put the auth settings into this process's environment (before Ray is imported)."""
    env = ray_env(token)
    os.environ.update(env)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    return env
