"""Pure-Python twin of ext/_stats.pyx: the per-request aggregates behind /metrics (same API, same results)."""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable
from typing import Any

from ._pure_context import RequestContext

__all__ = ["MAX_BUCKETS", "Histograms", "RequestStats"]

MAX_BUCKETS = 24


def _checked(bounds: Iterable[float]) -> tuple[float, ...]:
    values = tuple(float(b) for b in bounds)
    if not 0 < len(values) <= MAX_BUCKETS or list(values) != sorted(set(values)):
        raise ValueError(f"bounds must be 1..{MAX_BUCKETS} increasing numbers")
    return values


class Histograms:
    """Histograms sharing one set of bucket bounds, one series per key.

    A series is its bucket counts (non-cumulative; a value goes to the first
    bound it does not exceed, the last bucket is +Inf) followed by the sum.
    """

    __slots__ = ("_bounds", "_series")

    def __init__(self, bounds: Iterable[float]) -> None:
        self._bounds = _checked(bounds)
        self._series: dict[Hashable, list[float]] = {}

    def observe(self, key: Hashable, value: float) -> None:
        counts = self._series.get(key)
        if counts is None:
            counts = self._series[key] = [0.0] * (len(self._bounds) + 2)
        counts[bisect.bisect_left(self._bounds, value)] += 1
        counts[-1] += value

    def series(self) -> dict[Hashable, list[float]]:
        return {key: list(counts) for key, counts in self._series.items()}


class _Row:
    """Everything counted for one (route, model label, provider); series as in Histograms."""

    __slots__ = ("duration", "errors", "label", "overhead", "provider", "route", "statuses", "token_input",
                 "token_output", "tokens_in", "tokens_out", "ttft", "upstream")

    def __init__(self, route: str, label: str, provider: str, duration_n: int, overhead_n: int,
                 token_n: int) -> None:
        self.route, self.label, self.provider = route, label, provider
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.tokens_in = self.tokens_out = 0
        self.duration = [0.0] * (duration_n + 2)
        self.overhead = [0.0] * (overhead_n + 2)
        self.upstream = [0.0] * (duration_n + 2)
        self.ttft = [0.0] * (duration_n + 2)
        self.token_input = [0.0] * (token_n + 2)
        self.token_output = [0.0] * (token_n + 2)


def _add(bounds: tuple[float, ...], series: list[float], value: float) -> None:
    series[bisect.bisect_left(bounds, value)] += 1
    series[-1] += value


class _Sums:
    """One family's series summed by label set, in the order the label sets first appear."""

    __slots__ = ("_n", "series")

    def __init__(self, n: int) -> None:
        self._n = n
        self.series: dict[Any, list[float]] = {}

    def add(self, key: Any, series: list[float]) -> None:
        total = self.series.get(key)
        if total is None:
            total = self.series[key] = [0.0] * (self._n + 2)
        for i, value in enumerate(series):
            total[i] += value

    def rows(self, spread: bool) -> list[list[Any]]:
        """[*key, series] when ``spread`` (tuple keys), else [key, series]."""
        if spread:
            return [[*key, list(total)] for key, total in self.series.items()]
        return [[key, list(total)] for key, total in self.series.items()]


