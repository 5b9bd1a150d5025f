"""Prometheus metrics, correct across Granian workers.

A request updates in-process aggregates with one call (``RequestStats``,
compiled: a row of C counters and histograms per label set, no locks, no I/O).  Each worker
writes a snapshot of its aggregates, and of its own state (in-flight requests,
connection pool, memory, file descriptors, dropped log lines), to
``<dir>/<pid>.json`` every ``flush_interval_s`` while it is busy and whenever it
answers a scrape; the worker that answers ``GET /metrics`` sums the snapshots of
every worker, dead ones included, so a scrape counts all workers' requests
whichever worker answers, and a counter never goes backwards when a worker
restarts (its old file stays, its successor starts a new one).  Gauges of the
moment (in flight, pool, memory) come from live workers only.
prometheus-client renders the exposition format from the summed families.

Labels are bounded: route is one of the gateway's endpoints, model one of the
configured names (anything else is "unknown"), provider a configured name,
status the HTTP status code, error class one of the gateway's error codes.
Where the OpenTelemetry GenAI semantic conventions define a metric, the same
data is exposed again under the mapped name (``gen_ai_*``), at scrape time only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .._native import RequestStats
from .process import process_usage

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# The bounds the GenAI conventions advise for gen_ai.client.token.usage.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

WorkerState = Callable[[], dict[str, float]]
CountsSource = Callable[[], dict[tuple[str, ...], int]]


class Family(NamedTuple):
    """A metric summed from the snapshots' rows of one field."""

    name: str
    doc: str
    field: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] | None = None  # None: a counter
    provider_label: int = -1  # the label holding a provider name, reported as the provider's kind


_GEN_AI_PROVIDER_MODEL = ("gen_ai_provider_name", "gen_ai_request_model")
FAMILIES = (
    Family("sluice_requests", "Requests answered, by route, model, provider and status.", "requests",
           ("route", "model", "provider", "status")),
    Family("sluice_errors", "Failed requests by route and error class (the error code, or upstream_4xx/5xx).",
           "errors", ("route", "class")),
    Family("sluice_tokens_input", "Prompt tokens reported by providers.", "tokens_in", ("model",)),
    Family("sluice_tokens_output", "Completion tokens reported by providers.", "tokens_out", ("model",)),
    Family("sluice_request_duration_seconds", "Time from arrival to the end of the response.", "duration",
           ("route",), DURATION_BUCKETS),
    Family("sluice_gateway_overhead_seconds", "The gateway's own time: total minus upstream.", "overhead",
           ("route",), OVERHEAD_BUCKETS),
    Family("sluice_upstream_duration_seconds", "Time waiting on the upstream (streams: until its head).",
           "upstream", ("provider", "model"), DURATION_BUCKETS),
    Family("sluice_time_to_first_token_seconds", "Streams: from sending the request to the first event.",
           "ttft", ("provider", "model"), DURATION_BUCKETS),
    Family("gen_ai_client_operation_duration_seconds", "GenAI semconv: gen_ai.client.operation.duration.",
           "upstream", _GEN_AI_PROVIDER_MODEL, DURATION_BUCKETS, provider_label=0),
    Family("gen_ai_server_time_to_first_token_seconds", "GenAI semconv: gen_ai.server.time_to_first_token.",
           "ttft", _GEN_AI_PROVIDER_MODEL, DURATION_BUCKETS, provider_label=0),
    Family("gen_ai_client_token_usage", "GenAI semconv: gen_ai.client.token.usage.", "token_usage",
           ("gen_ai_token_type", "gen_ai_request_model", "gen_ai_provider_name"), TOKEN_BUCKETS, provider_label=2),
)

# Worker state: (name, doc, how live workers combine); counters sum over every snapshot.
_GAUGES = (
    ("sluice_requests_in_flight", "Requests being handled (scrapes aside), live workers only.", "in_flight", sum),
    ("sluice_process_resident_memory_bytes", "Resident memory of the live workers, summed.", "rss_bytes", sum),
    ("sluice_process_open_fds", "Open file descriptors of the fullest live worker.", "open_fds", max),
    ("sluice_process_max_fds", "The file-descriptor limit of the live workers (the lowest).", "max_fds", min),
)
_COUNTERS = (
    ("sluice_access_log_dropped", "Access-log lines dropped because the sink could not keep up.",
     "access_log_dropped"),
    ("sluice_trace_spans_dropped", "Spans dropped because the trace exporter could not keep up.", "spans_dropped"),
)
# The audit log's (auth on: its fields are in the snapshots): sluice_audit_dropped_total's reasons and fields.
_AUDIT_DROPS = (("queue_full", "audit_queue_dropped"), ("client_ip_flood", "audit_ip_dropped"),
                ("write_failed", "audit_failed"))


