"""The server side of Mission Control: browser login by cookie (HttpOnly, SameSite=Strict, same
origin only, ended by logout, expiry or key revocation), the UI files and their headers, the live
status and log streams, chat sessions (list, export, import without overwriting), the editor's
save and validation routes, and the history's date filter."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from corral.gateway.app import Gateway, create_app
from corral.gateway.auth import KeyStore
from corral.gateway.logbook import LogBook
from corral.gateway.logins import COOKIE, LoginBook
from corral.gateway.registry import LocalRegistry
from corral.gateway.router import Router
from corral.testing import FakeBackend
from tests.unit.conftest import EXPERTS, GATED, Harness

ORIGIN = "http://corral"


def browser(h: Harness | FastAPI) -> httpx.AsyncClient:
    """A client that, like a browser, sends no key header: only what the cookie jar holds."""
    app = h if isinstance(h, FastAPI) else h.app
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=ORIGIN, headers={"origin": ORIGIN}, timeout=30
    )


def create_harness_app(h: Harness) -> FastAPI:
    return create_app(h.gateway)


async def test_login_sets_a_strict_httponly_cookie_that_authorises_api_calls(harness: Harness) -> None:
    async with browser(harness) as client:
        assert (await client.get("/api/me")).json() == {"authenticated": False}  # no console error
        wrong = await client.post("/api/login", json={"key": "crl_nope_nope"})
        assert wrong.status_code == 401 and "invalid" in wrong.json()["error"]["message"]
        response = await client.post("/api/login", json={"key": harness.key})
        assert response.status_code == 200
        assert response.json()["scope"] == "user" and response.json()["expires_at"] > time.time()
        cookie = response.headers["set-cookie"].lower()
        assert f"{COOKIE}=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert harness.key not in response.text  # the key is never echoed back
        me = await client.get("/api/me")
        assert me.status_code == 200 and me.json()["name"] == "test"
        assert (await client.get("/api/workflows")).status_code == 200
        assert (await client.get("/api/logs")).status_code == 403  # the log needs an admin
        token = client.cookies[COOKIE]
        assert (await client.post("/api/logout")).status_code == 200
        assert (await client.get("/api/me")).json()["authenticated"] is False  # the cookie is gone
        client.cookies.set(COOKIE, token)  # a tab that still holds the ended session's cookie
        assert (await client.get("/api/me")).status_code == 401


async def test_cookie_is_refused_from_another_origin_and_after_revocation(harness: Harness) -> None:
    async with browser(harness) as client:
        await client.post("/api/login", json={"key": harness.key})
        other = await client.get("/api/workflows", headers={"origin": "http://corral:9999"})
        assert other.status_code == 403 and "cross-origin" in other.json()["error"]["message"]
        assert (await client.get("/api/workflows")).status_code == 200
        key_id = harness.key.split("_")[1]
        harness.keys.revoke(key_id)
        gone = await client.get("/api/workflows")
        assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]


def test_sessions_expire_and_survive_a_restart(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    _, secret = keys.create("u", "user")
    book = LoginBook(keys, tmp_path / "logins.json", ttl_s=3600)
    token, record, _ = book.login(secret)
    assert (tmp_path / "logins.json").stat().st_mode & 0o777 == 0o600
    assert token not in (tmp_path / "logins.json").read_text()  # only its hash is stored
    again = LoginBook(keys, tmp_path / "logins.json")  # corral restarted
    assert again.verify(token)[0].id == record.id
    short = LoginBook(keys, None, ttl_s=0.01)
    token, _, _ = short.login(secret)
    time.sleep(0.05)
    with pytest.raises(Exception, match="expired"):
        short.verify(token)


async def test_ui_files_are_served_with_csp_and_compressed(harness: Harness) -> None:
    async with browser(harness) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        script = await client.get("/ui/js/api.js", headers={"accept-encoding": "gzip"})
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert script.headers.get("content-encoding") == "gzip"
        assert "content-security-policy" in script.headers
        module = await client.get("/ui/vendor/cytoscape.esm.min.js")
        assert "javascript" in module.headers["content-type"]
        assert (await client.get("/ui/nope.js")).status_code == 404
    harness.gateway.ui = False  # `ui: {enabled: false}`: the API without the pages
    async with browser(create_harness_app(harness)) as client:
        assert (await client.get("/")).status_code == 404
        assert (await client.post("/api/login", json={"key": harness.key})).status_code == 200


async def test_status_reports_nodes_links_queue_and_agent(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.gateway.nodes = lambda: [{"name": "box", "power": "awake"}]
    harness.gateway.links = [{"name": "Grafana", "url": "http://grafana.lan:3000"}]
    async with harness.client() as client:
        status = (await client.get("/api/status")).json()
    assert status["nodes"] == [{"name": "box", "power": "awake"}]
    assert status["links"][0]["name"] == "Grafana"
    assert status["experts"][0]["queued"] == 0
    assert status["agent"] is None  # not started yet: said, not crashed on


async def test_sessions_are_listed_exported_and_imported_without_overwriting(harness: Harness) -> None:
    async with harness.client() as client:
        body = {"model": "corral-agent", "user": "s1", "messages": [{"role": "user", "content": "hi there"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        sessions = (await client.get("/api/sessions")).json()["sessions"]
        assert sessions[0]["id"] == "s1" and sessions[0]["messages"] == 2  # the answer is kept too
        saved = (await client.get("/api/sessions/s1/export")).json()
        assert saved["kind"] == "corral-session" and saved["runs"][0]["session"] == "s1"
        assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
        loaded = await client.post("/api/sessions/import", json=saved)
        assert loaded.status_code == 201 and loaded.json() == {"session": "s1-2", "messages": 2}
        copy = (await client.get("/api/sessions/s1-2")).json()["messages"]
        assert [m["content"] for m in copy] == [m["content"] for m in saved["messages"]]
        bad = await client.post("/api/sessions/import", json={"version": 1, "messages": "x"})
        assert bad.status_code == 400 and "Save state" in bad.json()["error"]["message"]
        assert (await client.get("/api/sessions/nope/export")).status_code == 404
        assert (await client.delete("/api/sessions/s1")).json()["deleted"] == 2


async def test_editor_save_route_and_validation_issues_name_the_node(harness: Harness) -> None:
    async with harness.client() as client:
        assert (await client.post("/api/workflows/save", json={"yaml": GATED})).status_code == 403
        bad = await client.post(
            "/api/workflows/validate", content="name: x\nnodes:\n  a: {type: lmm}\n  b: {type: output}\n"
        )
        issues = bad.json()["issues"]
        assert issues[0]["node"] == "a" and "lmm" in issues[0]["message"]
    async with harness.client(harness.admin) as admin:
        saved = await admin.post("/api/workflows/save", json={"yaml": GATED})
        assert saved.status_code == 200 and saved.json()["name"] == "gated"
        assert saved.json()["version"] == 1
        broken = await admin.post("/api/workflows/save", json={"yaml": "name: gated\nnodes: {}\n"})
        assert broken.status_code == 400
        assert (await admin.get("/api/workflows/gated")).json()["version"] == 1  # nothing lost


async def test_history_filters_runs_by_date(harness: Harness) -> None:
    async with harness.client() as client:
        started = await client.post("/api/workflows/gated/run", json={})
        assert started.status_code == 404  # not saved yet: a clear 404, not a crash
        body = {"inputs": {"messages": [{"role": "user", "content": "hi"}]}, "wait": True}
        first = (await client.post("/api/workflows/agent/run", json=body)).json()
        cut = time.time()
        await asyncio.sleep(0.01)
        second = (await client.post("/api/workflows/agent/run", json=body)).json()
        newer = (await client.get("/api/runs", params={"since": cut})).json()["runs"]
        older = (await client.get("/api/runs", params={"before": cut})).json()["runs"]
    assert [r["id"] for r in newer] == [second["id"]]
    assert [r["id"] for r in older] == [first["id"]]


def test_logbook_keeps_a_bounded_numbered_ring() -> None:
    book = LogBook(capacity=3)
    logger = logging.getLogger("corral.test.logbook")
    logger.addHandler(book)
    logger.setLevel(logging.INFO)
    try:
        for i in range(5):
            logger.info("line %d", i)
    finally:
        logger.removeHandler(book)
    lines = book.lines()
    assert [line["message"] for line in lines] == ["line 2", "line 3", "line 4"]
    assert [line["seq"] for line in book.lines(after=4)] == [5]


# --- the live streams over a real server (server-sent events need a real connection) ---------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, str, Gateway]]:
    registry = LocalRegistry()
    registry.add(FakeBackend("general/0", "general", reply="hi"))
    keys = KeyStore(tmp_path / "keys.json")
    _, user = keys.create("u", "user")
    _, admin = keys.create("a", "admin")
    gateway = Gateway(router=Router(EXPERTS[:1], registry), keys=keys)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(gateway), port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", user, admin, gateway
    finally:
        server.should_exit = True
        thread.join(10)


def _events(url: str, key: str, count: int) -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    with httpx.stream("GET", url, headers={"authorization": f"Bearer {key}"}, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
                if len(out) == count:
                    break
    return out


def test_status_stream_sends_status_events(served: tuple[str, str, str, Gateway]) -> None:
    base, user, _, _ = served
    events = _events(base + "/api/status/stream", user, 2)
    assert [e for e, _ in events] == ["status", "status"]
    assert events[0][1]["experts"][0]["name"] == "general"  # type: ignore[index]
    assert events[1][1]["time"] > events[0][1]["time"]  # type: ignore[operator]


def test_log_stream_replays_then_follows(served: tuple[str, str, str, Gateway]) -> None:
    base, user, admin, gateway = served
    logger = logging.getLogger("corral.test.stream")
    logger.addHandler(gateway.logs)
    logger.setLevel(logging.INFO)
    try:
        logger.warning("before anyone listened")
        refused = httpx.get(base + "/api/logs/stream", headers={"authorization": f"Bearer {user}"})
        assert refused.status_code == 403
        threading.Timer(0.5, lambda: logger.info("said while streaming")).start()
        events = _events(base + "/api/logs/stream", admin, 2)
    finally:
        logger.removeHandler(gateway.logs)
    assert [data["message"] for _, data in events] == ["before anyone listened", "said while streaming"]
    assert events[0][1]["level"] == "WARNING"


async def test_a_client_that_sends_only_its_newest_message_gets_the_session_history(
    harness: Harness,
) -> None:
    async with harness.client() as client:
        for text in ("my name is Ada", "what is my name?"):
            body = {"model": "corral-agent", "user": "s9", "messages": [{"role": "user", "content": text}]}
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        full = [
            {"role": "user", "content": "a whole history"},
            {"role": "assistant", "content": "sent by the client"},
            {"role": "user", "content": "the OpenAI way"},
        ]
        body = {"model": "corral-agent", "user": "s9", "messages": full}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    second, third = sorted(harness.service.store.runs(session="s9"), key=lambda r: r.created)[1:]
    assert [m["content"] for m in second.inputs["messages"]] == [
        "my name is Ada", "hello there", "what is my name?",
    ]  # fmt: skip
    assert second.inputs["messages"][1]["role"] == "assistant"
    assert third.inputs["messages"] == full  # a full history is taken as it is
