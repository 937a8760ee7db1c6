"""FakeBackend: an in-memory OpenAI-compatible backend with a set speed and scripted failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import httpx

from corral.backends import BackendResponse, BackendState


@dataclass
class FakeResponse:
    status_code: int
    chunks: list[bytes]
    delay_per_chunk_s: float = 0.0
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    closed: bool = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.delay_per_chunk_s:
                await asyncio.sleep(self.delay_per_chunk_s)
            yield chunk

    async def aread(self) -> bytes:
        if self.delay_per_chunk_s:
            await asyncio.sleep(self.delay_per_chunk_s * len(self.chunks))
        return b"".join(self.chunks)

    async def aclose(self) -> None:
        self.closed = True


class FakeBackend:
    """Answers every request with `reply`, at `tokens_per_second`, unless told to fail.

    `fail_connect` makes `open` raise httpx.ConnectError; `status_code` >= 400 answers with an
    OpenAI-format error. `requests` records each (path, decoded body) for assertions.
    """

    def __init__(
        self,
        name: str,
        expert: str,
        *,
        reply: str = "hello from fake",
        tokens_per_second: float = 1000.0,
        slots: int = 2,
        healthy: bool = True,
        fail_connect: bool = False,
        status_code: int = 200,
        error_body: dict[str, object] | None = None,
        model_id: str = "fake-model",
        upstream_model: str | None = None,
    ) -> None:
        self.name = name
        self.expert = expert
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.reply = reply
        self.tokens_per_second = tokens_per_second
        self.fail_connect = fail_connect
        self.status_code = status_code
        self.error_body = error_body
        self.state = BackendState(slots=slots)
        self.state.set_status("ready" if healthy else "crashed")
        self.requests: list[tuple[str, dict[str, object]]] = []
        self.responses: list[FakeResponse] = []

    async def open(self, path: str, body: bytes) -> BackendResponse:
        self.requests.append((path, json.loads(body)))
        if self.fail_connect:
            raise httpx.ConnectError(f"fake {self.name} refuses connections")
        if self.status_code >= 400:
            payload = self.error_body or {"error": {"message": "fake failure", "type": "server_error"}}
            response = FakeResponse(self.status_code, [json.dumps(payload).encode()])
        else:
            response = self._answer(path, json.loads(body))
        self.responses.append(response)
        return response

    def _answer(self, path: str, body: dict[str, object]) -> FakeResponse:
        words = self.reply.split(" ")
        delay = 1.0 / self.tokens_per_second
        timings = {"predicted_n": len(words), "predicted_ms": 1000.0 * len(words) * delay}
        created = int(time.time())
        if path.endswith("/embeddings"):
            vectors: dict[str, object] = {
                "object": "list",
                "model": self.model_id,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
            }
            return FakeResponse(200, [json.dumps(vectors).encode()])
        if body.get("stream"):
            chunks = []
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word}
                event = {
                    "id": "fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": self.model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                chunks.append(b"data: " + json.dumps(event).encode() + b"\n\n")
            final = {
                "id": "fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model_id,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "timings": timings,
            }
            chunks.append(b"data: " + json.dumps(final).encode() + b"\n\n")
            chunks.append(b"data: [DONE]\n\n")
            return FakeResponse(200, chunks, delay, {"content-type": "text/event-stream"})
        if path.endswith("/chat/completions"):
            choice: dict[str, object] = {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": self.reply},
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "finish_reason": "stop", "text": self.reply}
            obj = "text_completion"
        data: dict[str, object] = {
            "id": "fake",
            "object": obj,
            "created": created,
            "model": self.model_id,
            "choices": [choice],
            "timings": timings,
            "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)},
        }
        return FakeResponse(200, [json.dumps(data).encode()], delay * len(words))
