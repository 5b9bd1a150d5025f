"""Factories Granian imports in the mock upstream's worker; options come from SLUICE_MOCK_OPTIONS."""

from __future__ import annotations

from ..server.asgi import ASGIApp
from ..server.rsgi import RSGIApp
from .server import MockUpstream, options_from_env

__all__ = ["asgi_app", "rsgi_app"]


def rsgi_app() -> RSGIApp:
    return RSGIApp(MockUpstream(options_from_env()).handle)


def asgi_app() -> ASGIApp:
    return ASGIApp(MockUpstream(options_from_env()).handle)
