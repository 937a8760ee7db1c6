"""Whisper's encoder window against Opus-coded speech: does a window fitted to the clip hear the
same words as the 15 s window, and what does it save? An offline study (no `corral up`).

The voice benchmark's utterances (bench/voice_latency.py) are spoken by corral's Piper voice,
then passed through what WebRTC does to a browser's microphone on the way to corral: 48 kHz mono,
Opus at about 32 kbit/s in 20 ms frames (libopus through PyAV, VoIP mode), decoded and resampled
to 16 kHz by PyAV's resampler as pipecat's SmallWebRTC transport does. Piper's synthesis is
random (VITS noise), so each variant is a fresh take of each phrase. The variants:

- clean: no Opus, resampled straight to 16 kHz (the benchmark's input);
- opus32 (two takes), opus16: Opus at 32 and 16 kbit/s;
- slow, fast: Piper at speed 0.8 and 1.25, then opus32;
- low voice, high voice: the take played 12 % slower or faster (pitch and pace together, a
  stand-in for another speaker: no second Piper voice is installed), then opus32;
- noise: white noise 20 dB under the speech, then opus32;
- hard: fast, noise and opus16 together.

Each clip (0.2-0.5 s of silence, the speech, 0.2-0.6 s of silence, as the pipeline's pre-roll and
VAD stop leave it) is transcribed by one warm WhisperTranscriber in the 15 s window and in
windows fitted with 2, 4 and 6 s of pad, through the transcriber's own path (token cap, loop
guard and its refit included, the doubt check off); `--windows` can add "rule", the
transcriber's redo rule as it ships (2 s pad, the 15 s window again for an unsure decode). The
windows take turns in a rotating order, `--repeats` times per clip; time is the median per clip.
Words are right when they equal the script's after case, punctuation, number words and British
spellings are set aside.

    .venv/bin/python bench/stt_window.py                       # 20 phrases x 10 variants, ~20 min on 2 cores
    .venv/bin/python bench/stt_window.py --quick               # 3 phrases, 3 variants
    .venv/bin/python bench/stt_window.py --windows 15s,pad2,pad6,rule --repeats 2 --seed 2
    .venv/bin/python bench/stt_window.py --out /tmp/stt.json   # and keep the raw results
    .venv/bin/python bench/stt_window.py --from /tmp/stt.json  # report saved results again

The report: per window, clips right, clips it lost that the 15 s window got right, time
(median, p10-p90) and the per-clip time ratio to the 15 s window; the avg_logprob of fitted
decodes that were right and wrong; and redo rules simulated from the pads' results (the fitted
window, then the 15 s window again when the fitted decode's avg_logprob is under a threshold or
its no_speech_prob over a limit). docs/voice.md has the study's figures.
"""

from __future__ import annotations

import argparse
import fractions
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import machine
from corral.voice.engines import SAMPLE_RATE, Audio, pcm16_to_float
from corral.voice.stt import FIT_MAX_NO_SPEECH, FIT_MIN_LOGPROB
from voice_latency import UTTERANCES

OPUS_RATE = 48_000
FRAME = OPUS_RATE // 50  # 20 ms
INF = float("inf")
# name: (fit_pad_s, fit_min_logprob, fit_max_no_speech). The pads alone never redo an unsure decode
# (the loop guard's refit stays); "rule" is WhisperTranscriber's default rule with a 2 s pad.
WINDOWS: dict[str, tuple[float, float, float]] = {
    "15s": (0.0, -INF, INF),
    "pad2": (2.0, -INF, INF),
    "pad4": (4.0, -INF, INF),
    "pad6": (6.0, -INF, INF),
    "rule": (2.0, FIT_MIN_LOGPROB, FIT_MAX_NO_SPEECH),
}
DEFAULT_WINDOWS = "15s,pad2,pad4,pad6"


@dataclass(frozen=True)
class Variant:
    name: str
    speed: float = 1.0  # Piper's speaking rate
    tape: float = 1.0  # playback rate of the take: pitch and pace together
    snr_db: float | None = None  # white noise this far under the speech
    kbps: int | None = 32  # Opus bit rate; None: no Opus


VARIANTS = (
    Variant("clean", kbps=None),
    Variant("opus32"),
    Variant("opus32 take 2"),
    Variant("opus16", kbps=16),
    Variant("slow", speed=0.8),
    Variant("fast", speed=1.25),
    Variant("low voice", tape=0.88),
    Variant("high voice", tape=1.12),
    Variant("noise", snr_db=20.0),
    Variant("hard", speed=1.25, snr_db=20.0, kbps=16),
)
QUICK_VARIANTS = ("opus32", "opus16", "hard")


