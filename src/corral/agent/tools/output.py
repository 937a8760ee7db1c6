"""Reading a tool's output stream with a cap: keep the first bytes, drain and drop the rest."""

from __future__ import annotations

from typing import Protocol


class ByteStream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def read_capped(stream: ByteStream, cap: int) -> tuple[bytes, bool]:
    """Read `stream` to its end, keeping at most `cap` bytes; (data, truncated)."""
    data = bytearray()
    truncated = False
    while chunk := await stream.read(65536):
        room = cap - len(data)
        if room > 0:
            data += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return bytes(data), truncated
