"""API keys: created once, stored only as SHA-256 hashes, compared in constant time, two scopes."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from corral.errors import AuthError, ConfigError, ForbiddenError
from corral.paths import atomic_write_text

Scope = Literal["admin", "user"]
KEYS_VERSION = 1
PREFIX = "crl"


@dataclass
class KeyRecord:
    id: str
    name: str
    scope: Scope
    sha256: str
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """keys.json (mode 0600): versioned; re-read when another process (the CLI) changes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, KeyRecord] = {}
        self._mtime: float | None = None

    def _load(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            self._records, self._mtime = {}, None
            return
        if mtime == self._mtime:
            return
        try:
            data = json.loads(self.path.read_text())
        except ValueError:
            raise ConfigError(
                f"{self.path} is not valid JSON; restore it from a backup or delete it and "
                "create new keys with `corral keys create`"
            ) from None
        if data.get("version") != KEYS_VERSION:
            raise ConfigError(
                f"{self.path} has version {data.get('version')}, this corral reads {KEYS_VERSION}"
            )
        self._records = {r["id"]: KeyRecord(**r) for r in data.get("keys", [])}
        self._mtime = mtime

    def _save(self) -> None:
        data = {"version": KEYS_VERSION, "keys": [asdict(r) for r in self._records.values()]}
        atomic_write_text(self.path, json.dumps(data, indent=2) + "\n", mode=0o600)
        self._mtime = None

    def create(self, name: str, scope: Scope = "user") -> tuple[KeyRecord, str]:
        """Make a key; the secret is returned once and never stored."""
        if scope not in ("admin", "user"):
            raise ConfigError(f"scope must be 'admin' or 'user', not {scope!r}")
        self._load()
        key_id = secrets.token_hex(4)
        while key_id in self._records:
            key_id = secrets.token_hex(4)
        secret = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(24)}"
        record = KeyRecord(key_id, name, scope, _hash(secret), time.time())
        self._records[key_id] = record
        self._save()
        return record, secret

    def list(self) -> list[KeyRecord]:
        self._load()
        return sorted(self._records.values(), key=lambda r: r.created_at)

    def revoke(self, key_id: str) -> KeyRecord:
        self._load()
        record = self._records.get(key_id)
        if record is None:
            raise ConfigError(f"no key with id {key_id!r}; see `corral keys list`")
        if record.revoked_at is None:
            record.revoked_at = time.time()
            self._save()
        return record

    def get(self, key_id: str) -> KeyRecord | None:
        self._load()
        return self._records.get(key_id)

    def has_active(self, scope: Scope | None = None) -> bool:
        return any(r.active and (scope is None or r.scope == scope) for r in self.list())

    def verify(self, presented: str | None, *, need: Scope = "user") -> KeyRecord:
        """The record for a valid key, or AuthError/ForbiddenError saying what to do."""
        if not presented:
            raise AuthError(
                "missing API key: send `Authorization: Bearer <key>`; create one with `corral keys create`"
            )
        self._load()
        parts = presented.split("_")
        record = self._records.get(parts[1]) if len(parts) >= 3 and parts[0] == PREFIX else None
        # Compare against a dummy when the id is unknown so timing does not reveal valid ids.
        expected = record.sha256 if record else _hash("corral-dummy-key")
        matches = hmac.compare_digest(_hash(presented), expected)
        if record is None or not matches or not record.active:
            raise AuthError("invalid or revoked API key; check it, or create one with `corral keys create`")
        if need == "admin" and record.scope != "admin":
            raise ForbiddenError(
                "this route needs an admin key; create one with `corral keys create --scope admin`"
            )
        return record


def bearer_token(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key
