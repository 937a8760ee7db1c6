"""corral's Wyoming server driven by the wyoming package's own client, as Home Assistant would:
describe, transcribe Piper speech sent at other rates and formats, synthesize, and clients that
misbehave (audio without audio-start, a format we cannot take, a hang-up mid-stream, an engine
that fails) without harming the next request or the next client."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize

from corral.voice.engines import SAMPLE_RATE, Audio, Synthesizer, Transcriber
from corral.voice.engines import Transcript as CorralTranscript
from corral.voice.settings import SttConfig, WyomingConfig
from corral.voice.stt import load_transcriber
from corral.voice.wyoming_server import serve_wyoming
from tests.fixtures.speech import piper, resample, rms, synthesize_wav

READ_TIMEOUT_S = 120  # a guard against a hung test, not a measurement

# --- the server in the test's event loop -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running(transcriber: Transcriber, synthesizer: Synthesizer) -> AsyncIterator[int]:
    port = _free_port()
    listening = asyncio.Event()
    server = asyncio.create_task(
        serve_wyoming(
            WyomingConfig(host="127.0.0.1", port=port),
            transcriber,
            synthesizer,
            on_listening=lambda _h, _p: listening.set(),
        )
    )
    waiter = asyncio.create_task(listening.wait())
    await asyncio.wait([server, waiter], return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        waiter.cancel()
        server.result()  # raises why it could not start
    try:
        yield port
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


def client(port: int) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", port, connect_timeout=10, read_timeout=READ_TIMEOUT_S)


async def read(c: AsyncTcpClient) -> Event:
    event = await c.read_event()
    assert event is not None, "the server closed the connection"
    return event


def wav_events(path: Path, samples_per_chunk: int = 1024) -> Iterator[Event]:
    with wave.open(str(path), "rb") as wav:
        rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
        yield AudioStart(rate=rate, width=width, channels=channels).event()
        while frames := wav.readframes(samples_per_chunk):
            yield AudioChunk(rate=rate, width=width, channels=channels, audio=frames).event()
    yield AudioStop().event()


def pcm_events(audio: Audio, rate: int, width: int, channels: int) -> Iterator[Event]:
    """`audio` (float32 at 16 kHz) re-encoded at `rate` with `width` bytes and `channels`."""
    at_rate = resample(audio, SAMPLE_RATE, rate)
    scale = float(2 ** (8 * width - 1) - 1)
    ints = np.round(np.clip(at_rate, -1.0, 1.0) * scale).astype(f"<i{width}")
    pcm = np.repeat(ints, channels).tobytes()  # interleaved: the same signal on each channel
    frame = width * channels
    yield AudioStart(rate=rate, width=width, channels=channels).event()
    step = 2048 * frame
    for offset in range(0, len(pcm), step):
        yield AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[offset : offset + step]).event()
    yield AudioStop().event()


async def transcribe(c: AsyncTcpClient, events: Iterator[Event]) -> Event:
    await c.write_event(Transcribe(language="en").event())
    for event in events:
        await c.write_event(event)
    return await read(c)


def words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


# --- with the real engines ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Transcriber, Synthesizer]:
    transcriber = load_transcriber(
        SttConfig(engine="auto"), frozenset({"avx"}), models_dir=tmp_path_factory.mktemp("models")
    )
    return transcriber, piper()


@pytest.fixture
async def port(engines: tuple[Transcriber, Synthesizer]) -> AsyncIterator[int]:
    async with running(*engines) as bound:
        yield bound


@pytest.mark.slow
async def test_describe_lists_speech_to_text_and_text_to_speech(port: int) -> None:
    async with client(port) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await read(c))
    assert [p.name for p in info.asr] == ["corral-stt"]
    assert [m.name for m in info.asr[0].models] == ["whisper-base"]
    assert info.asr[0].models[0].languages == ["en"]
    assert [v.name for v in info.tts[0].voices] == ["en_US-joe-medium"]
    assert info.tts[0].voices[0].languages == ["en_US"]
    assert info.asr[0].installed and info.tts[0].installed


@pytest.mark.slow
async def test_transcribes_a_wav_sent_at_piper_rate(port: int) -> None:
    _, wav = synthesize_wav("turn on the kitchen lights", rate=22050)
    with wave.open(str(wav)) as check:
        assert check.getframerate() == 22050
    async with client(port) as c:
        event = await transcribe(c, wav_events(wav))
    assert Transcript.is_type(event.type), event
    transcript = Transcript.from_event(event)
    assert {"turn", "on", "kitchen", "lights"} <= words(transcript.text), transcript.text
    assert transcript.language == "en"


@pytest.mark.slow
@pytest.mark.parametrize(("rate", "width", "channels"), [(48000, 2, 2), (44100, 4, 1), (8000, 2, 1)])
async def test_transcribes_other_rates_widths_and_channels(
    port: int, rate: int, width: int, channels: int
) -> None:
    audio, _ = synthesize_wav("set a timer for ten minutes")
    async with client(port) as c:
        event = await transcribe(c, pcm_events(audio, rate, width, channels))
    assert Transcript.is_type(event.type), event
    assert {"timer", "minutes"} <= words(Transcript.from_event(event).text)


@pytest.mark.slow
async def test_synthesize_streams_audio_at_the_voice_rate(port: int) -> None:
    async with client(port) as c:
        await c.write_event(Synthesize(text="Turn on the kitchen lights. Then lock the door.").event())
        start = await read(c)
        assert AudioStart.is_type(start.type), start
        assert (start.data["rate"], start.data["width"], start.data["channels"]) == (22050, 2, 1)
        pcm = b""
        chunks = 0
        while not AudioStop.is_type((event := await read(c)).type):
            assert AudioChunk.is_type(event.type), event
            pcm += AudioChunk.from_event(event).audio
            chunks += 1
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    assert chunks > 1
    assert audio.size / 22050 > 1.5
    assert rms(audio) > 0.05


@pytest.mark.slow
async def test_audio_without_audio_start_is_an_error_and_the_connection_goes_on(port: int) -> None:
    _, wav = synthesize_wav("what is the weather like tomorrow", rate=22050)
    stray = AudioChunk(rate=16000, width=2, channels=1, audio=b"\x01\x00" * 1600).event()
    async with client(port) as c:
        await c.write_event(Transcribe().event())
        for _ in range(3):
            await c.write_event(stray)
        await c.write_event(AudioStop().event())
        error = await read(c)
        assert Error.is_type(error.type), error
        assert Error.from_event(error).code == "audio-without-start"
        assert "audio-start" in Error.from_event(error).text
        # One error per bad request; the same connection then works.
        event = await transcribe(c, wav_events(wav))
        assert Transcript.is_type(event.type), event
        assert "weather" in words(Transcript.from_event(event).text)


@pytest.mark.slow
async def test_a_format_we_cannot_convert_is_refused(port: int) -> None:
    async with client(port) as c:
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(rate=16000, width=2, channels=6).event())
        await c.write_event(AudioChunk(rate=16000, width=2, channels=6, audio=b"\x00" * 1200).event())
        await c.write_event(AudioStop().event())
        error = Error.from_event(await read(c))
        assert error.code == "bad-audio-format" and "mix it down" in error.text
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\x00" * 3).event())
        error = Error.from_event(await read(c))
        assert error.code == "bad-audio-format" and "whole frames" in error.text
        await c.write_event(AudioStop().event())
        await c.write_event(Ping(text="still there?").event())
        assert Pong.from_event(await read(c)).text == "still there?"


@pytest.mark.slow
async def test_a_client_hanging_up_mid_stream_does_not_break_the_next(port: int) -> None:
    _, wav = synthesize_wav("turn on the kitchen lights", rate=22050)
    events = list(wav_events(wav))
    async with client(port) as rude:
        await rude.write_event(Transcribe().event())
        for event in events[: len(events) // 2]:
            await rude.write_event(event)
    async with client(port) as rude_tts:  # asks for speech and leaves before reading it
        await rude_tts.write_event(Synthesize(text="A long answer. " * 20).event())
    async with client(port) as polite:
        event = await transcribe(polite, iter(events))
    assert "kitchen" in words(Transcript.from_event(event).text)


@pytest.mark.slow
async def test_silence_over_wyoming_is_an_empty_transcript(port: int) -> None:
    async with client(port) as c:
        event = await transcribe(c, pcm_events(np.zeros(SAMPLE_RATE, dtype=np.float32), 16000, 2, 1))
    assert Transcript.from_event(event).text == ""


@pytest.mark.slow
async def test_two_clients_at_once_both_get_answers(port: int) -> None:
    _, wav = synthesize_wav("set a timer for ten minutes", rate=22050)

    async def one() -> str:
        async with client(port) as c:
            return Transcript.from_event(await transcribe(c, wav_events(wav))).text

    texts = await asyncio.gather(one(), one())
    assert all("timer" in words(t) for t in texts), texts


# --- with engines that fail (fast: no models) --------------------------------------------------


@dataclass
class BrokenTranscriber:
    name: str = "broken"

    def transcribe(self, audio: Audio) -> CorralTranscript:
        raise RuntimeError("the model file is damaged")


@dataclass
class HalfSynthesizer:
    """Says one sentence, then fails."""

    name: str = "half"
    sample_rate: int = 16000

    def synthesize(self, text: str) -> Iterator[bytes]:
        if not text:
            return
        yield b"\x10\x00" * 4000
        raise RuntimeError("onnxruntime ran out of memory")


async def test_engine_failures_end_the_request_not_the_server() -> None:
    async with running(BrokenTranscriber(), HalfSynthesizer()) as bound:
        async with client(bound) as c:
            error = Error.from_event(
                await transcribe(c, pcm_events(np.full(SAMPLE_RATE, 0.1, dtype=np.float32), 16000, 2, 1))
            )
            assert error.code == "stt-failed" and "damaged" in error.text
            await c.write_event(Synthesize(text="Hello. Goodbye.").event())
            assert AudioStart.is_type((await read(c)).type)
            while AudioChunk.is_type((event := await read(c)).type):
                pass
            error = Error.from_event(event)
            assert error.code == "tts-failed" and "out of memory" in error.text
            await c.write_event(Describe().event())
            info = Info.from_event(await read(c))
            assert info.asr[0].models[0].name == "broken"
        async with client(bound) as other:
            await other.write_event(Ping().event())
            assert Pong.is_type((await read(other)).type)


async def test_empty_text_gives_an_empty_audio_stream() -> None:
    async with running(BrokenTranscriber(), HalfSynthesizer()) as bound, client(bound) as c:
        await c.write_event(Synthesize(text="").event())
        assert AudioStart.is_type((await read(c)).type)
        assert AudioStop.is_type((await read(c)).type)


async def test_a_busy_port_is_a_config_error() -> None:
    from corral.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=r"voice\.wyoming\.port"):
            await serve_wyoming(
                WyomingConfig(host="127.0.0.1", port=taken), BrokenTranscriber(), HalfSynthesizer()
            )
