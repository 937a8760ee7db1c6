"""The provisioning playbook against this machine (connection local) in a scratch prefix.

site.yml runs for real: preflight checks, a uv venv, corral installed from a wheel built from
this checkout (`--no-deps --offline`: the dependencies are the slow part and not what is under
test), the cluster token and the node agent's unit file. User creation and systemd are switched
off by their variables so the test needs no root and touches nothing outside its temp dir. The
second run must change nothing; a preflight demanding more free disk than there is must fail
with its message before anything is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
PLAYBOOKS = ROOT / "deploy" / "ansible"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
# `uv run` names itself in $UV; setup.sh may have installed uv with `pip --user`, off PATH.
UV = os.environ.get("UV") or shutil.which("uv")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert UV is not None, "uv is needed to build corral's wheel (it is how corral is installed)"
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([UV, "build", "--wheel", "--quiet", "-o", str(out), str(ROOT)], check=True, timeout=300)
    return next(out.glob("corral-*.whl"))


@pytest.fixture(scope="module")
def head() -> Iterator[str]:
    """Something listening where the head would be, for the reachability check."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def scratch_vars(base: Path, wheel: Path, head: str) -> dict[str, Any]:
    return {
        "corral_hosts": "localhost",
        "corral_manage_user": False,
        "corral_manage_systemd": False,
        "corral_prefix": str(base / "prefix"),
        "corral_config_dir": str(base / "etc" / "corral"),
        "corral_state_dir": str(base / "state"),
        "corral_systemd_dir": str(base / "systemd"),
        "corral_uv": UV,
        "corral_python": sys.executable,
        "corral_package_copy": str(wheel),
        "corral_pip_extra_args": ["--no-deps", "--offline"],
        "corral_head_address": head,
        "corral_cluster_token": "test-cluster-token",
        "preflight_writable_paths": [str(base)],
        "preflight_disk_path": str(base),
        "preflight_min_free_disk_mb": 10,
        "ansible_python_interpreter": sys.executable,
    }


def playbook(base: Path, name: str, variables: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    extra = base / f"vars-{len(list(base.glob('vars-*')))}.json"
    extra.write_text(json.dumps(variables))
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(base / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(base / "ansible-remote"),
        "ANSIBLE_HOME": str(base / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    command = [str(PLAYBOOK_BIN), str(PLAYBOOKS / name), "-i", "localhost,", "-c", "local", "-e", f"@{extra}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def recap(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("localhost") and "ok=" in line)
    return {key: int(value) for key, value in (pair.split("=") for pair in line.split(":", 1)[1].split())}


def test_site_installs_then_a_second_run_changes_nothing(tmp_path: Path, wheel: Path, head: str) -> None:
    variables = scratch_vars(tmp_path, wheel, head)
    (tmp_path / "systemd").mkdir()  # stands in for /etc/systemd/system
    first = playbook(tmp_path, "site.yml", variables)
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)["changed"] > 0

    venv_python = tmp_path / "prefix" / "venv" / "bin" / "python"
    version = subprocess.run(
        [str(venv_python), "-c", "import importlib.metadata as m; print(m.version('corral'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert version.stdout.strip()
    token = tmp_path / "etc" / "corral" / "cluster.token"
    assert token.read_text() == "test-cluster-token\n"
    assert token.stat().st_mode & 0o777 == 0o640
    unit = (tmp_path / "systemd" / "corral-node.service").read_text()
    assert f"corral join {head} --token-file {token}" in unit
    assert "User=corral" in unit and "NoNewPrivileges=true" in unit

    second = playbook(tmp_path, "site.yml", variables)
    assert second.returncode == 0, second.stdout + second.stderr
    counts = recap(second.stdout)
    assert counts["changed"] == 0, second.stdout
    assert counts["failed"] == 0


def test_preflight_fails_early_on_a_full_disk(tmp_path: Path, wheel: Path, head: str) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    variables = {**scratch_vars(tmp_path, wheel, head), "preflight_min_free_disk_mb": free_mb + 10_000}
    result = playbook(tmp_path, "site.yml", variables)
    assert result.returncode != 0
    assert "preflight: only" in result.stdout and "preflight_min_free_disk_mb" in result.stdout
    assert not (tmp_path / "prefix").exists()  # nothing was installed


def test_provision_reports_a_failed_host_with_the_roles_message(tmp_path: Path) -> None:
    """`corral provision` through ansible-runner: wake.yml on a node with no MAC address."""
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"[corral_nodes]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    command = [sys.executable, "-m", "corral.cli", "provision", "-p", "wake", "-i", str(inventory)]
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "localhost" in result.stdout and "wake.yml" in result.stdout
    assert "cannot wake localhost: set `mac`" in result.stderr
