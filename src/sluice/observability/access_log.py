"""The access log: one JSON line per request, written off the hot path, by the event loop, never waiting.

A request only appends its context to a bounded queue.  Every
``flush_interval_s`` the event loop turns what is queued into JSON lines in one
go (a compiled ``LineFormatter`` and msgspec's ``encode_lines``) and writes
them.  A pipe, socket or terminal sink is made non-blocking: what it does not
take at once waits in a bounded buffer and goes out when the loop sees the sink
writable; past that buffer, lines are dropped and counted.  A stuck log never
slows a request.  A regular file takes writes into the page cache at once.

Why no writer thread: every GIL hand-off to it comes out of the one core's
budget, and formatting already runs on the loop; one run measured the thread's
mere presence at ~3 % (bench/README.md).  One consequence: a non-blocking stdout
is shared with whatever else writes to it; sluice writes nothing else there.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import stat
import sys
import time
from collections import deque
from typing import BinaryIO, Protocol

import msgspec

from .._native import LineFormatter
from .redact import redact
from .traceparent import parse_traceparent

__all__ = ["AccessLog", "Entry"]

_MAX_PENDING_BYTES = 4 * 1024 * 1024  # formatted lines the sink has not taken yet; past this they are dropped
_BODY_LIMIT = 4096  # characters of a logged body (log_bodies only)


class Entry(Protocol):
    """A finished request as the gateway saw it (its RequestContext)."""

    at: float  # time.time() at the end
    request_id: str
    method: str
    path: str
    route: str
    status: int
    error: str | None
    total_s: float
    overhead_s: float
    ttfb_s: float  # -1: no response head went out
    ttft_s: float  # -1: not a stream
    model: str | None
    provider: str | None
    upstream_status: int | None
    tokens_in: int  # -1: not reported
    tokens_out: int
    answer: bytes | None
    request_body: bytes | None
    traceparent: str | None
    key_prefix: str | None  # the caller's API key prefix, never the key
    user: str | None
    retries: int
    cache: str | None  # hit, miss, coalesced

    @property
    def trace_id(self) -> str | None: ...


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
        self._entries: deque[Entry] = deque()
        self._queue_size = queue_size
        self._sample_success = sample_success
        self._interval = flush_interval_s
        self._random = random.Random()
        self._timer: asyncio.TimerHandle | None = None
        self._formatter = LineFormatter(Line, _trace_id)
        self._format = self._with_bodies if log_bodies else self._formatter.line
        self._pending = bytearray()  # formatted, not yet taken by the sink
        self._watching: asyncio.AbstractEventLoop | None = None  # the loop waiting for the sink to be writable
        self.dropped = 0
        self.written = 0

    def record(self, entry: Entry) -> None:
        """Queues one request's entry (the hot path: an append, or a counted drop)."""
        if entry.status < 400 and self._sample_success < 1.0 and self._random.random() >= self._sample_success:
            return
        if len(self._entries) < self._queue_size:
            self._entries.append(entry)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Formats what is queued and writes what the sink takes (on the event loop, off any request)."""
        self._timer = None
        entries = self._entries
        if not entries:
            return
        count = len(entries)
        lines = list(map(self._format, entries))
        entries.clear()  # nothing else runs on the loop meanwhile: no entry was added since
        data = _encoder.encode_lines(lines)
        if len(self._pending) + len(data) > _MAX_PENDING_BYTES:
            self.dropped += count
            return
        self._pending += data
        if self._watching is None:
            self._write_pending()

    def _with_bodies(self, entry: Entry) -> Line:
        """A line with the redacted bodies (log_bodies only)."""
        line: Line = self._formatter.line(entry)
        if entry.request_body is not None:
            line.request_body = redact(entry.request_body, _BODY_LIMIT)
        if entry.answer is not None:
            line.response_body = redact(entry.answer, _BODY_LIMIT)
        return line

    def _write_pending(self) -> None:
        """Writes what the sink takes now; the rest when the loop sees the sink writable."""
        while self._pending and self._write_some():
            pass
        if self._pending and self._pollable and self._watching is None:
            self._watching = asyncio.get_running_loop()
            self._watching.add_writer(self._fd, self._writable)

    def _write_some(self) -> bool:
        """One write of what is pending; False when the sink takes nothing now."""
        pending = self._pending
        try:
            written = os.write(self._fd, pending)
        except BlockingIOError:
            return False
        except OSError:  # the sink is gone (closed pipe, full disk): what is pending is lost
            self.dropped += pending.count(b"\n")
            pending.clear()
            return False
        self.written += pending.count(b"\n", 0, written)
        del pending[:written]
        return True

    def _writable(self) -> None:
        self._stop_watching()
        self._write_pending()

    def _stop_watching(self) -> None:
        if self._watching is not None:
            self._watching.remove_writer(self._fd)
            self._watching = None

    def close(self, timeout: float = 2.0) -> None:
        """Writes what is queued, waiting at most ``timeout`` for a slow sink (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_watching()
        self._pending += _encoder.encode_lines(list(map(self._format, self._entries)))
        self._entries.clear()
        deadline = time.monotonic() + timeout
        while self._pending and (remaining := deadline - time.monotonic()) > 0:
            select.select([], [self._fd], [], remaining)
            self._write_some()
        self.dropped += self._pending.count(b"\n")
        self._pending.clear()


def _trace_id(traceparent: str | None) -> str | None:
    parsed = parse_traceparent(traceparent)
    return parsed[0] if parsed is not None else None
