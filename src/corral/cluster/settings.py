"""The `cluster:` section of corral.yaml: head port, placement reserve, CPU flag needs, power."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PowerConfig(_Strict):
    """Sleeping idle machines and waking them with Wake-on-LAN when a request needs them."""

    enabled: bool = Field(False, description="put idle nodes to sleep (waking works either way)")
    idle_s: float = Field(1800.0, ge=10, description="a node idle this long, nothing pinned, sleeps")
    sleep_command: list[str] = Field(
        default_factory=lambda: ["systemctl", "suspend"],
        description="run on the node itself (by its agent) to put it to sleep",
    )
    wake_timeout_s: float = Field(
        120.0, gt=0, description="how long a held request waits for a woken node before falling back"
    )
    broadcast: str = Field("255.255.255.255", description="where Wake-on-LAN packets are sent")
    wol_port: int = Field(9, ge=1, le=65535, description="UDP port of the Wake-on-LAN packets")
    macs: dict[str, str] = Field(
        default_factory=dict, description="node name -> MAC address, overriding what the node reported"
    )
    pinned: list[str] = Field(default_factory=list, description="nodes never put to sleep")

    @field_validator("macs")
    @classmethod
    def _valid_macs(cls, macs: dict[str, str]) -> dict[str, str]:
        for node, mac in macs.items():
            if not _MAC.match(mac):
                raise ValueError(f"{node}: {mac!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
        return macs


class ClusterConfig(_Strict):
    """How `corral up --head` runs the cluster and places experts on its nodes."""

    port: int = Field(6380, ge=1, le=65535, description="the Ray head's port (`corral join HOST:PORT`)")
    reserve_bytes: int = Field(
        768 * 1024 * 1024, ge=0, description="RAM left free on every node for the OS and Ray"
    )
    requires: dict[str, list[str]] = Field(
        default_factory=dict,
        description="expert name -> CPU flags its nodes must have, e.g. {big: [avx2]}",
    )
    ready_timeout_s: float = Field(180.0, gt=0, description="how long a replica may take to load")
    power: PowerConfig = PowerConfig()


def valid_mac(text: str) -> bool:
    return bool(_MAC.match(text))
