"""Prometheus metrics, correct across Granian workers.

A request updates plain in-process aggregates (dict increments and a bucket
index: no locks, no I/O).  Each worker writes a snapshot of its aggregates to
``<dir>/<pid>.json`` every ``flush_interval_s`` and whenever it answers a
scrape; the worker that answers ``GET /metrics`` sums the snapshots of every
worker, dead ones included, so a scrape counts all workers' requests whichever
worker answers, and a counter never goes backwards when a worker restarts (its
old file stays, its successor starts a new one).  prometheus-client renders the
exposition format from the summed families.

Labels are bounded: route is one of the gateway's endpoints, model one of the
configured names (anything else is "unknown"), provider a configured name,
status the HTTP status code.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .usage import token_usage

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)

RequestKey = tuple[str, str, str, int]  # route, model, provider, status


class _Histogram:
    """Bucket counts (non-cumulative, last one +Inf) and the sum, per label value."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.series: dict[str, list[float]] = {}

    def observe(self, label: str, value: float) -> None:
        counts = self.series.get(label)
        if counts is None:
            counts = self.series[label] = [0.0] * (len(self.bounds) + 2)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        counts[-1] += value


class Metrics:
    def __init__(self, directory: str | os.PathLike[str], models: set[str], *,
                 flush_interval_s: float = 1.0) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._file = self._dir / f"{os.getpid()}.json"
        self._models = models
        self._interval = flush_interval_s
        self._timer: asyncio.TimerHandle | None = None
        self.requests: dict[RequestKey, int] = {}
        self.tokens_in: dict[str, int] = {}
        self.tokens_out: dict[str, int] = {}
        self.duration = _Histogram(DURATION_BUCKETS)
        self.overhead = _Histogram(OVERHEAD_BUCKETS)
        self.upstream = _Histogram(DURATION_BUCKETS)
        self.in_flight = 0
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Summed(self._dir))

    def model_label(self, model: str | None) -> str:
        """A configured model's name; anything else collapses to one label value."""
        if model is None:
            return "none"
        return model if model in self._models else "unknown"

    def observe(self, route: str, model: str | None, provider: str | None, status: int, duration: float,
                overhead: float, upstream: float, answer: bytes | None = None) -> None:
        """One finished request (the hot path: dict updates, and a search of the answer's tail for usage)."""
        label = self.model_label(model)
        key = (route, label, provider or "none", status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.duration.observe(route, duration)
        self.overhead.observe(route, overhead)
        if upstream > 0:
            self.upstream.observe(provider or "none", upstream)
        usage = token_usage(answer) if answer else None
        if usage is not None:
            if usage.prompt_tokens:
                self.tokens_in[label] = self.tokens_in.get(label, 0) + usage.prompt_tokens
            if usage.completion_tokens:
                self.tokens_out[label] = self.tokens_out.get(label, 0) + usage.completion_tokens
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self, in_scrape: bool = False) -> None:
        """Writes this worker's snapshot (atomically: readers never see half a file)."""
        if not in_scrape:
            self._timer = None
        snapshot = {
            "requests": [[*key, count] for key, count in self.requests.items()],
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "duration": self.duration.series, "overhead": self.overhead.series, "upstream": self.upstream.series,
            "in_flight": self.in_flight - in_scrape, "pid": os.getpid(),  # a scrape does not count itself
        }
        partial = self._file.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(snapshot))
        partial.replace(self._file)

    def exposition(self) -> bytes:
        """The Prometheus text format, summed over every worker's snapshot."""
        self.flush(in_scrape=True)
        return generate_latest(self._registry)


class _Summed(Collector):
    """Sums the workers' snapshot files into metric families."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def collect(self) -> Iterator[Metric]:
        snapshots = list(self._snapshots())
        requests = CounterMetricFamily("sluice_requests", "Requests answered, by route, model, provider and status.",
                                       labels=["route", "model", "provider", "status"])
        totals: dict[tuple[str, str, str, str], float] = {}
        for snap in snapshots:
            for route, model, provider, status, count in snap["requests"]:
                key = (str(route), str(model), str(provider), str(status))
                totals[key] = totals.get(key, 0) + count
        for key, count in sorted(totals.items()):
            requests.add_metric(list(key), count)
        yield requests
        for name, field, doc in (("sluice_tokens_input", "tokens_in", "Prompt tokens reported by providers."),
                                 ("sluice_tokens_output", "tokens_out", "Completion tokens reported by providers.")):
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, count in sorted(_sum_maps(s[field] for s in snapshots).items()):
                family.add_metric([model], count)
            yield family
        yield _histogram("sluice_request_duration_seconds", "Time from arrival to the end of the response.",
                         "route", DURATION_BUCKETS, (s["duration"] for s in snapshots))
        yield _histogram("sluice_gateway_overhead_seconds", "The gateway's own time: total minus upstream.",
                         "route", OVERHEAD_BUCKETS, (s["overhead"] for s in snapshots))
        yield _histogram("sluice_upstream_duration_seconds", "Time waiting on the upstream provider.",
                         "provider", DURATION_BUCKETS, (s["upstream"] for s in snapshots))
        in_flight = GaugeMetricFamily("sluice_requests_in_flight",
                                      "Requests being handled (scrapes aside), live workers only.")
        live = [s for s in snapshots if _alive(s["pid"])]
        in_flight.add_metric([], sum(s["in_flight"] for s in live))
        yield in_flight
        workers = GaugeMetricFamily("sluice_workers_reporting", "Live workers whose snapshot this scrape summed.")
        workers.add_metric([], len(live))
        yield workers

    def _snapshots(self) -> Iterator[dict[str, Any]]:
        for path in self._dir.glob("*.json"):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                yield orjson.loads(path.read_bytes())


def _sum_maps(maps: Iterator[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in maps:
        for key, value in mapping.items():
            total[key] = total.get(key, 0) + value
    return total


def _histogram(name: str, doc: str, label: str, bounds: tuple[float, ...],
               series: Iterator[dict[str, list[float]]]) -> HistogramMetricFamily:
    summed: dict[str, list[float]] = {}
    for per_label in series:
        for value, counts in per_label.items():
            total = summed.setdefault(value, [0.0] * (len(bounds) + 2))
            for i, count in enumerate(counts):
                total[i] += count
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, counts in sorted(summed.items()):
        cumulative, buckets = 0.0, []
        for bound, count in zip((*bounds, float("inf")), counts[:-1], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([value], buckets, sum_value=counts[-1])
    return family


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
