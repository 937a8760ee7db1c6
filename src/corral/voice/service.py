"""VoiceService: the voice runtime inside `corral up`. It loads the speech engines in the
background and keeps them warm (each with one worker thread), builds a pipecat pipeline per
connection (WebSocket or SmallWebRTC), tracks the open sessions, serves Wyoming when asked and
owns the voice metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from corral.agent.service import AgentService
from corral.errors import BadRequestError, CorralError, RetryLaterError
from corral.tasks import TaskOwner
from corral.voice.engines import SAMPLE_RATE, Synthesizer, Transcriber, pcm16_to_float
from corral.voice.metrics import VoiceMetrics
from corral.voice.pipeline import Engines, SharedSmartTurn, VoicePipeline, build_pipeline, quiet_pipecat_logs
from corral.voice.processors import SttMode, VoiceSerializer
from corral.voice.settings import VoiceConfig

if TYPE_CHECKING:
    from fastapi import WebSocket

log = logging.getLogger("corral.voice")

DEFAULT_WORKFLOW = "voice"
WEBRTC_OUT_RATE = 24_000  # what pipecat's WebRTC track is tested with; Opus resamples anyway


@dataclass
class VoiceSession:
    id: str
    transport: str
    pipeline: VoicePipeline
    started: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        conversation = self.pipeline.conversation
        return {
            "session": self.id,
            "transport": self.transport,
            "started": self.started,
            "turns": conversation.turns,
            "busy": conversation.busy,
        }


def measure_stt_cost(transcriber: Transcriber, synthesizer: Synthesizer) -> float:
    """Seconds of transcription per extra second of audio, from a short and a long clip of
    the voice itself (blocking, ~2 transcriptions)."""
    import numpy as np
    import soxr  # type: ignore[import-untyped]

    pcm = b"".join(synthesizer.synthesize(CALIBRATION_TEXT))
    spoken = pcm16_to_float(pcm)
    audio = np.asarray(soxr.resample(spoken, synthesizer.sample_rate, SAMPLE_RATE), dtype=np.float32)
    short = audio[: int(0.8 * SAMPLE_RATE)]
    if len(audio) < 2 * len(short):
        raise ValueError("the calibration clip is too short")
    timings = []
    for clip in (short, audio):
        started = time.perf_counter()
        transcriber.transcribe(clip)
        timings.append(time.perf_counter() - started)
    return max(0.0, (timings[1] - timings[0]) / ((len(audio) - len(short)) / SAMPLE_RATE))


CALIBRATION_TEXT = "Corral is checking how fast it can write down what people say on this machine."


class VoiceService:
    def __init__(
        self,
        config: VoiceConfig,
        agent: AgentService,
        *,
        registry: CollectorRegistry | None = None,
        cpu_flags: frozenset[str] = frozenset(),
        models_dir: Path | None = None,
        engines: Engines | None = None,
        stt_mode: SttMode = "incremental",
    ) -> None:
        self.config = config
        self.agent = agent
        self.metrics = VoiceMetrics(registry)
        self.cpu_flags = cpu_flags
        self.models_dir = models_dir
        self.stt_mode: SttMode = stt_mode
        self.error: str | None = None
        self.workflow_error: str | None = None  # voice.workflow was missing when voice started
        self.sessions: dict[str, VoiceSession] = {}
        self._engines = engines
        self._loaded = asyncio.Event()
        self._tasks = TaskOwner()
        self._executors: list[ThreadPoolExecutor] = []
        self._webrtc: Any = None
        self._started = False
        if engines is not None:
            self._loaded.set()

    @property
    def workflow(self) -> str:
        return self.config.workflow or DEFAULT_WORKFLOW

    @property
    def ready(self) -> bool:
        return self._engines is not None

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns at once; the engines load (and warm up) in the background."""
        if self._started:
            return
        self._started = True
        quiet_pipecat_logs()
        self.workflow_error = None
        if self.agent.started:
            try:
                self.agent.library.get(self.workflow)
            except CorralError as exc:  # a workflow saved later (e.g. in the UI) still works
                self.workflow_error = f"voice.workflow {self.workflow!r}: {exc}"
                log.warning(
                    "%s; voice turns will fail until it exists: save it, or set voice.workflow in "
                    "corral.yaml to one of them",
                    self.workflow_error,
                )
        if self._engines is None:
            self._tasks.spawn(self._load(), "voice-engines")
        elif self.config.wyoming.enabled:
            self._tasks.spawn(self._serve_wyoming(self._engines), "voice-wyoming")

    async def stop(self) -> None:
        sessions = list(self.sessions.values())
        for session in sessions:
            with contextlib.suppress(Exception):
                await session.pipeline.cancel("corral is stopping")
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._webrtc is not None:
            with contextlib.suppress(Exception):
                await self._webrtc.close()
        await self._tasks.close()
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
        self._started = False

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            engines = await asyncio.to_thread(self._load_engines)
        except Exception as exc:
            self.error = f"the speech engines did not load: {exc}"
            log.error("%s; voice is off until corral restarts (see `corral models`)", self.error)
            self._loaded.set()
            return
        self._engines = engines
        self._loaded.set()
        log.info(
            "voice ready in %.1f s: %s speech to text, %s voice at %d Hz, workflow %r",
            time.perf_counter() - started, engines.transcriber.name, engines.synthesizer.name,
            engines.synthesizer.sample_rate, self.workflow,
        )  # fmt: skip
        if self.config.wyoming.enabled:
            await self._serve_wyoming(engines)

    def _load_engines(self) -> Engines:
        """Blocking: load, assemble and warm the engines and the turn model (a worker thread)."""
        from corral.voice.stt import load_transcriber
        from corral.voice.tts import load_synthesizer

        transcriber: Transcriber = load_transcriber(
            self.config.stt, self.cpu_flags, models_dir=self.models_dir
        )
        synthesizer: Synthesizer = load_synthesizer(self.config.tts)
        SharedSmartTurn.warm()
        engines = Engines(transcriber, synthesizer, self._executor("voice-stt"), self._executor("voice-tts"))
        try:
            engines.stt_cost_per_audio_s = measure_stt_cost(transcriber, synthesizer)
        except Exception as exc:  # a measurement, not a requirement
            log.warning("could not measure the speech-to-text cost: %s", exc)
        log.info(
            "speech to text costs %s s per extra second of audio: %s",
            "?" if engines.stt_cost_per_audio_s is None else f"{engines.stt_cost_per_audio_s:.3f}",
            "incremental STT transcribes stretches"
            if engines.stt_proportional
            else "incremental STT transcribes the turn so far at each pause",
        )
        return engines

    def _executor(self, name: str) -> ThreadPoolExecutor:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._executors.append(executor)
        return executor

    async def _serve_wyoming(self, engines: Engines) -> None:
        from corral.voice.wyoming_server import serve_wyoming

        try:
            await serve_wyoming(self.config.wyoming, engines.transcriber, engines.synthesizer)
        except CorralError as exc:
            log.error("the Wyoming server did not start: %s", exc.message)

    async def engines(self, within: float = 40.0) -> Engines:
        """The warm engines, waiting up to `within` seconds while they load."""
        if self._engines is None and not self._loaded.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._loaded.wait()
        if self._engines is not None:
            return self._engines
        if self.error is not None:
            raise CorralError(f"{self.error}; fix it (see the log and `corral models`) and restart corral")
        raise RetryLaterError(
            "the speech models are still loading; try again in a few seconds", retry_after_s=5
        )

    def status(self) -> dict[str, Any]:
        engines = self._engines
        return {
            "ready": engines is not None,
            "error": self.error,
            "workflow": self.workflow,
            "workflow_error": self.workflow_error,
            "stt": engines.transcriber.name if engines else None,
            "tts": engines.synthesizer.name if engines else None,
            "sample_rate": engines.synthesizer.sample_rate if engines else None,
            "stt_mode": self.stt_mode,
            "stt_cost_per_audio_s": engines.stt_cost_per_audio_s if engines else None,
            "turn": self.config.turn.model_dump(),
            "wyoming": self.config.wyoming.model_dump() if self.config.wyoming.enabled else None,
            "sessions": [s.to_json() for s in self.sessions.values()],
        }

    # --- sessions -----------------------------------------------------------------------------

    def new_session_id(self, requested: str | None) -> str:
        return requested or f"voice-{uuid.uuid4().hex[:12]}"

    def check_workflow(self, name: object) -> str | None:
        """A client's choice of workflow (None: voice.workflow), checked to exist now rather
        than at the first turn."""
        if name is None or name == "":
            return None
        if not isinstance(name, str):
            raise BadRequestError("workflow must be the name of a workflow (GET /api/workflows)")
        self.agent.library.get(name)  # NotFoundError names the workflows there are
        return name

    def _pipeline(
        self,
        transport: Any,
        engines: Engines,
        session: str,
        *,
        out_rate: int,
        mode: str = "handsfree",
        announce_interruptions: bool = False,
        stt_mode: SttMode | None = None,
        workflow: str | None = None,
    ) -> VoicePipeline:
        turn = self.config.turn
        if mode == "ptt":  # the client sends a short silence tail after the button is let go
            turn = turn.model_copy(update={"max_silence_s": min(turn.max_silence_s, 0.8)})
        ready = {
            "type": "ready",
            "sample_rate": out_rate,
            "session": session,
            "stt": engines.transcriber.name,
            "tts": engines.synthesizer.name,
            "workflow": workflow or self.workflow,
        }
        return build_pipeline(
            transport,
            engines=engines,
            agent=self.agent,
            workflow=workflow or self.workflow,
            session=session,
            turn=turn,
            out_sample_rate=out_rate,
            metrics=self.metrics,
            mode=stt_mode or self.stt_mode,
            ready=ready,
            announce_interruptions=announce_interruptions,
        )

    async def _run(self, session: VoiceSession) -> None:
        if session.id in self.sessions:
            raise BadRequestError(f"voice session {session.id!r} is already open; close it or use another id")
        self.sessions[session.id] = session
        gauge = self.metrics.sessions.labels(session.transport)
        gauge.inc()
        try:
            await session.pipeline.run()
        except asyncio.CancelledError:
            await session.pipeline.cancel("the connection handler was cancelled")
            raise
        finally:
            gauge.dec()
            self.sessions.pop(session.id, None)
            log.info("voice session %s (%s) ended after %d turn(s)", session.id, session.transport,
                     session.pipeline.conversation.turns)  # fmt: skip

    async def serve_websocket(
        self,
        websocket: WebSocket,
        session: str,
        *,
        mode: str = "handsfree",
        stt_mode: SttMode | None = None,
        workflow: str | None = None,
        engines: Engines | None = None,
    ) -> None:
        """Run a voice session over an accepted WebSocket whose client already sent "start";
        returns when the client disconnects or sends "stop"."""
        from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

        engines = engines or await self.engines()
        rate = engines.synthesizer.sample_rate
        params = FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_in_sample_rate=16_000,
            audio_out_enabled=True,
            audio_out_sample_rate=rate,
            audio_out_end_silence_secs=0,
            serializer=VoiceSerializer(rate),
            allowed_origins=[],  # authorize() already checked the origin of a cookie login
        )
        transport = FastAPIWebsocketTransport(websocket, params)
        pipeline = self._pipeline(
            transport, engines, session, out_rate=rate, mode=mode, stt_mode=stt_mode, workflow=workflow
        )

        async def _gone(_transport: Any, _socket: Any) -> None:
            await pipeline.cancel("the client disconnected")

        transport.add_event_handler("on_client_disconnected", _gone)

        await self._run(VoiceSession(session, "websocket", pipeline, task=asyncio.current_task()))

    async def answer_offer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The SDP answer to a browser's WebRTC offer; its session's pipeline starts once the
        peer connects (a renegotiation of a known pc_id keeps its session)."""
        from pipecat.transports.base_transport import TransportParams
        from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
        from pipecat.transports.smallwebrtc.request_handler import (
            SmallWebRTCRequest,
            SmallWebRTCRequestHandler,
        )
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

        sdp, kind = body.get("sdp"), body.get("type", "offer")
        if not isinstance(sdp, str) or not sdp.strip() or kind != "offer":
            raise BadRequestError(
                'send {"sdp": "<the offer>", "type": "offer", "session": "..."}', param="sdp"
            )
        engines = await self.engines()
        requested = body.get("session")
        session = self.new_session_id(requested if isinstance(requested, str) else None)
        mode = str(body.get("mode") or "handsfree")
        workflow = self.check_workflow(body.get("workflow"))
        if self._webrtc is None:
            self._webrtc = SmallWebRTCRequestHandler(ice_servers=[])  # offline: host candidates only
        request = SmallWebRTCRequest(
            sdp=sdp,
            type=kind,
            pc_id=body.get("pc_id") if isinstance(body.get("pc_id"), str) else None,
            restart_pc=bool(body.get("restart_pc")),
        )

        async def connected(connection: SmallWebRTCConnection) -> None:
            params = TransportParams(
                audio_in_enabled=True,
                audio_in_sample_rate=16_000,
                audio_out_enabled=True,
                audio_out_sample_rate=WEBRTC_OUT_RATE,
                audio_out_end_silence_secs=0,
            )
            transport = SmallWebRTCTransport(connection, params)
            pipeline = self._pipeline(
                transport,
                engines,
                session,
                out_rate=WEBRTC_OUT_RATE,
                mode=mode,
                announce_interruptions=True,
                workflow=workflow,
            )

            async def _gone(_transport: Any, _client: Any) -> None:
                await pipeline.cancel("the peer disconnected")

            transport.add_event_handler("on_client_disconnected", _gone)

            voice_session = VoiceSession(session, "webrtc", pipeline)
            voice_session.task = self._tasks.spawn(self._run(voice_session), f"voice-webrtc-{session}")

        try:
            answer = await self._webrtc.handle_web_request(request, connected)
        except CorralError:
            raise
        except Exception as exc:
            raise BadRequestError(f"the WebRTC offer was refused ({exc}); send a fresh offer") from exc
        if not answer:
            raise BadRequestError("the WebRTC offer produced no answer; send a fresh offer")
        return {**answer, "session": session}

    async def add_ice_candidates(self, body: dict[str, Any]) -> None:
        from pipecat.transports.smallwebrtc.request_handler import IceCandidate, SmallWebRTCPatchRequest

        pc_id = body.get("pc_id")
        candidates = body.get("candidates")
        if not isinstance(pc_id, str) or not isinstance(candidates, list):
            raise BadRequestError(
                'send {"pc_id": "...", "candidates": [{"candidate": "...", "sdp_mid": "0", '
                '"sdp_mline_index": 0}]}'
            )
        if self._webrtc is None:
            raise BadRequestError(f"no WebRTC peer {pc_id!r}; POST /api/voice/offer first")
        patch = SmallWebRTCPatchRequest(
            pc_id=pc_id,
            candidates=[
                IceCandidate(
                    candidate=str(c.get("candidate", "")),
                    sdp_mid=str(c.get("sdp_mid", c.get("sdpMid", "0"))),
                    sdp_mline_index=int(c.get("sdp_mline_index", c.get("sdpMLineIndex")) or 0),
                )
                for c in candidates
                if isinstance(c, dict)
            ],
        )
        await self._webrtc.handle_patch_request(patch)
