"""`corral up` owns its llama-server children: Ctrl-C stops them, and so does corral dying."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conftest import start_corral, stop_corral

pytestmark = pytest.mark.slow

SMALL = """
experts:
  - name: general
    model: gemma3-270m
    replicas: 1
    slots: 1
    context: 512
    threads: 1
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_stops_replicas(tmp_path: Path) -> None:
    running = start_corral(tmp_path, SMALL)
    pid = int(running.replica("general/0")["pid"])  # type: ignore[call-overload]
    assert alive(pid)
    stop_corral(running)
    assert running.process.returncode == 0
    assert wait_gone(pid)


def test_replicas_die_with_a_killed_corral(tmp_path: Path) -> None:
    running = start_corral(tmp_path, SMALL)
    pid = int(running.replica("general/0")["pid"])  # type: ignore[call-overload]
    running.process.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel must do it
    running.process.wait()
    try:
        assert wait_gone(pid), "llama-server outlived a SIGKILLed corral"
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_health_answers_while_models_load(tmp_path: Path) -> None:
    import subprocess
    import sys

    import httpx

    from tests.integration.conftest import _free_port

    (tmp_path / "corral.yaml").write_text(SMALL)
    env = {**os.environ, "CORRAL_HOME": str(tmp_path)}
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    seen: set[tuple[int, int]] = set()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                health = httpx.get(url + "/health", trust_env=False, timeout=2).status_code
                ready = httpx.get(url + "/ready", trust_env=False, timeout=2)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            seen.add((health, ready.status_code))
            if ready.status_code == 200:
                break
            assert "general" in ready.text  # says what it is waiting for
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert (200, 200) in seen
    assert (200, 503) in seen  # up and answering before the model was loaded