class Metrics:
    def __init__(self, directory: str | os.PathLike[str], models: Iterable[str], *,
                 provider_kinds: dict[str, str] | None = None, flush_interval_s: float = 1.0) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._file = self._dir / f"{os.getpid()}.json"
        self._interval = flush_interval_s
        self._timer: asyncio.TimerHandle | None = None
        self.stats = RequestStats(models, DURATION_BUCKETS, OVERHEAD_BUCKETS, TOKEN_BUCKETS)
        # The hot path, called with a finished request's context, route, status and duration: the compiled call
        # itself, no method around it (it reads the rest from the context's slots).  It answers True for the
        # first request since the last snapshot; the caller then calls schedule_flush.
        self.observe_context = self.stats.observe_context
        self.in_flight = 0
        self.worker_state: WorkerState | None = None  # the gateway's pool and log counters
        # Labelled counters of other capabilities (rate limits, ...): name -> (doc, labels, counts source),
        # read at each snapshot, never per request.
        self.counters: dict[str, tuple[str, tuple[str, ...], CountsSource]] = {}
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Summed(self._dir, provider_kinds or {}, self.counters))

    def schedule_flush(self) -> None:
        """Arms the next snapshot (after a request observed since the last one: a timer only while busy)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self.flush)

    def flush(self, in_scrape: bool = False) -> None:
        """Writes this worker's snapshot (atomically: readers never see half a file)."""
        if not in_scrape:
            self._timer = None
        # First: the stats' snapshot re-arms observe's "first since the last snapshot", so that a failure below
        # (a full disk) still lets the next request schedule another try.
        stats = self.stats.snapshot()
        worker = {"in_flight": self.in_flight - in_scrape, **process_usage()}  # a scrape does not count itself
        if self.worker_state is not None:
            worker.update(self.worker_state())
        snapshot = {"pid": os.getpid(), "worker": worker, **stats,
                    "counters": {name: [[*key, count] for key, count in source().items()]
                                 for name, (_, _, source) in self.counters.items()}}
        partial = self._file.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(snapshot))
        partial.replace(self._file)

    def exposition(self) -> bytes:
        """The Prometheus text format, summed over every worker's snapshot."""
        self.flush(in_scrape=True)
        return generate_latest(self._registry)


class _Summed(Collector):
    """Sums the workers' snapshot files into metric families."""

    def __init__(self, directory: Path, provider_kinds: dict[str, str],
                 counters: dict[str, tuple[str, tuple[str, ...], CountsSource]]) -> None:
        self._dir = directory
        self._kinds = provider_kinds
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        snapshots = list(self._snapshots())
        for family in FAMILIES:
            yield self._family(family, snapshots)
        live = [s["worker"] for s in snapshots if _alive(s["pid"])]
        for name, doc, field, combine in _GAUGES:
            gauge = GaugeMetricFamily(name, doc)
            values = [w[field] for w in live if field in w]
            if values:
                gauge.add_metric([], combine(values))
                yield gauge
        connections = GaugeMetricFamily("sluice_upstream_connections",
                                        "Upstream connections of the live workers, by state.", labels=["state"])
        for state in ("active", "idle"):
            connections.add_metric([state], sum(w.get(f"upstream_{state}", 0) for w in live))
        yield connections
        for name, doc, field in _COUNTERS:
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], sum(s["worker"].get(field, 0) for s in snapshots))
            yield counter
        if any("audit_written" in s["worker"] for s in snapshots):
            yield from _audit_counters([s["worker"] for s in snapshots])
        for name, (doc, labels, _) in self._counters.items():
            rows = [row for snap in snapshots for row in snap.get("counters", {}).get(name, ())]
            yield self._family(Family(name, doc, "", labels), [{"": rows}])
        workers = GaugeMetricFamily("sluice_workers_reporting", "Live workers whose snapshot this scrape summed.")
        workers.add_metric([], len(live))
        yield workers

    def _family(self, family: Family, snapshots: list[dict[str, Any]]) -> Metric:
        """Sums one field's rows (label values, then a count or a histogram series) over all snapshots."""
        width = len(family.labels)
        totals: dict[tuple[str, ...], Any] = {}
        for snap in snapshots:
            for row in snap.get(family.field, ()):
                key = tuple(str(v) for v in row[:width])
                if family.provider_label >= 0:
                    provider = key[family.provider_label]
                    key = (*key[:family.provider_label], self._kinds.get(provider, provider),
                           *key[family.provider_label + 1:])
                totals[key] = _add(totals.get(key), row[width])
        if family.buckets is None:
            counter = CounterMetricFamily(family.name, family.doc, labels=family.labels)
            for key, count in sorted(totals.items()):
                counter.add_metric(list(key), count)
            return counter
        histogram = HistogramMetricFamily(family.name, family.doc, labels=family.labels)
        for key, counts in sorted(totals.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*family.buckets, float("inf")), counts[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            histogram.add_metric(list(key), buckets, sum_value=counts[-1])
        return histogram

    def _snapshots(self) -> Iterator[dict[str, Any]]:
        for path in self._dir.glob("*.json"):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                yield orjson.loads(path.read_bytes())


def _audit_counters(workers: list[dict[str, Any]]) -> Iterator[Metric]:
    """The audit log's counters, summed over every snapshot (dead workers' too: counters never go back)."""
    records = CounterMetricFamily("sluice_audit_records", "Audit records written (a coalesced flood is one).")
    records.add_metric([], sum(w.get("audit_written", 0) for w in workers))
    yield records
    dropped = CounterMetricFamily("sluice_audit_dropped", "Audit records dropped, by reason.", labels=["reason"])
    for reason, field in _AUDIT_DROPS:
        dropped.add_metric([reason], sum(w.get(field, 0) for w in workers))
    yield dropped


def _add(total: Any, value: Any) -> Any:
    """A count, or a histogram series summed element by element."""
    if total is None:
        return list(value) if isinstance(value, list) else value
    if isinstance(value, list):
        return [a + b for a, b in zip(total, value, strict=True)]
    return total + value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
