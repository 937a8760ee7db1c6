"""`corral provision`: run the shipped Ansible playbooks (site, heal, wake) with ansible-runner.

The playbooks live in deploy/ansible (shipped inside the wheel as corral/deploy/ansible; a source
checkout uses its own copy; CORRAL_ANSIBLE_DIR overrides both). Each run gets a private data dir
that is removed afterwards; the `ansible-playbook` used is the one installed beside this Python.
The result is a per-host summary (ok, changed, failed, unreachable, skipped) and, for each failed
task, the host, the task and the message the role wrote for it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from corral.errors import ConfigError, CorralError

PLAYBOOKS = {"site": "site.yml", "heal": "heal.yml", "wake": "wake.yml"}
COUNTS = ("ok", "changed", "failed", "unreachable", "skipped")
_STATS_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
}


@dataclass(frozen=True)
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False


@dataclass
class ProvisionResult:
    playbook: str
    check: bool
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    rc: int
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures


def playbooks_dir(env: dict[str, str] | None = None) -> Path:
    """Where site.yml and friends are: $CORRAL_ANSIBLE_DIR, the wheel's copy, or the checkout's."""
    env = dict(os.environ) if env is None else env
    if env.get("CORRAL_ANSIBLE_DIR"):
        chosen = Path(env["CORRAL_ANSIBLE_DIR"]).expanduser()
        if not (chosen / "site.yml").is_file():
            raise ConfigError(
                f"CORRAL_ANSIBLE_DIR={chosen} holds no site.yml; point it at a copy of deploy/ansible"
            )
        return chosen
    here = Path(__file__).resolve().parent
    candidates = [here / "deploy" / "ansible", here.parents[1] / "deploy" / "ansible"]
    for candidate in candidates:
        if (candidate / "site.yml").is_file():
            return candidate
    raise ConfigError(
        f"corral's Ansible playbooks were not found (looked in {', '.join(map(str, candidates))}); "
        "set CORRAL_ANSIBLE_DIR to a copy of deploy/ansible"
    )


def run_playbook(
    name: str,
    inventory: Path,
    *,
    check: bool = False,
    limit: str | None = None,
    extra_vars: dict[str, Any] | None = None,
    playbooks: Path | None = None,
) -> ProvisionResult:
    """Run one playbook (blocking) and summarise it; bad arguments raise ConfigError."""
    if name not in PLAYBOOKS:
        raise ConfigError(f"unknown playbook {name!r}; choose one of: {', '.join(PLAYBOOKS)}")
    inventory = inventory.expanduser()
    if not inventory.exists():
        raise ConfigError(
            f"inventory {inventory} does not exist; copy deploy/ansible/inventory.example.ini to "
            "inventory.ini, list your machines in it, and pass --inventory inventory.ini"
        )
    root = playbooks or playbooks_dir()
    try:
        import ansible_runner  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError("ansible-runner is not installed here; run ./setup.sh again") from None
    path = os.pathsep.join([str(Path(sys.executable).absolute().parent), os.environ.get("PATH", os.defpath)])
    with tempfile.TemporaryDirectory(prefix="corral-provision-") as data_dir:
        kwargs: dict[str, Any] = {
            "private_data_dir": data_dir,
            "project_dir": str(root),
            "playbook": PLAYBOOKS[name],
            "inventory": str(inventory.resolve()),
            "envvars": {
                "PATH": path,
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_RETRY_FILES_ENABLED": "0",
                "ANSIBLE_ROLES_PATH": str(root / "roles"),
                "ANSIBLE_LOCAL_TEMP": str(Path(data_dir) / "tmp"),
            },
            "quiet": True,
        }
        if limit:
            kwargs["limit"] = limit
        if extra_vars:
            kwargs["extravars"] = extra_vars
        if check:
            kwargs["cmdline"] = "--check"
        runner = ansible_runner.run(**kwargs)
        return summarise(name, check, runner.status, runner.rc, runner.stats or {}, list(runner.events))


def summarise(
    name: str, check: bool, status: str, rc: int, stats: dict[str, Any], events: list[dict[str, Any]]
) -> ProvisionResult:
    """Per-host counts from ansible's stats, and each failed (not ignored) task's message."""
    result = ProvisionResult(name, check, status, rc)
    for key, count_name in _STATS_KEYS.items():
        for host, count in (stats.get(key) or {}).items():
            result.hosts.setdefault(host, dict.fromkeys(COUNTS, 0))[count_name] = int(count)
    for event in events:
        kind = event.get("event")
        if kind not in ("runner_on_failed", "runner_on_unreachable"):
            continue
        data = event.get("event_data") or {}
        if data.get("ignore_errors"):
            continue
        res = data.get("res") or {}
        message = str(res.get("msg") or res.get("stderr") or res.get("stdout") or "no message")
        result.failures.append(
            Failure(
                str(data.get("host", "?")),
                str(data.get("task", "?")),
                message.strip()[:1000],
                unreachable=kind == "runner_on_unreachable",
            )
        )
    return result


def summary_table(result: ProvisionResult) -> Table:
    title = f"{PLAYBOOKS[result.playbook]}{' (check mode: nothing changed)' if result.check else ''}"
    table = Table(title=title)
    table.add_column("host")
    for name in COUNTS:
        table.add_column(name, justify="right")
    for host, counts in sorted(result.hosts.items()):
        style = "red" if counts["failed"] or counts["unreachable"] else None
        table.add_row(host, *(str(counts[name]) for name in COUNTS), style=style)
    return table


def _parse_extra(values: list[str]) -> dict[str, str]:
    extra: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--var {value!r} is not NAME=VALUE (e.g. --var corral_prefix=/srv/corral)")
        extra[key.strip()] = item
    return extra


def install(app: typer.Typer) -> None:
    """Register `corral provision` on the CLI."""

    @app.command()
    def provision(
        playbook: Annotated[
            str,
            typer.Option(
                "--playbook", "-p", help="site (install and configure), heal (restore services), wake"
            ),
        ] = "site",
        inventory: Annotated[
            Path,
            typer.Option(
                "--inventory", "-i", help="Ansible inventory (see deploy/ansible/inventory.example.ini)"
            ),
        ] = Path("inventory.ini"),
        check: Annotated[bool, typer.Option("--check", help="dry run: report what would change")] = False,
        limit: Annotated[
            str | None, typer.Option("--limit", "-l", help="only these hosts (an Ansible pattern)")
        ] = None,
        var: Annotated[
            list[str] | None, typer.Option("--var", help="NAME=VALUE for the playbook (repeatable)")
        ] = None,
    ) -> None:
        """Provision machines with corral's Ansible playbooks; prints ok/changed/failed per host."""
        console, errors = Console(), Console(stderr=True)
        try:
            with console.status(f"running {PLAYBOOKS.get(playbook, playbook)} ..."):
                result = run_playbook(
                    playbook, inventory, check=check, limit=limit, extra_vars=_parse_extra(var or [])
                )
        except CorralError as err:
            errors.print(f"[bold red]error:[/] {err.message}")
            raise typer.Exit(2) from None
        if result.hosts:
            console.print(summary_table(result))
        else:
            errors.print(
                f"[bold red]error:[/] no host matched (inventory {inventory}, limit {limit or 'none'})"
            )
        for failure in result.failures:
            what = "unreachable" if failure.unreachable else "failed"
            errors.print(f"[bold red]{failure.host} {what}[/] at [bold]{failure.task}[/]: {failure.message}")
        if not result.ok or not result.hosts:
            errors.print(f"provision {result.status} (rc {result.rc})")
            raise typer.Exit(1)
