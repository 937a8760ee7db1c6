"""`corral join` against a real token-authenticated Ray head: the systemd unit's exact form
(`corral join ADDRESS --token-file PATH`) joins, and a wrong token is refused with a clear
message and a non-zero exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral.cluster  # noqa: F401  (before ray: workers run on this interpreter, not `uv run`)
from corral.cluster.head import start_head
from corral.engine.replica import free_port
from corral.paths import CorralPaths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    paths = CorralPaths(tmp_path_factory.mktemp("head-home")).ensure()
    address, token_file, process = start_head(paths, free_port(), 1)
    try:
        yield address, token_file
    finally:
        process.stop()


def _join(address: str, token_file: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "CORRAL_HOME": str(home)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "corral.cli",
            "join",
            address,
            "--token-file",
            str(token_file),
            "--no-calibrate",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_a_wrong_token_is_refused_clearly(head: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = head
    wrong = tmp_path / "cluster.token"
    wrong.write_text("0" * 64 + "\n")
    process = _join(address, wrong, tmp_path)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 2, output
    assert f"the head at {address} refused this token" in output
    assert "Traceback" not in output


def test_the_systemd_form_joins_and_stops_cleanly_on_sigterm(head: tuple[str, Path], tmp_path: Path) -> None:
    address, token_file = head
    process = _join(address, token_file, tmp_path / "node-home")
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if "joined" in line or not line:
            break
    assert any(f"joined {address}" in line for line in lines), "".join(lines)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 0, "".join(lines) + rest