# --- the clips ---------------------------------------------------------------------------------


def opus_round_trip(audio48: np.ndarray, kbps: int) -> Audio:
    """`audio48` (48 kHz mono float) through Opus and back, resampled to 16 kHz as pipecat's
    SmallWebRTC input does (PyAV's AudioResampler, frame by frame)."""
    import av

    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = OPUS_RATE
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = kbps * 1000
    encoder.options = {"application": "voip", "frame_duration": "20", "vbr": "on"}
    encoder.open()
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = OPUS_RATE
    decoder.layout = "mono"
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pcm = (np.clip(audio48, -1.0, 1.0) * 32767.0).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % FRAME, np.int16)])
    out: list[np.ndarray] = []

    def decode(packets: Any) -> None:
        for packet in packets:
            for frame in decoder.decode(packet):
                out.extend(r.to_ndarray().reshape(-1) for r in resampler.resample(frame))

    for pts in range(0, pcm.size, FRAME):
        frame = av.AudioFrame.from_ndarray(pcm[None, pts : pts + FRAME], format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, OPUS_RATE)
        decode(encoder.encode(frame))
    decode(encoder.encode(None))
    return (np.concatenate(out).astype(np.float32) / 32768.0).astype(np.float32)


@dataclass
class Clip:
    text: str
    variant: str
    audio: Audio = field(repr=False)

    @property
    def seconds(self) -> float:
        return self.audio.size / SAMPLE_RATE


def make_clips(
    texts: Sequence[str], variants: Sequence[Variant], seed: int, log: Callable[[str], None]
) -> list[Clip]:
    import soxr

    from corral.voice.settings import TtsConfig
    from corral.voice.tts import load_synthesizer

    rng = np.random.default_rng(seed)
    voices = {}
    clips = []
    for variant in variants:
        if variant.speed not in voices:
            voices[variant.speed] = load_synthesizer(TtsConfig(speed=variant.speed))
        voice = voices[variant.speed]
        for text in texts:
            speech = pcm16_to_float(b"".join(voice.synthesize(text)))
            # Played `tape` times as fast: resampled as if it had been recorded at that rate.
            speech48 = np.asarray(soxr.resample(speech, voice.sample_rate * variant.tape, OPUS_RATE))
            lead, trail = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.6)
            audio48 = np.concatenate(
                [np.zeros(int(lead * OPUS_RATE)), speech48, np.zeros(int(trail * OPUS_RATE))]
            )
            if variant.snr_db is not None:
                level = np.sqrt(np.mean(speech48**2)) / 10 ** (variant.snr_db / 20)
                audio48 = audio48 + rng.normal(0.0, level, audio48.size)
            if variant.kbps is None:
                audio = np.asarray(soxr.resample(audio48, OPUS_RATE, SAMPLE_RATE), dtype=np.float32)
            else:
                audio = opus_round_trip(audio48, variant.kbps)
            clips.append(Clip(text, variant.name, audio))
        log(f"synthesised {variant.name}: {len(texts)} clips")
    return clips


# --- transcribing ------------------------------------------------------------------------------

_NUMBERS = "zero one two three four five six seven eight nine ten".split()
_SPELLING = {"favourite": "favorite", "colour": "color"}


def words(text: str) -> list[str]:
    """The words of `text` for comparison: lower case, no punctuation, digits for number words,
    American spellings."""
    found = re.findall(r"[a-z0-9']+", text.lower())
    return [str(_NUMBERS.index(w)) if w in _NUMBERS else _SPELLING.get(w, w) for w in found]


@dataclass
class Result:
    text: str
    variant: str
    seconds: float
    heard: dict[str, str] = field(default_factory=dict)
    avg_logprob: dict[str, float] = field(default_factory=dict)
    no_speech_prob: dict[str, float] = field(default_factory=dict)
    refit: dict[str, bool] = field(default_factory=dict)  # the loop guard redid it in 15 s
    steady: dict[str, bool] = field(default_factory=dict)  # every repeat heard the same
    ms: dict[str, float] = field(default_factory=dict)  # median over the repeats

    def right(self, window: str) -> bool:
        return words(self.heard[window]) == words(self.text)


