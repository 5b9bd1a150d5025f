"""Pure-Python twin of ext/_limits.pyx: local rate-limit accounting (same API, same results, bit for bit).

The model, the choices about unknown keys, eviction and rounding are explained
at the top of ext/_limits.pyx; the expressions here are the same ones,
evaluated in the same order, so both twins answer identically.  A key's state
is ``[level, last, prev]``: tokens (bucket) or the current window's count
(window), the latest time seen, the previous window's count (window).  The
OrderedDict's order is the recency list, oldest first.
"""

from __future__ import annotations

import math
import operator
from collections import OrderedDict
from typing import SupportsFloat, SupportsIndex

__all__ = ["ALGORITHMS", "MAX_KEYS", "MIN_WAIT", "LocalLimiter"]

ALGORITHMS = ("token_bucket", "sliding_window")
MIN_WAIT = 1e-9
MAX_KEYS = 2**31 - 1
_INF = math.inf


def _real(value: SupportsFloat) -> float:
    if isinstance(value, str | bytes | bytearray):  # float() would parse them; the compiled twin does not
        raise TypeError(f"must be a real number, not {type(value).__name__}")
    return float(value)


class LocalLimiter:
    """Token buckets or sliding windows for many keys under one policy."""

    __slots__ = ("_algorithm", "_burst", "_limit", "_max_keys", "_period", "_rate", "_skip_sweeps", "_states",
                 "_window")

    def __init__(self, algorithm: str, limit: float, period: float, burst: float,
                 max_keys: SupportsIndex = 100_000) -> None:
        limit, period, burst = _real(limit), _real(period), _real(burst)
        keys = operator.index(max_keys)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        if not (0.0 < limit < _INF and 0.0 < period < _INF and 0.0 < burst < _INF):
            raise ValueError("limit, period and burst must be positive finite numbers")
        if not 0.0 < limit / period < _INF:
            raise ValueError("limit / period is not a usable rate")
        if not 1 <= keys <= MAX_KEYS:
            raise ValueError(f"max_keys must be 1..{MAX_KEYS}")
        self._algorithm = algorithm
        self._window = algorithm == "sliding_window"
        self._limit, self._period, self._burst = limit, period, burst
        self._rate = limit / period
        self._max_keys = keys
        self._skip_sweeps = 0
        self._states: OrderedDict[str, list[float]] = OrderedDict()

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @property
    def limit(self) -> float:
        return self._limit

    @property
    def period(self) -> float:
        return self._period

    @property
    def burst(self) -> float:
        return self._burst

    def __len__(self) -> int:
        return len(self._states)

    # -- the public calls ------------------------------------------------------------------

    def check(self, key: str, cost: float, now: float) -> float:
        """0.0 if ``cost`` units would be admitted now (nothing is taken), else the seconds to wait (inf: never)."""
        if not cost >= 0.0:
            raise ValueError("cost must be a number >= 0")
        state = self._states.get(key)
        if state is None:
            state = self._fresh(now)
        else:
            self._states.move_to_end(key)
        if self._window:
            return self._window_wait(state, cost, now)
        return self._bucket_wait(state, cost, now)

    def consume(self, key: str, cost: float, now: float) -> None:
        """Takes ``cost`` units (a bucket may go into debt, down to -burst)."""
        if not 0.0 <= cost < _INF:
            raise ValueError("cost must be a finite number >= 0")
        state = self._states.get(key)
        if state is None:
            state = self._insert(key, now)
        else:
            self._states.move_to_end(key)
        if self._window:
            cur, prev, _, t = self._read(state, now)
            state[0] = cur + cost
            state[2] = prev
            state[1] = t
        else:
            tokens = self._tokens(state, now) - cost
            if tokens < -self._burst:
                tokens = -self._burst
            state[0] = tokens
            if now > state[1]:
                state[1] = now

    def adjust(self, key: str, delta: float, now: float) -> None:
        """Settlement: delta > 0 gives units back (up to full), delta < 0 takes more."""
        if not -_INF < delta < _INF:
            raise ValueError("delta must be a finite number")
        state = self._states.get(key)
        if state is None:
            if delta >= 0.0:
                return  # an unknown key is full: nothing to give back
            state = self._insert(key, now)
        else:
            self._states.move_to_end(key)
        if self._window:
            cur, prev, _, t = self._read(state, now)
            cur = cur - delta
            if cur < 0.0:
                prev = prev + cur
                if prev < 0.0:
                    prev = 0.0
                cur = 0.0
            state[0] = cur
            state[2] = prev
            state[1] = t
        else:
            tokens = self._tokens(state, now) + delta
            if tokens > self._burst:
                tokens = self._burst
            elif tokens < -self._burst:
                tokens = -self._burst
            state[0] = tokens
            if now > state[1]:
                state[1] = now

    def remaining(self, key: str, now: float) -> float:
        """Units available now (0 when in debt)."""
        state = self._peek(key, now)
        if self._window:
            cur, prev, f, _ = self._read(state, now)
            left = self._limit - (prev * (1.0 - f) + cur)
        else:
            left = self._tokens(state, now)
        return left if left > 0.0 else 0.0

    def reset_after(self, key: str, now: float) -> float:
        """Seconds until the key is full again (0.0 exactly when it is)."""
        state = self._peek(key, now)
        if self._window:
            cur, prev, f, _ = self._read(state, now)
            if cur > 0.0:
                wait = (2.0 - f) * self._period
            elif prev > 0.0:
                wait = (1.0 - f) * self._period
            else:
                return 0.0
        else:
            tokens = self._tokens(state, now)
            if tokens >= self._burst:
                return 0.0
            wait = (self._burst - tokens) / self._rate
        return wait if wait > 0.0 else MIN_WAIT

    def sweep(self, now: float) -> int:
        """Forgets the keys that are full again; returns how many."""
        self._skip_sweeps = 0
        return self._sweep(now)

    # -- the arithmetic --------------------------------------------------------------------

    def _tokens(self, state: list[float], now: float) -> float:
        if now > state[1]:
            tokens = state[0] + (now - state[1]) * self._rate
            return self._burst if tokens > self._burst else tokens
        return state[0]

    def _read(self, state: list[float], now: float) -> tuple[float, float, float, float]:
        """(cur, prev, f, t): a window key as of t = max(now, last)."""
        last = state[1]
        t = now if now > last else last
        w = math.floor(t / self._period)
        seen = math.floor(last / self._period)
        if w == seen:
            cur, prev = state[0], state[2]
        elif w == seen + 1:
            cur, prev = 0.0, state[0]
        else:
            cur, prev = 0.0, 0.0
        f = (t - w * self._period) / self._period
        if f < 0.0:
            f = 0.0
        elif f > 1.0:
            f = 1.0
        return cur, prev, f, t

    def _bucket_wait(self, state: list[float], cost: float, now: float) -> float:
        tokens = self._tokens(state, now)
        if cost <= tokens:
            return 0.0
        if cost > self._burst:
            return _INF
        wait = (cost - tokens) / self._rate
        return wait if wait > 0.0 else MIN_WAIT

    def _window_wait(self, state: list[float], cost: float, now: float) -> float:
        cur, prev, f, _ = self._read(state, now)
        limit = self._limit
        if prev * (1.0 - f) + cur + cost <= limit:
            return 0.0
        if cost > limit:
            return _INF
        room = limit - cur - cost
        if room >= 0.0 and prev > 0.0:
            wait = (1.0 - room / prev - f) * self._period
        elif cur > 0.0:
            g = 1.0 - (limit - cost) / cur
            if g < 0.0:
                g = 0.0
            wait = (1.0 - f + g) * self._period
        else:
            wait = 0.0
        return wait if wait > 0.0 else MIN_WAIT

    def _full(self, state: list[float], now: float) -> bool:
        if self._window:
            cur, prev, _, _ = self._read(state, now)
            return cur <= 0.0 and prev <= 0.0
        return self._tokens(state, now) >= self._burst

    # -- the table -------------------------------------------------------------------------

    def _fresh(self, now: float) -> list[float]:
        return [0.0 if self._window else self._burst, now, 0.0]

    def _peek(self, key: str, now: float) -> list[float]:
        state = self._states.get(key)
        return self._fresh(now) if state is None else state

    def _insert(self, key: str, now: float) -> list[float]:
        if len(self._states) >= self._max_keys:
            self._make_room(now)
        state = self._states[key] = self._fresh(now)
        return state

    def _make_room(self, now: float) -> None:
        quota = self._max_keys // 16
        if self._skip_sweeps > 0:
            self._skip_sweeps -= 1
        else:
            freed = self._sweep(now)
            self._skip_sweeps = quota - freed if freed < quota else 0
        if len(self._states) >= self._max_keys:
            self._states.popitem(last=False)  # the least recently used

    def _sweep(self, now: float) -> int:
        full = [key for key, state in self._states.items() if self._full(state, now)]
        for key in full:
            del self._states[key]
        return len(full)
