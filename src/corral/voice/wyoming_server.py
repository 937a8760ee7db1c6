"""The Wyoming protocol server: corral's Transcriber and Synthesizer offered to Home Assistant's
Assist pipeline and its satellites (`voice.wyoming` in corral.yaml, `corral voice wyoming`).

One connection carries requests one after another:

    describe                                  -> info (asr and tts programs)
    transcribe, audio-start, audio-chunk*, audio-stop -> transcript
    synthesize                                -> audio-start, audio-chunk*, audio-stop
    ping                                      -> pong

Audio may come at any rate, width (1-4 bytes) and channel count (1 or 2): it is converted to
16 kHz mono 16-bit as it arrives. A request that goes wrong (audio without audio-start, a format
we cannot convert, too much audio, an engine failure) is answered with one `error` event and the
connection stays usable; other connections never notice. The engines block, so they run in a
worker thread, one request at a time per engine (one model instance each).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from wyoming.asr import Transcribe
from wyoming.asr import Transcript as WyTranscript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize

from corral.errors import ConfigError
from corral.voice.engines import SAMPLE_RATE, Synthesizer, Transcriber, pcm16_to_float
from corral.voice.settings import WyomingConfig

log = logging.getLogger(__name__)

MAX_AUDIO_S = 120.0  # a voice command is seconds long; this bounds what one request may buffer
SAMPLES_PER_CHUNK = 1024  # audio-chunk size we send, as Piper's own Wyoming server does
_WIDTHS = (1, 2, 3, 4)
_CHANNELS = (1, 2)

_ATTRIBUTIONS = {
    "whisper": Attribution(
        "OpenAI Whisper, CTranslate2 by Systran", "https://github.com/SYSTRAN/faster-whisper"
    ),
    "pocketsphinx": Attribution("CMU Sphinx", "https://github.com/cmusphinx/pocketsphinx"),
    "piper": Attribution("Piper (Open Home Foundation)", "https://github.com/OHF-Voice/piper1-gpl"),
}


def _version() -> str | None:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(transcriber: Transcriber, synthesizer: Synthesizer) -> Info:
    """The info event: one ASR program with its model and one TTS program with its voice.

    Model ids and languages come from the engines' `model_id` / `voice_id` and `languages`
    attributes where they have them (corral's engines do; a test fake need not).
    """
    stt_attr = _ATTRIBUTIONS.get(transcriber.name, Attribution("corral", ""))
    tts_attr = _ATTRIBUTIONS.get(synthesizer.name, Attribution("corral", ""))
    stt_languages = list(getattr(transcriber, "languages", ("en",)))
    tts_languages = list(getattr(synthesizer, "languages", ("en_US",)))
    version = _version()
    model = AsrModel(
        name=str(getattr(transcriber, "model_id", transcriber.name)),
        attribution=stt_attr,
        installed=True,
        description=f"{transcriber.name} speech to text, served by corral",
        version=version,
        languages=stt_languages,
    )
    voice = TtsVoice(
        name=str(getattr(synthesizer, "voice_id", synthesizer.name)),
        attribution=tts_attr,
        installed=True,
        description=f"{synthesizer.name} voice at {synthesizer.sample_rate} Hz, served by corral",
        version=version,
        languages=tts_languages,
    )
    return Info(
        asr=[
            AsrProgram(
                name="corral-stt", attribution=stt_attr, installed=True,
                description="corral's offline speech to text", version=version, models=[model],
            )
        ],
        tts=[
            TtsProgram(
                name="corral-tts", attribution=tts_attr, installed=True,
                description="corral's offline text to speech", version=version, voices=[voice],
            )
        ],
    )  # fmt: skip


@dataclass
class WyomingVoice:
    """What every connection shares: the engines, one lock each, and the info answer."""

    transcriber: Transcriber
    synthesizer: Synthesizer
    stt_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tts_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.info = describe(self.transcriber, self.synthesizer)

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> WyomingHandler:
        return WyomingHandler(reader, writer, self)


class _RequestFailed(Exception):
    """Ends the current request with an error event; the connection goes on."""

    def __init__(self, code: str, text: str, *, logged: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.logged = logged  # an engine failure already logged with its traceback


@dataclass
class _AudioIn:
    """One audio stream being received for transcription, already at 16 kHz mono s16."""

    converter: AudioChunkConverter = field(
        default_factory=lambda: AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
    )
    pcm: bytearray = field(default_factory=bytearray)


def _check_format(rate: object, width: object, channels: object) -> None:
    if not (isinstance(rate, int) and 1000 <= rate <= 384_000):
        raise _RequestFailed("bad-audio-format", f"audio rate must be 1000-384000 Hz, not {rate!r}")
    if width not in _WIDTHS:
        raise _RequestFailed("bad-audio-format", f"audio width must be 1-4 bytes per sample, not {width!r}")
    if channels not in _CHANNELS:
        raise _RequestFailed(
            "bad-audio-format", f"audio must have 1 or 2 channels, not {channels!r}: mix it down first"
        )


class WyomingHandler(AsyncEventHandler):
    """One client connection."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, voice: WyomingVoice
    ) -> None:
        super().__init__(reader, writer)
        self.voice = voice
        self.peer = str(writer.get_extra_info("peername"))
        self._audio: _AudioIn | None = None
        self._refused = False  # the current audio stream was answered with an error: drop the rest

    async def run(self) -> None:
        try:
            await super().run()
        except (ConnectionError, EOFError) as exc:
            log.info("wyoming client %s went away mid-event (%s)", self.peer, type(exc).__name__)
        except Exception:
            log.exception("wyoming client %s sent something unreadable; connection closed", self.peer)

    async def disconnect(self) -> None:
        if self._audio is not None:
            log.info(
                "wyoming client %s hung up mid-stream; %.1f s of audio dropped",
                self.peer, len(self._audio.pcm) / (2 * SAMPLE_RATE),
            )  # fmt: skip
            self._audio = None

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._dispatch(event)
        except _RequestFailed as failure:
            if not failure.logged:
                log.warning("wyoming %s from %s refused: %s", event.type, self.peer, failure.text)
            return await self._send_error(failure.code, failure.text)
        except ConnectionError:
            log.info("wyoming client %s hung up during %s", self.peer, event.type)
            return False
        except Exception as exc:
            log.exception("wyoming %s from %s failed", event.type, self.peer)
            self._audio = None
            return await self._send_error("server-error", f"{event.type} failed: {exc}")
        return True

    async def _send_error(self, code: str, text: str) -> bool:
        try:
            await self.write_event(Error(text=text, code=code).event())
        except ConnectionError:
            return False
        return True

    async def _dispatch(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event(self.voice.info.event())
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        elif Transcribe.is_type(event.type):
            # One model, one language: a different language asked for is transcribed as ours.
            self._audio, self._refused = None, False
        elif AudioStart.is_type(event.type):
            self._audio, self._refused = None, False
            start = event.data or {}
            try:
                _check_format(start.get("rate"), start.get("width"), start.get("channels"))
            except _RequestFailed:
                self._refused = True
                raise
            self._audio = _AudioIn()
        elif AudioChunk.is_type(event.type):
            self._audio_chunk(event)
        elif AudioStop.is_type(event.type):
            await self._audio_stop()
        elif Synthesize.is_type(event.type):
            await self._synthesize(event)
        else:
            log.debug("wyoming client %s sent %s; ignored", self.peer, event.type)

    def _audio_chunk(self, event: Event) -> None:
        if self._refused:
            return
        if self._audio is None:
            self._refused = True
            raise _RequestFailed(
                "audio-without-start", "audio-chunk before audio-start: send transcribe and audio-start first"
            )
        try:
            chunk = AudioChunk.from_event(event)
            _check_format(chunk.rate, chunk.width, chunk.channels)
            if len(chunk.audio) % (chunk.width * chunk.channels):
                raise _RequestFailed(
                    "bad-audio-format",
                    f"audio-chunk of {len(chunk.audio)} bytes is not whole frames of "
                    f"{chunk.width} byte(s) x {chunk.channels} channel(s)",
                )
            self._audio.pcm += self._audio.converter.convert(chunk).audio
        except _RequestFailed:
            self._audio, self._refused = None, True
            raise
        except (KeyError, ValueError, TypeError) as exc:  # missing fields, audioop errors
            self._audio, self._refused = None, True
            raise _RequestFailed("bad-audio-format", f"audio-chunk could not be read: {exc}") from exc
        if len(self._audio.pcm) > MAX_AUDIO_S * SAMPLE_RATE * 2:
            self._audio, self._refused = None, True
            raise _RequestFailed(
                "audio-too-long",
                f"more than {MAX_AUDIO_S:.0f} s of audio in one request: send audio-stop sooner",
            )

    async def _audio_stop(self) -> None:
        audio_in, refused = self._audio, self._refused
        self._audio, self._refused = None, False
        if refused:
            return  # already answered with an error
        if audio_in is None:
            raise _RequestFailed(
                "audio-without-start", "audio-stop without audio-start: nothing to transcribe"
            )
        audio = pcm16_to_float(bytes(audio_in.pcm))
        async with self.voice.stt_lock:
            try:
                transcript = await asyncio.to_thread(self.voice.transcriber.transcribe, audio)
            except Exception as exc:
                log.exception(
                    "transcribing %.1f s for wyoming client %s failed", audio.size / SAMPLE_RATE, self.peer
                )
                raise _RequestFailed("stt-failed", f"speech to text failed: {exc}", logged=True) from exc
        log.info(
            "wyoming transcript for %s: %.1f s of audio in %.2f s: %r",
            self.peer, transcript.audio_s, transcript.elapsed_s, transcript.text,
        )  # fmt: skip
        language = self.voice.info.asr[0].models[0].languages[0]
        await self.write_event(WyTranscript(text=transcript.text, language=language).event())

    async def _synthesize(self, event: Event) -> None:
        text = (event.data or {}).get("text")
        if not isinstance(text, str):
            raise _RequestFailed("bad-request", "synthesize needs a text string")
        synthesizer = self.voice.synthesizer
        rate = synthesizer.sample_rate
        started = False
        async with self.voice.tts_lock:
            pieces: Iterator[bytes] = iter(())
            try:
                pieces = iter(await asyncio.to_thread(synthesizer.synthesize, text))
                while (pcm := await asyncio.to_thread(next, pieces, None)) is not None:
                    if not started:
                        await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                        started = True
                    step = SAMPLES_PER_CHUNK * 2
                    for offset in range(0, len(pcm), step):
                        piece = pcm[offset : offset + step]
                        await self.write_event(
                            AudioChunk(rate=rate, width=2, channels=1, audio=piece).event()
                        )
            except ConnectionError:
                raise
            except Exception as exc:
                log.exception("synthesizing %d characters for wyoming client %s failed", len(text), self.peer)
                raise _RequestFailed("tts-failed", f"text to speech failed: {exc}", logged=True) from exc
            finally:
                close = getattr(pieces, "close", None)
                # Cancelled while a worker thread runs the generator: it cannot be closed now and
                # is dropped when that sentence is done.
                if callable(close):
                    with contextlib.suppress(ValueError):
                        close()
        if not started:  # nothing to say (empty text): an empty stream
            await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        await self.write_event(AudioStop().event())


async def serve_wyoming(
    config: WyomingConfig,
    transcriber: Transcriber,
    synthesizer: Synthesizer,
    *,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Serve Wyoming on `config.host:config.port` until cancelled; `on_listening(host, port)` is
    called once the socket accepts connections."""
    voice = WyomingVoice(transcriber, synthesizer)
    server = _TcpServer(config.host, config.port)
    try:
        await server.start(voice.handler)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve Wyoming on {config.host}:{config.port} ({exc.strerror}); stop what uses it, "
            "or set voice.wyoming.port in corral.yaml (or pass --port)"
        ) from None
    log.info(
        "wyoming server listening on %s:%d (%s, %s)",
        config.host, config.port, transcriber.name, synthesizer.name,
    )  # fmt: skip
    try:
        if on_listening is not None:
            on_listening(config.host, config.port)
        await asyncio.Future()  # until cancelled
    finally:
        await server.close()


class _TcpServer(AsyncTcpServer):
    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, end every connection and wait for their handlers (cancelling any still
        busy after `grace_s`), so nothing outlives the server."""
        await self.stop()
        tasks = list(self._handlers)
        if tasks:
            _, busy = await asyncio.wait(tasks, timeout=grace_s)
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
