"""The access log: one JSON line per request, written off the hot path.

A request only appends a tuple to a bounded in-memory queue; a writer thread
turns the queue into JSON lines (parsing token usage from the answer there, not
on the event loop) and writes them to the sink in batches.  When the sink
cannot keep up, or blocks outright, the queue fills and further records are
dropped and counted, never waited for: a stuck log never slows a request.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import deque
from typing import BinaryIO

import orjson

__all__ = ["USAGE_TAIL", "AccessLog", "Record"]

# (time, request_id, method, path, status, duration_s, overhead_s, model, provider, upstream_status,
#  answer) where answer is the non-streamed body or the last event of a stream, for token usage.
Record = tuple[float, str, str, str, int, float, float, str | None, str | None, int | None, bytes | None]

USAGE_TAIL = 4096  # usage sits at the end of an OpenAI answer: keep and parse at most this tail
_BATCH = 64  # lines formatted between two hand-backs of the GIL


class AccessLog:
    def __init__(self, sink: BinaryIO | None = None, *, queue_size: int = 10000, sample_success: float = 1.0,
                 flush_interval_s: float = 0.05) -> None:
        self._sink = sink if sink is not None else sys.stdout.buffer
        self._queue: deque[Record] = deque()
        self._queue_size = queue_size
        self._sample_success = sample_success
        self._interval = flush_interval_s
        self._random = random.Random()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self._second = -1
        self._second_text = ""
        self._thread = threading.Thread(target=self._run, name="sluice-access-log", daemon=True)
        self._thread.start()

    def record(self, record: Record) -> None:
        """Queues one request's record (the hot path: an append, or a counted drop)."""
        if record[4] < 400 and self._sample_success < 1.0 and self._random.random() >= self._sample_success:
            return
        if len(self._queue) < self._queue_size:
            self._queue.append(record)
        else:
            self.dropped += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        queue = self._queue
        if not queue:
            return
        lines = []
        while queue:
            lines.append(self._line(queue.popleft()))
            if len(lines) % _BATCH == 0:
                time.sleep(0)  # hand the GIL back to the event loop between batches
        try:
            self._sink.write(b"".join(lines))
            self._sink.flush()
            self.written += len(lines)
        except (OSError, ValueError):
            self.dropped += len(lines)

    def close(self, timeout: float = 2.0) -> None:
        """Writes what is queued (waiting at most ``timeout`` for a slow sink) and stops."""
        self._stop.set()
        self._thread.join(timeout)


    def _line(self, record: Record) -> bytes:
        at = record[0]
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return _line(f"{self._second_text}.{int(at % 1 * 1000):03d}Z", record)


def _line(stamp: str, record: Record) -> bytes:
    _, request_id, method, path, status, duration, overhead, model, provider, upstream_status, answer = record
    entry = {
        "time": stamp,
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(duration * 1000, 3),
        "overhead_ms": round(overhead * 1000, 3),
        "model": model,
        "provider": provider,
        "upstream_status": upstream_status,
    }
    usage = _usage(answer) if answer else None
    if usage:
        entry["tokens_in"] = usage.get("prompt_tokens")
        entry["tokens_out"] = usage.get("completion_tokens")
    return orjson.dumps(entry) + b"\n"


def _usage(answer: bytes) -> dict[str, int] | None:
    """The "usage" object of an OpenAI answer or stream event, if there is one."""
    start = answer.rfind(b'"usage"', max(0, len(answer) - USAGE_TAIL))
    if start < 0:
        return None
    brace = answer.find(b"{", start)
    if brace < 0 or answer[start + len(b'"usage"') : brace].strip(b" :\t\r\n"):
        return None  # no object right after "usage" (e.g. "usage": null)
    # Usage is the last member of an OpenAI answer or event: up to the final brace but one.
    last = answer.rfind(b"}")
    try:
        usage = orjson.loads(answer[brace:last])
        return usage if isinstance(usage, dict) else None
    except orjson.JSONDecodeError:
        pass  # not last after all: find its end by counting braces
    depth, end = 0, -1
    for i in range(brace, len(answer)):  # usage nests objects (prompt_tokens_details) but no strings
        byte = answer[i]
        if byte == 0x7B:
            depth += 1
        elif byte == 0x7D:
            depth -= 1
            if depth == 0:
                end = i
                break
    if end < 0:
        return None
    try:
        usage = orjson.loads(answer[brace : end + 1])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None
