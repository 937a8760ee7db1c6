"""Power policy (who sleeps), MAC resolution with clear errors, the WoL packet, cluster settings."""

from __future__ import annotations

import socket
import stat

import pytest
from pydantic import ValidationError

from corral.cluster.head import ClusterError, ensure_token, read_token
from corral.cluster.power import NodePower, WakeError, resolve_mac, send_wake, to_sleep
from corral.cluster.settings import ClusterConfig, PowerConfig
from corral.config import parse_config
from corral.paths import CorralPaths


def test_only_idle_unpinned_inessential_awake_nodes_sleep() -> None:
    config = PowerConfig(enabled=True, idle_s=60, pinned=["kept"])
    nodes = [
        NodePower("idle", "awake", idle_since=0.0),
        NodePower("recent", "awake", idle_since=50.0),
        NodePower("busy", "awake", idle_since=None),
        NodePower("kept", "awake", idle_since=0.0),
        NodePower("head", "awake", idle_since=0.0, essential=True),
        NodePower("asleep", "sleeping", idle_since=0.0),
    ]
    assert to_sleep(config, nodes, now=100.0) == ["idle"]
    assert to_sleep(PowerConfig(enabled=False, idle_s=60), nodes, now=100.0) == []


def test_mac_comes_from_override_then_report_then_the_target_itself() -> None:
    config = PowerConfig(macs={"old": "aa:bb:cc:dd:ee:01"})
    reported = {"old": "aa:bb:cc:dd:ee:99", "new": "aa:bb:cc:dd:ee:02", "nomac": None}
    assert resolve_mac("old", reported, config) == ("old", "aa:bb:cc:dd:ee:01")
    assert resolve_mac("new", reported, config) == ("new", "aa:bb:cc:dd:ee:02")
    assert resolve_mac("AA:BB:CC:DD:EE:03", reported, config) == ("", "AA:BB:CC:DD:EE:03")
    with pytest.raises(WakeError, match=r"reported no MAC address.*cluster.power.macs.nomac"):
        resolve_mac("nomac", reported, config)
    with pytest.raises(WakeError, match="neither a known node"):
        resolve_mac("ghost", reported, config)


def test_the_magic_packet_reaches_the_configured_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        config = PowerConfig(broadcast="127.0.0.1", wol_port=sock.getsockname()[1])
        send_wake("02:00:00:00:00:0a", config)
        packet, _ = sock.recvfrom(1024)
    assert packet == b"\xff" * 6 + bytes.fromhex("02000000000a") * 16
    with pytest.raises(WakeError, match="not a MAC"):
        send_wake("nope", config)


def test_cluster_section_parses_and_rejects_bad_macs() -> None:
    text = """
version: 1
experts:
  - name: general
    model: gemma3-270m
cluster:
  requires: {general: [avx2]}
  power: {enabled: true, idle_s: 600, macs: {old-pc: "aa:bb:cc:dd:ee:ff"}, pinned: [nas]}
"""
    config = parse_config(text)
    assert config.cluster.power.macs == {"old-pc": "aa:bb:cc:dd:ee:ff"}
    assert config.cluster.requires == {"general": ["avx2"]}
    with pytest.raises(ValidationError, match="not a MAC address"):
        ClusterConfig.model_validate({"power": {"macs": {"x": "zz"}}})


def test_the_token_is_generated_private_and_read_back(tmp_path: object) -> None:
    from pathlib import Path

    paths = CorralPaths(Path(str(tmp_path))).ensure()
    token_file = ensure_token(paths)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) == 64
    assert ensure_token(paths).read_text().strip() == token  # stable across restarts
    assert read_token(token_file, {}) == token
    assert read_token(None, {"CORRAL_CLUSTER_TOKEN": "abc"}) == "abc"
    with pytest.raises(ClusterError, match="--token-file"):
        read_token(None, {})
    with pytest.raises(ClusterError, match="cannot read the token file"):
        read_token(Path(str(tmp_path)) / "missing", {})
