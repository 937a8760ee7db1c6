"""The `corral` command line: up, status, models, keys, voice, mcp."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from corral.cluster.cli import install as install_cluster_commands
from corral.config import CorralConfig, default_config, load_config
from corral.engine.pooled import install as install_rpc_worker_command
from corral.errors import ConfigError, CorralError
from corral.evolve.cli import evolve_app
from corral.gateway.auth import KeyStore
from corral.gateway.router import BALANCERS
from corral.gateway.security import ROOT_WARNING, running_as_root
from corral.hardware import NodeProfile, detect_profile
from corral.paths import CorralPaths, default_home
from corral.provision import install as install_provision_command
from corral.secrets import install_redaction
from corral.supervisor.cli import install as install_supervisor_commands

app = typer.Typer(
    help="Corral: one private, offline AI assistant from a pile of old PCs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
voice_app = typer.Typer(help="Speech in and out: serve corral's STT and TTS.", no_args_is_help=True)
app.add_typer(voice_app, name="voice")
install_cluster_commands(app)  # join, plan, wake
app.add_typer(evolve_app, name="evolve")
install_supervisor_commands(app)  # incidents
install_provision_command(app)  # provision (Ansible)
install_rpc_worker_command(app, lambda home: _paths(home).engine_libs)  # rpc-worker (pooled experts)
console = Console()
err_console = Console(stderr=True)

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="data directory (default: $CORRAL_HOME or ~/.local/share/corral)"),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="corral.yaml (default: HOME/corral.yaml, else the embedded default)"),
]


def _paths(home: Path | None) -> CorralPaths:
    return CorralPaths((home or default_home()).expanduser()).ensure()


def _config(paths: CorralPaths, path: Path | None) -> CorralConfig:
    if path is not None:
        return load_config(path)
    if paths.config_file.exists():
        return load_config(paths.config_file)
    return default_config()


def _fail(err: CorralError) -> None:
    err_console.print(f"[bold red]error:[/] {err.message}")
    raise typer.Exit(2)


def _assembly_progress() -> tuple[Progress, Any]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), console=console, transient=True
    )
    task = progress.add_task("assembling bundled model", total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


@app.command()
def up(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="listen address (default: server.host)")] = None,
    port: Annotated[int | None, typer.Option(help="listen port (default: server.port)")] = None,
    balancer: Annotated[
        str, typer.Option(help="replica choice: expected_finish_time, least_busy, round_robin")
    ] = "expected_finish_time",
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    head: Annotated[
        bool, typer.Option("--head", help="also start a Ray cluster head: other machines `corral join` it")
    ] = False,
) -> None:
    """Start the engine and the gateway on this machine (the embedded default needs no config)."""
    import uvicorn

    from corral.gateway.app import create_app
    from corral.runtime import Runtime, engine_lifespan, http_client

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health poll is noise
    install_redaction()  # keys, tokens and passwords never reach a log line
    if running_as_root():
        err_console.print(f"[bold yellow]warning:[/] {ROOT_WARNING}")
    ray_process: Any = None  # the Ray head's process, with --head
    try:
        if balancer not in BALANCERS:
            raise ConfigError(f"--balancer must be one of {', '.join(BALANCERS)}, not {balancer!r}")
        paths = _paths(home)
        cfg = _config(paths, config)
        bind_host = host or cfg.server.host
        bind_port = port or cfg.server.port
        _check_port_free(bind_host, bind_port)  # fail now, not after every replica has loaded
        profile = detect_profile(paths.home)
        progress, update = _assembly_progress()
        with progress:
            runtime = Runtime(cfg, paths, profile, balancer=balancer, progress=update, env=os.environ)
            client = http_client(cfg)
            if head:  # the node agents run the replicas, placed by the cluster's planner
                from corral.cluster.cli import start_cluster_head

                runtime.cluster, ray_process = start_cluster_head(paths, cfg, client)
            gateway, engine = runtime.build(client)
        keys = KeyStore(paths.keys_file)
        if not keys.has_active("admin"):
            _, secret = keys.create("first-admin", "admin")
            console.print("[bold]Created an admin API key (shown once, store it now):[/]")
            console.print(f"  {secret}")
            console.print("  export OPENAI_API_KEY=" + secret)
    except CorralError as err:
        if ray_process is not None:
            ray_process.stop()
        _fail(err)
        return
    console.print(_plan_table(runtime, profile))
    console.print(
        f"Starting {len(engine.replicas)} llama-server replica(s); the API is at "
        f"[bold]http://{bind_host}:{bind_port}/v1[/] (GET /ready says when the models are loaded); "
        f"Mission Control is at [bold]http://{bind_host}:{bind_port}/[/]."
    )
    logging.getLogger().addHandler(gateway.logs)  # the UI's live log panel
    install_redaction()

    def lifespan() -> Any:
        inner = engine_lifespan(engine, client, gateway.agent)
        if runtime.cluster is None:
            return inner
        from corral.cluster.head import cluster_lifespan

        return cluster_lifespan(runtime.cluster, inner, ray_process)

    application = create_app(gateway, lifespan)
    # log_config=None: keep our logging setup (uvicorn's would hide corral's own lines).
    uvicorn.run(
        application,
        host=bind_host,
        port=bind_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def _check_port_free(host: str, port: int, setting: str = "server.port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); stop what uses it or pass "
                f"--port (or set {setting} in corral.yaml)"
            ) from None


def _plan_table(runtime: Any, profile: NodeProfile) -> Table:
    table = Table(
        title=f"{profile.hostname}: {profile.cores_physical} cores, "
        f"{profile.ram_total_bytes / 1024**3:.1f} GiB RAM, "
        f"{' '.join(sorted(profile.cpu_flags)) or 'no SIMD flags'}"
    )
    for column in ("replica", "model", "slots", "context/slot", "threads"):
        table.add_column(column)
    for name, replica in runtime.replicas.items():
        spec = replica.spec
        table.add_row(name, spec.model.id, str(spec.slots), str(spec.context_per_slot), str(spec.threads))
    return table


@app.command()
def status(
    url: Annotated[str, typer.Option(help="gateway URL")] = "http://127.0.0.1:8400",
    key: Annotated[
        str | None,
        typer.Option(envvar="CORRAL_API_KEY", help="API key (env: CORRAL_API_KEY or OPENAI_API_KEY)"),
    ] = None,
) -> None:
    """Show experts, replicas, health, load and tokens/s of a running corral."""
    if not key:
        key = os.environ.get("OPENAI_API_KEY")
    try:
        response = httpx.get(
            url.rstrip("/") + "/api/status",
            timeout=5,
            headers={"authorization": f"Bearer {key or ''}"},
            trust_env=False,
        )
    except httpx.TransportError:
        err_console.print(f"[bold red]error:[/] nothing answers at {url}; start it with `corral up`")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        message = response.json().get("error", {}).get("message", response.text)
        err_console.print(f"[bold red]error:[/] {message}")
        raise typer.Exit(1)
    table = Table(title=f"corral at {url}")
    for column in ("expert", "replica", "status", "load", "tok/s", "served", "fail", "restarts"):
        table.add_column(
            column, justify="right" if column in ("load", "tok/s", "served", "fail", "restarts") else "left"
        )
    for expert in response.json()["experts"]:
        for r in expert["replicas"] or [{"name": "-", "status": "no replicas"}]:
            colour = "green" if r.get("healthy") else "red"
            table.add_row(
                f"{expert['name']} ({expert['kind']})", r["name"], f"[{colour}]{r['status']}[/]",
                f"{r.get('in_flight', 0)}/{r.get('slots', 0)}",
                f"{r.get('tokens_per_second', 0):.1f}" + ("" if r.get("measured") else "*"),
                str(r.get("served", 0)), str(r.get("failures", 0)), str(r.get("restarts", 0)),
            )  # fmt: skip
    console.print(table)
    console.print("* not yet measured on this replica: the speed shown is an estimate")
    nodes = response.json().get("nodes") or []
    if len(nodes) > 1 or any(n.get("power", "awake") != "awake" for n in nodes):
        from corral.cluster.cli import nodes_table

        console.print(nodes_table(nodes))


@app.command()
def models(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    measure: Annotated[bool, typer.Option(help="measure tokens/s on this machine (cached)")] = True,
    extra: Annotated[list[str] | None, typer.Argument(help="more GGUF files to check")] = None,
) -> None:
    """List bundled, local and configured models, and whether each fits this machine."""
    from corral.engine.binaries import locate
    from corral.engine.calibrate import measure_tokens_per_second
    from corral.models.catalog import Catalog, check_fit

    try:
        paths = _paths(home)
        cfg = _config(paths, config)
    except CorralError as err:
        _fail(err)
        return
    profile = detect_profile(paths.home)
    progress, update = _assembly_progress()
    with progress:
        catalog = Catalog(paths.models, update)
        refs = [e.model for e in cfg.experts if e.url is None] + list(extra or [])
        found = catalog.discover(refs)
    if measure:
        bundled = next((m for m in found if not isinstance(m, CorralError) and m.source == "bundled"), None)
        if bundled is not None:
            try:
                with console.status("measuring tokens/s on this machine (once)..."):
                    tps = asyncio.run(
                        measure_tokens_per_second(
                            locate(paths.engine_libs), bundled, profile, paths.logs, paths.profile_cache
                        )
                    )
                profile = profile.with_speed(tps)
            except (CorralError, RuntimeError) as err:
                err_console.print(f"[yellow]could not measure speed:[/] {err}")
    flags = " ".join(sorted(profile.cpu_flags)) or "none"
    speed = (
        f"{profile.tokens_per_second:.1f} tok/s on the bundled model"
        if profile.tokens_per_second
        else "speed not measured"
    )
    console.print(
        f"[bold]{profile.hostname}[/]: {profile.cpu_model}; {profile.cores_physical} cores "
        f"({profile.cores_logical} threads), {profile.ram_available_bytes / 1024**3:.1f} of "
        f"{profile.ram_total_bytes / 1024**3:.1f} GiB free, "
        f"disk {profile.disk_free_bytes / 1024**3:.0f} GiB free; flags: {flags}; {speed}"
    )
    table = Table()
    for column in ("model", "source", "arch", "params", "quant", "ctx", "size", "fits", "why"):
        table.add_column(column)
    context = max((e.context * e.slots for e in cfg.experts), default=2048)
    for item in found:
        if isinstance(item, CorralError):
            table.add_row("-", "error", "", "", "", "", "", "[red]no[/]", item.message)
            continue
        info = item.info
        verdict = check_fit(info, profile, context)
        table.add_row(
            item.id if item.source == "bundled" else Path(item.id).name, item.source,
            info.architecture, info.parameters_human, info.quantization, str(info.context_length),
            f"{info.size_bytes / 1024**2:.0f} MiB", "[green]yes[/]" if verdict.fits else "[red]no[/]",
            "; ".join(verdict.reasons) or f"needs {verdict.need_bytes / 1024**2:.0f} MiB "
            f"with {context} tokens of context",
        )  # fmt: skip
    console.print(table)
    console.print(_voice_models_table(paths, cfg, profile))


def _voice_models_table(paths: CorralPaths, cfg: CorralConfig, profile: NodeProfile) -> Table:
    """The speech models (`corral models`): which one voice.stt picks on this CPU, and their state."""
    from corral.voice.assets import voice_models
    from corral.voice.stt import choose_stt_engine

    try:
        stt_engine: str = choose_stt_engine(cfg.voice.stt.engine, profile.cpu_flags)
        stt_note = ""
    except ConfigError as err:
        stt_engine, stt_note = "", err.message
    table = Table(title="voice models")
    for column in ("model", "kind", "engine", "size", "state", "used", "where"):
        table.add_column(column)
    for model in voice_models(paths.models):
        if model.kind == "stt":
            used = "yes" if model.engine == stt_engine else (stt_note or "no")
        else:
            used = "yes" if model.id == cfg.voice.tts.voice else "no"
        table.add_row(
            model.id, model.kind, model.engine, f"{model.size_bytes / 1024**2:.0f} MiB",
            model.state if model.ok else f"[red]{model.state}[/]", used,
            str(model.where) if model.where else "-",
        )  # fmt: skip
    return table


@voice_app.command("wyoming")
def voice_wyoming(
    home: HomeOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="listen address (default: voice.wyoming.host)")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="listen port (default: voice.wyoming.port)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve corral's speech to text and text to speech over Wyoming (for Home Assistant)."""
    from corral.voice.stt import load_transcriber
    from corral.voice.tts import load_synthesizer
    from corral.voice.wyoming_server import serve_wyoming

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # a line per clip is noise
    try:
        paths = _paths(home)
        cfg = _config(paths, config)
        wyoming = cfg.voice.wyoming.model_copy(
            update={"host": host or cfg.voice.wyoming.host, "port": port or cfg.voice.wyoming.port}
        )
        # Fail now, not after the models have loaded.
        _check_port_free(wyoming.host, wyoming.port, "voice.wyoming.port")
        profile = detect_profile(paths.home)
        with console.status("loading the speech models..."):
            transcriber = load_transcriber(cfg.voice.stt, profile.cpu_flags, models_dir=paths.models)
            synthesizer = load_synthesizer(cfg.voice.tts)

        def listening(bound_host: str, bound_port: int) -> None:
            console.print(
                f"Wyoming server ({transcriber.name} speech to text, {synthesizer.name} voice) at "
                f"[bold]tcp://{bound_host}:{bound_port}[/]: add it in Home Assistant under "
                "Settings > Devices & services > Wyoming Protocol. Ctrl-C stops it."
            )

        asyncio.run(_until_stopped(serve_wyoming(wyoming, transcriber, synthesizer, on_listening=listening)))
    except CorralError as err:
        _fail(err)
    except KeyboardInterrupt:
        pass
    console.print("Wyoming server stopped.")


