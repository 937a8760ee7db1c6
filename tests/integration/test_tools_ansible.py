"""The ansible_playbook tool running real playbooks against localhost with a local connection."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
import pytest

from corral.agent.settings import AnsibleConfig
from corral.agent.tools.ansible import AnsibleTool, venv_bin
from corral.agent.tools.base import ToolContext, ToolError, ToolRegistry

CTX = ToolContext()

WRITE = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: write the greeting
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "hello {{ who }}\\n"
"""

FAIL = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: a step that works
      ansible.builtin.debug:
        msg: fine
    - name: check the disk is mounted
      ansible.builtin.command: /bin/false
"""


@pytest.fixture
def tool(tmp_path: Path) -> AnsibleTool:
    playbooks = tmp_path / "playbooks"
    (playbooks / "sub").mkdir(parents=True)
    (playbooks / "write.yml").write_text(WRITE)
    (playbooks / "sub" / "fail.yml").write_text(FAIL)
    (tmp_path / "secret.yml").write_text(WRITE)
    (playbooks / "escape.yml").symlink_to(tmp_path / "secret.yml")
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        'localhost ansible_connection=local ansible_python_interpreter="{{ ansible_playbook_python }}"\n'
    )
    return AnsibleTool(AnsibleConfig(playbooks_dir=playbooks, inventory=inventory))


@pytest.fixture
def path_without_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-playbook must be found although the venv is not on PATH."""
    kept = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin()]
    monkeypatch.setenv("PATH", os.pathsep.join(kept or ["/usr/bin", "/bin"]))


@pytest.mark.slow
@pytest.mark.usefixtures("path_without_venv")
async def test_check_mode_then_real_run(tool: AnsibleTool, tmp_path: Path) -> None:
    target = tmp_path / "greeting.txt"
    args = {
        "playbook": "write.yml",
        "extra_vars": {"target": str(target), "who": "corral"},
        "limit": "localhost",
    }

    dry = await tool.call({**args, "check": True}, CTX)
    assert dry.ok, dry.content
    assert dry.data["status"] == "successful" and dry.data["rc"] == 0
    assert dry.data["stats"]["localhost"]["changed"] == 1
    assert "(check mode)" in dry.content
    assert not target.exists()

    real = await tool.call(args, CTX)
    assert real.ok, real.content
    assert target.read_text() == "hello corral\n"
    assert real.data["stats"] == {
        "localhost": {"ok": 1, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0}
    }
    assert "PLAY RECAP" in real.content


@pytest.mark.slow
async def test_failing_task_is_named(tool: AnsibleTool) -> None:
    registry = ToolRegistry([tool])
    result = await registry.invoke("ansible_playbook", {"playbook": "sub/fail.yml"}, CTX)
    assert not result.ok
    assert result.data["status"] == "failed" and result.data["rc"] == 2
    assert result.data["stats"]["localhost"]["failed"] == 1
    assert result.data["failures"][0]["task"] == "check the disk is mounted"
    assert "failed: task 'check the disk is mounted' on localhost" in result.content


@pytest.mark.parametrize(
    "name",
    ["../secret.yml", "sub/../../secret.yml", "/etc/passwd", str(Path("/") / "tmp" / "x.yml"), "~/x.yml"],
)
async def test_paths_outside_the_dir_are_refused(tool: AnsibleTool, name: str) -> None:
    with pytest.raises(ToolError, match="relative to the playbooks directory"):
        await tool.call({"playbook": name}, CTX)


async def test_symlink_out_of_the_dir_is_refused(tool: AnsibleTool) -> None:
    with pytest.raises(ToolError, match="leads outside the playbooks directory"):
        await tool.call({"playbook": "escape.yml"}, CTX)


async def test_missing_playbook_lists_the_available_ones(tool: AnsibleTool) -> None:
    with pytest.raises(ToolError, match=r"no playbook 'nope.yml'.*sub/fail.yml, write.yml"):
        await tool.call({"playbook": "nope.yml"}, CTX)


async def test_not_configured() -> None:
    with pytest.raises(ToolError, match=r"agent\.tools\.ansible\.playbooks_dir"):
        await AnsibleTool(AnsibleConfig()).call({"playbook": "site.yml"}, CTX)


@pytest.mark.parametrize(
    "extra_vars",
    [
        {"ansible_connection": "local"},
        {"ansible_ssh_common_args": "-o ProxyCommand=sh"},
        {"target": "{{ lookup('pipe', 'id') }}"},
        {"nested": {"list": ["ok", "{% raw %}"]}},
        {"bad name": 1},
    ],
)
async def test_dangerous_extra_vars_are_refused(tool: AnsibleTool, extra_vars: dict[str, object]) -> None:
    with pytest.raises(ToolError, match="extra_vars"):
        await tool.call({"playbook": "write.yml", "extra_vars": extra_vars}, CTX)


async def test_limit_must_be_a_pattern(tool: AnsibleTool) -> None:
    with pytest.raises(ToolError, match="host pattern"):
        await tool.call({"playbook": "write.yml", "limit": "--become"}, CTX)


@pytest.mark.slow
async def test_timeout_stops_ansible_playbook(tool: AnsibleTool, tmp_path: Path) -> None:
    playbooks = tmp_path / "playbooks"
    (playbooks / "slow.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - name: wait a long time\n      ansible.builtin.command: sleep 120\n"
    )
    registry = ToolRegistry([tool])
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(registry.get("ansible_playbook").call({"playbook": "slow.yml"}, CTX), 4)
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("slow.yml" in part for part in p.info["cmdline"] or [])
        or p.info["cmdline"] == ["sleep", "120"]
    ]
    assert leftovers == []
