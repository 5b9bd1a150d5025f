"""The access log: one JSON line per request, written off the hot path, by the event loop, never waiting.

A finished request's line is formatted at once, after its response went out,
into a bounded buffer (a compiled ``LineFormatter`` writes the JSON text straight
from the request context, without an intermediate record; with ``log_bodies``,
msgspec encodes a line record).  Every ``flush_interval_s`` the event loop writes
what is buffered, from the buffer itself.  A pipe, socket or terminal sink is
made non-blocking: what it does not take at once waits and goes out when the
loop sees the sink writable; past ``queue_size`` lines or 4 MiB waiting, lines
are dropped and counted.  A stuck log never slows a request.  A regular file
takes writes into the page cache at once.

Why the line is formatted at once rather than the context queued for a batch:
a queued context (and what it holds) stayed alive for up to a flush interval,
and the batch paid two more copies of its text; formatting costs the same either
way (bench/README.md, "Observability within budget").

Why no writer thread: every GIL hand-off to it comes out of the one core's
budget, and formatting already runs on the loop; one run measured the thread's
mere presence at ~3 % (bench/README.md).  One consequence: a non-blocking stdout
is shared with whatever else writes to it; sluice writes nothing else there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import select
import stat
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import msgspec

from .._native import LineFormatter
from ..context import RequestContext
from .redact import redact

__all__ = ["AccessLog"]

log = logging.getLogger("sluice.access_log")
_MAX_PENDING_BYTES = 4 * 1024 * 1024  # formatted lines the sink has not taken yet; past this they are dropped
_BODY_LIMIT = 4096  # characters of a logged body (log_bodies only)


class Line(msgspec.Struct, omit_defaults=True):
    time: str
    request_id: str
    method: str
    path: str
    route: str
    status: int
    duration_ms: float
    overhead_ms: float
    retries: int
    trace_id: str | None
    error: str | None
    ttfb_ms: float | None
    ttft_ms: float | None
    model: str | None
    provider: str | None
    upstream_status: int | None
    tokens_in: int | None
    tokens_out: int | None
    key_prefix: str | None
    user: str | None
    cache: str | None
    # Only with log_bodies (left out of the line otherwise):
    request_body: str | None = None
    response_body: str | None = None


_encoder = msgspec.json.Encoder()


class AccessLog:
    def __init__(self, sink: BinaryIO | None = None, *, queue_size: int = 10000, sample_success: float = 1.0,
                 flush_interval_s: float = 0.05, log_bodies: bool = False) -> None:
        self._sink = sink if sink is not None else sys.stdout.buffer
        self._fd = self._sink.fileno()
        self._pollable = not stat.S_ISREG(os.fstat(self._fd).st_mode)
        if self._pollable:
            os.set_blocking(self._fd, False)
        self._sample_success = sample_success
        self._sampled = sample_success < 1.0
        self._interval = flush_interval_s
        self._random = random.Random()
        self._timer: asyncio.TimerHandle | None = None
        # Formats each line as it is recorded and holds it until the sink takes it (compiled).
        self._lines = LineFormatter(Line)
        self._lines.limit(queue_size, _MAX_PENDING_BYTES)
        # The hot path, called with a finished request's context and exchange (which complete the context: its
        # end time, method, path, the caller's traceparent): the compiled call itself when every line is logged
        # as it is, no method around it.  It answers 1 for the first line since the sink took the last; the
        # caller then calls schedule_flush (record() does both).  It never raises for the entry.
        self.add: Callable[..., int] = self._lines.add  # (entry, exchange=None)
        if log_bodies or self._sampled:
            self.add = self._add_sampled_or_with_bodies
        self._log_bodies = log_bodies
        self._watching: asyncio.AbstractEventLoop | None = None  # the loop waiting for the sink to be writable
        self._lost = 0  # lines lost to a sink gone or too slow at shutdown, or bodies that could not be encoded
        self._failed_reported = 0
        self.written = 0

    @property
    def dropped(self) -> int:
        """Lines not written: past the bounds while the sink could not keep up, not encodable, or lost."""
        return self._lines.dropped + self._lines.failed + self._lost

    def record(self, entry: RequestContext) -> None:
        """Formats one request's line into the buffer (no I/O, no await), or counts it dropped."""
        if self.add(entry) > 0:
            self.schedule_flush()

    def schedule_flush(self) -> None:
        """Arms the next write (after a line added to an empty buffer; unless the sink is being waited for)."""
        if self._timer is None and self._watching is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self) -> None:
        """Writes the buffered lines that the sink takes (on the event loop, off any request)."""
        self._timer = None
        if self._lines.failed != self._failed_reported:
            log.warning("%d access-log line(s) could not be made and were dropped; the last error: %r",
                        self._lines.failed - self._failed_reported, self._lines.last_error)
            self._failed_reported = self._lines.failed
        if self._watching is None:  # else the sink is full: the lines wait for it to be writable
            self._write_pending()

    def _add_sampled_or_with_bodies(self, entry: RequestContext, exchange: Any = None) -> int:
        """``add`` when successes are sampled or bodies logged (the latter a debugging aid)."""
        if self._sampled and entry.status < 400 and self._random.random() >= self._sample_success:
            return 0
        if not self._log_bodies:
            return self._lines.add(entry, exchange)
        try:
            if exchange is not None:
                self._lines.complete(entry, exchange)
            line: Line = self._lines.line(entry)
            if entry.request_body is not None:
                line.request_body = redact(entry.request_body, _BODY_LIMIT)
            if entry.answer is not None:
                line.response_body = redact(entry.answer, _BODY_LIMIT)
            encoded = _encoder.encode(line) + b"\n"
        except Exception:  # as add does: counted, never raised into the request
            log.exception("an access-log line could not be made")
            self._lost += 1
            return -1
        return self._lines.add_encoded(encoded)

    def _write_pending(self) -> None:
        """Writes what the sink takes now; the rest when the loop sees the sink writable."""
        while self._lines.buffered and self._write_some():
            pass
        if self._lines.buffered and self._pollable and self._watching is None:
            self._watching = asyncio.get_running_loop()
            self._watching.add_writer(self._fd, self._writable)

    def _write_some(self) -> bool:
        """One write of what is buffered; False when the sink takes nothing now."""
        try:
            self.written += self._lines.write(self._fd)
        except BlockingIOError:
            return False
        except OSError:  # the sink is gone (closed pipe, full disk): what is buffered is lost
            self._lost += self._lines.discard()
            return False
        return True

    def _writable(self) -> None:
        self._stop_watching()
        self._write_pending()

    def _stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.remove_writer(self._fd)
            self._watching = None

    def close(self, timeout: float = 2.0) -> None:
        """Writes what is buffered, waiting at most ``timeout`` for a slow sink (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_watching()
        deadline = time.monotonic() + timeout
        while self._lines.buffered and (remaining := deadline - time.monotonic()) > 0:
            select.select([], [self._fd], [], remaining)
            self._write_some()
        self._lost += self._lines.discard()
