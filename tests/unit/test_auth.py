from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from corral.errors import AuthError, ForbiddenError
from corral.gateway.auth import KeyStore, bearer_token


def test_key_is_stored_only_as_hash(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, secret = store.create("laptop", "user")
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text
    assert record.sha256 in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert json.loads(text)["version"] == 1


def test_verify_accepts_valid_and_rejects_others(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    record, secret = store.create("laptop", "user")
    assert store.verify(secret).id == record.id
    with pytest.raises(AuthError, match="corral keys create"):
        store.verify(None)
    with pytest.raises(AuthError):
        store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    with pytest.raises(AuthError):
        store.verify("sk-something-else")


def test_scope_and_revocation(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    user, user_secret = store.create("u", "user")
    _, admin_secret = store.create("a", "admin")
    with pytest.raises(ForbiddenError, match="admin"):
        store.verify(user_secret, need="admin")
    assert store.verify(admin_secret, need="admin").scope == "admin"
    # A second store (another process: the CLI) revokes; the first sees it on the next call.
    KeyStore(tmp_path / "keys.json").revoke(user.id)
    with pytest.raises(AuthError, match="revoked"):
        store.verify(user_secret)


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc", None) == "abc"
    assert bearer_token("bearer  abc ", None) == "abc"
    assert bearer_token(None, "xyz") == "xyz"
    assert bearer_token("Basic abc", None) is None
