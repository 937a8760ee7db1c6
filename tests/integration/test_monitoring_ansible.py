"""The monitoring playbook: syntax-checked, run in check mode against this machine, and its Grafana
step run for real against an HTTP server that answers as Grafana's API does, checking what it
uploads (the shipped dashboard, the token, overwrite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
PLAYBOOK = ROOT / "deploy" / "ansible" / "monitoring.yml"
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana" / "corral-dashboard.json"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"


def _system_python_with_apt() -> str | None:
    """The apt module runs under a Python with Debian's apt bindings (python3-apt)."""
    for python in ("/usr/bin/python3",):
        if (
            Path(python).exists()
            and subprocess.run([python, "-c", "import apt"], capture_output=True).returncode == 0
        ):
            return python
    return None


def playbook(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
    }
    command = [
        str(PLAYBOOK_BIN), str(PLAYBOOK), "-i", "localhost,", "-c", "local",
        "-e", "monitoring_hosts=localhost", "-e", "ansible_become=false",
        "-e", f"ansible_python_interpreter={sys.executable}", *args,  # a later -e wins
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_syntax_check(tmp_path: Path) -> None:
    result = playbook(tmp_path, "--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_mode_against_localhost(tmp_path: Path) -> None:
    python = _system_python_with_apt()
    if python is None:
        pytest.skip("no Python with Debian's apt bindings (python3-apt) for the apt module")
    key = tmp_path / "corral.key"
    key.write_text("crl_0123_notarealkey\n")
    key.chmod(0o600)
    result = playbook(
        tmp_path, "--check", "--diff", "-e", f"ansible_python_interpreter={python}",
        "-e", f"corral_api_key_file={key}", "-e", '{"corral_metrics_targets": ["10.0.0.5:8400"]}',
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "failed=0" in out
    assert "- 10.0.0.5:8400" in out  # the rendered scrape config, in the diff
    assert "credentials_file: /etc/prometheus/corral-api-key" in out
    assert "notarealkey" not in out  # the key is never shown


class FakeGrafana(BaseHTTPRequestHandler):
    uploads: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/api/health":
            self._answer(200, {"database": "ok", "version": "11.0.0"})
        else:
            self._answer(404, {"message": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.uploads.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).status != 200:
            self._answer(type(self).status, {"message": "Invalid API key"})
            return
        uid = body["dashboard"]["uid"]
        self._answer(200, {"id": 7, "uid": uid, "url": f"/d/{uid}/corral", "status": "success", "version": 1})


@pytest.fixture
def grafana() -> Iterator[str]:
    FakeGrafana.uploads = []
    FakeGrafana.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_dashboard_is_provisioned_through_grafanas_api(tmp_path: Path, grafana: str) -> None:
    token = tmp_path / "grafana.token"
    token.write_text("glsa_secret_token\n")
    token.chmod(0o600)
    args = ("--tags", "grafana", "-e", f"grafana_url={grafana}", "-e", f"grafana_token_file={token}")
    result = playbook(tmp_path, *args, "-e", "grafana_folder_uid=home")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "glsa_secret_token" not in out
    assert "/d/corral-overview/corral" in out  # where the dashboard is, said at the end
    [upload] = FakeGrafana.uploads
    assert upload["path"] == "/api/dashboards/db"
    assert upload["auth"] == "Bearer glsa_secret_token"
    shipped = json.loads(DASHBOARD.read_text())
    assert upload["body"]["dashboard"] == {**shipped, "id": None}
    assert upload["body"]["overwrite"] is True and upload["body"]["folderUid"] == "home"

    FakeGrafana.status = 401  # a wrong token: the play fails
    result = playbook(tmp_path, *args)
    assert result.returncode != 0
    assert "401" in result.stdout + result.stderr
