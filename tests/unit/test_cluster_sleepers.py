"""A restarted head remembers the nodes it put to sleep (they are not in Ray any more), so it can
still show them and wake them; a damaged state file is skipped with a warning, not a crash."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.cluster.registry import NodeRecord, RayRegistry
from corral.cluster.settings import ClusterConfig

MAC = "02:00:00:00:00:0c"


def info(name: str) -> dict[str, Any]:
    profile = {
        "hostname": name, "cpu_model": "test", "cores_physical": 2, "cores_logical": 2,
        "ram_total_bytes": 8 << 30, "ram_available_bytes": 6 << 30, "cpu_flags": ["avx2"],
        "tokens_per_second": 12.0,
    }  # fmt: skip
    return {"name": name, "profile": profile, "mac": MAC, "started": 1.0}


def registry(state_file: Path, wol_port: int = 9) -> RayRegistry:
    config = ClusterConfig.model_validate({"power": {"broadcast": "127.0.0.1", "wol_port": wol_port}})
    return RayRegistry([], {}, httpx.AsyncClient(), config, state_file=state_file)


def test_a_restarted_head_still_knows_and_wakes_a_sleeping_node(tmp_path: Path) -> None:
    state = tmp_path / "cluster" / "nodes.json"
    first = registry(state)
    first.nodes["gamma"] = NodeRecord("gamma", "n-gamma", object(), info("gamma"), state="sleeping")
    first.nodes["alpha"] = NodeRecord("alpha", "n-alpha", object(), info("alpha"))  # awake: Ray knows it
    first._save_sleepers()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wol:
        wol.bind(("127.0.0.1", 0))
        wol.settimeout(10)
        second = registry(state, wol.getsockname()[1])
        second._load_sleepers()
        assert list(second.nodes) == ["gamma"] and second.nodes["gamma"].state == "sleeping"
        assert {n["name"]: n["power"] for n in second.status()} == {"gamma": "sleeping"}
        assert second.wake("gamma") == ("gamma", MAC)
        packet, _ = wol.recvfrom(1024)
    assert packet == b"\xff" * 6 + bytes.fromhex(MAC.replace(":", "")) * 16
    assert second.nodes["gamma"].state == "waking"


def test_a_damaged_state_file_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "nodes.json"
    state.write_text("{not json")
    fresh = registry(state)
    fresh._load_sleepers()
    assert fresh.nodes == {}
    assert "starting without them" in caplog.text
