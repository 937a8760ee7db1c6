"""The cluster as a user runs it, whole processes end to end: `corral up --head` (gateway, Ray
head with token auth, supervisor), `corral join` from a second home on this machine, a replica
moved onto the joined node and answering through the head's gateway, `corral plan` on the live
cluster, and the node's loss seen by the supervisor when `corral join` stops."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import RunningCorral, _free_port, start_corral, stop_corral

pytestmark = pytest.mark.slow

CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    replicas: 2
    slots: 1
    context: 512
    threads: 1
cluster:
  port: {port}
  reserve_bytes: 0
voice:
  enabled: false
"""


def cli(home: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORRAL_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "corral.cli", *args], env=env, capture_output=True, text=True, **kwargs
    )


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCorral]:
    home = tmp_path_factory.mktemp("head-home")
    running = start_corral(home, CONFIG.replace("{port}", str(_free_port())), ("--head",))
    try:
        yield running
    finally:
        stop_corral(running)


def nodes(head: RunningCorral) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in head.status()["nodes"]}  # type: ignore[attr-defined]


def wait(what: str, check: Any, head: RunningCorral, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}: {nodes(head)}\n{head.log.read_text()[-4000:]}")


def test_a_joined_node_serves_through_the_heads_gateway(head: RunningCorral, tmp_path: Path) -> None:
    log = head.log.read_text()
    match = re.search(r"corral join (\S+) --token-file", log)
    assert match, log
    address = match.group(1)
    assert len(nodes(head)) == 1  # the head alone, running both replicas

    env = {**os.environ, "CORRAL_HOME": str(tmp_path / "node-home")}
    token = head.home / "cluster.token"
    joined = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "join", address, "--token-file", str(token), "--no-calibrate"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        # The planner spreads: general/1 moves to the node that does not run general yet.
        worker = wait(
            "a replica on the joined node",
            lambda: next((n for n in nodes(head).values() if n["role"] == "worker" and n["replicas"]), None),
            head,
        )
        moved = worker["replicas"][0]
        assert worker["power"] == "awake" and worker["cores"] >= 1

        def ask(_: int) -> httpx.Response:
            return httpx.post(
                head.url + "/v1/chat/completions",
                json={"model": "general", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]},
                headers={"authorization": f"Bearer {head.key}"}, timeout=120, trust_env=False,
            )  # fmt: skip

        def served_there() -> bool:
            # Two at once: one slot per replica, so the second goes to the other replica.
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(ask, range(2)))
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            return any(a.headers["x-corral-replica"] == moved for a in answers)

        wait(f"an answer from {moved} on {worker['name']}", served_there, head, timeout=240)
        # Make before break: the copy on the head served until the one on the new node was ready.
        retired = f"replica {moved} moved: its old copy on "
        wait("the old copy retired", lambda: retired in head.log.read_text(), head, timeout=180)
        log = head.log.read_text()
        assert log.index(f"replica {moved} ready on {worker['name']}") < log.index(retired), log[-3000:]

        plan = cli(head.home, "plan", "--address", address, timeout=300)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert "placement on 2 node(s)" in plan.stdout and "general/1" in plan.stdout, plan.stdout
        assert worker["name"] in plan.stdout
    finally:
        joined.send_signal(signal.SIGTERM)
        output, _ = joined.communicate(timeout=120)
    assert joined.returncode == 0, output

    # The head loses the node: its replica goes back to the head, and the supervisor records it.
    wait("the node lost", lambda: nodes(head)[worker["name"]]["power"] == "lost", head, timeout=120)
    admin = {"authorization": f"Bearer {head.key}"}

    def incident() -> dict[str, Any] | None:
        listed = httpx.get(head.url + "/api/supervisor/incidents", headers=admin, timeout=10, trust_env=False)
        listed.raise_for_status()
        body = listed.json()
        items = body["incidents"] if isinstance(body, dict) else body
        return next((i for i in items if i["target"] == f"node/{worker['name']}"), None)

    found = wait("the supervisor's node incident", incident, head, timeout=60)
    assert (found["kind"], found["status"]) == ("node_lost", "recorded"), found
    wait("general back to two ready replicas", lambda: all(
        r["healthy"] for e in head.status()["experts"] for r in e["replicas"]  # type: ignore[attr-defined]
    ), head, timeout=240)  # fmt: skip
