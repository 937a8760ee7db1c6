"""The `git` tool: read-only git commands in allowlisted repositories, and commits where allowed.

Every operation runs a fixed argv (no shell) built from a small per-operation set of flags;
anything else that starts with '-' is refused, so options that run commands or write files
(`--output`, `-c`, `--exec`, `--upload-pack`, `--ext-diff`) cannot be smuggled in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.agent.settings import GitConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolResult, ToolSpec
from corral.agent.tools.output import read_capped

MAX_OUTPUT_BYTES = 64 * 1024
TIMEOUT_S = 30.0

_REV_FLAGS = frozenset(
    {"--oneline", "--stat", "--shortstat", "--name-only", "--name-status", "--decorate", "--no-decorate"}
)


@dataclass(frozen=True)
class _Operation:
    argv: tuple[str, ...]  # after `git`
    flags: frozenset[str] = frozenset()
    valued: dict[str, re.Pattern[str]] = field(default_factory=dict)  # --name=value flags
    numeric_short: bool = False  # `-5` means `--max-count=5`
    positional: bool = True


_NUMBER = re.compile(r"\d{1,6}")
_TEXT = re.compile(r"[^\x00-\x1f]{1,200}")
_DIFF_NOEXEC = ("--no-ext-diff", "--no-textconv", "--no-color")

OPERATIONS: dict[str, _Operation] = {
    "status": _Operation(
        ("status",),
        frozenset({"--short", "-s", "--branch", "-b", "--porcelain", "--ignored", "--long"}),
        {"--untracked-files": re.compile(r"no|normal|all")},
    ),
    "log": _Operation(
        ("log", "--no-color", "--no-ext-diff", "--no-textconv"),
        _REV_FLAGS | {"--graph", "--all", "--no-merges", "--merges", "--reverse", "--first-parent", "-p"},
        {
            "--max-count": _NUMBER,
            "--skip": _NUMBER,
            "--since": _TEXT,
            "--until": _TEXT,
            "--author": _TEXT,
            "--grep": _TEXT,
        },
        numeric_short=True,
    ),
    "diff": _Operation(
        ("diff", *_DIFF_NOEXEC),
        frozenset({"--stat", "--shortstat", "--numstat", "--name-only", "--name-status", "--cached"})
        | {"--staged", "-w", "--ignore-all-space", "--check"},
        {"--unified": _NUMBER},
    ),
    "show": _Operation(
        ("show", *_DIFF_NOEXEC),
        _REV_FLAGS | {"--no-patch", "-s"},
        {"--unified": _NUMBER},
    ),
    "branch": _Operation(
        ("branch", "--list", "--no-color"),
        frozenset({"-a", "--all", "-r", "--remotes", "-v", "-vv", "--verbose", "--merged", "--no-merged"}),
        {"--contains": _TEXT, "--sort": re.compile(r"-?[a-z:]{1,40}")},
    ),
    "ls_files": _Operation(
        ("ls-files",),
        frozenset({"--cached", "-c", "--modified", "-m", "--others", "-o", "--deleted", "-d"})
        | {"--exclude-standard", "--stage", "-s"},
    ),
    "commit": _Operation(("commit", "--file=-"), frozenset({"-a", "--all"})),
}

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "repo": {"type": "string", "description": "path of a configured repository"},
        "operation": {"type": "string", "enum": list(OPERATIONS)},
        "args": {
            "type": "array",
            "items": {"type": "string"},
            "description": "flags from a small safe set per operation, revisions, then '--' and paths",
        },
        "message": {"type": "string", "description": "the commit message (commit only)"},
    },
    "required": ["repo", "operation"],
    "additionalProperties": False,
}

# What git must not pick up from the environment of the corral process.
_DROPPED_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG", "GIT_EXEC_PATH", "GIT_SSH")


def _check_value(token: str) -> None:
    if not token or any(ch in token for ch in "\x00\n\r"):
        raise ToolError(f"git argument {token!r} is empty or has control characters; remove it")
    if token.startswith("-"):
        raise ToolError(f"git argument {token!r} looks like an option where a revision or path belongs")
    if "::" in token.split("/", 1)[0]:
        raise ToolError(f"git argument {token!r} looks like a remote-helper URL; only local data can be read")
    if token.startswith(("/", "~")) or ".." in token.replace(":", "/").split("/"):
        raise ToolError(f"git argument {token!r} points outside the repository; use paths inside it")


def build_argv(operation: str, args: list[str], message: str | None) -> tuple[list[str], bytes | None]:
    """The argv after `git` and the stdin to send; ToolError on anything outside the safe set."""
    op = OPERATIONS[operation]
    flags: list[str] = []
    positional: list[str] = []
    paths: list[str] | None = None
    for token in args:
        if paths is not None:
            _check_value(token)
            paths.append(token)
        elif token == "--":
            paths = []
        elif token.startswith("-"):
            name, eq, value = token.partition("=")
            if (not eq and token in op.flags) or (
                eq and name in op.valued and op.valued[name].fullmatch(value)
            ):
                flags.append(token)
            elif op.numeric_short and token[1:].isdigit() and len(token) <= 7:
                flags.append(f"--max-count={token[1:]}")
            else:
                allowed = sorted(op.flags | {f"{n}=..." for n in op.valued})
                raise ToolError(
                    f"git {operation} does not accept {token!r} here; allowed flags are "
                    f"{', '.join(allowed) or 'none'}, then revisions or '--' and paths"
                )
        else:
            _check_value(token)
            positional.append(token)
    stdin: bytes | None = None
    if operation == "commit":
        if not message or not message.strip():
            raise ToolError("git commit needs a non-empty 'message'")
        if positional:  # plain names to commit are paths, never revisions
            paths = [*positional, *(paths or [])]
            positional = []
        stdin = message.encode()
    elif message is not None:
        raise ToolError(f"'message' is only used by commit, not by {operation}; leave it out")
    argv = [*op.argv, *flags, *positional]
    if paths:
        argv += ["--", *paths]
    return argv, stdin


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        PAGER="cat",
        GIT_EDITOR="true",
        GIT_OPTIONAL_LOCKS="0",
        LC_ALL="C",
    )
    return env


async def run_git(
    repo: Path, argv: list[str], stdin: bytes | None, timeout_s: float = TIMEOUT_S
) -> tuple[int, str, str, bool]:
    """Run `git --no-pager <argv>` in `repo`: (exit code, stdout, stderr, stdout truncated)."""
    process = await asyncio.create_subprocess_exec(
        "git",
        "--no-pager",
        *argv,
        cwd=repo,
        env=_git_env(),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(timeout_s):
            if stdin is not None:
                assert process.stdin is not None
                process.stdin.write(stdin)
                await process.stdin.drain()
                process.stdin.close()
            (out, truncated), (err, _) = await asyncio.gather(
                read_capped(process.stdout, MAX_OUTPUT_BYTES), read_capped(process.stderr, 8192)
            )
            code = await process.wait()
    except TimeoutError:
        raise ToolError(f"git {argv[0]} took longer than {timeout_s:g} s and was stopped") from None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    return code, out.decode(errors="replace"), err.decode(errors="replace"), truncated


class GitTool:
    """git status/log/diff/show/branch/ls_files in `repos`, and commit in `commit_repos`."""

    def __init__(self, config: GitConfig) -> None:
        self.config = config
        self.spec = ToolSpec(
            name="git",
            description=(
                "Run a read-only git command (status, log, diff, show, branch, ls_files) in a configured "
                "repository, or commit (message required; args are paths to stage) where commits are allowed."
            ),
            parameters=_SCHEMA,
            risk="medium",
            timeout_s=TIMEOUT_S + 5,
        )

    def _resolve(self, repo: str, operation: str) -> Path:
        commit_repos = [p.expanduser().resolve() for p in self.config.commit_repos]
        readable = [p.expanduser().resolve() for p in self.config.repos] + commit_repos
        allowed = commit_repos if operation == "commit" else readable
        key = "agent.tools.git.commit_repos" if operation == "commit" else "agent.tools.git.repos"
        try:
            path = Path(repo).expanduser().resolve(strict=True)
        except (OSError, RuntimeError):
            path = None
        if path is None or path not in allowed:
            by_name = [p for p in allowed if p.name == repo]
            if len(by_name) != 1:
                names = ", ".join(str(p) for p in allowed) or "none"
                what = "commit to" if operation == "commit" else "read"
                raise ToolError(
                    f"the git tool may not {what} {repo!r}; it may {what}: {names} (set in {key})"
                )
            path = by_name[0]
        if not path.is_dir():
            raise ToolError(f"the configured repository {path} does not exist; fix {key}")
        return path

    async def call(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        operation = args["operation"]
        if operation not in OPERATIONS:
            raise ToolError(f"unknown git operation {operation!r}; use one of {', '.join(OPERATIONS)}")
        repo = self._resolve(str(args["repo"]), operation)
        argv, stdin = build_argv(operation, list(args.get("args") or []), args.get("message"))
        if operation == "commit" and "--" in argv:  # stage the named paths (new files too) first
            paths = argv[argv.index("--") + 1 :]
            code, _, err, _ = await run_git(repo, ["add", "--all", "--", *paths], None)
            if code != 0:
                raise ToolError(f"git add failed before the commit (exit {code}): {err.strip()}")
        code, out, err, truncated = await run_git(repo, argv, stdin)
        content = out
        if truncated:
            content += f"\n[output cut at {MAX_OUTPUT_BYTES} bytes; narrow the command with paths or -n]"
        if code != 0:
            content = f"git {operation} failed with exit code {code}:\n{err.strip()}\n{content}".rstrip()
        elif not content.strip():
            content = err.strip() or f"git {operation}: no output"
        data = {"repo": str(repo), "argv": ["git", *argv], "exit_code": code, "truncated": truncated}
        return ToolResult(code == 0, content, data)
