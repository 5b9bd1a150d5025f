"""What decides whether a failed attempt gets another one: the retry budget, backoff, Retry-After, the deadline.

The retry budget is Finagle's and Envoy's answer to retry storms: retries may be
at most ``ratio`` of the requests seen over the last ``window_s`` seconds, plus
``floor_per_s`` a second so that a quiet gateway can still retry.  When an
upstream fails for everyone, the extra load it gets is bounded by the ratio
instead of multiplied by the number of retries each request may make.

Counts live in a ring of one-second-or-shorter buckets: a request costs an
index computation and an increment, no allocation.
"""

from __future__ import annotations

import email.utils
import math
import random
import time

__all__ = ["RetryBudget", "backoff_s", "parse_retry_after", "parse_timeout"]

_BUCKETS = 10


class RetryBudget:
    """Retries allowed: ``ratio`` x requests over the window, plus ``floor_per_s`` x window seconds."""

    __slots__ = ("_allowance", "_epoch", "_ratio", "_requests", "_retries", "_width", "exhausted")

    def __init__(self, ratio: float, floor_per_s: float, window_s: float) -> None:
        self._ratio = ratio
        self._allowance = floor_per_s * window_s
        self._width = window_s / _BUCKETS
        self._requests = [0] * _BUCKETS
        self._retries = [0] * _BUCKETS
        self._epoch = 0  # the bucket number (time // width) the counts are current to
        self.exhausted = 0  # retries refused, for metrics

    def _advance(self, now: float) -> int:
        """The current bucket's index, buckets that fell out of the window cleared."""
        epoch = int(now / self._width)
        gap = epoch - self._epoch
        if gap > 0:
            requests, retries = self._requests, self._retries
            for step in range(1, min(gap, _BUCKETS) + 1):
                i = (self._epoch + step) % _BUCKETS
                requests[i] = retries[i] = 0
            self._epoch = epoch
        return epoch % _BUCKETS

    def requested(self, now: float) -> None:
        """A request arrived (its first attempt)."""
        self._requests[self._advance(now)] += 1

    def try_retry(self, now: float) -> bool:
        """Takes one retry from the budget; False (and counted) when it is spent."""
        i = self._advance(now)
        if sum(self._retries) >= self._ratio * sum(self._requests) + self._allowance:
            self.exhausted += 1
            return False
        self._retries[i] += 1
        return True


def backoff_s(retry: int, base_s: float, max_s: float, draw: float | None = None) -> float:
    """Exponential backoff with full jitter (AWS' "full jitter"): uniform in [0, min(max, base x 2^(retry-1)))."""
    ceiling = min(max_s, base_s * 2.0 ** min(retry - 1, 32))
    return ceiling * (random.random() if draw is None else draw)


def parse_retry_after(seconds: bytes | None, milliseconds: bytes | None = None,
                      now: float | None = None) -> float | None:
    """Seconds an upstream asks us to wait: ``retry-after-ms`` (OpenAI, Azure) first, then ``retry-after``
    as delta-seconds or an HTTP date; None when absent or unreadable (then the caller's default applies)."""
    if milliseconds is not None:
        try:
            value = float(milliseconds)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value / 1000
    if seconds is None:
        return None
    text = seconds.decode("latin-1").strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return value if math.isfinite(value) and value >= 0 else None


def parse_timeout(value: str) -> float | None:
    """A caller's total timeout in seconds (e.g. "30", "2.5"); None when it is not a positive number."""
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None
