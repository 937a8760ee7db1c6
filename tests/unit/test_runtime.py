"""Building the runtime: remote backends, their keys and URLs, and watching them come back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from corral.config import ExpertConfig, load_config
from corral.engine.binaries import EngineBinaries
from corral.engine.manager import Engine
from corral.errors import ConfigError
from corral.runtime import _remote_backend


def remote(url: str, **extra: object) -> ExpertConfig:
    return ExpertConfig(name="cloud", model="llama3:8b", url=url, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url", ["http://h:11434/v1", "http://h:11434/v1/", "http://h:11434", "http://h:11434/"]
)
async def test_remote_url_forms_reach_the_same_endpoint(url: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert json.loads(request.content)["model"] == "x"  # the proxy rewrites; open() does not
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = _remote_backend(remote(url), client, {})
        assert backend.upstream_model == "llama3:8b"
        await backend.open("/v1/chat/completions", b'{"model": "x"}')
    assert seen == ["http://h:11434/v1/chat/completions"]


async def test_remote_api_key_comes_from_the_named_variable() -> None:
    headers: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization"))
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ConfigError, match=r"\$CLOUD_KEY"):
            _remote_backend(remote("http://h/v1", api_key_env="CLOUD_KEY"), client, {})
        backend = _remote_backend(remote("http://h/v1", api_key_env="CLOUD_KEY"), client, {"CLOUD_KEY": "s3"})
        await backend.open("/v1/chat/completions", b"{}")
    assert headers == ["Bearer s3"]


async def test_engine_brings_a_failed_remote_back(tmp_path: Path) -> None:
    up = {"value": False}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if up["value"] else 503, json={"data": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = _remote_backend(remote("http://h/v1"), client, {})
        engine = Engine(EngineBinaries(tmp_path, tmp_path, {}), tmp_path, client)
        engine.watch_remote(backend)
        backend.state.set_status("unhealthy", error="connect failed")
        await engine._check_remote(backend)
        assert not backend.state.healthy
        up["value"] = True
        await engine._check_remote(backend)
        assert backend.state.healthy


def test_relative_gguf_paths_resolve_next_to_the_config(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "corral.yaml").write_text(
        "experts:\n  - {name: a, model: models/x.gguf}\n  - {name: b, model: gemma3-270m}\n"
    )
    config = load_config(folder / "corral.yaml")
    assert config.expert("a").model == str(folder / "models" / "x.gguf")
    assert config.expert("b").model == "gemma3-270m"


async def test_a_stale_pooled_connection_is_retried_once() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        backend = _remote_backend(remote("http://h/v1"), client, {})
        response = await backend.open("/v1/chat/completions", b"{}")
    assert response.status_code == 200 and calls["n"] == 2
