"""`corral provision`'s logic: the per-host summary, failure messages and argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.provision import _parse_extra, playbooks_dir, run_playbook, summarise

STATS = {
    "ok": {"node1": 12, "node2": 3},
    "changed": {"node1": 2},
    "failures": {"node2": 1},
    "dark": {},
    "skipped": {"node1": 4, "node2": 1},
}
EVENTS = [
    {"event": "runner_on_ok", "event_data": {"host": "node1", "task": "x", "res": {}}},
    {
        "event": "runner_on_failed",
        "event_data": {
            "host": "node2",
            "task": "Fail when the disk is too full",
            "res": {"msg": "preflight: only 120 MB free on /opt"},
        },
    },
    {
        "event": "runner_on_failed",
        "event_data": {"host": "node1", "task": "probe", "ignore_errors": True, "res": {"msg": "ignored"}},
    },
]


def test_summary_counts_each_host_and_keeps_the_roles_message() -> None:
    result = summarise("site", False, "failed", 2, STATS, EVENTS)
    assert result.hosts["node1"] == {"ok": 12, "changed": 2, "failed": 0, "unreachable": 0, "skipped": 4}
    assert result.hosts["node2"]["failed"] == 1
    assert [(f.host, f.message) for f in result.failures] == [
        ("node2", "preflight: only 120 MB free on /opt")
    ]
    assert not result.ok


def test_a_clean_run_is_ok() -> None:
    result = summarise("heal", False, "successful", 0, {"ok": {"node1": 5}}, [])
    assert result.ok and result.hosts["node1"]["changed"] == 0


def test_unknown_playbook_and_missing_inventory_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one of: site, heal, wake"):
        run_playbook("deploy", tmp_path / "inventory.ini")
    with pytest.raises(ConfigError, match=r"inventory\.example\.ini"):
        run_playbook("site", tmp_path / "inventory.ini")


def test_extra_vars_must_be_name_value() -> None:
    assert _parse_extra(["corral_prefix=/srv/corral", "a=b=c"]) == {
        "corral_prefix": "/srv/corral",
        "a": "b=c",
    }
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        _parse_extra(["corral_prefix"])


def test_the_playbooks_are_found_and_an_override_is_checked(tmp_path: Path) -> None:
    assert (playbooks_dir({}) / "heal.yml").is_file()
    with pytest.raises(ConfigError, match="CORRAL_ANSIBLE_DIR"):
        playbooks_dir({"CORRAL_ANSIBLE_DIR": str(tmp_path)})
