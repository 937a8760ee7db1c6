"""The gateway app over FakeBackends: routes, errors, retries, fallback, streaming, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from corral.backends import BackendResponse
from corral.config import ExpertConfig
from corral.gateway.app import Gateway, create_app
from corral.gateway.auth import KeyStore
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router
from corral.testing import FakeBackend

EXPERTS = [
    ExpertConfig(name="general", model="m", description="general chat", fallback=["fallback"]),
    ExpertConfig(name="fallback", model="m", description="always there", always_loaded=True),
    ExpertConfig(name="embed", model="m", kind="embedding", description="embeddings"),
]


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        *backends: FakeBackend,
        max_queue: int = 4,
        max_body_bytes: int = 8 << 20,
        failover_wait_s: float = 10.0,
    ) -> None:
        registry = LocalRegistry()
        for backend in backends:
            registry.add(backend)
        self.keys = KeyStore(tmp_path / "keys.json")
        _, self.key = self.keys.create("test", "user")
        self.gateway = Gateway(
            router=Router(EXPERTS, registry, max_queue=max_queue),
            keys=self.keys,
            stops=lambda expert: ("\nUser:",) if expert == "general" else (),
            required_experts=("fallback",),
            max_body_bytes=max_body_bytes,
            failover_wait_s=failover_wait_s,
        )
        self.app = create_app(self.gateway)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://corral",
            headers={"authorization": f"Bearer {self.key}"},
        )


def chat(model: str = "general", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
def backends() -> tuple[FakeBackend, FakeBackend, FakeBackend]:
    return (
        FakeBackend("general/0", "general", reply="from general"),
        FakeBackend("fallback/0", "fallback", reply="from fallback"),
        FakeBackend("embed/0", "embed"),
    )


async def test_chat_routes_and_adds_stop_strings(tmp_path: Path, backends: tuple[FakeBackend, ...]) -> None:
    harness = Harness(tmp_path, *backends)
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=chat(stop="END"))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "from general"
    assert response.headers["x-corral-expert"] == "general"
    assert response.headers["x-corral-replica"] == "general/0"
    sent = backends[0].requests[0][1]
    assert sent["stop"] == ["END", "\nUser:"]
    assert backends[0].state.in_flight == 0 and backends[0].state.queued_tokens == 0
    assert backends[0].state.measured  # timings folded into the speed estimate


async def test_health_public_everything_else_needs_key(
    tmp_path: Path, backends: tuple[FakeBackend, ...]
) -> None:
    harness = Harness(tmp_path, *backends)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url="http://c") as anon:
        assert (await anon.get("/health")).status_code == 200
        assert (await anon.get("/ready")).status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/chat/completions"),
            ("GET", "/metrics"),
            ("GET", "/api/status"),
            ("POST", "/v1/embeddings"),
        ]:
            response = await anon.request(method, path, json=chat())
            assert response.status_code == 401, path
            assert "corral keys create" in response.json()["error"]["message"]
        bad = await anon.get("/v1/models", headers={"authorization": "Bearer crl_0000_nope"})
        assert bad.status_code == 401


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps(chat(max_tokens=-5)).encode(), "max_tokens"),
        (json.dumps(chat(max_tokens=True)).encode(), "max_tokens"),
        (json.dumps({"model": "general", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "general", "messages": ["hi"]}).encode(), "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
    ],
)
async def test_bad_requests_get_openai_errors(
    tmp_path: Path, backends: tuple[FakeBackend, ...], payload: bytes, param: str | None
) -> None:
    harness = Harness(tmp_path, *backends)
    async with harness.client() as client:
        response = await client.post(
            "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert not backends[0].requests  # nothing reached a backend


async def test_unknown_model_is_404_listing_models(tmp_path: Path, backends: tuple[FakeBackend, ...]) -> None:
    harness = Harness(tmp_path, *backends)
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=chat("nope"))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert "general" in response.json()["error"]["message"]


async def test_connect_error_retries_then_falls_back(tmp_path: Path) -> None:
    broken = FakeBackend("general/0", "general", fail_connect=True)
    erroring = FakeBackend("general/1", "general", status_code=503)
    spare = FakeBackend("fallback/0", "fallback", reply="from fallback")
    harness = Harness(tmp_path, broken, erroring, spare)
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "from fallback"
    assert response.headers["x-corral-expert"] == "fallback"
    assert "fell back" in response.headers["x-corral-route"]
    assert broken.requests and erroring.requests
    assert not broken.state.healthy  # a connect error marks it until the monitor sees it again
    # The fallback expert has no stop strings; the general expert's must not leak into it.
    assert "stop" not in spare.requests[0][1]


async def test_all_down_is_503_with_retry_after(tmp_path: Path) -> None:
    harness = Harness(
        tmp_path,
        FakeBackend("general/0", "general", healthy=False),
        FakeBackend("fallback/0", "fallback", healthy=False),
    )
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=chat())
        ready = await client.get("/ready")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert "corral status" in response.json()["error"]["message"]
    assert ready.status_code == 503


async def test_request_waits_for_a_replica_to_come_back_when_every_one_failed(tmp_path: Path) -> None:
    killed = FakeBackend("general/0", "general", fail_connect=True, reply="from general")
    spare = FakeBackend("fallback/0", "fallback", fail_connect=True)
    harness = Harness(tmp_path, killed, spare)
    failed_once = asyncio.Event()
    spare_open = spare.open

    async def spare_then_tell(path: str, body: bytes) -> BackendResponse:
        failed_once.set()  # the request has failed on general/0 and now on its fallback
        return await spare_open(path, body)

    spare.open = spare_then_tell  # type: ignore[method-assign]

    async def restart() -> None:
        await failed_once.wait()
        await asyncio.sleep(0.2)
        killed.fail_connect = False
        killed.state.set_status("ready")  # what the Engine's monitor does once it answers /health

    async with harness.client() as client:
        restarting = asyncio.create_task(restart())
        response = await client.post("/v1/chat/completions", json=chat())
        await restarting
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "from general"
    assert len(killed.requests) == 2  # failed once, answered on the second pass


async def test_a_server_error_everywhere_is_503_without_waiting(tmp_path: Path) -> None:
    broken = FakeBackend("general/0", "general", status_code=500)
    spare = FakeBackend("fallback/0", "fallback", status_code=500)
    harness = Harness(tmp_path, broken, spare, failover_wait_s=60.0)
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    assert "HTTP 500" in response.json()["error"]["message"]
    assert len(broken.requests) == len(spare.requests) == 1  # a 500 comes back again: no second pass


async def test_backend_4xx_passes_through_and_context_overflow_explains(tmp_path: Path) -> None:
    overflow = {
        "error": {
            "code": 400,
            "type": "exceed_context_size_error",
            "message": "too long",
            "n_prompt_tokens": 5000,
            "n_ctx": 2048,
        }
    }
    harness = Harness(
        tmp_path,
        FakeBackend("general/0", "general", status_code=400, error_body=overflow),
        FakeBackend("fallback/0", "fallback"),
    )
    async with harness.client() as client:
        response = await client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "5000" in error["message"] and "corral.yaml" in error["message"]


async def test_streaming_relays_events_and_counts(tmp_path: Path, backends: tuple[FakeBackend, ...]) -> None:
    harness = Harness(tmp_path, *backends)
    async with harness.client() as client:
        async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        metrics = (await client.get("/metrics")).text
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in body.decode().splitlines()
        if line.startswith("data: {")
    )
    assert text == "from general"
    assert body.rstrip().endswith(b"data: [DONE]")
    assert (
        'corral_requests_total{endpoint="chat",expert="general",replica="general/0",status="200"} 1.0'
        in metrics
    )
    assert "corral_time_to_first_token_seconds_count" in metrics
    assert backends[0].state.in_flight == 0
    assert harness.gateway.router.admitted["general"] == 0
    assert 'corral_queue_depth{expert="general"} 0.0' in metrics


async def test_embeddings_and_models(tmp_path: Path, backends: tuple[FakeBackend, ...]) -> None:
    harness = Harness(tmp_path, *backends)
    async with harness.client() as client:
        embedded = await client.post("/v1/embeddings", json={"model": "auto", "input": "hello"})
        wrong_kind = await client.post("/v1/embeddings", json={"model": "general", "input": "x"})
        models = await client.get("/v1/models")
    assert embedded.status_code == 200
    assert embedded.headers["x-corral-expert"] == "embed"
    assert wrong_kind.status_code == 400
    ids = [m["id"] for m in models.json()["data"]]
    assert ids[:1] == ["auto"] and {"general", "fallback", "embed"} <= set(ids)


async def test_queue_full_is_429(tmp_path: Path) -> None:
    slow = FakeBackend("general/0", "general", slots=1, tokens_per_second=20, reply="a b c d e f g h")
    harness = Harness(tmp_path, slow, FakeBackend("fallback/0", "fallback", slots=1), max_queue=0)
    import asyncio

    async with harness.client() as client:
        results = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat()) for _ in range(4)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 2 and codes.count(429) == 2
    limited = next(r for r in results if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert harness.gateway.metrics.rejected.labels("general")._value.get() == 2


async def test_oversize_body_is_413_declared_or_chunked(
    tmp_path: Path, backends: tuple[FakeBackend, ...]
) -> None:
    harness = Harness(tmp_path, *backends, max_body_bytes=100)
    payload = json.dumps(chat(extra="x" * 500)).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 64):
            yield payload[i : i + 64]

    async with harness.client() as client:
        declared = await client.post("/v1/chat/completions", content=payload)
        streamed = await client.post("/v1/chat/completions", content=chunked())
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "max_body_bytes" in response.json()["error"]["message"]
    assert not backends[0].requests


async def test_key_management_needs_admin_scope(tmp_path: Path, backends: tuple[FakeBackend, ...]) -> None:
    harness = Harness(tmp_path, *backends)
    _, admin = harness.keys.create("root", "admin")
    async with harness.client() as user_client:
        assert (await user_client.get("/api/keys")).status_code == 403
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=harness.app),
        base_url="http://c",
        headers={"authorization": f"Bearer {admin}"},
    ) as admin_client:
        created = await admin_client.post("/api/keys", json={"name": "phone"})
        assert created.status_code == 201
        new_key = created.json()["key"]
        listed = (await admin_client.get("/api/keys")).json()["keys"]
        assert all("key" not in k and "sha256" not in k for k in listed)
        assert {"test", "root", "phone"} == {k["name"] for k in listed}
        bad = await admin_client.post("/api/keys", json={"name": "x", "scope": "root"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "scope"
        assert (await admin_client.delete("/api/keys/ffffffff")).status_code == 404
        assert (await admin_client.delete(f"/api/keys/{created.json()['id']}")).status_code == 200
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=harness.app),
        base_url="http://c",
        headers={"authorization": f"Bearer {new_key}"},
    ) as revoked:
        assert (await revoked.get("/v1/models")).status_code == 401


async def test_relay_releases_even_if_the_client_left_before_the_first_byte(tmp_path: Path) -> None:
    from corral.gateway.proxy import CHAT, Lease, Relay, RelayResponse

    backend = FakeBackend("general/0", "general")
    harness = Harness(tmp_path, backend, FakeBackend("fallback/0", "fallback"))
    router, metrics = harness.gateway.router, harness.gateway.metrics
    from corral.gateway.proxy import Proxy

    proxy = Proxy(router, metrics, lambda e: ())
    lease = Lease(
        router.admit("general", router.candidates("general", 1)), metrics.queue_depth.labels("general")
    )
    lease.take(backend, 10)
    upstream = await backend.open("/v1/chat/completions", json.dumps(chat(stream=True)).encode())
    response = RelayResponse(Relay(proxy, upstream, CHAT, backend, "general", 0.0, lease), {})

    async def receive() -> dict[str, str]:
        return {"type": "http.disconnect"}

    async def send(message: object) -> None:
        raise OSError("client went away")

    from starlette.requests import ClientDisconnect

    with pytest.raises((OSError, ClientDisconnect)):
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert backend.state.in_flight == 0 and backend.state.queued_tokens == 0
    assert router.admitted["general"] == 0
    assert backend.responses[0].closed
