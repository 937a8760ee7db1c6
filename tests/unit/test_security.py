"""Security headers, CORS (closed by default), secret files (0600 only) and log redaction."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from corral.config import parse_config
from corral.errors import ConfigError
from corral.gateway.app import create_app
from corral.secrets import (
    RedactingFilter,
    check_private,
    install_redaction,
    read_secret_file,
    redact,
    secret_from,
)
from tests.unit.conftest import Harness

HEADERS = ("x-content-type-options", "referrer-policy", "x-frame-options", "permissions-policy")


def _client(app: object, key: str | None = None, **headers: str) -> httpx.AsyncClient:
    if key:
        headers["authorization"] = f"Bearer {key}"
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://corral", headers=headers)


async def test_api_and_ui_answers_carry_security_headers(harness: Harness) -> None:
    async with _client(harness.app, harness.key) as client:
        for response in (
            await client.get("/v1/models"),
            await client.get("/api/nope"),  # errors too
            await client.get("/health"),
        ):
            for name in HEADERS:
                assert name in response.headers, (response.url, name)
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        page = await client.get("/")
    assert page.status_code == 200
    # The UI's own policy wins: scripts from self, the microphone for voice, one CSP header.
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "microphone=(self)" in page.headers["permissions-policy"]
    assert page.headers.get_list("content-security-policy") == [page.headers["content-security-policy"]]


async def test_cors_is_closed_by_default(harness: Harness) -> None:
    async with _client(harness.app, harness.key, origin="http://evil.example") as client:
        response = await client.get("/v1/models")
        preflight = await client.options("/v1/models", headers={"access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_allows_exactly_the_configured_origins(harness: Harness) -> None:
    harness.gateway.cors_origins = ["http://grafana.lan:3000"]
    app = create_app(harness.gateway)
    request_headers = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    async with _client(app, harness.key, origin="http://grafana.lan:3000") as client:
        allowed = await client.options("/v1/chat/completions", headers=request_headers)
        read = await client.get("/v1/models")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://grafana.lan:3000"
    assert read.headers["access-control-allow-origin"] == "http://grafana.lan:3000"
    async with _client(app, harness.key, origin="http://evil.example") as client:
        refused = await client.options("/v1/chat/completions", headers=request_headers)
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize(
    ("origin", "ok"),
    [("http://grafana.lan:3000", True), ("https://ha.example", True), ("*", False), ("grafana.lan", False),
     ("http://x.lan/path", False)],
)  # fmt: skip
def test_cors_origins_are_validated(origin: str, ok: bool) -> None:
    text = f"version: 1\nserver:\n  cors_origins: [{origin!r}]\nexperts:\n  - {{name: g, model: m}}\n"
    if ok:
        assert parse_config(text).server.cors_origins == [origin]
    else:
        with pytest.raises(ConfigError, match="origin"):
            parse_config(text)


def test_secret_files_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=f"chmod 600 {secret}"):
        read_secret_file(secret)
    secret.chmod(0o640)
    with pytest.raises(ConfigError, match="0640"):
        check_private(secret)
    secret.chmod(0o600)
    assert read_secret_file(secret) == "s3cret"
    assert secret_from(file=secret) == "s3cret"
    assert secret_from(env_var="TOKEN", env={"TOKEN": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match=r"\$TOKEN"):
        secret_from(env_var="TOKEN", env={})
    with pytest.raises(ConfigError, match="does not exist"):
        read_secret_file(tmp_path / "missing")


@pytest.mark.parametrize(
    "line",
    [
        "key crl_1a2b3c4d_AbCdEfGhIjKlMnOpQrStUvWxYz012345 accepted",
        "Authorization: Bearer abcdefghijklmnop0123",
        "calling http://admin:hunter2hunter2@nas.lan/api",
        "ha token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.abcdefghij",
        'config {"api_key": "sk-live-0123456789abcdef"}',
        "password=correct-horse-battery",
    ],
)
def test_redaction_hides_secrets(line: str) -> None:
    out = redact(line)
    assert "[redacted]" in out
    for secret in ("AbCdEfGhIj", "abcdefghijklmnop0123", "hunter2", "eyJzdWIi", "0123456789abcdef", "horse"):
        assert secret not in out


def test_redaction_keeps_ordinary_lines() -> None:
    line = "expert general: replica 0 ready in 2.1 s (tokens per second 35.2)"
    assert redact(line) == line


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    install_redaction([handler])
    install_redaction([handler])
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    logger = logging.getLogger("corral.test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("login with %s failed", "crl_00ff00ff_SecretSecretSecret")
        try:
            raise RuntimeError("upstream said: api_key=sk-abcdefgh12345678")
        except RuntimeError:
            logger.exception("remote expert failed")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "SecretSecretSecret" not in text and "sk-abcdefgh12345678" not in text
    assert "login with [redacted] failed" in text
    assert "RuntimeError" in text  # the traceback is kept, minus the secret


def test_the_key_store_is_private_and_a_loosened_one_is_refused(tmp_path: Path) -> None:
    from corral.gateway.auth import KeyStore

    keys = KeyStore(tmp_path / "keys.json")
    keys.create("a", "admin")
    check_private(keys.path)  # the key store writes itself 0600
    keys.path.chmod(0o604)
    with pytest.raises(ConfigError, match="chmod 600"):
        check_private(keys.path, "credentials file")


async def test_a_body_a_route_checks_itself_is_a_400_not_a_500(harness: Harness) -> None:
    async with _client(harness.app) as client:  # found by the fuzzer: an unknown field at login
        response = await client.post("/api/login", json={"key": "0", "unknown": 42})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "unknown"


def test_corral_mcp_refuses_a_loose_key_file_and_says_when_no_gateway_answers(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corral.cli import app
    from corral.testing.gateway_server import free_port

    key_file = tmp_path / "key"
    key_file.write_text("crl_00ff00ff_SecretSecretSecret\n")
    key_file.chmod(0o644)
    nobody = f"http://127.0.0.1:{free_port()}/mcp"
    home = ["--home", str(tmp_path / "home")]
    runner = CliRunner()
    loose = runner.invoke(app, ["mcp", "--url", nobody, "--key-file", str(key_file), *home])
    assert loose.exit_code == 2 and "chmod 600" in " ".join(loose.output.split())
    missing = runner.invoke(app, ["mcp", "--url", nobody, *home], env={"CORRAL_API_KEY": ""})
    assert missing.exit_code == 2 and "CORRAL_API_KEY" in missing.output
    key_file.chmod(0o600)
    down = runner.invoke(app, ["mcp", "--url", nobody, "--key-file", str(key_file), *home])
    text = " ".join(down.output.split())
    assert down.exit_code == 2 and "cannot reach" in text and "corral up" in text
    assert "SecretSecretSecret" not in text
