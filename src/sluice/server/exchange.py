"""What the server faces share: the body limits they enforce, the body read deadline and the disconnect
watches they arm (the ``Exchange`` protocol itself is in sluice.context, which ``rsgi.py`` and ``asgi.py``
adapt to)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from ..context import ClientGone, Exchange, Headers
from ..errors import CLOSE, BodyTimeout, GatewayError, InvalidRequest, MethodNotAllowed, PayloadTooLarge

__all__ = ["BODY_MIN_RATE", "BODY_TIMEOUT_S", "DISCARD_TIMEOUT_S", "WATCH_AFTER_S", "CallerWatch", "ClientGone",
           "Exchange", "Headers", "Watches", "check_declared_length", "incomplete_body", "refusal"]

DISCARD_TIMEOUT_S = 2.0  # the most a refused body is read for, to be dropped
BODY_TIMEOUT_S = 30.0  # server.body_read_timeout_s's default
BODY_MIN_RATE = 32 * 1024  # server.body_min_rate_bytes_s's default


def incomplete_body() -> InvalidRequest:
    """A body shorter than its Content-Length, or whose chunked framing broke (or, over ASGI, whose caller
    closed before the end): never processed nor forwarded, answered 400 if the connection can still carry it."""
    return InvalidRequest("The request body ended before it was complete (a short Content-Length body, or broken "
                          "chunked framing).", code="incomplete_body", headers=CLOSE)


def refusal(method: str, path: str, host: str | None, version: str) -> tuple[int, Headers, bytes] | None:
    """The answer the face gives itself, before the gateway sees the request, to what HTTP forbids and Granian
    lets through: an HTTP/1.1 request without Host (RFC 9112 3.2: 400; an empty one too, which is what Granian's
    ASGI makes of a missing one) and CONNECT (sluice is no proxy;
    hyper would keep the connection after any answer to it, as a tunnel that was not opened).  The
    connection closes after it.  None for any other request (almost all: two comparisons).
    """
    if method == "CONNECT":
        error: GatewayError = MethodNotAllowed("CONNECT is not supported: this is an API gateway, not a proxy.",
                                               code="method_not_allowed")
    elif not host and version == "1.1":
        error = InvalidRequest("An HTTP/1.1 request must have a Host header.", code="missing_host")
    else:
        return None
    wire = "anthropic" if path.startswith("/v1/messages") else "openai"
    return error.status, [("content-type", "application/json"), *CLOSE], error.body(wire)


def check_declared_length(value: str, limit: int) -> int:
    """Rejects a Content-Length over ``limit`` before a byte of the body is read; answers the length."""
    if not (value.isdigit() and value.isascii()):  # (str.isdigit takes "²", which int() does not)
        raise InvalidRequest("Invalid Content-Length header.", code="invalid_content_length")
    length = int(value)
    if length > limit:
        raise PayloadTooLarge.over(limit)
    return length


WATCH_AFTER_S = 0.1  # a request still running after one to two of these has its disconnect watched


class Watches:
    """The requests of one worker whose caller's disconnect is not watched yet: a sweep every WATCH_AFTER_S
    (while any is running) calls ``arm()`` on those that arrived before the previous sweep, so a request
    has its watch one to two WATCH_AFTER_S after it arrived, and leaves this map then.  Most answer sooner,
    and for them a watch would be pure cost (over RSGI one of Granian's futures, and a wake-up of one of its
    threads to drop it again); a caller that leaves is noticed that much later at most, which is nothing
    next to the upstream calls a watch is for.  A request costs a store and a pop in ``running``, done by
    the face itself (no call).  (Shared by the RSGI and ASGI faces.)

    The same sweep bounds body reads (``reading``: request -> the generation its read began; the sweep runs
    while one is in progress): a body may take ``body_timeout_s`` plus one second per ``body_min_rate``
    bytes of it (its Content-Length, or what has come so far of a chunked one); past that the request's
    ``body_expired()`` stops its read (408).  Generations count sweeps, so this clock costs a request no
    time call; it runs a little slow under load, which only ever gives a body more time.
    """

    __slots__ = ("body_ticks", "generation", "rate_per_tick", "reading", "running", "timer")

    def __init__(self, body_timeout_s: float = BODY_TIMEOUT_S, body_min_rate: int = BODY_MIN_RATE) -> None:
        self.running: dict[Any, int] = {}  # request -> the generation it arrived in
        self.reading: dict[Any, int] = {}  # request reading its body -> the generation the read began
        self.generation = 0  # sweeps so far
        self.timer: asyncio.TimerHandle | None = None  # the next sweep, while a request may need one
        self.body_ticks = body_timeout_s / WATCH_AFTER_S
        self.rate_per_tick = max(1.0, body_min_rate * WATCH_AFTER_S)  # bytes a body must bring per sweep

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
        reading = self.reading
        if reading:
            ticks, rate = self.body_ticks, self.rate_per_tick
            for ex in [ex for ex, began in reading.items() if generation - began > ticks + ex.body_bytes / rate]:
                del reading[ex]
                ex.body_expired()
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._sweep) if running or reading else None


class CallerWatch:
    """What the exchanges of both faces share about a caller who leaves before its response is complete: the
    callbacks given to ``on_disconnect`` run (a stream's relay aborts its upstream read), then the request's task
    is cancelled.  A subclass has the slots ``gone``, ``_done``, ``_listeners`` and ``_task``, starts its own
    watch in ``_watch_now`` and calls ``_caller_left`` when the disconnect comes.

    And about a body too slow to arrive: ``Watches`` calls ``body_expired``, which cancels the task too while
    it waits for the caller's body (``_awaiting``), and the face's body reader turns that cancellation into
    BodyTimeout (``_deadline_or``).  A passthrough upload's task also waits on its upstream (a cancellation
    there would surface in the upstream client): it is not cancelled then, its reader raises BodyTimeout when
    it next looks (``_slow``)."""

    # Set by the subclass's __init__ (no call more per request), but body_bytes, _slow and _awaiting: by _read_begins.
    __slots__ = ("_awaiting", "_done", "_listeners", "_slow", "_task", "_watches", "body_bytes", "gone")
    gone: bool  # the caller disconnected before the response was complete
    _done: bool  # the response is complete: a disconnect now is the caller's own business
    _listeners: list[Callable[[], object]] | None
    _task: asyncio.Task[Any] | None  # cancelled when the caller leaves (set by the face's app)
    _watches: Watches  # the worker's sweep, which also bounds body reads
    body_bytes: int  # what earns a body read time: its Content-Length, or what has come so far of a chunked one
    _slow: bool  # the body read ran out of time
    _awaiting: bool  # the task is waiting for the caller's body: a deadline cancels it

    def _read_begins(self, expected: int, awaiting: bool = True) -> None:
        """A body read starts: it is bounded from now until ``_read_ends`` (however it ends)."""
        self.body_bytes = expected
        self._slow = False
        self._awaiting = awaiting
        watches = self._watches
        watches.reading[self] = watches.generation
        if watches.timer is None:
            watches.start()

    def _read_ends(self) -> None:
        self._awaiting = False
        self._watches.reading.pop(self, None)

    def _deadline_or(self, cancel: asyncio.CancelledError) -> BaseException:
        """What a body reader's ``except CancelledError`` raises: BodyTimeout if the cancellation was the read
        deadline's (it is taken back), else the cancellation (someone else's: it goes on)."""
        if not self._slow or self._task is None:
            return cancel
        self._task.uncancel()
        return BodyTimeout()

    def body_expired(self) -> None:
        self._slow = True
        task = self._task
        if self._awaiting and task is not None:
            task.cancel("the request body did not arrive in time")

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
