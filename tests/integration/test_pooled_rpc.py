"""Pooled inference through the gateway: one model over two ggml-rpc-server workers.

A real `corral up` runs two experts on the bundled model: `single` (one llama-server) and
`pooled` (a leader llama-server with `--rpc` over two workers: one it starts itself, `workers:
1`, and one "remote" worker started beforehand with `corral rpc-worker`, listed in `rpc:`; here
both are on loopback). Greedy answers must be
token for token the same. Both run with `--no-repack -fa off`: ggml's CPU backend repacks
Q4_K weights into an interleaved layout whose kernels sum in another order than the plain
kernels an RPC worker uses, which flips a near-tie greedy token after a dozen tokens; with the
same kernels on both sides the answers are identical.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.integration.conftest import RunningCorral, start_corral, stop_corral

pytestmark = pytest.mark.slow

CONFIG = """
version: 1
experts:
  - name: single
    model: gemma3-270m
    description: general questions
    replicas: 1
    slots: 1
    context: 512
    threads: 1
    extra_args: ["--no-repack", "-fa", "off"]
  - name: pooled
    model: gemma3-270m
    description: the same model spread over two RPC workers
    auto: false
    replicas: 1
    slots: 1
    context: 512
    threads: 1
    extra_args: ["--no-repack", "-fa", "off"]
    pooled:
      workers: 1
      rpc: ["127.0.0.1:{rpc_port}"]
"""

QUESTIONS = ("What is the capital of France?", "Describe the water cycle step by step.")


@pytest.fixture(scope="module")
def remote_worker() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`corral rpc-worker`, as a user would start it on another machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "corral.cli", "rpc-worker", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "corral rpc-worker exited"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "corral rpc-worker did not listen"
            time.sleep(0.2)
        yield port, process
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def pooled_corral(
    tmp_path_factory: pytest.TempPathFactory, remote_worker: tuple[int, subprocess.Popen[bytes]]
) -> Iterator[RunningCorral]:
    config = CONFIG.replace("{rpc_port}", str(remote_worker[0]))
    running = start_corral(tmp_path_factory.mktemp("pooled-home"), config)
    try:
        for name in ("single/0", "pooled/0"):  # /ready needs one chat expert, not both
            running.wait_healthy(name, timeout=240)
        yield running
    finally:
        stop_corral(running)


def ask(corral: RunningCorral, model: str, question: str) -> tuple[str, int, str]:
    response = httpx.post(
        corral.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {corral.key}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 40,
            "temperature": 0,
        },
        timeout=180,
        trust_env=False,
    )
    response.raise_for_status()
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    return content, body["usage"]["completion_tokens"], response.headers["x-corral-replica"]


def rpc_workers(corral: RunningCorral) -> list[psutil.Process]:
    children = psutil.Process(corral.process.pid).children(recursive=True)
    return [p for p in children if p.name() == "ggml-rpc-server"]


def test_pooled_answers_token_for_token_like_one_process(
    pooled_corral: RunningCorral, remote_worker: tuple[int, subprocess.Popen[bytes]]
) -> None:
    for question in QUESTIONS:
        single, single_tokens, single_replica = ask(pooled_corral, "single", question)
        pooled, pooled_tokens, pooled_replica = ask(pooled_corral, "pooled", question)
        assert (single_replica, pooled_replica) == ("single/0", "pooled/0")
        assert single_tokens >= 8
        assert (pooled, pooled_tokens) == (single, single_tokens)
    # The layers really live on the workers: together they hold most of the ~240 MiB of weights
    # (an idle ggml-rpc-server is a few MiB; the leader keeps the token embeddings).
    workers = [*rpc_workers(pooled_corral), psutil.Process(remote_worker[1].pid)]
    assert len(workers) == 2
    assert sum(w.memory_info().rss for w in workers) > 150 * 2**20


def test_a_dead_worker_restarts_the_pool(pooled_corral: RunningCorral) -> None:
    before, _, _ = ask(pooled_corral, "pooled", QUESTIONS[0])
    restarts = int(str(pooled_corral.replica("pooled/0")["restarts"]))
    rpc_workers(pooled_corral)[0].kill()
    deadline = time.monotonic() + 120
    while int(str(pooled_corral.replica("pooled/0")["restarts"])) == restarts:
        assert time.monotonic() < deadline, "the engine did not restart the pool"
        time.sleep(0.5)
    pooled_corral.wait_healthy("pooled/0", timeout=180)
    assert len(rpc_workers(pooled_corral)) == 1
    after, _, _ = ask(pooled_corral, "pooled", QUESTIONS[0])
    assert after == before
