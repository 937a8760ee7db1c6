"""Secrets: read only from files that only their owner can read (mode 0600) or from the
environment, and never written to a log (a filter redacts keys, tokens and passwords)."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from corral.errors import ConfigError

REDACTED = "[redacted]"

# What a secret looks like where it can end up in a log line.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bcrl_[0-9a-f]+_[A-Za-z0-9_-]+"), REDACTED),  # corral's API keys
    (re.compile(r"\b(sk|hf|ghp|gho|github_pat|xox[abp])[-_][A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),  # JWTs
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"(?i)(://[^/\s:@]+:)[^/\s@]+@"), r"\1" + REDACTED + "@"),  # user:password@host
    (
        re.compile(
            r"(?i)\b((?:api[_-]?key|access[_-]?token|token|secret|password|passwd|authorization)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&]+)"
        ),
        r"\1" + REDACTED,
    ),
)


def redact(text: str) -> str:
    """`text` with every secret-looking part replaced by [redacted]."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in) and exception text, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_redaction(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Put one RedactingFilter on each handler (the root logger's by default); idempotent."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def check_private(path: Path, what: str = "secret file") -> None:
    """ConfigError unless only the owner can read `path` (no group or world bits)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; create it with mode 0600") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` and start again"
        )


def read_secret_file(path: Path, what: str = "secret file") -> str:
    """The file's text, stripped; refused (ConfigError) if group- or world-accessible or empty."""
    check_private(path, what)
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{what} {path} is empty; put the secret in it")
    return value


def secret_from(
    *, env_var: str | None = None, file: Path | None = None, env: Mapping[str, str] | None = None,
    what: str = "secret",
) -> str | None:  # fmt: skip
    """A secret from a 0600 file (checked first) or an environment variable; None if neither
    is given. A named but missing/empty variable is a ConfigError."""
    if file is not None:
        return read_secret_file(file, f"{what} file")
    if env_var is not None:
        value = (env if env is not None else os.environ).get(env_var, "").strip()
        if not value:
            raise ConfigError(f"{what} comes from ${env_var}, which is not set; export it first")
        return value
    return None