def transcribe_all(
    clips: Sequence[Clip], windows: Sequence[str], repeats: int, log: Callable[[str], None]
) -> list[Result]:
    from corral.voice.settings import SttConfig
    from corral.voice.stt import WhisperTranscriber, load_transcriber

    whisper = load_transcriber(SttConfig(engine="whisper"), frozenset({"avx"}))
    assert isinstance(whisper, WhisperTranscriber)
    results = []
    for i, clip in enumerate(clips):
        result = Result(clip.text, clip.variant, clip.seconds)
        times: dict[str, list[float]] = {w: [] for w in windows}
        texts: dict[str, set[str]] = {w: set() for w in windows}
        for r in range(repeats):
            turn = (i + r) % len(windows)
            for window in [*windows[turn:], *windows[:turn]]:
                whisper.fit_pad_s, whisper.fit_min_logprob, whisper.fit_max_no_speech = WINDOWS[window]
                refits = whisper.refits
                started = time.perf_counter()
                pieces = whisper._pieces(clip.audio)
                times[window].append(time.perf_counter() - started)
                (piece,) = pieces
                texts[window].add(piece.text.strip())
                result.heard[window] = piece.text.strip()
                result.avg_logprob[window] = piece.avg_logprob
                result.no_speech_prob[window] = piece.no_speech_prob
                result.refit[window] = whisper.refits > refits
        for window in windows:
            result.ms[window] = statistics.median(times[window]) * 1000
            result.steady[window] = len(texts[window]) == 1
        results.append(result)
        lost = [w for w in windows[1:] if result.right("15s") and not result.right(w)]
        log(
            f"{i + 1:3d}/{len(clips)} {clip.variant:13s} {clip.seconds:4.1f} s  "
            + "  ".join(f"{w} {result.ms[w]:4.0f}" for w in windows)
            + (f"  heard {result.heard['15s']!r}" if not result.right("15s") else "")
            + "".join(f"  {w} LOST: {result.heard[w]!r}" for w in lost)
        )
    return results


# --- the report --------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def redone(result: Result, window: str, min_logprob: float, max_no_speech: float) -> bool:
    return result.avg_logprob[window] < min_logprob or result.no_speech_prob[window] > max_no_speech


def rule_outcome(result: Result, window: str, min_logprob: float, max_no_speech: float) -> tuple[bool, float]:
    """Whether the rule (the fitted `window`, then the 15 s window again when its avg_logprob is
    under `min_logprob` or its no_speech_prob over `max_no_speech`) hears the clip right, and
    what it costs in ms (both decodes when it redoes one)."""
    if redone(result, window, min_logprob, max_no_speech):
        return result.right("15s"), result.ms[window] + result.ms["15s"]
    return result.right(window), result.ms[window]


