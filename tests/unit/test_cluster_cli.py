"""The cluster's commands on bad input: clear messages and a non-zero exit, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from corral.cli import app

runner = CliRunner()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_join_without_a_token_says_how_to_give_one(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["join", "127.0.0.1:6380", "--home", str(tmp_path)], env={"CORRAL_CLUSTER_TOKEN": ""}
    )
    assert result.exit_code == 2
    assert "--token-file" in result.output and "CORRAL_CLUSTER_TOKEN" in result.output


def test_join_an_unreachable_head_fails_fast_with_what_to_check(tmp_path: Path) -> None:
    token = tmp_path / "cluster.token"
    token.write_text("abc\n")
    address = f"127.0.0.1:{_closed_port()}"
    result = runner.invoke(app, ["join", address, "--token-file", str(token), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert f"the head at {address} is unreachable" in result.output


def test_join_rejects_an_address_without_a_port(tmp_path: Path) -> None:
    token = tmp_path / "cluster.token"
    token.write_text("abc\n")
    result = runner.invoke(app, ["join", "headhost", "--token-file", str(token), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "is not HOST:PORT" in result.output


def test_wake_by_mac_sends_the_packet_and_a_node_without_mac_is_explained(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        config = tmp_path / "corral.yaml"
        config.write_text(
            "version: 1\nexperts:\n  - name: general\n    model: gemma3-270m\n"
            f"cluster:\n  power: {{broadcast: 127.0.0.1, wol_port: {sock.getsockname()[1]}}}\n"
        )
        result = runner.invoke(
            app, ["wake", "--mac", "02:00:00:00:00:01", "--config", str(config), "--home", str(tmp_path)]
        )
        assert result.exit_code == 0, result.output
        packet, _ = sock.recvfrom(1024)
    assert packet == b"\xff" * 6 + bytes.fromhex("020000000001") * 16
    closed = f"http://127.0.0.1:{_closed_port()}"
    result = runner.invoke(
        app, ["wake", "attic-pc", "--config", str(config), "--home", str(tmp_path), "--url", closed]
    )
    assert result.exit_code == 2
    assert "neither a known node" in result.output


def test_plan_table_from_a_profiles_file_shows_placements_and_reasons(tmp_path: Path) -> None:
    from rich.console import Console

    from corral.cluster.cli import _profiles_file, plan_table
    from corral.cluster.planner import ExpertDemand, plan

    profiles = tmp_path / "nodes.yaml"
    profiles.write_text(
        "- {name: attic, ram_gib: 8, cores: 4, cpu_flags: [avx2], tokens_per_second: 18}\n"
        "- {name: laptop, ram_gib: 2, cores: 2}\n"
    )
    nodes = _profiles_file(profiles)
    result = plan([ExpertDemand("general", 1, 1024**3), ExpertDemand("big", 1, 64 * 1024**3)], nodes)
    console = Console(width=200, record=True)
    console.print(plan_table(result, nodes))
    text = console.export_text()
    assert "general/0" in text and "attic" in text and "nowhere" in text


def test_a_bad_profiles_file_says_what_each_node_needs(tmp_path: Path) -> None:
    import pytest

    from corral.cluster.cli import _profiles_file
    from corral.errors import CorralError

    bad = tmp_path / "nodes.yaml"
    bad.write_text("- {cores: 4}\n")
    with pytest.raises(CorralError, match="needs name and ram_gib"):
        _profiles_file(bad)
    bad.write_text("name: not-a-list\n")
    with pytest.raises(CorralError, match="expected a list"):
        _profiles_file(bad)
