"""Starts Granian worker processes for the gateway or the mock upstream; records the config each start loads."""

from __future__ import annotations

import hashlib
import os
import socket
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .config import Config, ServerConfig

__all__ = ["record_config_load", "serve"]


def serve(target: str, *, host: str, port: int, workers: int, interface: Literal["rsgi", "asgi"] = "rsgi",
          grace_period_s: float = 30.0, env: dict[str, str] | None = None, log_level: str = "info",
          server: ServerConfig | None = None) -> None:
    """Serves ``target`` (a factory "module:function") until SIGINT/SIGTERM.

    On SIGTERM Granian stops accepting, lets in-flight requests (streams included) finish, and kills workers
    still busy after ``grace_period_s``.  ``server``'s connection settings (its defaults when None) are
    Granian's own: the HTTP mode, the head read timeout (also the idle timeout before the first byte and
    between kept-alive requests, in "http1"), keep-alive, the listen backlog, and each worker's share of
    ``max_connections`` (Granian's backpressure: past it a worker stops accepting, and new connections wait
    in the backlog).  The body read deadline is the workers' own (``sluice.server.exchange.Watches``).
    """
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    from .config import ServerConfig

    settings = server or ServerConfig()
    if env:
        os.environ.update(env)  # the workers are spawned with this environment
    granian = Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        # "auto" reads a new connection's first bytes (HTTP/1.1 or HTTP/2?) with no timeout: only in "http1"
        # does the head read timeout start when the connection opens (docs/server.md).
        http=HTTPModes.http1 if settings.http == "http1" else HTTPModes.auto,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(settings.header_read_timeout_s * 1000)),
                                     keep_alive=settings.keep_alive),
        websockets=False,
        factory=True,
        backlog=settings.backlog,
        backpressure=max(1, -(-settings.max_connections // workers)),  # each worker's share, rounded up
        workers_kill_timeout=max(1, round(grace_period_s)),
        respawn_failed_workers=True,  # a crashed worker is replaced; its metrics snapshot stays counted
        log_level=LogLevels(log_level),
        log_access=False,
    )
    granian.serve()


def record_config_load(config: Config, path: str, actor: str) -> dict[str, Any] | None:
    """One ``config.load`` audit record for this start of the gateway, in the parent before the workers
    start, when auth is on (the audit log is in its store); answers the record's details (None: auth off).

    The record names the file (its absolute path, size and SHA-256) and never holds its content: a config
    may hold secrets (its ``${VAR}`` references are not part of the hash, only the text that names them).
    StoreError when the record could not be written: a start the audit log does not show is refused, as
    one whose migrations fail.  A reload, when sluice has one, records ``config.reload`` the same way.
    """
    if not config.auth.enabled:
        return None
    import asyncio

    from . import __version__
    from .auth.audit import AuditLog
    from .store import StoreError, open_store

    location = os.path.abspath(path)
    with open(location, "rb") as file:
        data = file.read()
    details: dict[str, Any] = {"path": location, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                               "host": socket.gethostname(), "pid": os.getpid(), "version": __version__}

    async def append() -> bool:
        audit = AuditLog(open_store(config.store), owns_store=True)
        audit.record("config.load", actor=actor, target=location, details=details)
        await audit.aclose()  # written, or retried while the store is down, for close_timeout_s at most
        return not (audit.failed or audit.dropped)

    if not asyncio.run(append()):
        raise StoreError("the config.load audit record could not be written")
    return details
