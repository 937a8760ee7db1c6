"""Power: which idle nodes to put to sleep (pure policy), and waking a node with Wake-on-LAN.

A node is put to sleep when power management is on, it has been idle (no request in flight on
any of its replicas) for `idle_s`, and nothing pins it: not listed in `pinned`, not the head, not
holding the always-loaded fallback. Waking sends a magic packet (the `wakeonlan` package) to the
node's MAC address: the `power.macs` override, else what the node reported when it joined.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import wakeonlan

from corral.cluster.settings import PowerConfig, valid_mac
from corral.errors import CorralError

# The values of the corral_node_power_state gauge.
POWER_STATES = {"lost": -1.0, "sleeping": 0.0, "awake": 1.0, "waking": 2.0}


class WakeError(CorralError):
    """A node cannot be woken (no MAC known, unknown node)."""

    status_code = 400
    error_type = "invalid_request_error"


@dataclass(frozen=True)
class NodePower:
    name: str
    state: str  # awake | sleeping | waking | lost
    idle_since: float | None  # monotonic time its last request ended; None while busy
    essential: bool = False  # the head, or the fallback's node: never slept


def to_sleep(config: PowerConfig, nodes: Iterable[NodePower], now: float) -> list[str]:
    """The nodes to put to sleep now."""
    if not config.enabled:
        return []
    return sorted(
        n.name
        for n in nodes
        if n.state == "awake"
        and not n.essential
        and n.name not in config.pinned
        and n.idle_since is not None
        and now - n.idle_since >= config.idle_s
    )


def resolve_mac(target: str, reported: Mapping[str, str | None], config: PowerConfig) -> tuple[str, str]:
    """(node name or "", MAC) for a node name or a MAC address; WakeError says what to set."""
    if target in config.macs:
        return target, config.macs[target]
    if target in reported:
        mac = reported[target]
        if not mac:
            raise WakeError(
                f"node {target!r} reported no MAC address (no wired interface found); set "
                f"cluster.power.macs.{target} in corral.yaml or run `corral wake --mac MAC`"
            )
        return target, mac
    if valid_mac(target):
        return "", target
    known = ", ".join(sorted({*reported, *config.macs})) or "none known yet"
    raise WakeError(
        f"{target!r} is neither a known node ({known}) nor a MAC address like aa:bb:cc:dd:ee:ff; "
        "`corral status` lists the nodes"
    )


def send_wake(mac: str, config: PowerConfig) -> None:
    """Send one Wake-on-LAN magic packet for `mac` to the configured broadcast address."""
    if not valid_mac(mac):
        raise WakeError(f"{mac!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
    wakeonlan.wake(mac, host=config.broadcast, port=config.wol_port)
