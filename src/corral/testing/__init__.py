"""Test doubles shipped with corral, for unit tests of logic (integration tests use the real thing)."""

from corral.testing.fake_backend import FakeBackend, FakeResponse
from corral.testing.fake_llm import FakeLLM, hashed_embedding

__all__ = ["FakeBackend", "FakeLLM", "FakeResponse", "hashed_embedding"]
