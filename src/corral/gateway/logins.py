"""Browser logins: an API key traded once for an HttpOnly, SameSite=Strict session cookie.

The key itself never reaches JavaScript: Mission Control posts it to /api/login, gets the cookie,
and forgets the key. Sessions are stored as SHA-256 hashes of their tokens (a leaked file opens
nothing), persist across restarts of corral (mode 0600), and end at an absolute expiry, at logout,
or as soon as the key they came from is revoked.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from corral.errors import AuthError, ForbiddenError
from corral.gateway.auth import KeyRecord, KeyStore, Scope
from corral.paths import atomic_write_text

COOKIE = "corral_session"
LOGINS_VERSION = 1


@dataclass
class Login:
    key_id: str
    created: float
    expires: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginBook:
    """Cookie sessions for the UI; `path=None` keeps them in memory only (tests)."""

    def __init__(self, keys: KeyStore, path: Path | None = None, ttl_s: float = 12 * 3600) -> None:
        self.keys = keys
        self.path = path
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._logins: dict[str, Login] = self._load()

    def _load(self) -> dict[str, Login]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != LOGINS_VERSION:
                return {}
            now = time.time()
            logins = {h: Login(**v) for h, v in data.get("logins", {}).items()}
            return {h: login for h, login in logins.items() if login.expires > now}
        except (OSError, ValueError, TypeError):
            return {}  # unreadable: everyone logs in again, nothing else is lost

    def _save(self) -> None:
        if self.path is None:
            return
        data: dict[str, Any] = {
            "version": LOGINS_VERSION,
            "logins": {h: asdict(login) for h, login in self._logins.items()},
        }
        atomic_write_text(self.path, json.dumps(data) + "\n", mode=0o600)

    def login(self, presented_key: str | None) -> tuple[str, KeyRecord, Login]:
        """Check the key and open a session; returns the cookie token (shown once)."""
        record = self.keys.verify(presented_key, need="user")
        token = secrets.token_urlsafe(32)
        now = time.time()
        login = Login(record.id, now, now + self.ttl_s)
        with self._lock:
            self._logins = {h: v for h, v in self._logins.items() if v.expires > now}
            self._logins[_hash(token)] = login
            self._save()
        return token, record, login

    def logout(self, token: str | None) -> None:
        if not token:
            return
        with self._lock:
            if self._logins.pop(_hash(token), None) is not None:
                self._save()

    def verify(self, token: str, need: Scope = "user") -> tuple[KeyRecord, Login]:
        """The key behind a live session, or AuthError/ForbiddenError saying what to do."""
        login = self._logins.get(_hash(token))
        if login is None or login.expires <= time.time():
            raise AuthError("your session has expired or was ended; log in again with your API key")
        record = self.keys.get(login.key_id)
        if record is None or not record.active:
            raise AuthError("the API key behind this session was revoked; log in with a valid key")
        if need == "admin" and record.scope != "admin":
            raise ForbiddenError(
                "this needs an admin key; log in with one (create it with `corral keys create --scope admin`)"
            )
        return record, login
