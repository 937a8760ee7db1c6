"""The `shell` and `python` tools: one command in a throwaway bubblewrap sandbox per call.

Each call gets a fresh sandbox (`Sandbox.run`):

- no network: every namespace is new (`--unshare-all`), so only an unconfigured loopback exists;
- a read-only system: /usr (and the /bin, /lib* links or directories) bound read-only, a handful
  of /etc files, and made-up /etc/passwd and /etc/group that name no host user; /home, /root,
  /tmp, /var and the rest of the host are simply not there;
- a writable scratch: /work (the working directory) and /tmp are size-limited tmpfs mounts that
  vanish with the call;
- a new PID namespace with its own /proc, a minimal /dev, `--new-session`, `--die-with-parent`,
  and no nested user namespaces (`--disable-userns`);
- limits: `prlimit` is the first program inside and sets CPU seconds, address space and process
  count for the command and all its children. Inside the sandbox's user namespace the process
  count covers only the sandbox's own processes, so concurrent calls and the host's other
  processes of the same user never eat each other's budget. The kernel does not apply
  RLIMIT_NPROC to root, so when corral runs as root the sandbox first drops to nobody
  (uid/gid 65534) with `setpriv`;
- a wall-clock limit: bwrap runs in its own process group, which is killed on timeout (and on
  cancellation); `--die-with-parent` and the PID namespace then take every sandboxed process down;
- output capped at `max_output_bytes` (stdout and stderr together); the rest is read and thrown
  away so the command can finish and report its exit code, up to `DRAIN_LIMIT_BYTES`, after
  which it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from corral.agent.settings import SandboxConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec

NOBODY = 65534
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024  # output past this stops the command
MAX_SOURCE_CHARS = 30_000  # one argv string may hold 128 KiB; 4 UTF-8 bytes per char at worst
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/alternatives",  # Debian's links for awk, editor and friends
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    "/etc/os-release",
)
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
INSTALL_BWRAP = "install bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap) and try again"


@dataclass
class SandboxRun:
    """What one sandboxed command did."""

    exit_code: int
    stdout: str
    stderr: str
    elapsed_s: float
    timed_out: bool = False
    output_cut: bool = False
    drain_stopped: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def signal_name(self) -> str | None:
        """The signal that ended the command, read from the shell convention 128 + signal."""
        if 128 < self.exit_code < 128 + 65:
            with contextlib.suppress(ValueError):
                return signal.Signals(self.exit_code - 128).name
        return None

    def data(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "timed_out": self.timed_out,
            "output_cut": self.output_cut,
            "signal": self.signal_name,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class _Output:
    """Both streams of one run: each read up to the cap, then trimmed to the cap together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.parts: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.over_drain_limit = asyncio.Event()

    async def read(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        part = self.parts[name]
        while chunk := await stream.read(65536):
            self.seen += len(chunk)
            if len(part) < self.limit:
                part += chunk[: self.limit - len(part)]
            if self.seen > DRAIN_LIMIT_BYTES:  # keep reading to EOF: the caller stops the command
                self.over_drain_limit.set()

    def texts(self) -> tuple[str, str, bool]:
        """stdout, stderr, and whether anything was cut; stderr keeps at least a quarter of the
        cap when both are long, since the error at its end is usually what matters."""
        out, err = self.parts["stdout"], self.parts["stderr"]
        err_keep = min(len(err), max(self.limit // 4, self.limit - len(out)))
        out_keep = min(len(out), self.limit - err_keep)
        cut = self.seen > out_keep + err_keep
        return _decode(out[:out_keep]), _decode(err[:err_keep]), cut


def _decode(data: bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _find(program: str, fix: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/bin:/bin:/usr/sbin:/sbin")
    if found is None:
        raise ToolError(f"the sandbox needs `{program}`, which is not installed; {fix}")
    return os.path.realpath(found)


def _identity_files(uid: int, gid: int) -> tuple[bytes, bytes]:
    """/etc/passwd and /etc/group for inside: root, nobody and the sandbox user, no host names."""
    passwd = ["root:x:0:0:root:/root:/usr/sbin/nologin", f"nobody:x:{NOBODY}:{NOBODY}:nobody:/work:/bin/sh"]
    group = ["root:x:0:", f"nogroup:x:{NOBODY}:"]
    if uid not in (0, NOBODY):
        passwd.append(f"sandbox:x:{uid}:{gid}:sandbox:/work:/bin/sh")
    if gid not in (0, NOBODY):
        group.append(f"sandbox:x:{gid}:")
    return ("\n".join(passwd) + "\n").encode(), ("\n".join(group) + "\n").encode()


class Sandbox:
    """Runs one argv per call inside a fresh bubblewrap sandbox with `SandboxConfig`'s limits."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()

    def limits(self) -> list[str]:
        c = self.config
        memory = c.memory_mb * 1024 * 1024
        # soft CPU limit sends SIGXCPU (which names the cause); the hard one a second later kills
        return [
            f"--cpu={c.cpu_s}:{c.cpu_s + 1}",
            f"--as={memory}:{memory}",
            f"--nproc={c.max_processes}:{c.max_processes}",
            "--core=0:0",
        ]

    def bwrap_args(self, passwd_fd: int, group_fd: int) -> list[str]:
        scratch = str(self.config.scratch_mb * 1024 * 1024)
        args = ["--ro-bind", "/usr", "/usr"]
        for path in SYSTEM_DIRS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in ETC_FILES:
            args += ["--ro-bind-try", path, path]
        args += ["--ro-bind-data", str(passwd_fd), "/etc/passwd"]
        args += ["--ro-bind-data", str(group_fd), "/etc/group"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", scratch, "--tmpfs", "/tmp", "--size", scratch, "--tmpfs", "/work"]
        args += ["--chdir", "/work", "--hostname", "sandbox"]
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--die-with-parent", "--new-session", "--clearenv"]
        env = {"PATH": SANDBOX_PATH, "HOME": "/work", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "TERM": "dumb"}
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args

    def argv(self, command: Sequence[str], passwd_fd: int, group_fd: int) -> list[str]:
        bwrap = _find("bwrap", INSTALL_BWRAP)
        prlimit = _find("prlimit", "install util-linux (Debian/Ubuntu: sudo apt-get install util-linux)")
        drop: list[str] = []
        if os.geteuid() == 0:  # RLIMIT_NPROC does not bind root: run the sandbox as nobody
            setpriv = _find("setpriv", "install util-linux (Debian/Ubuntu: sudo apt-get install util-linux)")
            drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
        inside = [prlimit, *self.limits(), "--", *command]
        return [*drop, bwrap, *self.bwrap_args(passwd_fd, group_fd), "--", *inside]

    async def run(self, command: Sequence[str]) -> SandboxRun:
        started = time.perf_counter()
        uid, gid = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        pipes = []
        for content in _identity_files(uid, gid):  # a few hundred bytes: fits a pipe's buffer
            read_fd, write_fd = os.pipe()
            os.write(write_fd, content)
            os.close(write_fd)
            pipes.append(read_fd)
        try:
            argv = self.argv(command, pipes[0], pipes[1])
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own process group, killed as one on timeout
                pass_fds=pipes,
                env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"},
            )
        finally:
            for fd in pipes:
                os.close(fd)
        output = _Output(self.config.max_output_bytes)
        readers: asyncio.Future[Any] = asyncio.gather(
            output.read(process.stdout, "stdout"), output.read(process.stderr, "stderr")
        )
        drained: asyncio.Future[Any] = asyncio.ensure_future(output.over_drain_limit.wait())
        timed_out = False
        try:
            async with asyncio.timeout(self.config.wall_s):
                await asyncio.wait({readers, drained}, return_when=asyncio.FIRST_COMPLETED)
                if not output.over_drain_limit.is_set():
                    await process.wait()
        except TimeoutError:
            timed_out = True
        finally:
            drained.cancel()
            await _stop(process)
            with contextlib.suppress(TimeoutError):  # the namespace is gone, so the pipes are closed
                await asyncio.wait_for(readers, 5)
        code = process.returncode if process.returncode is not None else -1
        if code < 0:  # bwrap itself was killed by a signal: report it the shell's way
            code = 128 - code
        stdout, stderr, cut = output.texts()
        return SandboxRun(
            exit_code=code,
            stdout=stdout,
            stderr=stderr,
            elapsed_s=time.perf_counter() - started,
            timed_out=timed_out,
            output_cut=cut,
            drain_stopped=output.over_drain_limit.is_set(),
        )


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Take the whole sandbox down and wait until it is gone.

    Killing the sandbox's PID 1 (bwrap's child) makes the kernel kill every process in its PID
    namespace before PID 1 is reaped; the outer bwrap then exits. Its process group is killed as
    well, for the case of a sandbox that never got as far as PID 1."""
    if process.returncode is not None:
        return  # bwrap exits only after PID 1, which exits only once its namespace is empty
    try:
        inits = psutil.Process(process.pid).children()
    except psutil.NoSuchProcess:
        inits = []
    for init in inits:
        with contextlib.suppress(psutil.NoSuchProcess):
            init.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), 5)
    for _ in range(500):  # PID 1 is gone (or a zombie) only once its namespace is empty
        if not any(_alive(p) for p in inits):
            break
        await asyncio.sleep(0.01)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _check_started(run: SandboxRun) -> None:
    """bwrap's own failures (no user namespaces, a bad mount) come before the command runs."""
    if run.exit_code == 1 and not run.stdout and run.stderr.startswith("bwrap:"):
        raise ToolError(
            f"the sandbox could not start ({run.stderr.strip()}); bubblewrap needs unprivileged user "
            "namespaces: enable them (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu 24.04+ "
            "kernel.apparmor_restrict_unprivileged_userns=0) or " + INSTALL_BWRAP
        )


def render(run: SandboxRun, config: SandboxConfig) -> str:
    """The readable result: exit status, what stopped it, then stdout and stderr."""
    lines = [f"exit code: {run.exit_code}"]
    sig = run.signal_name
    if run.timed_out:
        lines.append(f"[stopped: the wall-clock limit of {config.wall_s:g} s was reached]")
    elif sig == "SIGXCPU":
        lines.append(f"[killed by SIGXCPU: the CPU limit of {config.cpu_s} s was reached]")
    elif sig is not None:
        lines.append(f"[ended by {sig}]")
    if run.drain_stopped:
        lines.append(f"[stopped: it printed more than {DRAIN_LIMIT_BYTES} bytes]")
    if run.output_cut:
        lines.append(f"[output cut at {config.max_output_bytes} bytes of stdout and stderr together]")
    lines += ["stdout:", run.stdout.rstrip("\n") or "(empty)"]
    if run.stderr:
        lines += ["stderr:", run.stderr.rstrip("\n")]
    return "\n".join(lines)


def _result(run: SandboxRun, config: SandboxConfig) -> ToolResult:
    _check_started(run)
    ok = run.exit_code == 0 and not run.timed_out
    return ToolResult(ok, render(run, config), data=run.data())


def _limits_text(config: SandboxConfig) -> str:
    return (
        f"No network; only /work and /tmp are writable ({config.scratch_mb} MB each, emptied after "
        f"every call); limits: {config.wall_s:g} s wall clock, {config.cpu_s} s CPU, "
        f"{config.memory_mb} MB memory, {config.max_processes} processes."
    )


def _shell() -> str:
    return next((s for s in ("/usr/bin/bash", "/bin/bash") if os.path.exists(s)), "/bin/sh")


class ShellTool:
    """`shell`: a bash (or sh) command line in the sandbox."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.sandbox = Sandbox(self.config)
        self.spec = ToolSpec(
            name="shell",
            description="Run a shell command in an isolated, throwaway Linux sandbox and return its "
            "exit code and output. " + _limits_text(self.config),
            parameters={
                "type": "object",
                "properties": {
                    "command": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_SOURCE_CHARS,
                        "description": "the command line, run by bash -c in /work",
                    }
                },
                "required": ["command"],
                "additionalProperties": False,
            },
            risk="medium",
            timeout_s=self.config.wall_s + 10,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        return _result(await self.sandbox.run([_shell(), "-c", str(args["command"])]), self.config)


class PythonTool:
    """`python`: a Python program run by the system's /usr/bin/python3 in the sandbox.

    The system interpreter, not corral's own: the sandbox shows only /usr, and a virtual
    environment's interpreter usually lives elsewhere (~/.pyenv, /opt, the project folder).
    It runs with `-I` (isolated: no user site-packages, no PYTHON* variables, no script directory
    on sys.path) and `-u` (unbuffered, so output printed before a crash or a kill is kept); the
    code travels as the `-c` argument, which needs no file and no pipe."""

    PYTHON = "/usr/bin/python3"

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.sandbox = Sandbox(self.config)
        self.spec = ToolSpec(
            name="python",
            description="Run a Python 3 program (standard library only) in an isolated, throwaway "
            "Linux sandbox; print what you want to see. " + _limits_text(self.config),
            parameters={
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_SOURCE_CHARS,
                        "description": "the program's source; its working directory is /work",
                    }
                },
                "required": ["code"],
                "additionalProperties": False,
            },
            risk="medium",
            timeout_s=self.config.wall_s + 10,
        )

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        run = await self.sandbox.run(self.command(str(args["code"])))
        return _result(run, self.config)

    def command(self, code: str) -> list[str]:
        if not os.path.exists(self.PYTHON):
            raise ToolError(
                f"the python tool needs {self.PYTHON}, which is missing; install python3 "
                "(Debian/Ubuntu: sudo apt-get install python3-minimal)"
            )
        return [self.PYTHON, "-I", "-u", "-c", code]
