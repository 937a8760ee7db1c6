"""FakeLLM: a scripted LLMClient for unit tests of workflows, nodes and tools (no model, no network)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from corral.agent.llm import LLMRequest, LLMResult, Route, TokenSink

Reply = str | LLMResult | Callable[[LLMRequest], "str | LLMResult"] | BaseException


@dataclass
class FakeLLM:
    """Each `complete` takes the next scripted reply (then `default`), streams it word by word to
    `on_token` and records the request. A reply may be text, an LLMResult, a function of the
    request, or an exception to raise. `embed` returns hashed bag-of-words vectors, so texts that
    share words are close, deterministically."""

    replies: list[Reply] = field(default_factory=list)
    default: str = "ok"
    delay_s: float = 0.0  # per streamed piece
    embed_dim: int = 64
    expert: str = "fake"
    requests: list[LLMRequest] = field(default_factory=list)

    def script(self, replies: Iterable[Reply]) -> None:
        self.replies.extend(replies)

    async def complete(self, request: LLMRequest, on_token: TokenSink | None = None) -> LLMResult:
        self.requests.append(request)
        reply: Reply = self.replies.pop(0) if self.replies else self.default
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply) and not isinstance(reply, LLMResult):
            reply = reply(request)
        result = reply if isinstance(reply, LLMResult) else LLMResult(text=reply, expert=self.expert)
        for piece in re.findall(r"\S+\s*|\s+", result.text):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if on_token is not None:
                on_token(piece)
        return result

    async def embed(self, texts: Sequence[str], model: str) -> list[list[float]]:
        return [hashed_embedding(t, self.embed_dim) for t in texts]

    def route(self, text: str, experts: Sequence[str] | None = None) -> Route:
        """The first of `experts` whose name appears in the text, else the first (or `expert`)."""
        pool = list(experts or [self.expert])
        for name in pool:
            if name.lower() in text.lower():
                return Route(name, "fake", f"{name!r} is named in the text")
        return Route(pool[0], "fake", "default")


def hashed_embedding(text: str, dim: int = 64) -> list[float]:
    vector = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
        vector[int.from_bytes(digest, "little") % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
