"""Pure-Python twin of ext/_logline.pyx: access-log lines from finished requests (same API, same results)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from ..traceparent import parse_traceparent
from ._pure_context import RequestContext

__all__ = ["LineFormatter"]


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond, rounded half up (the same IEEE steps as the compiled twin)."""
    return math.floor(seconds * 1e6 + 0.5) / 1000.0


class LineFormatter:
    """Makes ``line_type`` records from request contexts; a line's trace id is its trace's, else its valid
    ``traceparent``'s.

    It also keeps a buffer of encoded lines for the access log: ``add`` appends a line, ``write``
    gives what the sink takes, ``limit`` bounds it (in lines and bytes; a line past a bound is
    dropped and counted in ``dropped``).
    """

    __slots__ = ("_buffer", "_encoder", "_line_type", "_lines", "_max_bytes", "_max_lines", "_second",
                 "_second_text", "dropped", "failed", "last_error")

    def __init__(self, line_type: Callable[..., Any]) -> None:
        self._line_type = line_type
        self._encoder = msgspec.json.Encoder()
        self._second = -1
        self._second_text = ""
        self._buffer = bytearray()
        self._lines = 0
        self._max_lines = self._max_bytes = sys.maxsize
        self.dropped = 0
        self.failed = 0
        self.last_error: Exception | None = None

    def line(self, entry: RequestContext) -> Any:
        at = entry.at
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        trace = entry.trace  # the request's span, when tracing is on; else the caller's traceparent, if any
        trace_id = trace.trace_id if trace is not None else None
        if trace_id is None and entry.traceparent is not None:
            parsed = parse_traceparent(entry.traceparent)
            trace_id = parsed[0] if parsed is not None else None
        ttfb, ttft, tokens_in, tokens_out = entry.ttfb_s, entry.ttft_s, entry.tokens_in, entry.tokens_out
        return self._line_type(
            f"{self._second_text}.{int(math.fmod(at, 1.0) * 1000):03d}Z", entry.request_id, entry.method,
            entry.path[:200], entry.route, entry.status, _ms(entry.total_s), _ms(entry.overhead_s), entry.retries,
            trace_id, entry.error, _ms(ttfb) if ttfb >= 0 else None, _ms(ttft) if ttft >= 0 else None, entry.model,
            entry.provider, entry.upstream_status, tokens_in if tokens_in >= 0 else None,
            tokens_out if tokens_out >= 0 else None, entry.key_prefix, entry.user, entry.cache,
        )

    def lines(self, entries: Iterable[RequestContext]) -> bytes:
        """The JSON lines of ``entries`` (request contexts), each ending in a newline: one batch's bytes.

        The buffer is left as it was.
        """
        return self._encoder.encode_lines([self.line(entry) for entry in entries])

    # -- the buffer ------------------------------------------------------------------------

    def add(self, entry: RequestContext, exchange: Any = None) -> int:
        """Appends ``entry``'s line: 1 if it is the buffer's first, 0 if not, -1 if it was not added: the buffer
        is full (counted in ``dropped``) or the line could not be made (counted in ``failed``, the error kept in
        ``last_error``).  With its request's ``exchange``, the entry is completed first (``complete``).  Never
        raises for the entry: it runs at the end of every request."""
        if self._lines >= self._max_lines:
            self.dropped += 1
            return -1
        try:
            if exchange is not None:
                self.complete(entry, exchange)
            line = self._encoder.encode(self.line(entry)) + b"\n"
        except Exception as exc:
            self.failed += 1
            self.last_error = exc
            return -1
        return self._admit(line)

    def complete(self, entry: RequestContext, exchange: Any) -> None:
        """Completes ``entry`` from its request's ``exchange`` as the gateway does when the request ends: ``at``
        is now, ``method`` and ``path`` are the exchange's, and ``traceparent`` is the caller's header unless the
        entry has a ``trace`` (whose trace id the line then carries) or a ``traceparent`` already (an unsampled
        trace's, which the gateway carried upstream)."""
        entry.at = time.time()
        entry.method, entry.path = exchange.method, exchange.path
        if entry.trace is None and entry.traceparent is None:
            entry.traceparent = exchange.header("traceparent")

    def add_encoded(self, line: bytes) -> int:
        """Appends a line already encoded (ending in a newline), as ``add`` does (log_bodies)."""
        if self._lines >= self._max_lines:
            self.dropped += 1
            return -1
        return self._admit(line)

    def _admit(self, line: bytes) -> int:
        if len(self._buffer) + len(line) > self._max_bytes:
            self.dropped += 1
            return -1
        self._buffer += line
        self._lines += 1
        return 1 if self._lines == 1 else 0

    def write(self, fd: int) -> int:
        """One write(2) of the buffer to ``fd``: the number of lines it completed, which leave the buffer (a line
        written in part stays, less what was written).  Raises OSError as os.write does (BlockingIOError when a
        non-blocking ``fd`` takes nothing now)."""
        buffer = self._buffer
        if not buffer:
            return 0
        written = os.write(fd, buffer)
        lines = self._lines if written == len(buffer) else buffer.count(b"\n", 0, written)
        del buffer[:written]
        self._lines -= lines
        return lines

    def discard(self) -> int:
        """Empties the buffer: the number of lines lost (a sink gone, or too slow at shutdown)."""
        lines = self._lines
        self._buffer.clear()
        self._lines = 0
        return lines

    def limit(self, lines: int, size: int) -> None:
        """Bounds the buffer: at most ``lines`` lines and ``size`` bytes waiting for the sink."""
        self._max_lines, self._max_bytes = lines, size

    @property
    def buffered(self) -> int:
        """Lines waiting for the sink (one written in part included)."""
        return self._lines
