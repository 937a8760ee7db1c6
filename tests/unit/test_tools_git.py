"""The git tool against a real repository: allowlists, read operations, commits, injection attempts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from corral.agent.settings import GitConfig
from corral.agent.tools.base import ToolContext, ToolError, ToolRegistry
from corral.agent.tools.git import GitTool, build_argv

CTX = ToolContext()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "user.name", "Test User")
    _git(path, "config", "user.email", "test@example.invalid")
    (path / "README.md").write_text("hello\n")
    _git(path, "add", "README.md")
    _git(path, "commit", "-q", "-m", "first commit")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _make_repo(tmp_path / "repo")


@pytest.fixture
def writable(tmp_path: Path) -> Path:
    return _make_repo(tmp_path / "writable")


@pytest.fixture
def tool(repo: Path, writable: Path) -> GitTool:
    return GitTool(GitConfig(repos=[repo], commit_repos=[writable]))


async def test_status_log_diff_show(tool: GitTool, repo: Path) -> None:
    (repo / "README.md").write_text("hello\nworld\n")
    (repo / "new.txt").write_text("new\n")

    status = await tool.call({"repo": str(repo), "operation": "status", "args": ["--short"]}, CTX)
    assert status.ok, status.content
    assert " M README.md" in status.content
    assert "?? new.txt" in status.content

    log = await tool.call({"repo": str(repo), "operation": "log", "args": ["--oneline", "-1"]}, CTX)
    assert log.ok and "first commit" in log.content
    assert log.data["argv"][:3] == ["git", "log", "--no-color"]

    diff = await tool.call({"repo": str(repo), "operation": "diff", "args": ["--", "README.md"]}, CTX)
    assert diff.ok and "+world" in diff.content

    show = await tool.call({"repo": str(repo), "operation": "show", "args": ["--stat", "HEAD"]}, CTX)
    assert show.ok and "first commit" in show.content and "README.md" in show.content

    files = await tool.call({"repo": str(repo), "operation": "ls_files"}, CTX)
    assert files.ok and files.content.strip() == "README.md"

    branch = await tool.call({"repo": str(repo), "operation": "branch", "args": ["-v"]}, CTX)
    assert branch.ok and "main" in branch.content


async def test_repo_by_name_and_git_errors_are_results(tool: GitTool) -> None:
    result = await tool.call({"repo": "repo", "operation": "show", "args": ["no-such-rev"]}, CTX)
    assert not result.ok
    assert "exit code 128" in result.content and "no-such-rev" in result.content


async def test_repo_outside_allowlist_refused(tool: GitTool, tmp_path: Path) -> None:
    other = _make_repo(tmp_path / "other")
    with pytest.raises(ToolError, match=r"may not read .*agent\.tools\.git\.repos"):
        await tool.call({"repo": str(other), "operation": "status"}, CTX)
    # a path into the allowed repo through '..' resolves to the real path first
    sneaky = tmp_path / "repo" / ".." / "other"
    with pytest.raises(ToolError, match="may not read"):
        await tool.call({"repo": str(sneaky), "operation": "log"}, CTX)


async def test_commit_refused_in_read_only_repo(tool: GitTool, repo: Path) -> None:
    (repo / "README.md").write_text("changed\n")
    with pytest.raises(ToolError, match=r"may not commit to .*agent\.tools\.git\.commit_repos"):
        await tool.call({"repo": str(repo), "operation": "commit", "message": "x", "args": ["-a"]}, CTX)
    assert _git(repo, "rev-list", "--count", "HEAD").strip() == "1"


async def test_commit_in_commit_repo(tool: GitTool, writable: Path) -> None:
    (writable / "notes.txt").write_text("a new file\n")
    result = await tool.call(
        {
            "repo": str(writable),
            "operation": "commit",
            "message": "add notes\n\nby the agent",
            "args": ["notes.txt"],
        },
        CTX,
    )
    assert result.ok, result.content
    assert _git(writable, "log", "-1", "--format=%B").strip() == "add notes\n\nby the agent"
    assert _git(writable, "show", "--name-only", "--format=", "HEAD").strip() == "notes.txt"

    (writable / "README.md").write_text("edited\n")
    result = await tool.call(
        {"repo": str(writable), "operation": "commit", "message": "-edit", "args": ["-a"]}, CTX
    )
    assert result.ok, result.content
    assert _git(writable, "log", "-1", "--format=%s").strip() == "-edit"
    # reads work in commit repos too
    log = await tool.call({"repo": str(writable), "operation": "log", "args": ["--oneline"]}, CTX)
    assert log.ok and log.content.count("\n") == 3


async def test_commit_needs_a_message(tool: GitTool, writable: Path) -> None:
    with pytest.raises(ToolError, match="non-empty 'message'"):
        await tool.call({"repo": str(writable), "operation": "commit", "args": ["-a"]}, CTX)


@pytest.mark.parametrize(
    ("operation", "args"),
    [
        ("diff", ["--output=/tmp/x"]),
        ("log", ["-c", "core.pager=touch /tmp/pwned"]),
        ("log", ["-ccore.pager=touch /tmp/pwned"]),
        ("log", ["--upload-pack=touch /tmp/pwned"]),
        ("show", ["--ext-diff"]),
        ("diff", ["--textconv"]),
        ("log", ["--exec=sh"]),
        ("status", ["--", "--output=x"]),
        ("show", ["ext::sh -c touch% /tmp/pwned"]),
        ("diff", ["/etc/passwd", "/etc/hostname"]),
        ("show", ["HEAD:../../etc/passwd"]),
        ("branch", ["--delete", "main"]),
        ("ls_files", ["--format=%(objectname)"]),
    ],
)
async def test_injection_refused(tool: GitTool, repo: Path, operation: str, args: list[str]) -> None:
    with pytest.raises(ToolError):
        await tool.call({"repo": str(repo), "operation": operation, "args": args}, CTX)


def test_argv_is_fixed_per_operation() -> None:
    assert build_argv("log", ["-5", "--oneline", "main", "--", "src"], None) == (
        [
            "log",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--max-count=5",
            "--oneline",
            "main",
            "--",
            "src",
        ],
        None,
    )
    assert build_argv("commit", ["a.txt"], "msg") == (["commit", "--file=-", "--", "a.txt"], b"msg")
    with pytest.raises(ToolError, match="only used by commit"):
        build_argv("status", [], "msg")


async def test_registry_validates_operation(tool: GitTool, repo: Path) -> None:
    registry = ToolRegistry([tool])
    result = await registry.invoke("git", {"repo": str(repo), "operation": "push"}, CTX)
    assert not result.ok and "operation" in result.content
    ok = await registry.invoke("git", {"repo": str(repo), "operation": "status"}, CTX)
    assert ok.ok and "On branch main" in ok.content
