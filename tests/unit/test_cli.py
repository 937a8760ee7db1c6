"""CLI errors for bad models and configs: a clear message and exit code 2, nothing started."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app

runner = CliRunner()


def write_config(tmp_path: Path, model: str, context: int = 1024) -> Path:
    path = tmp_path / "corral.yaml"
    path.write_text(f"experts:\n  - name: general\n    model: {model}\n    context: {context}\n")
    return path


def test_up_with_missing_gguf_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--config", str(write_config(tmp_path, "/nowhere/model.gguf"))])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_up_with_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"\x89PNG not a model")
    result = runner.invoke(app, ["up", "--config", str(write_config(tmp_path, str(fake)))])
    assert result.exit_code == 2
    assert "not a GGUF file" in result.output


def test_up_with_a_model_too_big_for_ram(tmp_path: Path) -> None:
    config = write_config(tmp_path, "gemma3-270m", context=100_000_000)
    result = runner.invoke(app, ["up", "--config", str(config)])
    assert result.exit_code == 2
    assert "does not fit this machine" in result.output
    assert "corral.yaml" in result.output


def test_up_with_invalid_config_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "corral.yaml"
    config.write_text("experts:\n  - name: general\n    model: gemma3-270m\n    slots: zero\n")
    result = runner.invoke(app, ["up", "--config", str(config)])
    assert result.exit_code == 2
    assert "corral.yaml:4" in result.output


def test_keys_cli_round_trip() -> None:
    created = runner.invoke(app, ["keys", "create", "--name", "laptop"])
    assert created.exit_code == 0
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("crl_")
    listed = runner.invoke(app, ["keys", "list"])
    assert "laptop" in listed.output and secret not in listed.output
    key_id = secret.split("_")[1]
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list"]).output
    missing = runner.invoke(app, ["keys", "revoke", "nope"])
    assert missing.exit_code == 2 and "corral keys list" in missing.output


def test_status_without_a_server_says_how_to_start() -> None:
    result = runner.invoke(app, ["status", "--url", "http://127.0.0.1:9", "--key", "x"])
    assert result.exit_code == 1
    assert "corral up" in result.output


def test_up_with_unknown_balancer() -> None:
    result = runner.invoke(app, ["up", "--balancer", "fastest"])
    assert result.exit_code == 2
    assert "expected_finish_time" in result.output


def test_up_on_a_busy_port_fails_before_loading_models() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(port)])
    assert result.exit_code == 2
    assert f"127.0.0.1:{port}" in result.output and "--port" in result.output
