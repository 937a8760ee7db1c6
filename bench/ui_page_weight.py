"""Mission Control's page weight and time to interactive, in Debian's chromium (headless).

Starts a real `corral up` (the bundled model, one replica) in a temporary home, logs in once,
then loads each view cold (a fresh browser context: empty cache) `--rounds` times, interleaved:

- transferred bytes: every response's encoded length on the wire (Chrome DevTools Protocol's
  Network.loadingFinished), and the decoded size of the files;
- time to interactive: from navigation start until the view shows live data (the dashboard's
  first replica row; the workflows view's graph), at full CPU speed and with the CPU slowed 4x
  (DevTools' CPU throttling, for an old laptop).

The dashboard is compared side by side with the workflows view, which loads the graph library
(Cytoscape.js) the dashboard leaves out. Target: dashboard <= 500 KB transferred.

    .venv/bin/python bench/ui_page_weight.py --write   # ## Mission Control page weight, ~2 min
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine, update_doc

HEADING = "Mission Control page weight"
CONFIG = """
version: 1
experts:
  - {name: general, model: gemma3-270m, replicas: 1, slots: 1, context: 512, threads: 1}
"""
VIEWS = {
    "dashboard": ("#/dashboard", '[data-testid="replica-row"]'),
    "workflows": ("#/workflows/agent", '[data-testid="run-graph"] canvas'),
}
TARGET_BYTES = 500 * 1024


@dataclass
class Load:
    transferred: int
    decoded: int
    requests: int
    tti_ms: float


@dataclass
class Results:
    loads: dict[tuple[str, int], list[Load]] = field(default_factory=dict)


@contextmanager
def corral_up(home: Path) -> Iterator[tuple[str, str]]:
    (home / "corral.yaml").write_text(CONFIG)
    env = {**os.environ, "CORRAL_HOME": str(home)}
    cli = [sys.executable, "-m", "corral.cli"]
    key = subprocess.run(
        [*cli, "keys", "create", "--name", "bench", "--scope", "admin"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(home / "corral-up.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [*cli, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"corral up exited: see {home / 'corral-up.log'}")
            try:
                if httpx.get(url + "/ready", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url, key
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def load_view(browser: Browser, url: str, cookies: list[Any], view: str, throttle: int) -> Load:
    route, ready = VIEWS[view]
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 800})
    context.add_cookies(cookies)
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    if throttle > 1:
        cdp.send("Emulation.setCPUThrottlingRate", {"rate": throttle})
    sizes: dict[str, int] = {}
    decoded: dict[str, int] = {}
    cdp.on(
        "Network.loadingFinished", lambda e: sizes.__setitem__(e["requestId"], int(e["encodedDataLength"]))
    )
    cdp.on("Network.dataReceived", lambda e: decoded.__setitem__(
        e["requestId"], decoded.get(e["requestId"], 0) + int(e["dataLength"])))  # fmt: skip
    page.goto("/" + route)
    page.wait_for_selector(ready, timeout=120_000)
    tti = float(page.evaluate("performance.now()"))
    page.wait_for_load_state("networkidle")
    context.close()
    # The live status stream never finishes loading, so it is not in `sizes`: a stream, not weight.
    return Load(sum(sizes.values()), sum(decoded.get(k, 0) for k in sizes), len(sizes), tti)


def run(args: argparse.Namespace) -> Results:
    results = Results()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: sudo apt-get install chromium")
    with (
        tempfile.TemporaryDirectory(prefix="corral-ui-bench-") as tmp,
        corral_up(Path(tmp)) as (url, key),
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        login = browser.new_context(base_url=url)
        response = login.request.post(url + "/api/login", data={"key": key})
        assert response.ok, response.text()
        cookies = login.cookies()
        login.close()
        for round_ in range(args.rounds):
            for throttle in (1, 4):
                for view in VIEWS:
                    load = load_view(browser, url, cookies, view, throttle)
                    results.loads.setdefault((view, throttle), []).append(load)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        browser.close()
    return results


def kb(n: float) -> str:
    return f"{n / 1024:.1f}"


def report(args: argparse.Namespace, results: Results) -> str:
    rows = []
    for (view, throttle), loads in results.loads.items():
        tti = [x.tti_ms for x in loads]
        sent = [x.transferred for x in loads]
        rows.append(
            f"| {view} | {throttle}x | {kb(statistics.median(sent))} | {kb(min(sent))}..{kb(max(sent))} | "
            f"{kb(statistics.median(x.decoded for x in loads))} | {loads[0].requests} | "
            f"{statistics.median(tti):.0f} | {min(tti):.0f}..{max(tti):.0f} |"
        )
    dash = statistics.median(x.transferred for x in results.loads[("dashboard", 1)])
    graph = statistics.median(x.transferred for x in results.loads[("workflows", 1)])
    verdict = "met" if dash <= TARGET_BYTES else "MISSED"
    return "\n".join([
        f"Run: `.venv/bin/python bench/ui_page_weight.py --write` ({time.strftime('%Y-%m-%d')}; "
        f"{args.rounds} cold loads per row, interleaved; {machine()}; headless chromium).",
        "",
        "| view | CPU | transferred KB (median) | spread | decoded KB | requests | time to interactive ms "
        "(median) | spread |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Dashboard: **{kb(dash)} KB** transferred against the 500 KB target ({verdict}); the workflows "
        f"view, which adds the graph library, transfers {kb(graph)} KB ({graph / dash:.1f}x). "
        "Transferred bytes include headers; the files are gzip-compressed by the server. Time to "
        "interactive is navigation start to the first live data on screen (the dashboard's first "
        "replica row, the workflows view's graph canvas); 4x is DevTools' CPU throttling.",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="cold loads per view and CPU speed [10]")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    results = run(args)
    text = report(args, results)
    print(text)
    if args.write:
        update_doc(HEADING, text)
        print("updated docs/benchmarks.md", file=sys.stderr)


if __name__ == "__main__":
    main()
