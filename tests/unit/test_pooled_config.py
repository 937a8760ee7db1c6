"""The `pooled:` field of an expert: validation, and the leader's command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.config import CorralConfig, ExpertConfig
from corral.engine.binaries import EngineBinaries
from corral.engine.pooled import PooledConfig, PooledReplica, RpcWorkerSpec, parse_address, pooled_spec
from corral.engine.replica import ReplicaSpec
from corral.models.catalog import NATIVE, ModelEntry
from corral.models.gguf_info import GGUFInfo


def test_a_pool_needs_workers() -> None:
    with pytest.raises(ValidationError, match="needs workers"):
        PooledConfig()
    assert PooledConfig(workers=2).workers == 2
    assert PooledConfig(rpc=["192.168.1.20:50052", "[fe80::1]:50052"]).rpc[1] == "[fe80::1]:50052"


@pytest.mark.parametrize("bad", ["192.168.1.20", "host:0", "host:70000", ":50052", "a b:1", "h:p"])
def test_bad_rpc_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match=r"host:port|not a host"):
        PooledConfig(rpc=[bad])
    assert parse_address("node2.lan:50052") == ("node2.lan", 50052)


def test_pooled_experts_run_one_leader_and_no_url() -> None:
    with pytest.raises(ValidationError, match="set `replicas: 1` and remove `url`"):
        CorralConfig(
            experts=[ExpertConfig(name="big", model="m", replicas=2, pooled=PooledConfig(workers=1))]
        )


def test_the_leader_gets_rpc_and_the_workers_bind_loopback(tmp_path: Path) -> None:
    info = GGUFInfo(tmp_path / "m.gguf", "gemma3", "m", 1, "Q4_K_M", 512, 1, 1, 1, 1, 1, 1, 1)
    entry = ModelEntry("m", "local", info, NATIVE, "m")
    leader = ReplicaSpec(expert="big", index=0, model=entry, slots=1, context_per_slot=512, threads=2)
    spec = pooled_spec(leader, PooledConfig(workers=2, rpc=["10.0.0.7:50052"]))
    binaries = EngineBinaries(tmp_path, tmp_path, {})
    command = spec.command(binaries, 8080)
    rpc = command[command.index("--rpc") + 1].split(",")
    assert len(rpc) == 3 and rpc[2] == "10.0.0.7:50052"
    assert all(address.startswith("127.0.0.1:") for address in rpc[:2])
    worker: RpcWorkerSpec = spec.workers[0]
    assert worker.name == "big/rpc0"
    assert worker.command(binaries, worker.port)[:3] == [
        str(tmp_path / "ggml-rpc-server"),
        "--host",
        "127.0.0.1",
    ]
    replica = spec.process(binaries, tmp_path)
    assert isinstance(replica, PooledReplica) and len(replica.workers) == 2
    assert replica.workers[0].port == worker.port
