"""Test doubles shipped with corral, for unit tests of logic (integration tests use the real thing)."""

from typing import TYPE_CHECKING, Any

from corral.testing.fake_backend import FakeBackend, FakeResponse
from corral.testing.fake_llm import FakeLLM, hashed_embedding

if TYPE_CHECKING:
    from corral.testing.fake_voice import EnergyVADAnalyzer, FakeSynthesizer, FakeTranscriber, QueueTransport

# The voice doubles import pipecat (~0.5 s): loaded on first use only.
_VOICE = ("EnergyVADAnalyzer", "FakeSynthesizer", "FakeTranscriber", "QueueTransport")


def __getattr__(name: str) -> Any:
    if name in _VOICE:
        from corral.testing import fake_voice

        return getattr(fake_voice, name)
    raise AttributeError(f"module 'corral.testing' has no attribute {name!r}")


__all__ = [
    "EnergyVADAnalyzer",
    "FakeBackend",
    "FakeLLM",
    "FakeResponse",
    "FakeSynthesizer",
    "FakeTranscriber",
    "QueueTransport",
    "hashed_embedding",
]
