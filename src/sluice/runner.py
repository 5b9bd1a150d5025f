"""Starts Granian worker processes for the gateway or the mock upstream; records the config each start loads."""

from __future__ import annotations

import hashlib
import os
import socket
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .config import Config

__all__ = ["record_config_load", "serve"]


def serve(target: str, *, host: str, port: int, workers: int, interface: Literal["rsgi", "asgi"] = "rsgi",
          grace_period_s: float = 30.0, env: dict[str, str] | None = None, log_level: str = "info") -> None:
    """Serves ``target`` (a factory "module:function") until SIGINT/SIGTERM.

    On SIGTERM Granian stops accepting, lets in-flight requests (streams
    included) finish, and kills workers still busy after ``grace_period_s``.
    """
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    if env:
        os.environ.update(env)  # the workers are spawned with this environment
    server = Server(
        target,
        address=host,
        port=port,
        interface=Interfaces.RSGI if interface == "rsgi" else Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        http=HTTPModes.auto,
        websockets=False,
        factory=True,
        backlog=2048,
        workers_kill_timeout=max(1, round(grace_period_s)),
        respawn_failed_workers=True,  # a crashed worker is replaced; its metrics snapshot stays counted
        log_level=LogLevels(log_level),
        log_access=False,
    )
    server.serve()


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
