"""Starts Granian worker processes for the gateway or the mock upstream."""

from __future__ import annotations

import os
from typing import Literal

__all__ = ["serve"]


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
