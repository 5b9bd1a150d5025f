"""The mock upstream provider."""

from .server import MockOptions, MockUpstream

__all__ = ["MockOptions", "MockUpstream"]