async def _until_stopped(server: Coroutine[Any, Any, None]) -> None:
    """Run `server` until it ends, Ctrl-C or SIGTERM (a service manager's stop) cancels it."""
    task = asyncio.ensure_future(server)
    with contextlib.suppress(NotImplementedError):  # no signal handlers on some event loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what uses this key")] = "default",
    scope: Annotated[str, typer.Option(help="user (API calls) or admin (also management)")] = "user",
    home: HomeOpt = None,
) -> None:
    """Create a key; it is printed once and stored only as a SHA-256 hash."""
    try:
        record, secret = KeyStore(_paths(home).keys_file).create(name, scope)  # type: ignore[arg-type]
    except CorralError as err:
        _fail(err)
        return
    err_console.print(f"created key {record.id} ({record.scope}) for {record.name}; it is shown only now:")
    print(secret)


@keys_app.command("list")
def keys_list(home: HomeOpt = None) -> None:
    """List keys (ids, names, scopes; never the secrets)."""
    table = Table()
    for column in ("id", "name", "scope", "created", "state"):
        table.add_column(column)
    import datetime as dt

    try:
        records = KeyStore(_paths(home).keys_file).list()
    except CorralError as err:
        _fail(err)
        return
    for r in records:
        created = dt.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M")
        table.add_row(r.id, r.name, r.scope, created, "active" if r.active else "[red]revoked[/]")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the id shown by `corral keys list`")], home: HomeOpt = None
) -> None:
    """Revoke a key; a running gateway refuses it from the next request on."""
    try:
        record = KeyStore(_paths(home).keys_file).revoke(key_id)
    except CorralError as err:
        _fail(err)
        return
    console.print(f"revoked {record.id} ({record.name})")


