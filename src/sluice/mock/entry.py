"""Factory Granian imports in the mock upstream's worker; options come from SLUICE_MOCK_OPTIONS."""

from __future__ import annotations

from ..server.rsgi import RSGIApp
from .server import MockUpstream, options_from_env

__all__ = ["rsgi_app"]


def rsgi_app() -> RSGIApp:
    return RSGIApp(MockUpstream(options_from_env()).handle)
