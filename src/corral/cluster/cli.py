"""The cluster's commands: `corral join`, `corral plan`, `corral wake`, and the head's start-up
for `corral up --head`. Ray is imported only when a command needs it."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.table import Table

from corral.cluster.planner import NodeCapacity, Plan, plan
from corral.cluster.power import resolve_mac, send_wake
from corral.config import BUNDLED_MODEL, CorralConfig, default_config, load_config
from corral.errors import CorralError
from corral.paths import CorralPaths, default_home

if TYPE_CHECKING:
    from corral.cluster.head import RayProcess
    from corral.cluster.registry import RayRegistry

console = Console()
err_console = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="data directory (default: $CORRAL_HOME or ~/.local/share/corral)"),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="corral.yaml")]


def _paths(home: Path | None) -> CorralPaths:
    return CorralPaths((home or default_home()).expanduser()).ensure()


def _config(paths: CorralPaths, path: Path | None) -> CorralConfig:
    if path is not None:
        return load_config(path)
    return load_config(paths.config_file) if paths.config_file.exists() else default_config()


def _fail(err: CorralError) -> None:
    err_console.print(f"[bold red]error:[/] {err.message}")
    raise typer.Exit(2)


def start_cluster_head(
    paths: CorralPaths, config: CorralConfig, client: httpx.AsyncClient
) -> tuple[RayRegistry, RayProcess]:
    """`corral up --head`: the Ray head, this process as its driver, this node's agent, and the
    RayRegistry the gateway will follow; prints how other machines join."""
    from corral.cluster.token import ensure_token, read_token, use_token

    use_token(read_token(ensure_token(paths), {}))  # before Ray is imported: it reads them once
    import ray

    from corral.cluster.head import build_registry, connect, start_agent_here, start_head
    from corral.models.catalog import Catalog

    address, token_file, ray_process = start_head(paths, config.cluster.port, os.cpu_count() or 1)
    try:
        connect(address)
        start_agent_here(paths)
        head_id = ray.get_runtime_context().get_node_id()
        registry = build_registry(
            config, Catalog(paths.models), client, head_id, state_file=paths.home / "cluster" / "nodes.json"
        )
    except BaseException:
        ray_process.stop()
        raise
    console.print(
        f"[bold]Ray head at {address}[/] (token auth on). Join another machine with:\n"
        f"  corral join {address} --token-file /etc/corral/cluster.token\n"
        f"after copying {token_file} there (readable by the user corral runs as, nobody else)."
    )
    return registry, ray_process


def join(
    address: Annotated[str, typer.Argument(help="the head's HOST:PORT, printed by `corral up --head`")],
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="the head's cluster.token (or env CORRAL_CLUSTER_TOKEN)"),
    ] = None,
    home: HomeOpt = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs this node offers Ray (default: all)")] = None,
    calibrate: Annotated[bool, typer.Option(help="measure this machine's tokens/s on joining")] = True,
    detach: Annotated[bool, typer.Option(help="return once joined instead of running until stopped")] = False,
) -> None:
    """Join this machine to a corral cluster: its node agent reports the hardware and runs the
    replicas the head places here. Runs until stopped (a systemd unit's ExecStart)."""
    from corral.cluster.token import read_token, use_token

    try:
        paths = _paths(home)
        token = read_token(token_file, os.environ)
    except CorralError as err:
        _fail(err)
        return
    use_token(token)  # before Ray is imported: it reads these once
    import ray

    from corral.cluster.head import connect, start_agent_here
    from corral.cluster.head import join as ray_join

    try:
        ray_process = ray_join(address, token, paths, num_cpus or os.cpu_count() or 1)
    except CorralError as err:
        _fail(err)
        return
    try:
        connect(address)
        agent = start_agent_here(paths)
        info = ray.get(agent.info.remote(), timeout=300)
        if calibrate:
            console.print("measuring this machine's decode speed (cached after the first time)...")
            info["profile"]["tokens_per_second"] = ray.get(agent.calibrate.remote(BUNDLED_MODEL), timeout=900)
        ray.shutdown()
    except (CorralError, ray.exceptions.RayError) as err:
        ray_process.stop()
        _fail(err if isinstance(err, CorralError) else CorralError(f"the node agent did not start: {err}"))
        return
    stopping = threading.Event()
    if not detach:
        # Handled before "joined" is printed: a service manager may stop us as soon as it reads
        # it. A handler, not a blocked mask: the mask is per thread, and the threads Ray's client
        # started would still take the signal's default action.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
    p = info["profile"]
    tps = p.get("tokens_per_second")
    console.print(
        f"[bold green]joined[/] {address} as {info['name']}: {p['cores_physical']} cores, "
        f"{p['ram_total_bytes'] / 1024**3:.1f} GiB, {' '.join(p['cpu_flags']) or 'no SIMD flags'}, "
        f"{f'{tps:.1f} tok/s' if tps else 'speed not measured'}, MAC {info.get('mac') or 'unknown'}"
    )
    if detach:
        return
    while ray_process.process.poll() is None and not stopping.wait(2.0):
        pass
    code = ray_process.process.poll()
    ray_process.stop()
    if code not in (None, 0):
        err_console.print(f"[bold red]error:[/] Ray exited ({code}); see {ray_process.log}")
        raise typer.Exit(1)


def plan_command(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    profiles: Annotated[
        Path | None,
        typer.Option(help="a YAML/JSON list of node profiles to plan against instead of the live cluster"),
    ] = None,
    address: Annotated[str | None, typer.Option(help="the head's HOST:PORT (default: this machine)")] = None,
) -> None:
    """Show where each expert's replicas go and why, on the live cluster or on given profiles."""
    from corral.models.catalog import Catalog

    try:
        paths = _paths(home)
        cfg = _config(paths, config)
        if profiles is None:
            _use_head_token(paths)  # before corral.cluster.head imports Ray, which reads it once
        from corral.cluster.head import demands

        wanted, _ = demands(cfg, Catalog(paths.models))
        nodes = _profiles_file(profiles) if profiles is not None else _live(cfg, address)
    except CorralError as err:
        _fail(err)
        return
    console.print(plan_table(plan(wanted, nodes, reserve_bytes=cfg.cluster.reserve_bytes), nodes))


def plan_table(result: Plan, nodes: list[NodeCapacity]) -> Table:
    table = Table(title=f"placement on {len(nodes)} node(s)")
    for column in ("replica", "node", "threads", "RAM", "why"):
        table.add_column(column)
    for p in result.placements:
        table.add_row(
            f"{p.expert}/{p.index}", p.node, str(p.threads), f"{p.need_bytes / 1024**2:.0f} MiB", p.why
        )
    for u in result.unplaced:
        table.add_row(f"{u.expert}/{u.index}", "[red]nowhere[/]", "", "", f"[red]{u.reason}[/]")
    for expert, why in result.skipped.items():
        table.add_row(expert, "[yellow]skipped[/]", "", "", why)
    return table


def _profiles_file(path: Path) -> list[NodeCapacity]:
    """Nodes from a file: [{name, ram_gib | ram_available_bytes, cores, cpu_flags, tokens_per_second}]."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CorralError(f"cannot read profiles from {path}: {exc}") from None
    if not isinstance(raw, list):
        raise CorralError(f"{path}: expected a list of nodes like - {{name: pc1, ram_gib: 8, cores: 4}}")
    nodes = []
    for i, item in enumerate(raw):
        try:
            ram = (
                int(item["ram_available_bytes"])
                if "ram_available_bytes" in item
                else int(float(item["ram_gib"]) * 1024**3)
            )
            nodes.append(
                NodeCapacity(
                    str(item["name"]), ram, int(item.get("cores", 1)), frozenset(item.get("cpu_flags", ())),
                    item.get("tokens_per_second"), float(item.get("reliability", 0)),
                )
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise CorralError(
                f"{path}: node {i} is missing or has a bad {exc}; each needs name and ram_gib "
                "(or ram_available_bytes), optionally cores, cpu_flags, tokens_per_second"
            ) from None
    return nodes


def _use_head_token(paths: CorralPaths) -> None:
    """Authenticate this process to the head's Ray with its cluster.token (before Ray's import)."""
    from corral.cluster.token import TOKEN_FILE, ClusterError, read_token, use_token

    token_file = paths.home / TOKEN_FILE
    if not token_file.exists():
        raise ClusterError(
            f"no cluster here ({token_file} is missing): run this on the head, or pass --profiles FILE"
        )
    use_token(read_token(token_file, {}))


def _live(cfg: CorralConfig, address: str | None) -> list[NodeCapacity]:
    import ray

    from corral.cluster.head import connect, live_capacities

    connect(address or f"127.0.0.1:{cfg.cluster.port}")
    try:
        return live_capacities()
    finally:
        ray.shutdown()


def wake(
    node: Annotated[str | None, typer.Argument(help="a node name (from `corral status`) or a MAC")] = None,
    mac: Annotated[str | None, typer.Option("--mac", help="wake this MAC address directly")] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
    url: Annotated[str, typer.Option(help="gateway URL, to look up a node's MAC")] = "http://127.0.0.1:8400",
    key: Annotated[str | None, typer.Option(envvar="CORRAL_API_KEY", help="API key")] = None,
) -> None:
    """Send Wake-on-LAN to a sleeping node (to cluster.power.broadcast / wol_port)."""
    try:
        cfg = _config(_paths(home), config)
        target = mac or node
        if not target:
            raise CorralError("name a node (`corral wake NODE`) or a MAC (`corral wake --mac MAC`)")
        reported = {} if mac or target in cfg.cluster.power.macs else _reported_macs(url, key)
        name, address = resolve_mac(target, reported, cfg.cluster.power)
        send_wake(address, cfg.cluster.power)
    except CorralError as err:
        _fail(err)
        return
    power = cfg.cluster.power
    console.print(f"sent Wake-on-LAN for {name or address} ({address}) to {power.broadcast}:{power.wol_port}")


def _reported_macs(url: str, key: str | None) -> dict[str, str | None]:
    key = key or os.environ.get("OPENAI_API_KEY")
    try:
        response = httpx.get(
            url.rstrip("/") + "/api/status",
            headers={"authorization": f"Bearer {key or ''}"},
            timeout=5,
            trust_env=False,
        )
    except httpx.TransportError:
        return {}  # no gateway: only MACs and cluster.power.macs resolve
    if response.status_code != 200:
        return {}
    return {str(n["name"]): n.get("mac") for n in response.json().get("nodes", [])}


def install(app: typer.Typer) -> None:
    app.command("join")(join)
    app.command("plan")(plan_command)
    app.command("wake")(wake)


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    """Nodes with their power state, for `corral status`."""
    table = Table(title="nodes")
    for column in ("node", "role", "power", "cores", "RAM", "tok/s", "replicas"):
        table.add_column(column)
    colours = {"awake": "green", "sleeping": "blue", "waking": "yellow", "lost": "red"}
    for n in nodes:
        power = str(n.get("power", "awake"))
        tps = n.get("tokens_per_second")
        table.add_row(
            str(n["name"]), str(n.get("role", "")), f"[{colours.get(power, 'white')}]{power}[/]",
            str(n.get("cores", "")), f"{int(n.get('memory_total') or 0) / 1024**3:.1f} GiB",
            f"{tps:.1f}" if tps else "-", ", ".join(n.get("replicas", [])),
        )  # fmt: skip
    return table