class RequestStats:
    """Everything /metrics counts about finished requests, updated in one call per request.

    Labels are bounded here: a model outside ``models`` counts as "unknown", no
    model or provider as "none".  Each (route, model label, provider) has a row
    holding what a request updates; ``snapshot()`` folds the rows into each
    family (label values followed by the count, or by the histogram series:
    bucket counts, +Inf, then the sum), adding rows in the order they were made.
    """

    __slots__ = ("_by_route", "_dirty", "_duration", "_models", "_overhead", "_rows", "_tokens")

    def __init__(self, models: Iterable[str], duration_bounds: Iterable[float], overhead_bounds: Iterable[float],
                 token_bounds: Iterable[float]) -> None:
        self._models = frozenset(models)
        self._duration = _checked(duration_bounds)
        self._overhead = _checked(overhead_bounds)
        self._tokens = _checked(token_bounds)
        self._by_route: dict[str, dict[str, dict[str, _Row]]] = {}
        self._rows: list[_Row] = []
        self._dirty = False

    def _row(self, route: str, label: str, provider: str) -> _Row:
        by_provider = self._by_route.setdefault(route, {}).setdefault(label, {})
        row = by_provider.get(provider)
        if row is None:
            row = by_provider[provider] = _Row(route, label, provider, len(self._duration), len(self._overhead),
                                               len(self._tokens))
            self._rows.append(row)
        return row

    def observe(self, route: str, model: str | None, provider: str | None, status: int, error: str | None,
                duration: float, overhead: float, upstream: float, ttft: float, tokens_in: int,
                tokens_out: int) -> bool:
        """One finished request; True when it is the first since the last snapshot (time to schedule one).

        upstream/ttft < 0 or tokens < 0: not known for this request.
        """
        first = not self._dirty
        label = "none" if model is None else model if model in self._models else "unknown"
        row = self._row(route, label, provider or "none")
        row.statuses[status] = row.statuses.get(status, 0) + 1
        if error is not None:
            row.errors[error] = row.errors.get(error, 0) + 1
        _add(self._duration, row.duration, duration)
        _add(self._overhead, row.overhead, overhead)
        if upstream >= 0:
            _add(self._duration, row.upstream, upstream)
        if ttft >= 0:
            _add(self._duration, row.ttft, ttft)
        if tokens_in >= 0:
            row.tokens_in += tokens_in
            _add(self._tokens, row.token_input, tokens_in)
        if tokens_out >= 0:
            row.tokens_out += tokens_out
            _add(self._tokens, row.token_output, tokens_out)
        self._dirty = True
        return first

    def observe_context(self, context: RequestContext, route: str, status: int, duration: float) -> bool:
        """``observe`` with the other facts read from a request context: its model, provider, error,
        overhead_s, upstream_s (not known when not above 0), ttft_s, tokens_in and tokens_out."""
        upstream = context.upstream_s
        return self.observe(route, context.model, context.provider, status, context.error, duration,
                            context.overhead_s, upstream if upstream > 0 else -1.0, context.ttft_s, context.tokens_in,
                            context.tokens_out)

    def snapshot(self) -> dict[str, list[list[Any]]]:
        duration, overhead = _Sums(len(self._duration)), _Sums(len(self._overhead))
        upstream, ttft, token_usage = _Sums(len(self._duration)), _Sums(len(self._duration)), _Sums(len(self._tokens))
        requests: list[list[Any]] = []
        errors: dict[tuple[str, str], int] = {}
        tokens_in: dict[str, int] = {}
        tokens_out: dict[str, int] = {}
        self._dirty = False
        for row in self._rows:
            requests += [[row.route, row.label, row.provider, status, count] for status, count in row.statuses.items()]
            for error, count in row.errors.items():
                errors[(row.route, error)] = errors.get((row.route, error), 0) + count
            duration.add(row.route, row.duration)
            overhead.add(row.route, row.overhead)
            if _values(row.upstream) > 0:
                upstream.add((row.provider, row.label), row.upstream)
            if _values(row.ttft) > 0:
                ttft.add((row.provider, row.label), row.ttft)
            if _values(row.token_input) > 0:
                tokens_in[row.label] = tokens_in.get(row.label, 0) + row.tokens_in
                token_usage.add(("input", row.label, row.provider), row.token_input)
            if _values(row.token_output) > 0:
                tokens_out[row.label] = tokens_out.get(row.label, 0) + row.tokens_out
                token_usage.add(("output", row.label, row.provider), row.token_output)
        return {
            "requests": requests,
            "errors": [[*key, count] for key, count in errors.items()],
            "tokens_in": [[key, count] for key, count in tokens_in.items()],
            "tokens_out": [[key, count] for key, count in tokens_out.items()],
            "duration": duration.rows(False),
            "overhead": overhead.rows(False),
            "upstream": upstream.rows(True),
            "ttft": ttft.rows(True),
            "token_usage": token_usage.rows(True),
        }


def _values(series: list[float]) -> float:
    """How many values a series holds (its buckets and +Inf)."""
    total = 0.0
    for count in series[:-1]:
        total += count
    return total
