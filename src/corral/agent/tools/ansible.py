"""The `ansible_playbook` tool: run a playbook from the configured directory with ansible-runner.

Only files inside `agent.tools.ansible.playbooks_dir` can be run (no absolute paths, no `..`, no
symlinks that lead out). Each call gets a private data dir under a temp dir, removed afterwards;
the `ansible-playbook` used is the one installed next to this Python (the venv's bin dir goes first
on PATH). Host keys are checked as they are for the ssh tool, unlike ansible-runner's default.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import threading
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import ansible_runner  # type: ignore[import-untyped]
import psutil

from corral.agent.settings import AnsibleConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec

DIR_KEY = "agent.tools.ansible.playbooks_dir"
TIMEOUT_S = 600.0
STDOUT_TAIL_CHARS = 4000
PLAYBOOK_SUFFIXES = (".yml", ".yaml")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_TEMPLATE_MARKERS = ("{{", "{%", "{#")
_MARKER_ENV = "CORRAL_ANSIBLE_RUN"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "playbook": {"type": "string", "minLength": 1, "description": "a file name inside the playbooks dir"},
        "limit": {"type": "string", "description": "an ansible --limit host pattern"},
        "extra_vars": {"type": "object", "description": "variables passed with -e"},
        "check": {"type": "boolean", "description": "dry run: report what would change, change nothing"},
    },
    "required": ["playbook"],
    "additionalProperties": False,
}


def venv_bin() -> Path:
    """The bin dir of this interpreter's environment (not resolved: the venv's python is a symlink)."""
    return Path(sys.executable).absolute().parent


class AnsibleTool:
    """Run one playbook from `playbooks_dir`; returns status, rc, per-host stats and the stdout tail."""

    def __init__(self, config: AnsibleConfig) -> None:
        self.config = config
        self.spec = ToolSpec(
            name="ansible_playbook",
            description=(
                "Run an Ansible playbook from the configured playbooks directory (check=true for a dry run) "
                "and return its status, per-host ok/changed/failed/unreachable counts and the output's end."
            ),
            parameters=_SCHEMA,
            risk="high",
            timeout_s=TIMEOUT_S,
        )

    def playbook_path(self, name: str) -> Path:
        """The real path of a playbook inside the playbooks dir; ToolError for anything else."""
        if self.config.playbooks_dir is None:
            raise ToolError(
                f"no playbooks directory is configured; ask the user to set {DIR_KEY} in corral.yaml"
            )
        root = self.config.playbooks_dir.expanduser().resolve()
        if not root.is_dir():
            raise ToolError(f"the playbooks directory {root} does not exist; fix {DIR_KEY}")
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or name.startswith("~") or ".." in pure.parts or "\\" in name:
            raise ToolError(
                f"playbook {name!r} must be a file name relative to the playbooks directory {root}, "
                "without '..' or an absolute path"
            )
        path = (root / pure).resolve()
        if not path.is_relative_to(root):
            raise ToolError(f"playbook {name!r} leads outside the playbooks directory {root}; it is refused")
        if not path.is_file():
            available = sorted(
                str(p.relative_to(root))
                for p in root.rglob("*")
                if p.suffix in PLAYBOOK_SUFFIXES and p.is_file()
            )
            listing = ", ".join(available[:50]) or "none"
            raise ToolError(f"there is no playbook {name!r} in {root}; the playbooks are: {listing}")
        return path

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        playbook = self.playbook_path(str(args["playbook"]))
        limit = args.get("limit")
        if limit is not None and (not str(limit).strip() or str(limit).startswith("-")):
            raise ToolError(
                f"limit {limit!r} is not a host pattern; use names, groups or patterns like 'web*'"
            )
        extra_vars = dict(args.get("extra_vars") or {})
        check_extra_vars(extra_vars)
        root = self.config.playbooks_dir.expanduser().resolve()  # type: ignore[union-attr]
        cancel = threading.Event()
        worker = asyncio.create_task(
            asyncio.to_thread(
                _run_playbook,
                root,
                str(playbook.relative_to(root)),
                self.config.inventory,
                limit,
                extra_vars,
                bool(args.get("check", False)),
                cancel,
            )
        )
        try:
            outcome = await asyncio.shield(worker)
        except asyncio.CancelledError:
            cancel.set()  # ansible-runner polls this and kills ansible-playbook
            await asyncio.wait([worker], timeout=30)
            raise
        return _to_result(outcome)


def check_extra_vars(extra_vars: dict[str, Any]) -> None:
    """Refuse what would let a variable change how or where ansible connects, or run a template."""
    for key in extra_vars:
        if not _VAR_NAME.fullmatch(key):
            raise ToolError(f"extra_vars key {key!r} is not a valid variable name")
        if key.startswith("ansible_"):
            raise ToolError(
                f"extra_vars may not set {key!r}: ansible_* variables change connections and privileges; "
                "put them in the inventory instead"
            )

    def walk(value: Any) -> None:
        if isinstance(value, str) and any(marker in value for marker in _TEMPLATE_MARKERS):
            raise ToolError(f"extra_vars value {value[:80]!r} contains a Jinja template; pass plain values")
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(extra_vars)


def _run_playbook(
    root: Path,
    playbook: str,
    inventory: Path | None,
    limit: str | None,
    extra_vars: dict[str, Any],
    check: bool,
    cancel: threading.Event,
) -> dict[str, Any]:
    """Run ansible-playbook through ansible-runner (blocking) and collect what the result needs."""
    path = os.pathsep.join([str(venv_bin()), os.environ.get("PATH", os.defpath)])
    marker = uuid.uuid4().hex

    def cancel_check() -> bool:
        if cancel.is_set():
            _kill_run(marker)
            return True
        return False

    with tempfile.TemporaryDirectory(prefix="corral-ansible-") as data_dir:
        kwargs: dict[str, Any] = {
            "private_data_dir": data_dir,
            "project_dir": str(root),
            "playbook": playbook,
            "envvars": {
                "PATH": path,
                "ANSIBLE_HOST_KEY_CHECKING": "True",
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_LOCAL_TEMP": str(Path(data_dir) / "tmp"),
                _MARKER_ENV: marker,
            },
            "settings": {"pexpect_timeout": 1},  # how often the cancel check runs
            "quiet": True,
            "cancel_callback": cancel_check,
        }
        if inventory is not None:
            kwargs["inventory"] = str(inventory.expanduser().resolve())
        if limit:
            kwargs["limit"] = limit
        if extra_vars:
            kwargs["extravars"] = extra_vars
        if check:
            kwargs["cmdline"] = "--check"
        runner = ansible_runner.run(**kwargs)
        failures: list[dict[str, Any]] = []
        for event in runner.events:
            kind = event.get("event")
            if kind not in ("runner_on_failed", "runner_on_unreachable"):
                continue
            data = event.get("event_data", {})
            if data.get("ignore_errors"):
                continue
            res = data.get("res") or {}
            failures.append(
                {
                    "host": data.get("host"),
                    "task": data.get("task"),
                    "unreachable": kind == "runner_on_unreachable",
                    "msg": str(res.get("msg") or res.get("stderr") or "")[:500],
                }
            )
        stdout_file = Path(runner.config.artifact_dir) / "stdout"
        stdout = stdout_file.read_text(errors="replace") if stdout_file.is_file() else ""
        return {
            "status": runner.status,
            "rc": runner.rc,
            "stats": _per_host(runner.stats or {}),
            "failures": failures,
            "stdout_tail": stdout[-STDOUT_TAIL_CHARS:],
            "playbook": playbook,
            "check": check,
        }


def _kill_run(marker: str) -> None:
    """Kill every process of one run, workers included: ansible-playbook puts each worker in its own
    session, so ansible-runner's kill of the process group alone would leave them (and their tasks)."""
    for process in psutil.Process().children(recursive=True):
        try:
            if process.environ().get(_MARKER_ENV) == marker:
                process.kill()
        except psutil.Error:
            pass


def _per_host(stats: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    hosts: dict[str, dict[str, int]] = {}
    names = {
        "ok": "ok",
        "changed": "changed",
        "failures": "failed",
        "dark": "unreachable",
        "skipped": "skipped",
    }
    for key, name in names.items():
        for host, count in (stats.get(key) or {}).items():
            hosts.setdefault(host, dict.fromkeys(names.values(), 0))[name] = count
    return hosts


def _to_result(outcome: dict[str, Any]) -> ToolResult:
    lines = [
        f"playbook {outcome['playbook']}{' (check mode)' if outcome['check'] else ''}: "
        f"{outcome['status']} (rc {outcome['rc']})"
    ]
    for host, counts in sorted(outcome["stats"].items()):
        lines.append(f"{host}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    for failure in outcome["failures"]:
        what = "unreachable" if failure["unreachable"] else "failed"
        lines.append(f"{what}: task {failure['task']!r} on {failure['host']}: {failure['msg']}")
    if outcome["stdout_tail"]:
        lines += ["", "[end of output]", outcome["stdout_tail"].rstrip()]
    return ToolResult(outcome["status"] == "successful", "\n".join(lines), outcome)
