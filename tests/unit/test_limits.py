"""Rate limits (token buckets per key and per address) and the request size limit on every route."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from corral.gateway.app import create_app
from corral.gateway.limits import RateLimitConfig, TokenBuckets
from tests.unit.conftest import Harness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_spends_refills_and_says_how_long_to_wait() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock)
    assert [buckets.take("a", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 2.0, 3) == pytest.approx(0.5)
    assert buckets.take("b", 2.0, 3) == 0.0  # callers do not share a bucket
    clock.now += 0.5
    assert buckets.take("a", 2.0, 3) == 0.0
    clock.now += 100  # a long pause refills to the burst, never beyond
    assert [buckets.take("a", 2.0, 3) for _ in range(4)][-1] > 0


def test_idle_buckets_are_forgotten_when_there_are_too_many() -> None:
    clock = Clock()
    buckets = TokenBuckets(clock, max_buckets=100)
    for i in range(100):
        buckets.take(f"ip:{i}", 1.0, 5)
    clock.now += 10  # every bucket has refilled: forgetting them loses nothing
    buckets.take("ip:new", 1.0, 5)
    assert len(buckets) == 1
    for i in range(300):  # none idle: the memory stays bounded anyway
        buckets.take(f"busy:{i}", 1.0, 5)
    assert len(buckets) <= 100


def _client(app: object, key: str | None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://corral", headers=headers)


@pytest.fixture
async def limited(harness: Harness) -> AsyncIterator[Harness]:
    harness.gateway.rate_limit = RateLimitConfig(key_per_s=0.01, key_burst=3, ip_per_s=0.01, ip_burst=2)
    harness.gateway.max_body_bytes = 2048
    harness.app = create_app(harness.gateway)
    yield harness


async def test_a_key_over_its_burst_gets_429_with_retry_after(limited: Harness) -> None:
    async with _client(limited.app, limited.key) as client:
        codes = [(await client.get("/api/status")).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        response = await client.get("/v1/models")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "server.rate_limit" in error["message"]
    async with _client(limited.app, limited.admin) as other:  # another key has its own bucket
        assert (await other.get("/api/status")).status_code == 200


async def test_login_attempts_are_limited_per_address(limited: Harness) -> None:
    async with _client(limited.app, None) as client:
        codes = [
            (await client.post("/api/login", json={"key": f"crl_00_wrong{i}"})).status_code for i in range(3)
        ]
        assert codes == [401, 401, 429]  # changing the guessed key does not give a fresh bucket
        assert (await client.get("/health")).status_code == 200  # probes are never limited
        assert (await client.get("/ready")).status_code in (200, 503)


async def test_wrong_keys_count_against_the_address(limited: Harness) -> None:
    async with _client(limited.app, "crl_deadbeef_nope") as client:
        codes = [(await client.get("/v1/models")).status_code for _ in range(3)]
    assert codes == [401, 401, 429]


async def test_every_route_refuses_a_body_over_the_limit(limited: Harness) -> None:
    limited.gateway.rate_limit = RateLimitConfig(enabled=False)
    app = create_app(limited.gateway)
    big = {"name": "x" * 5000}
    async with _client(app, limited.admin) as client:
        declared = await client.post("/api/keys", json=big)
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large"
        assert "server.max_body_bytes" in declared.json()["error"]["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(5):
                yield b"x" * 1000

        streamed = await client.post("/api/keys", content=chunks())
        assert streamed.status_code == 413
        small = await client.post("/api/keys", json={"name": "ok"})
        assert small.status_code == 201


def test_config_defaults_and_bounds() -> None:
    config = RateLimitConfig()
    assert config.enabled and config.key_burst >= config.ip_burst
    with pytest.raises(ValueError):
        RateLimitConfig(key_per_s=0)


def test_websocket_handshakes_are_limited_too(limited: Harness) -> None:
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    closes = []
    with TestClient(limited.app) as client:
        for i in range(3):  # guessing keys through ?token= is slowed like any other guess
            try:
                with client.websocket_connect(f"/ws?token=crl_00_guess{i}") as ws:
                    ws.receive_json()
            except WebSocketDisconnect as exc:
                closes.append(exc.code)
    assert closes[-1] == 1013 and len(closes) == 3
