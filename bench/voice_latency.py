"""Voice-to-voice latency of corral's voice pipeline: from the end of the user's speech to the
first byte of the answer's audio, with the time of each stage, corral's incremental speech to
text side by side with the baseline that transcribes the whole utterance at the end of the turn
(pipecat's usual segmented pattern for a local Whisper).

Starts a real `corral up` (the bundled model on llama-server, faster-whisper base or
pocketsphinx as the CPU allows, Piper, Silero VAD and smart-turn) in a cached home, then plays
each of the utterances below, synthesised with corral's Piper voice, into /ws/voice as 20 ms
PCM16 chunks at real-time pace (a microphone), once per mode, the two modes interleaved and
alternating which goes first. Each turn is a fresh session (no history grows).

- client voice to voice: from when the last voiced 20 ms of the utterance was sent to when the
  first binary audio message arrived (what a user hears, loopback network included);
- the server's breakdown from its `turn` message: VAD (the silence it waits for), STT (VAD stop
  to the final transcript), LLM time to first token, TTS first audio (first token to the first
  audio byte: the first sentence's generation and synthesis).

    .venv/bin/python bench/voice_latency.py            # 20 utterances x 2 modes, ~5 min on 2 cores
    .venv/bin/python bench/voice_latency.py --quick    # 3 utterances, a smoke test
    .venv/bin/python bench/voice_latency.py --write    # and update docs/benchmarks.md
    .venv/bin/python bench/voice_latency.py --stt pocketsphinx   # the engine for CPUs without AVX
    .venv/bin/python bench/voice_latency.py --url http://127.0.0.1:8400 --key crl_...  # a running corral

Target (issue): median voice to voice <= 800 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import bench_home, machine, median, pct, update_doc
from corral.voice.engines import SAMPLE_RATE, float_to_pcm16, pcm16_to_float

HEADING = "Voice latency"
TARGET_S = 0.8
MODES = ("incremental", "segmented")
CHUNK_S = 0.02
CONFIG = """
version: 1
experts:
  - {name: general, model: gemma3-270m, replicas: 1, slots: 1, context: 1024, threads: 1}
  - {name: embed, model: all-minilm-l6-v2, kind: embedding, replicas: 1, slots: 1, context: 512, threads: 1}
