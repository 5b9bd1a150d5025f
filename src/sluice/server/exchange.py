"""What the server faces share: the body limits they enforce and the disconnect watches they arm (the
``Exchange`` protocol itself is in sluice.context, which ``rsgi.py`` and ``asgi.py`` adapt to)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from ..context import ClientGone, Exchange, Headers
from ..errors import InvalidRequest, PayloadTooLarge

__all__ = ["DISCARD_TIMEOUT_S", "WATCH_AFTER_S", "CallerWatch", "ClientGone", "Exchange", "Headers", "Watches",
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


class CallerWatch:
    """What the exchanges of both faces share about a caller who leaves before its response is complete: the
    callbacks given to ``on_disconnect`` run (a stream's relay aborts its upstream read), then the request's task
    is cancelled.  A subclass has the slots ``gone``, ``_done``, ``_listeners`` and ``_task``, starts its own
    watch in ``_watch_now`` and calls ``_caller_left`` when the disconnect comes."""

    __slots__ = ("_done", "_listeners", "_task", "gone")  # set by the subclass's __init__ (no call more per request)
    gone: bool  # the caller disconnected before the response was complete
    _done: bool  # the response is complete: a disconnect now is the caller's own business
    _listeners: list[Callable[[], object]] | None
    _task: asyncio.Task[Any] | None  # cancelled when the caller leaves (set by the face's app)

    def _watch_now(self) -> None:
        raise NotImplementedError

    def on_disconnect(self, callback: Callable[[], object]) -> Callable[[], object]:
        if self.gone:
            callback()
            return _nothing
        self._watch_now()
        listeners = self._listeners
        if listeners is None:
            self._listeners = [callback]
        else:
            listeners.append(callback)

        def forget() -> None:
            if self._listeners is not None and callback in self._listeners:
                self._listeners.remove(callback)

        return forget

    def _caller_left(self) -> None:
        if self._done:
            return
        self.gone = True
        listeners, self._listeners = self._listeners, None
        for callback in listeners or ():
            callback()
        task = self._task
        if task is not None:
            task.cancel("the caller disconnected")


def _nothing() -> None:
    pass
