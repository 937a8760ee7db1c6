"""Voice's HTTP surface: GET /api/voice (status), POST and PATCH /api/voice/offer (SmallWebRTC:
SDP offer in, answer out; ICE candidates) and the /ws/voice WebSocket (PCM16 + JSON). All behind
the API keys or the browser's login."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from starlette.requests import HTTPConnection

from corral.errors import AuthError, CorralError, RetryLaterError
from corral.gateway.auth import Scope
from corral.gateway.proxy import parse_body, read_body

if TYPE_CHECKING:
    from corral.voice.service import VoiceService

Authorize = Callable[[HTTPConnection, Scope], Any]
START_WAIT_S = 10.0  # for the client's {"type": "start"}
START_HINT = 'send {"type": "start", "session": "...", "sample_rate": 16000} first'


def install_voice_routes(app: FastAPI, voice: VoiceService, authorize: Authorize) -> None:
    @app.get("/api/voice", tags=["voice"])
    async def voice_status(request: Request) -> dict[str, Any]:
        """Whether the speech engines are loaded, which ones, and the open sessions."""
        authorize(request, "user")
        return voice.status()

    @app.post("/api/voice/offer", tags=["voice"])
    async def voice_offer(request: Request) -> dict[str, Any]:
        """A WebRTC offer {sdp, type: "offer", session?, mode?, pc_id?, restart_pc?} -> the answer
        {sdp, type, pc_id, session}; the session's pipeline starts when the peer connects."""
        authorize(request, "user")
        body = parse_body(await read_body(request, 256 * 1024))
        return await voice.answer_offer(body)

    @app.patch("/api/voice/offer", tags=["voice"])
    async def voice_ice(request: Request) -> dict[str, Any]:
        """Trickled ICE candidates {pc_id, candidates: [{candidate, sdp_mid, sdp_mline_index}]}."""
        authorize(request, "user")
        body = parse_body(await read_body(request, 256 * 1024))
        await voice.add_ice_candidates(body)
        return {"status": "ok"}

    @app.websocket("/ws/voice")
    async def voice_socket(socket: WebSocket) -> None:
        await _voice_socket(socket, voice, authorize)


async def _refuse(socket: WebSocket, code: int, message: str) -> None:
    with contextlib.suppress(Exception):
        await socket.send_text(json.dumps({"type": "error", "message": message}))
        await socket.close(code=code, reason=message[:120])


async def _voice_socket(socket: WebSocket, voice: VoiceService, authorize: Authorize) -> None:
    """The first message must be {"type": "start", "sample_rate": 16000} (with, if wanted,
    "session", "mode": "handsfree"|"ptt", "workflow", "stt_mode": "incremental"|"segmented");
    then binary PCM16 audio flows up, and audio and JSON messages flow down."""
    from corral.voice.processors import parse_start

    try:
        authorize(socket, "user")
    except AuthError as exc:
        # Accept, then close with 1008 and the reason: a refused handshake reaches a browser as
        # a bare 1006 with no reason at all.
        await socket.accept()
        await socket.close(code=1008, reason=exc.message[:120])
        return
    await socket.accept()
    try:
        async with asyncio.timeout(START_WAIT_S):
            first = await socket.receive()
    except TimeoutError:
        await _refuse(socket, 1002, f"no start message in {START_WAIT_S:g} s: {START_HINT}")
        return
    except WebSocketDisconnect:
        return
    if first.get("type") == "websocket.disconnect":
        return
    text = first.get("text")
    try:
        message = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        message = None
    session, problem = parse_start(message)
    if session is None:
        await _refuse(
            socket, 1003 if isinstance(message, dict) and message.get("type") == "start" else 1002, problem
        )
        return
    assert isinstance(message, dict)
    mode = str(message.get("mode") or "handsfree")
    stt_mode = message.get("stt_mode") if message.get("stt_mode") in ("incremental", "segmented") else None
    try:
        workflow = voice.check_workflow(message.get("workflow"))
    except CorralError as exc:
        await _refuse(socket, 1008, exc.message)
        return
    try:
        engines = await voice.engines()
    except RetryLaterError as exc:
        await _refuse(socket, 1013, exc.message)
        return
    except CorralError as exc:
        await _refuse(socket, 1011, exc.message)
        return
    # The session runs in its own task: if this handler is cancelled (the server stops), the
    # session is told to end and tears its pipeline down by itself.
    serving = asyncio.create_task(
        voice.serve_websocket(
            socket,
            voice.new_session_id(session),
            mode=mode,
            stt_mode=stt_mode,
            workflow=workflow,
            engines=engines,
        ),
        name="voice-websocket",
    )
    try:
        await asyncio.shield(serving)
    except CorralError as exc:
        await _refuse(socket, 1008, exc.message)
    except asyncio.CancelledError:
        serving.cancel()
        raise
