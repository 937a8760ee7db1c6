"""API fuzzing at scale: schemathesis's CLI against corral's own OpenAPI, thousands of cases.

The gateway is the whole app (`corral up`'s, with the agent on a FakeLLM and FakeBackends for
models, rate limits off) under uvicorn in this process; schemathesis runs in a subprocess with
an admin key and the `not_a_server_error` check (plus its own response checks, reported but not
the target). The ndjson event log gives the number of cases sent and the 5xx answers.

    uv run python bench/fuzz.py                 # 300 examples per operation
    uv run python bench/fuzz.py --write         # and updates `## API fuzzing` in docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def count(ndjson: Path) -> tuple[int, Counter[int], list[str]]:
    """(cases, status codes, 5xx descriptions) from schemathesis's ndjson event log."""
    cases = 0
    codes: Counter[int] = Counter()
    errors: list[str] = []
    for line in ndjson.read_text().splitlines():
        text = line
        for match in re.finditer(r'"status_code":\s*(\d{3})', text):
            code = int(match.group(1))
            codes[code] += 1
            if code >= 500:
                errors.append(text[:300])
        if '"ScenarioFinished"' in text:
            event = json.loads(text)
            recorder = event.get("ScenarioFinished", {}).get("recorder", {})
            cases += len(recorder.get("cases", {}))
    return cases, codes, errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=300, help="examples per operation and phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=8400)
    parser.add_argument("--write", action="store_true", help="update `## API fuzzing` in docs/benchmarks.md")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "bench"))
    from _harness import machine, update_doc
    from corral.gateway.limits import RateLimitConfig
    from corral.testing.gateway_server import fake_gateway, serve_in_thread

    home = Path(tempfile.mkdtemp(prefix="corral-fuzz-"))
    fake = fake_gateway(home, rate_limit=RateLimitConfig(enabled=False))
    ndjson = home / "events.ndjson"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    with serve_in_thread(fake) as url:
        command = [
            str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
            "-H", f"Authorization: Bearer {fake.admin}",
            "--checks", "not_a_server_error", "--max-examples", str(args.max_examples),
            "--workers", str(args.workers), "--seed", str(args.seed),
            "--exclude-path-regex", "/stream$", "--request-timeout", "60",
            "--report", "ndjson", "--report-ndjson-path", str(ndjson), "--no-color",
            "--generation-database", "none",
        ]  # fmt: skip
        started = time.perf_counter()
        run = subprocess.run(command, env=env, capture_output=True, text=True)
        took = time.perf_counter() - started
    print(run.stdout[-4000:])
    cases, codes, errors = count(ndjson)
    server_errors = sum(n for c, n in codes.items() if c >= 500)
    print(
        f"{cases} cases, {sum(codes.values())} responses in {took:.0f} s; "
        f"status codes {dict(sorted(codes.items()))}"
    )
    print(f"server errors (5xx): {server_errors}")
    for error in errors[:10]:
        print("  ", error)
    if args.write:
        statuses = ", ".join(f"{c}: {n}" for c, n in sorted(codes.items()))
        day = time.strftime("%Y-%m-%d")
        body = f"""Written by `uv run python bench/fuzz.py --write` ({day}, {machine()}).

Schemathesis {_version()} (`schemathesis run`, seed {args.seed}, `--max-examples {args.max_examples}`,
{args.workers} workers, its default phases) against `/openapi.json` of the whole gateway app: the
agent on a FakeLLM, FakeBackends for the models, rate limits off, an admin key. The server-sent
event streams (`/api/status/stream`, `/api/logs/stream`) are left out: they never end by design.

| cases | responses | seconds | server errors (5xx) | target | status codes |
| --- | --- | --- | --- | --- | --- |
| {cases} | {sum(codes.values())} | {took:.0f} | {server_errors} | thousands of cases, 0 | {statuses} |

Found and fixed on the way: a body a route validates itself with a pydantic model (an unknown
field at `/api/login`) answered 500; such errors are now 400 in the OpenAI error format
(`src/corral/gateway/errors.py`). The 405s are schemathesis trying methods a route does not
have; the 404s are ids it made up (runs, workflows, sessions, keys).

The CI test (`tests/integration/test_schemathesis.py`) fuzzes the same document with
schemathesis's Python API: each operation with `CORRAL_FUZZ_EXAMPLES` (default 10) valid and as
many invalid generated requests, no 5xx allowed.
"""
        update_doc("API fuzzing", body)
        print("updated docs/benchmarks.md", file=sys.stderr)


def _version() -> str:
    from importlib.metadata import version

    return version("schemathesis")


if __name__ == "__main__":
    main()
