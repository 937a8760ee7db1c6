"""The shell and python tools under real bubblewrap: they work, and escape attempts stay inside."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from corral.agent.settings import SandboxConfig
from corral.agent.tools import sandbox
from corral.agent.tools.base import ToolContext, ToolError, ToolRegistry, ToolResult
from corral.agent.tools.sandbox import PythonTool, ShellTool

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (sudo apt-get install bubblewrap)"
)

CTX = ToolContext()
HERE = Path(__file__).resolve()
SYSTEM_FILE = Path("/usr/bin/env").resolve()


async def shell(command: str, **limits: float) -> ToolResult:
    return await ShellTool(SandboxConfig(**limits)).call({"command": command}, CTX)  # type: ignore[arg-type]


async def python(code: str, **limits: float) -> ToolResult:
    return await PythonTool(SandboxConfig(**limits)).call({"code": code}, CTX)  # type: ignore[arg-type]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def exists(path: Path) -> bool:
    return path.exists()


def sandbox_processes(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes whose command line carries marker, or run as nobody when we are
    root (the sandbox drops to nobody then)."""
    found = []
    for process in psutil.process_iter(["cmdline", "uids", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        ours = any(marker in part for part in info["cmdline"] or [])
        nobody = os.geteuid() == 0 and info["uids"] is not None and info["uids"].real == sandbox.NOBODY
        if ours or nobody:
            found.append(process)
    return found


def wait_gone(marker: str, before: set[int], timeout: float = 0.5) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in sandbox_processes(marker) if p.pid not in before]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def tcp_server() -> Iterator[tuple[int, list[object]]]:
    """A real listening TCP server on the host's 127.0.0.1 that records every connection."""
    accepted: list[object] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


async def test_echo_and_exit_codes() -> None:
    hello = await shell("echo hello; echo oops >&2")
    assert hello.ok
    assert hello.data["exit_code"] == 0
    assert hello.data["stdout"] == "hello\n" and hello.data["stderr"] == "oops\n"
    assert "exit code: 0" in hello.content and "hello" in hello.content and "oops" in hello.content
    failed = await shell("exit 3")
    assert not failed.ok and failed.data["exit_code"] == 3 and "exit code: 3" in failed.content
    py = await python("import sys, os\nprint(os.getcwd(), sys.version_info.major)\nsys.exit(5)")
    assert py.data["stdout"] == "/work 3\n" and py.data["exit_code"] == 5 and not py.ok
    error = await python("raise ValueError('nope')")
    assert error.data["exit_code"] == 1 and "ValueError: nope" in error.data["stderr"]


async def test_identity_is_unprivileged_and_scratch_is_fresh_each_call() -> None:
    who = await shell("id -u; cat /proc/self/status | grep CapEff; hostname; echo $HOME; pwd")
    uid, caps, host, home, cwd = who.data["stdout"].split("\n")[:5]
    assert uid == str(sandbox.NOBODY if os.geteuid() == 0 else os.getuid())
    assert caps.split()[-1] == "0000000000000000"
    assert (host, home, cwd) == ("sandbox", "/work", "/work")
    wrote = await shell("echo data > /work/file && echo data > /tmp/file && cat /work/file")
    assert wrote.ok and wrote.data["stdout"] == "data\n"
    later = await shell("ls -A /work /tmp")
    assert "file" not in later.data["stdout"]


async def test_host_files_are_invisible(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    here = HERE
    result = await shell(
        f"cat {secret}; cat {here}; ls /root; ls /home; cat /etc/shadow; "
        f"cat /proc/{os.getpid()}/environ; grep -c . /etc/passwd"
    )
    out = result.data["stdout"] + result.data["stderr"]
    assert "TOP-SECRET-VALUE" not in out and "pytest" not in result.data["stdout"]
    for path in (secret, here, "/root", "/home", "/etc/shadow", f"/proc/{os.getpid()}/environ"):
        assert f"{path}': No such file or directory" in out or f"{path}: No such file or directory" in out
    assert result.data["stdout"].strip() in {"2", "3"}  # a made-up passwd: root, nobody (and us)
    processes = await shell("ls /proc | grep -c '^[0-9]'")
    assert int(processes.data["stdout"]) < 10  # its own PID namespace: only the sandbox's processes


async def test_network_egress_fails(tcp_server: tuple[int, list[object]]) -> None:
    port, accepted = tcp_server
    code = f"""
import socket
for host, port in (("1.1.1.1", 53), ("127.0.0.1", {port})):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        print(host, "CONNECTED")
    except OSError as exc:
        print(host, "failed", exc.errno)
try:
    socket.getaddrinfo("example.com", 80)
    print("dns RESOLVED")
except OSError:
    print("dns failed")
"""
    result = await python(code)
    out = result.data["stdout"]
    assert "CONNECTED" not in out and "RESOLVED" not in out
    assert "1.1.1.1 failed" in out and "127.0.0.1 failed" in out and "dns failed" in out
    assert accepted == []
    with socket.create_connection(("127.0.0.1", port), timeout=3):  # the server itself was reachable
        pass


async def test_writes_outside_the_work_dir_fail_and_change_nothing(tmp_path: Path) -> None:
    target = SYSTEM_FILE
    before = digest(target)
    result = await shell(
        f"echo pwned > {target}; echo pwned > /etc/ld.so.cache; touch /usr/new-file; "
        f"mkdir -p {tmp_path}/x; echo still-running"
    )
    err = result.data["stderr"]
    assert err.count("Read-only file system") >= 3
    assert digest(target) == before
    assert not exists(Path("/usr/new-file"))
    assert not exists(tmp_path / "x")  # created, if at all, on the sandbox's own tmpfs
    assert "still-running" in result.data["stdout"]


@pytest.mark.slow
async def test_fork_bomb_is_contained_and_leaves_nothing_behind() -> None:
    marker = f"bomb{uuid.uuid4().hex[:10]}"
    before = {p.pid for p in sandbox_processes(marker)}
    tool = ShellTool(SandboxConfig(wall_s=4, max_processes=32))
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            count = await asyncio.to_thread(
                lambda: len([p for p in sandbox_processes(marker) if p.pid not in before])
            )
            peak = max(peak, count)
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    result = await tool.call({"command": f"{marker}(){{ {marker}|{marker}& }}; {marker}; sleep 60"}, CTX)
    done.set()
    await sampler
    assert result.data["timed_out"] and "wall-clock limit of 4 s" in result.content
    assert 0 < peak <= 32 + 3  # the process limit held (plus bwrap's own two)
    assert wait_gone(marker, before) == []
    host = await asyncio.create_subprocess_exec("true")
    assert await host.wait() == 0  # the host can still fork
    after = await shell("echo alive")
    assert after.ok and after.data["stdout"] == "alive\n"


@pytest.mark.slow
async def test_cpu_burn_hits_the_cpu_limit() -> None:
    result = await python("while True:\n    pass", cpu_s=1, wall_s=20)
    assert result.data["signal"] == "SIGXCPU" and not result.data["timed_out"]
    assert "CPU limit of 1 s" in result.content and not result.ok


async def test_memory_hog_hits_the_memory_limit() -> None:
    result = await python("block = bytearray(512 * 1024 * 1024)\nprint('allocated')", memory_mb=128)
    assert "allocated" not in result.data["stdout"]
    assert "MemoryError" in result.data["stderr"] and result.data["exit_code"] == 1
    small = await python("block = bytearray(32 * 1024 * 1024)\nprint('allocated')", memory_mb=128)
    assert small.ok and small.data["stdout"] == "allocated\n"


async def test_huge_output_is_cut() -> None:
    result = await python(
        "import sys\nsys.stdout.write('x' * 5_000_000)\nsys.stderr.write('the end')", max_output_bytes=4096
    )
    assert result.ok  # the command finished: the rest of its output was read and dropped
    assert result.data["output_cut"]
    assert len(result.data["stdout"]) + len(result.data["stderr"]) == 4096
    assert result.data["stderr"] == "the end"  # stderr keeps its share of the cap
    assert "[output cut at 4096 bytes" in result.content
    flood = await shell("head -c 100M /dev/zero", max_output_bytes=4096)
    assert not flood.ok and f"more than {sandbox.DRAIN_LIMIT_BYTES} bytes" in flood.content


async def test_wall_clock_limit_stops_a_sleeping_command() -> None:
    marker = f"sleep{uuid.uuid4().hex[:8]}"
    result = await shell(f"sleep 30 # {marker}", wall_s=1)
    assert result.data["timed_out"] and "wall-clock limit of 1 s" in result.content
    assert wait_gone(marker, set()) == []


async def test_registry_timeout_cancellation_also_takes_the_sandbox_down() -> None:
    marker = f"cancel{uuid.uuid4().hex[:8]}"
    tool = ShellTool(SandboxConfig(wall_s=30))
    tool.spec = dataclasses.replace(tool.spec, timeout_s=0.5)
    result = await ToolRegistry([tool]).invoke("shell", {"command": f"sleep 30 # {marker}"}, CTX)
    assert not result.ok and "did not finish within 0.5 s" in result.content
    assert wait_gone(marker, set()) == []


async def test_missing_bwrap_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        sandbox.shutil, "which", lambda name, **kw: None if name == "bwrap" else real_which(name, **kw)
    )
    with pytest.raises(ToolError, match=r"apt-get install bubblewrap"):
        await ShellTool().call({"command": "true"}, CTX)
