"""The access log: one JSON line per request, written off the hot path.

A request only appends a tuple to a bounded queue.  Every ``flush_interval_s``
the event loop turns what is queued into JSON lines in one go (msgspec's
``encode_lines``; token usage parsed from the tail of the answer here, not
during the request) and hands the bytes to a writer thread, whose only job is
the blocking ``write``; it releases the GIL while it waits, so the event loop
never waits for it.  When the sink cannot keep up, or blocks outright, the
queues fill and further lines are dropped and counted, never waited for: a
stuck log never slows a request.

Why not format in the thread: on one core every GIL hand-off between the thread
and the event loop comes out of the gateway's budget (bench/README.md).
"""

from __future__ import annotations

import asyncio
import queue
import random
import sys
import threading
import time
from collections import deque
from typing import BinaryIO

import msgspec

from .usage import token_usage

__all__ = ["AccessLog", "Record"]

# (time, request_id, method, path, status, duration_s, overhead_s, model, provider, upstream_status,
#  answer) where answer is the tail of the non-streamed body, or the stream events that carried usage.
Record = tuple[float, str, str, str, int, float, float, str | None, str | None, int | None, bytes | None]

_PENDING_WRITES = 64  # batches waiting for the sink; past this a batch is dropped and counted


class Line(msgspec.Struct, omit_defaults=True):
    time: str
    request_id: str
    method: str
    path: str
    status: int
    duration_ms: float
    overhead_ms: float
    model: str | None
    provider: str | None
    upstream_status: int | None
    tokens_in: int | None = None
    tokens_out: int | None = None


_encoder = msgspec.json.Encoder()


class AccessLog:
    def __init__(self, sink: BinaryIO | None = None, *, queue_size: int = 10000, sample_success: float = 1.0,
                 flush_interval_s: float = 0.05) -> None:
        self._sink = sink if sink is not None else sys.stdout.buffer
        self._records: deque[Record] = deque()
        self._queue_size = queue_size
        self._sample_success = sample_success
        self._interval = flush_interval_s
        self._random = random.Random()
        self._writes: queue.Queue[bytes | None] = queue.Queue(_PENDING_WRITES)
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._write_forever, name="sluice-access-log", daemon=True)
        self._thread.start()

    def record(self, record: Record) -> None:
        """Queues one request's record (the hot path: an append, or a counted drop)."""
        if record[4] < 400 and self._sample_success < 1.0 and self._random.random() >= self._sample_success:
            return
        if len(self._records) < self._queue_size:
            self._records.append(record)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)
        else:
            self.dropped += 1

    def flush(self) -> None:
        """Formats what is queued and hands it to the writer thread (on the event loop, off any request)."""
        self._timer = None
        records = self._records
        if not records:
            return
        count = len(records)
        lines = [self._line(records.popleft()) for _ in range(count)]
        try:
            self._writes.put_nowait(_encoder.encode_lines(lines))
        except queue.Full:
            self.dropped += count

    def _line(self, record: Record) -> Line:
        at, request_id, method, path, status, duration, overhead, model, provider, upstream_status, answer = record
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        usage = token_usage(answer) if answer else None
        return Line(f"{self._second_text}.{int(at % 1 * 1000):03d}Z", request_id, method, path, status,
                    round(duration * 1000, 3), round(overhead * 1000, 3), model, provider, upstream_status,
                    usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None)

    def _write_forever(self) -> None:
        while (data := self._writes.get()) is not None:
            try:
                self._sink.write(data)
                self._sink.flush()
                self.written += data.count(b"\n")
            except (OSError, ValueError):
                self.dropped += data.count(b"\n")

    def close(self, timeout: float = 2.0) -> None:
        """Writes what is queued (waiting at most ``timeout`` for a slow sink) and stops the thread."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        try:
            self._writes.put(None, timeout=timeout)
        except queue.Full:
            return  # the sink is stuck; the daemon thread goes with the process
        self._thread.join(timeout)