def report(results: list[Result], repeats: int) -> str:
    windows = list(results[0].ms)
    variants = list(dict.fromkeys(r.variant for r in results))
    opus = [r for r in results if r.variant != "clean"]
    lines = [
        f"{len(results)} clips ({len(results) // max(1, len(variants))} phrases x {len(variants)} "
        f"variants, {len(opus)} through Opus), {repeats} decodes per window per clip, windows in "
        f"rotating order; {machine()}.",
        "",
        "| window | right, all clips | right, Opus clips | lost where 15 s was right | "
        "ms, median | p10-p90 | ratio to 15 s, median | p10-p90 | avg_logprob, median (min) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for window in windows:
        ms = [r.ms[window] for r in results]
        ratio = [r.ms[window] / r.ms["15s"] for r in results]
        lost = sum(1 for r in results if r.right("15s") and not r.right(window))
        logp = [r.avg_logprob[window] for r in results]
        lines.append(
            f"| {window} | {sum(r.right(window) for r in results)}/{len(results)} | "
            f"{sum(r.right(window) for r in opus)}/{len(opus)} | {lost if window != '15s' else '-'} | "
            f"{statistics.median(ms):.0f} | {pct(ms, 10):.0f}-{pct(ms, 90):.0f} | "
            f"{statistics.median(ratio):.2f} | {pct(ratio, 10):.2f}-{pct(ratio, 90):.2f} | "
            f"{statistics.median(logp):.2f} ({min(logp):.2f}) |"
        )
    lines += ["", "Right per variant (" + " / ".join(windows) + "):", ""]
    lines += [
        "| variant | clips | " + " | ".join(windows) + " |",
        "| --- | ---: |" + " ---: |" * len(windows),
    ]
    for variant in variants:
        mine = [r for r in results if r.variant == variant]
        lines.append(
            f"| {variant} | {len(mine)} | "
            + " | ".join(str(sum(r.right(w) for r in mine)) for w in windows)
            + " |"
        )
    lines += ["", "Where the windows disagree:", ""]
    for r in results:
        if len({" ".join(words(r.heard[w])) for w in windows}) > 1 or not r.right("15s"):
            lines.append(
                f"- {r.variant}, {r.text!r}: "
                + "; ".join(
                    f"{w} {'ok' if r.right(w) else repr(r.heard[w])} ({r.avg_logprob[w]:.2f}"
                    + (", refit" if r.refit[w] else "")
                    + ")"
                    for w in windows
                )
            )
    unsteady = [(r, w) for r in results for w in windows if not r.steady[w]]
    if unsteady:
        lines += ["", f"{len(unsteady)} decode(s) differed between repeats of the same clip."]
    lines += ["", "avg_logprob of fitted decodes, right / wrong:", ""]
    for window in windows[1:]:
        good = [r.avg_logprob[window] for r in results if r.right(window)]
        bad = [r.avg_logprob[window] for r in results if not r.right(window)]
        lines.append(
            f"- {window}: right min {min(good, default=float('nan')):.2f}, median "
            f"{statistics.median(good) if good else float('nan'):.2f}; wrong "
            + (", ".join(f"{v:.2f}" for v in sorted(bad)) or "none")
        )
    lines += [
        "",
        "Rules simulated from the pads' results: the fitted window, and the 15 s window again when "
        "its avg_logprob is under the threshold or its no_speech_prob over the limit (cost: both "
        "decodes):",
        "",
        "| rule | right | lost where 15 s was right | redone | ms, median | mean | mean ms / 15 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base_mean = statistics.mean(r.ms["15s"] for r in results)
    pads = [w for w in windows if w.startswith("pad")]
    limits = [(-INF, INF)] + [(lp, ns) for lp in (-0.3, -0.25, -0.2, -0.15) for ns in (INF, 0.3)]
    for window in pads:
        for min_logprob, max_no_speech in limits:
            outcomes = [rule_outcome(r, window, min_logprob, max_no_speech) for r in results]
            lost = sum(1 for r, (ok, _) in zip(results, outcomes, strict=True) if r.right("15s") and not ok)
            again = sum(redone(r, window, min_logprob, max_no_speech) for r in results)
            cost = [c for _, c in outcomes]
            name = window
            if min_logprob > -INF:
                name += f", redo under {min_logprob}"
            if max_no_speech < INF:
                name += f" or no speech over {max_no_speech}"
            lines.append(
                f"| {name} | {sum(ok for ok, _ in outcomes)}/{len(results)} | {lost} | {again} | "
                f"{statistics.median(cost):.0f} | {statistics.mean(cost):.0f} | "
                f"{statistics.mean(cost) / base_mean:.2f} |"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 phrases, 3 variants")
    parser.add_argument("--phrases", type=int, help=f"how many of the {len(UTTERANCES)} [all; quick 3]")
    parser.add_argument("--repeats", type=int, default=3, help="decodes per window per clip [3]")
    parser.add_argument(
        "--windows",
        default=DEFAULT_WINDOWS,
        help=f"which of {', '.join(WINDOWS)}, comma-separated, 15s first [{DEFAULT_WINDOWS}]",
    )
    parser.add_argument("--seed", type=int, default=1, help="for the silences and the noise [1]")
    parser.add_argument("--out", help="write the raw results to this JSON file")
    parser.add_argument("--from", dest="source", help="report the results saved in this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    if args.source:
        saved = json.loads(Path(args.source).read_text())
        results = [Result(**r) for r in saved["results"]]
        print(report(results, saved["repeats"]))
        return
    count = args.phrases or (3 if args.quick else len(UTTERANCES))
    variants = [v for v in VARIANTS if not args.quick or v.name in QUICK_VARIANTS]
    clips = make_clips(UTTERANCES[:count], variants, args.seed, log)
    windows = args.windows.split(",")
    if windows[0] != "15s" or not set(windows) <= set(WINDOWS):
        raise SystemExit(f"--windows: 15s first, then any of {', '.join(WINDOWS)}")
    results = transcribe_all(clips, windows, args.repeats, log)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"repeats": args.repeats, "results": [asdict(r) for r in results]}, indent=1)
        )
        log(f"raw results in {args.out}")
    print()
    print(report(results, args.repeats))


if __name__ == "__main__":
    main()
