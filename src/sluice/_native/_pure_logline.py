"""Pure-Python twin of ext/_logline.pyx: an access-log line from a finished request (same API, same results)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LineFormatter"]


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond, rounded half up (the same IEEE steps as the compiled twin)."""
    return math.floor(seconds * 1e6 + 0.5) / 1000.0


class LineFormatter:
    """Makes ``line_type`` records from request contexts; ``trace_id_of`` reads a caller's traceparent."""

    __slots__ = ("_line_type", "_second", "_second_text", "_trace_id_of")

    def __init__(self, line_type: Callable[..., Any], trace_id_of: Callable[[str], str | None]) -> None:
        self._line_type = line_type
        self._trace_id_of = trace_id_of
        self._second = -1
        self._second_text = ""

    def line(self, entry: Any) -> Any:
        at = entry.at
        second = int(at)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        trace_id = entry.trace_id
        if trace_id is None and entry.traceparent is not None:
            trace_id = self._trace_id_of(entry.traceparent)
        ttfb, ttft, tokens_in, tokens_out = entry.ttfb_s, entry.ttft_s, entry.tokens_in, entry.tokens_out
        return self._line_type(
            f"{self._second_text}.{int(math.fmod(at, 1.0) * 1000):03d}Z", entry.request_id, entry.method,
            entry.path[:200], entry.route, entry.status, _ms(entry.total_s), _ms(entry.overhead_s), entry.retries,
            trace_id, entry.error, _ms(ttfb) if ttfb >= 0 else None, _ms(ttft) if ttft >= 0 else None, entry.model,
            entry.provider, entry.upstream_status, tokens_in if tokens_in >= 0 else None,
            tokens_out if tokens_out >= 0 else None, entry.key_prefix, entry.user, entry.cache,
        )
