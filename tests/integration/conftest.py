"""A real `corral up` (real llama-server replicas of the bundled model) shared by the slow tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Small contexts and one thread per replica: five replicas share the two cores of a CI machine.
CONFIG = """
version: 1
server:
  max_queue: 16
experts:
  - name: general
    model: gemma3-270m
    description: general questions, conversation, explanations
    aliases: [gpt-4o-mini]
    replicas: 2
    slots: 2
    context: 1024
    threads: 1
    fallback: [fallback]
  - name: coder
    model: gemma3-270m
    description: python code programming functions bugs
    replicas: 1
    slots: 1
    context: 1024
    threads: 1
    fallback: [fallback]
  - name: fallback
    model: gemma3-270m
    description: small always-loaded model
    auto: false
    always_loaded: true
    replicas: 1
    slots: 2
    context: 1024
    threads: 1
  - name: embed
    model: all-minilm-l6-v2
    kind: embedding
    replicas: 1
    slots: 1
    context: 512
    threads: 1
"""


# One chat expert and the embedding expert: what the agent, Mission Control and voice tests need.
AGENT_CONFIG = """
version: 1
experts:
  - name: general
    model: gemma3-270m
    description: general questions
    replicas: 1
    slots: 2
    context: 1024
    threads: 1
  - name: embed
    model: all-minilm-l6-v2
    kind: embedding
    replicas: 1
    slots: 1
    context: 512
    threads: 1
"""


@dataclass
class RunningCorral:
    url: str
    key: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def status(self) -> dict[str, object]:
        response = httpx.get(
            self.url + "/api/status",
            headers={"authorization": f"Bearer {self.key}"},
            trust_env=False,
            timeout=10,
        )
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def replica(self, name: str) -> dict[str, object]:
        for expert in self.status()["experts"]:  # type: ignore[attr-defined]
            for replica in expert["replicas"]:
                if replica["name"] == name:
                    return dict(replica)
        raise KeyError(name)

    def wait_healthy(self, name: str, timeout: float = 120) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replica = self.replica(name)
            if replica["healthy"]:
                return replica
            time.sleep(0.5)
        raise AssertionError(f"{name} did not come back healthy: {self.replica(name)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_corral(home: Path, config_text: str, args: tuple[str, ...] = ()) -> RunningCorral:
    """Run `corral up` (with `args`) as a user would (its own process group) and wait until /ready."""
    config = home / "corral.yaml"
    config.write_text(config_text)
    env = {**os.environ, "CORRAL_HOME": str(home)}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    cli = [sys.executable, "-m", "corral.cli"]
    key = subprocess.run(
        [*cli, "keys", "create", "--name", "tests", "--scope", "admin"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    port = _free_port()
    log = home / "corral-up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*cli, "up", "--port", str(port), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    running = RunningCorral(url, key, home, process, log)
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"corral up exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/ready", timeout=2, trust_env=False).status_code == 200:
                return running
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_corral(running)
            raise RuntimeError(f"corral up not ready after 300 s:\n{log.read_text()}")
        time.sleep(0.5)


def stop_corral(running: RunningCorral) -> None:
    running.process.send_signal(signal.SIGINT)
    try:
        running.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()


@pytest.fixture(scope="session")
def corral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCorral]:
    running = start_corral(tmp_path_factory.mktemp("corral-home"), CONFIG)
    try:
        yield running
    finally:
        stop_corral(running)
