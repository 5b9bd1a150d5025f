"""Pure-Python twin of ext/_stats.pyx: the per-request aggregates behind /metrics (same API, same results)."""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable
from typing import Any

__all__ = ["MAX_BUCKETS", "Histograms", "RequestStats"]

MAX_BUCKETS = 24


class Histograms:
    """Histograms sharing one set of bucket bounds, one series per key.

    A series is its bucket counts (non-cumulative; a value goes to the first
    bound it does not exceed, the last bucket is +Inf) followed by the sum.
    """

    __slots__ = ("_bounds", "_series")

    def __init__(self, bounds: Iterable[float]) -> None:
        self._bounds = tuple(float(b) for b in bounds)
        if not 0 < len(self._bounds) <= MAX_BUCKETS or list(self._bounds) != sorted(set(self._bounds)):
            raise ValueError(f"bounds must be 1..{MAX_BUCKETS} increasing numbers")
        self._series: dict[Hashable, list[float]] = {}

    def observe(self, key: Hashable, value: float) -> None:
        counts = self._series.get(key)
        if counts is None:
            counts = self._series[key] = [0.0] * (len(self._bounds) + 2)
        counts[bisect.bisect_left(self._bounds, value)] += 1
        counts[-1] += value

    def series(self) -> dict[Hashable, list[float]]:
        return {key: list(counts) for key, counts in self._series.items()}


class RequestStats:
    """Everything /metrics counts about finished requests, updated in one call per request.

    Labels are bounded here: a model outside ``models`` counts as "unknown", no
    model or provider as "none".  ``snapshot()`` gives each family as rows of
    label values followed by the count (counters) or the series (histograms).
    """

    __slots__ = ("_duration", "_errors", "_models", "_overhead", "_requests", "_token_usage", "_tokens_in",
                 "_tokens_out", "_ttft", "_upstream")

    def __init__(self, models: Iterable[str], duration_bounds: Iterable[float], overhead_bounds: Iterable[float],
                 token_bounds: Iterable[float]) -> None:
        self._models = frozenset(models)
        self._requests: dict[tuple[str, str, str, int], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._tokens_in: dict[str, int] = {}
        self._tokens_out: dict[str, int] = {}
        duration_bounds = tuple(duration_bounds)
        self._duration = Histograms(duration_bounds)
        self._overhead = Histograms(overhead_bounds)
        self._upstream = Histograms(duration_bounds)
        self._ttft = Histograms(duration_bounds)
        self._token_usage = Histograms(token_bounds)

    def observe(self, route: str, model: str | None, provider: str | None, status: int, error: str | None,
                duration: float, overhead: float, upstream: float, ttft: float, tokens_in: int,
                tokens_out: int) -> None:
        """One finished request.  upstream/ttft < 0 or tokens < 0: not known for this request."""
        label = "none" if model is None else model if model in self._models else "unknown"
        provider = provider or "none"
        key = (route, label, provider, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if error is not None:
            error_key = (route, error)
            self._errors[error_key] = self._errors.get(error_key, 0) + 1
        self._duration.observe(route, duration)
        self._overhead.observe(route, overhead)
        if upstream >= 0:
            self._upstream.observe((provider, label), upstream)
        if ttft >= 0:
            self._ttft.observe((provider, label), ttft)
        if tokens_in >= 0:
            self._tokens_in[label] = self._tokens_in.get(label, 0) + tokens_in
            self._token_usage.observe(("input", label, provider), tokens_in)
        if tokens_out >= 0:
            self._tokens_out[label] = self._tokens_out.get(label, 0) + tokens_out
            self._token_usage.observe(("output", label, provider), tokens_out)

    def snapshot(self) -> dict[str, list[list[Any]]]:
        return {
            "requests": [[*key, count] for key, count in self._requests.items()],
            "errors": [[*key, count] for key, count in self._errors.items()],
            "tokens_in": [[key, count] for key, count in self._tokens_in.items()],
            "tokens_out": [[key, count] for key, count in self._tokens_out.items()],
            "duration": [[key, counts] for key, counts in self._duration.series().items()],
            "overhead": [[key, counts] for key, counts in self._overhead.series().items()],
            "upstream": [[*key, counts] for key, counts in self._upstream.series().items()],  # type: ignore[misc]
            "ttft": [[*key, counts] for key, counts in self._ttft.series().items()],  # type: ignore[misc]
            "token_usage": [[*key, counts] for key, counts in self._token_usage.series().items()],  # type: ignore[misc]
        }
