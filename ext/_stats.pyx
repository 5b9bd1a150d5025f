# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# The per-request aggregates behind /metrics, compiled.  The pure-Python twin
# is sluice/_native/_pure_stats.py; both give the same snapshots.
#
# Every finished request makes one RequestStats.observe call: a few dict
# updates for the counters and, per histogram, a linear scan of at most
# MAX_BUCKETS bounds into a series held in a C array.  A linear scan beats a
# binary search at this size and needs no Python objects.  Nothing here takes
# a lock or does I/O; the worker writes snapshot() to disk off the request path
# (sluice/observability/metrics.py).

cimport cython

cdef enum:
    MAX = 24
MAX_BUCKETS = MAX


@cython.final
cdef class _Series:
    cdef double counts[MAX + 2]  # buckets, +Inf, then the sum at [n + 1]

    cdef list to_list(self, int n):
        return [self.counts[i] for i in range(n + 2)]


@cython.final
cdef class Histograms:
    """Histograms sharing one set of bucket bounds, one series per key."""

    cdef double bounds[MAX]
    cdef int n
    cdef dict _series

    def __init__(self, bounds):
        values = tuple(float(b) for b in bounds)
        if not 0 < len(values) <= MAX or list(values) != sorted(set(values)):
            raise ValueError(f"bounds must be 1..{MAX} increasing numbers")
        self.n = len(values)
        for i, value in enumerate(values):
            self.bounds[i] = value
        self._series = {}

    cdef inline void add(self, object key, double value):
        cdef _Series series = self._series.get(key)
        cdef int i = 0
        if series is None:
            series = _Series()
            self._series[key] = series
        while i < self.n and value > self.bounds[i]:
            i += 1
        series.counts[i] += 1
        series.counts[self.n + 1] += value

    def observe(self, key, double value):
        self.add(key, value)

    def series(self):
        return {key: (<_Series>series).to_list(self.n) for key, series in self._series.items()}


@cython.final
cdef class RequestStats:
    """Everything /metrics counts about finished requests, updated in one call per request."""

    cdef frozenset _models
    cdef dict _requests, _errors, _tokens_in, _tokens_out
    cdef Histograms _duration, _overhead, _upstream, _ttft, _token_usage

    def __init__(self, models, duration_bounds, overhead_bounds, token_bounds):
        self._models = frozenset(models)
        self._requests = {}
        self._errors = {}
        self._tokens_in = {}
        self._tokens_out = {}
        duration_bounds = tuple(duration_bounds)
        self._duration = Histograms(duration_bounds)
        self._overhead = Histograms(overhead_bounds)
        self._upstream = Histograms(duration_bounds)
        self._ttft = Histograms(duration_bounds)
        self._token_usage = Histograms(token_bounds)

    def observe(self, str route, object model, object provider, int status, object error, double duration,
                double overhead, double upstream, double ttft, long long tokens_in, long long tokens_out):
        cdef str label
        if model is None:
            label = "none"
        elif model in self._models:
            label = model
        else:
            label = "unknown"
        if not provider:
            provider = "none"
        key = (route, label, provider, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if error is not None:
            error_key = (route, error)
            self._errors[error_key] = self._errors.get(error_key, 0) + 1
        self._duration.add(route, duration)
        self._overhead.add(route, overhead)
        if upstream >= 0:
            self._upstream.add((provider, label), upstream)
        if ttft >= 0:
            self._ttft.add((provider, label), ttft)
        if tokens_in >= 0:
            self._tokens_in[label] = self._tokens_in.get(label, 0) + tokens_in
            self._token_usage.add(("input", label, provider), <double>tokens_in)
        if tokens_out >= 0:
            self._tokens_out[label] = self._tokens_out.get(label, 0) + tokens_out
            self._token_usage.add(("output", label, provider), <double>tokens_out)

    def snapshot(self):
        return {
            "requests": [[*key, count] for key, count in self._requests.items()],
            "errors": [[*key, count] for key, count in self._errors.items()],
            "tokens_in": [[key, count] for key, count in self._tokens_in.items()],
            "tokens_out": [[key, count] for key, count in self._tokens_out.items()],
            "duration": [[key, counts] for key, counts in self._duration.series().items()],
            "overhead": [[key, counts] for key, counts in self._overhead.series().items()],
            "upstream": [[*key, counts] for key, counts in self._upstream.series().items()],
            "ttft": [[*key, counts] for key, counts in self._ttft.series().items()],
            "token_usage": [[*key, counts] for key, counts in self._token_usage.series().items()],
        }
