"""Factories that Granian (or any ASGI server) imports in each worker process.

The config path comes from SLUICE_CONFIG, so each worker loads the same file
that ``sluice serve`` validated before starting them.  (``sluice serve`` also says, once, when auth is off:
a warning here would come once per worker.)
"""

from __future__ import annotations

import os

from ..config import load_config
from ..observability.logging import configure_logging
from .app import Gateway
from .asgi import ASGIApp
from .rsgi import RSGIApp

__all__ = ["asgi_app", "rsgi_app"]


def _gateway() -> Gateway:
    path = os.environ.get("SLUICE_CONFIG")
    if not path:
        raise RuntimeError("SLUICE_CONFIG must name the config file")
    config = load_config(path)
    configure_logging(config.observability.log_level, config.observability.log_format.value)
    return Gateway(config)


def rsgi_app() -> RSGIApp:
    gateway = _gateway()
    server = gateway.config.server
    return RSGIApp(gateway.handle, on_shutdown=gateway.close, body_timeout_s=server.body_read_timeout_s,
                   body_min_rate=server.body_min_rate_bytes_s)


def asgi_app() -> ASGIApp:
    gateway = _gateway()
    server = gateway.config.server
    return ASGIApp(gateway.handle, on_shutdown=gateway.close, body_timeout_s=server.body_read_timeout_s,
                   body_min_rate=server.body_min_rate_bytes_s)
