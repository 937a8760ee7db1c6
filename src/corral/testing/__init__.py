"""Test doubles shipped with corral, for unit tests of logic (integration tests use the real thing)."""

from corral.testing.fake_backend import FakeBackend, FakeResponse

__all__ = ["FakeBackend", "FakeResponse"]