@app.command()
def mcp(
    url: Annotated[
        str | None, typer.Option(help="the gateway's MCP endpoint (default: from server.host/port)")
    ] = None,
    key_file: Annotated[
        Path | None, typer.Option(help="a file (mode 0600) holding the API key; else $CORRAL_API_KEY")
    ] = None,
    home: HomeOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve corral's MCP tools on stdin/stdout for a desktop client, bridged to a running
    `corral up` (its /mcp endpoint, with an API key)."""
    from corral.mcp_server import MCP_PATH, serve_stdio
    from corral.secrets import secret_from

    # stdout is the MCP channel: every human-readable line goes to stderr.
    logging.basicConfig(level="WARNING", stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    install_redaction()
    try:
        if url is None:
            server = _config(_paths(home), config).server
            host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
            url = f"http://{host}:{server.port}{MCP_PATH}"
        if key_file is None and not os.environ.get("CORRAL_API_KEY"):
            raise ConfigError(
                "no API key: export CORRAL_API_KEY=<key> or pass --key-file FILE (mode 0600); "
                "create a key with `corral keys create --name desktop`"
            )
        key = secret_from(env_var=None if key_file else "CORRAL_API_KEY", file=key_file, what="API key")
        assert key is not None
        asyncio.run(serve_stdio(url, key))
    except CorralError as err:
        _fail(err)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