"""
UTTERANCES = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Tell me a fun fact about the moon.",
    "What is the weather usually like in spring?",
    "Remember that my sister is called Alice.",
    "Can you suggest a name for a black cat?",
    "What should I cook for dinner tonight?",
    "Turn off the lights in the kitchen, please.",
    "How far away is the sun from the earth?",
    "Why is the sky blue during the day?",
    "What is two plus two?",
    "Give me a short tip for sleeping better.",
    "Who wrote the play Romeo and Juliet?",
    "My favourite colour is green.",
    "What time is it usually when the sun sets in winter?",
    "Say something nice about computers.",
    "How do I boil an egg?",
    "What is the largest animal in the ocean?",
    "Recommend a good book for a long train ride.",
    "Thank you, that was helpful.",
)


# --- the utterances ---------------------------------------------------------------------------


@dataclass
class Clip:
    text: str
    pcm: bytes  # 16 kHz PCM16: 0.3 s of silence, the speech
    speech_end_s: float  # where the last voiced 20 ms ends, from the start of `pcm`


def synthesise(texts: Sequence[str]) -> list[Clip]:
    import soxr

    from corral.voice.settings import TtsConfig
    from corral.voice.tts import load_synthesizer

    voice = load_synthesizer(TtsConfig())
    clips = []
    for text in texts:
        native = pcm16_to_float(b"".join(voice.synthesize(text)))
        audio = np.asarray(soxr.resample(native, voice.sample_rate, SAMPLE_RATE), dtype=np.float32)
        audio = np.concatenate([np.zeros(int(0.3 * SAMPLE_RATE), np.float32), audio])
        window = int(CHUNK_S * SAMPLE_RATE)
        voiced = [
            i for i in range(0, len(audio), window) if np.sqrt(np.mean(audio[i : i + window] ** 2)) > 0.01
        ]
        end = (voiced[-1] + window) / SAMPLE_RATE if voiced else len(audio) / SAMPLE_RATE
        clips.append(Clip(text, float_to_pcm16(audio), end))
    return clips


# --- a corral to talk to ----------------------------------------------------------------------


@dataclass
class Target:
    url: str
    key: str


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def corral_up(home: Path, log: Any, stt: str = "auto") -> Iterator[Target]:
    """`corral up` in `home` (kept between runs: the models are assembled once)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "corral.yaml").write_text(CONFIG + f"voice:\n  stt: {{engine: {stt}}}\n")
    env = {**os.environ, "CORRAL_HOME": str(home)}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    cli = [sys.executable, "-m", "corral.cli"]
    key = subprocess.run(
        [*cli, "keys", "create", "--name", "bench-voice", "--scope", "user"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    port = _free_port()
    out = open(home / "corral-up.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [*cli, "up", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    target = Target(f"http://127.0.0.1:{port}", key)
    try:
        log(f"corral up on port {port} (log: {home / 'corral-up.log'})")
        wait_ready(target, process)
        yield target
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        out.close()


def wait_ready(target: Target, process: subprocess.Popen[bytes] | None = None, within: float = 600) -> None:
    headers = {"authorization": f"Bearer {target.key}"}
    deadline = time.monotonic() + within
    while True:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"corral up exited with {process.returncode}; see its log")
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(target.url + "/ready", timeout=5, trust_env=False).status_code == 200
            voice = httpx.get(target.url + "/api/voice", headers=headers, timeout=5, trust_env=False)
            if voice.status_code == 404:
                raise SystemExit("this corral serves no voice (voice.enabled is false)")
            status = voice.json() if voice.status_code == 200 else {}
            if status.get("error"):
                raise SystemExit(f"voice failed to load: {status['error']}")
            if ready and status.get("ready"):
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"corral not ready with voice after {within:.0f} s")
        time.sleep(1)


# --- one turn -----------------------------------------------------------------------------------


@dataclass
class Turn:
    mode: str
    text: str
    heard: str = ""
    client_v2v_s: float | None = None
    server: dict[str, Any] = field(default_factory=dict)
    error: str = ""


async def one_turn(target: Target, clip: Clip, mode: str, session: str) -> Turn:
    from websockets.asyncio.client import connect

    turn = Turn(mode, clip.text)
    url = target.url.replace("http://", "ws://") + f"/ws/voice?token={target.key}"
    silence = bytes(int(CHUNK_S * SAMPLE_RATE) * 2)
    step = len(silence)
    async with connect(url, max_size=None, open_timeout=30) as ws:
        start = {"type": "start", "session": session, "sample_rate": SAMPLE_RATE, "stt_mode": mode}
        await ws.send(json.dumps(start))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if ready.get("type") != "ready":
            turn.error = str(ready)
            return turn
        first_audio: list[float] = []
        summary: list[dict[str, Any]] = []

        async def listen() -> None:
            async for data in ws:
                if isinstance(data, bytes):
                    if not first_audio:
                        first_audio.append(time.monotonic())
                    continue
                message = json.loads(data)
                if message.get("type") == "transcript" and message.get("final"):
                    turn.heard = message["text"]
                elif message.get("type") == "turn":
                    summary.append(message)
                elif message.get("type") == "error":
                    turn.error = message.get("message", "")

        listener = asyncio.create_task(listen())
        started = time.monotonic()
        chunks = [clip.pcm[i : i + step] for i in range(0, len(clip.pcm), step)]
        speech_end = started + clip.speech_end_s
        index = 0
        deadline = started + 60
        # The clip, then silence (a live microphone) until the answer's audio and the turn's
        # report are both in.
        while not (first_audio and summary) and time.monotonic() < deadline and not listener.done():
            await ws.send(chunks[index] if index < len(chunks) else silence)
            index += 1
            await asyncio.sleep(max(0.0, started + index * CHUNK_S - time.monotonic()))
        listener.cancel()
        with contextlib.suppress(BaseException):
            await listener
    if first_audio:
        turn.client_v2v_s = first_audio[0] - speech_end
    if summary:
        turn.server = summary[0]
    elif not turn.error:
        turn.error = "no turn in 60 s" + (f" (heard {turn.heard!r})" if turn.heard else "")
    return turn


async def run_turns(target: Target, clips: list[Clip], log: Any) -> list[Turn]:
    turns: list[Turn] = []
    stamp = time.strftime("%H%M%S")
    for i, clip in enumerate(clips):
        order = MODES if i % 2 == 0 else MODES[::-1]
        for mode in order:
            turn = await one_turn(target, clip, mode, f"bench-{stamp}-{i}-{mode}")
            turns.append(turn)
            v2v = "-" if turn.client_v2v_s is None else f"{turn.client_v2v_s * 1000:.0f} ms"
            passes = (turn.server or {}).get("stretches", "?")
            log(
                f"{i + 1:2d}/{len(clips)} {mode:11s} {v2v:>8s}  {passes} STT pass(es), heard {turn.heard!r} "
                f"{turn.error}".rstrip()
            )
            await asyncio.sleep(0.5)  # the cancelled rest of the answer leaves the replica
    return turns


# --- the report ---------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower())


def ms(value: float) -> str:
    return "-" if value != value else f"{value * 1000:.0f}"


def report(turns: list[Turn], args: argparse.Namespace, engine: str) -> str:
    stages = [
        ("VAD", "vad_s"),
        ("STT", "stt_s"),
        ("LLM first token", "llm_ttft_s"),
        ("TTS first audio", "tts_first_audio_s"),
    ]
    lines = [
        f"Run: `.venv/bin/python bench/voice_latency.py{' --quick' if args.quick else ''} --write` "
        f"({time.strftime('%Y-%m-%d')}; {machine()}). Speech to text: {engine}; voice: Piper "
        "en_US-joe-medium; the answers come from the bundled model through the shipped `voice` "
        f"workflow. {len(turns) // len(MODES)} utterances per mode, interleaved.",
        "",
        "| mode | turns | client voice to voice, median | p95 | server voice to voice, median | "
        + " | ".join(f"{name}, median" for name, _ in stages)
        + " | transcripts right |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in stages) + " | ---: |",
    ]
    for mode in MODES:
        mine = [t for t in turns if t.mode == mode]
        v2v = [t.client_v2v_s for t in mine if t.client_v2v_s is not None]
        server = [t.server["voice_to_voice_s"] for t in mine if t.server.get("voice_to_voice_s") is not None]
        parts = [
            ms(median([t.server[key] for t in mine if t.server.get(key) is not None])) for _, key in stages
        ]
        right = sum(1 for t in mine if _words(t.heard) == _words(t.text))
        label = "corral: incremental STT" if mode == "incremental" else "baseline: whole utterance at the end"
        lines.append(
            f"| {label} | {len(v2v)}/{len(mine)} | {ms(median(v2v))} ms | {ms(pct(v2v, 95))} ms | "
            f"{ms(median(server))} ms | " + " | ".join(f"{p} ms" for p in parts) + f" | {right}/{len(mine)} |"
        )
    ours = [t.client_v2v_s for t in turns if t.mode == "incremental" and t.client_v2v_s is not None]
    verdict = "meets" if ours and median(ours) <= TARGET_S else "misses"
    lines += [
        "",
        f"Target: median voice to voice <= {TARGET_S * 1000:.0f} ms on 2 cores; corral {verdict} it "
        f"here ({ms(median(ours))} ms). Client voice to voice runs from the end of the last voiced "
        "20 ms sent to the first audio byte received; the server's figure starts at the VAD's "
        "estimate of the same moment (its stop minus `turn.vad_stop_s`). VAD + STT + LLM first "
        "token + TTS first audio make up the server's figure. A transcript is right when its words "
        "equal the script's.",
    ]
    errors = [t for t in turns if t.error]
    if errors:
        lines += [
            "",
            f"{len(errors)} turn(s) had an error: " + "; ".join(f"{t.text!r}: {t.error}" for t in errors[:5]),
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 utterances")
    parser.add_argument("--utterances", type=int, help=f"how many of the {len(UTTERANCES)} [all; quick 3]")
    parser.add_argument("--home", help="the cached corral home [~/.cache/corral-bench/voice-home]")
    parser.add_argument(
        "--stt", choices=("auto", "whisper", "pocketsphinx"), default="auto", help="voice.stt.engine [auto]"
    )
    parser.add_argument("--url", help="use this running corral instead of starting one")
    parser.add_argument("--key", help="its API key (with --url)")
    parser.add_argument("--write", action="store_true", help=f"update ## {HEADING} in docs/benchmarks.md")
    parser.add_argument("--turns", help="also write each turn (client and server figures) to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    count = args.utterances or (3 if args.quick else len(UTTERANCES))

    def log(line: str) -> None:
        print(line, flush=True)

    log(f"synthesising {count} utterances with Piper")
    clips = synthesise(UTTERANCES[:count])
    with contextlib.ExitStack() as stack:
        if args.url:
            if not args.key:
                raise SystemExit("--url needs --key")
            target = Target(args.url.rstrip("/"), args.key)
            wait_ready(target)
        else:
            home = Path(args.home).expanduser() if args.home else bench_home(None) / "voice-home"
            target = stack.enter_context(corral_up(home, log, args.stt))
        status = httpx.get(
            target.url + "/api/voice", headers={"authorization": f"Bearer {target.key}"}, trust_env=False
        ).json()
        engine = str(status.get("stt"))
        log(f"voice ready: {engine} speech to text, {status.get('tts')} at {status.get('sample_rate')} Hz")
        asyncio.run(one_turn(target, clips[0], MODES[0], "bench-warm"))  # the first turn warms caches
        turns = asyncio.run(run_turns(target, clips, log))
    if args.turns:
        Path(args.turns).write_text(json.dumps([t.__dict__ for t in turns], indent=1))
    body = report(turns, args, engine)
    print()
    print(body)
    if args.write:
        update_doc(HEADING, body)
        log("updated docs/benchmarks.md")


if __name__ == "__main__":
    main()
