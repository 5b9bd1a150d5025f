"""What the server faces share: the body limits they enforce and the disconnect watches they arm (the
``Exchange`` protocol itself is in sluice.context, which ``rsgi.py`` and ``asgi.py`` adapt to)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from ..context import ClientGone, Exchange, Headers
from ..errors import InvalidRequest, PayloadTooLarge

__all__ = ["DISCARD_TIMEOUT_S", "WATCH_AFTER_S", "ClientGone", "Exchange", "Headers", "Watches",
           "check_declared_length"]

DISCARD_TIMEOUT_S = 2.0  # the most a refused body is read for, to be dropped


def check_declared_length(value: str, limit: int) -> None:
    """Rejects a Content-Length over ``limit`` before a byte of the body is read."""
    if not value.isdigit():
        raise InvalidRequest("Invalid Content-Length header.", code="invalid_content_length")
    if int(value) > limit:
        raise PayloadTooLarge.over(limit)


WATCH_AFTER_S = 0.1  # a request still running after one to two of these has its disconnect watched


class Watches:
    """The requests of one worker whose caller's disconnect is not watched yet: a sweep every WATCH_AFTER_S
    (while any is running) calls ``arm()`` on those that arrived before the previous sweep, so a request
    has its watch one to two WATCH_AFTER_S after it arrived, and leaves this map then.  Most answer sooner,
    and for them a watch would be pure cost (over RSGI one of Granian's futures, and a wake-up of one of its
    threads to drop it again); a caller that leaves is noticed that much later at most, which is nothing
    next to the upstream calls a watch is for.  A request costs a store and a pop in ``running``, done by
    the face itself (no call).  (Shared by the RSGI and ASGI faces.)
    """

    __slots__ = ("generation", "running", "timer")

    def __init__(self) -> None:
        self.running: dict[Any, int] = {}  # request -> the generation it arrived in
        self.generation = 0  # sweeps so far
        self.timer: asyncio.TimerHandle | None = None  # the next sweep, while a request may need one

    def start(self) -> None:
        # In a context of its own, not in a copy of the request's that starts it (a trace's current span).
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._sweep, context=contextvars.Context())

    def _sweep(self) -> None:
        generation = self.generation
        self.generation = generation + 1
        running = self.running
        for ex in [ex for ex, arrived in running.items() if arrived < generation]:
            del running[ex]
            ex.arm()
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._sweep) if running else None
