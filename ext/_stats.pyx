# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# The per-request aggregates behind /metrics, compiled.  The pure-Python twin
# is sluice/_native/_pure_stats.py; both give the same snapshots.
#
# Every finished request makes one RequestStats.observe call.  Its labels
# (route, model label, provider) pick a row: the last call's row when they are
# the same strings as its (the usual case under load: equal text is a length
# check and a memcmp), else three lookups in nested dicts of strings whose
# hashes Python has already cached (the gateway looked the route and the model
# up by them); no tuple is built.  A row holds, in C, everything
# one request updates: the counts by status (a few inline slots, a dict past
# them), the token sums, and one series per histogram (bucket counts, +Inf,
# then the sum).  A value goes to the first bound it does not exceed: a linear
# scan of at most MAX_BUCKETS bounds, which beats a binary search at this size.
# Errors (rare) count in a dict of the row.  observe_context takes the facts
# other than the route, status and duration from a request context, as C
# struct members (the compiled RequestContext of _context.pxd, the only class it
# takes), which spares the caller passing eight arguments.
#
# snapshot() folds the rows into each family's label set (duration by route,
# upstream by provider and model, ...), adding rows in the order they were
# made, so both twins give the same floats.  Nothing here takes a lock or does
# I/O; the worker writes snapshot() to disk off the request path
# (sluice/observability/metrics.py).

from cpython.object cimport PyObject
cimport cython

from sluice._native._context cimport RequestContext, get

cdef enum:
    MAX = 24
    SERIES = MAX + 2  # buckets, +Inf, then the sum
    STATUS_SLOTS = 8  # statuses counted inline; more go to a dict (a row rarely sees more)
MAX_BUCKETS = MAX


cdef tuple checked_bounds(object bounds):
    values = tuple(float(b) for b in bounds)
    if not 0 < len(values) <= MAX or list(values) != sorted(set(values)):
        raise ValueError(f"bounds must be 1..{MAX} increasing numbers")
    return values


@cython.final
cdef class _Bounds:
    cdef double at[MAX]
    cdef int n

    def __init__(self, bounds):
        values = checked_bounds(bounds)
        self.n = len(values)
        for i, value in enumerate(values):
            self.at[i] = value

    cdef inline void add(self, double* series, double value) noexcept:
        cdef int i = 0
        while i < self.n and value > self.at[i]:
            i += 1
        series[i] += 1
        series[self.n + 1] += value


cdef list series_list(double* series, int n):
    return [series[i] for i in range(n + 2)]


cdef inline double sum_buckets(double* series, int n) noexcept:
    """How many values a series holds (its buckets and +Inf)."""
    cdef double total = 0
    cdef int i
    for i in range(n + 1):
        total += series[i]
    return total


cdef inline void add_series(double* total, double* series, int n) noexcept:
    cdef int i
    for i in range(n + 2):
        total[i] += series[i]


@cython.final
cdef class _Series:
    cdef double counts[SERIES]


@cython.final
cdef class Histograms:
    """Histograms sharing one set of bucket bounds, one series per key."""

    cdef _Bounds _bounds
    cdef dict _series

    def __init__(self, bounds):
        self._bounds = _Bounds(bounds)
        self._series = {}

    def observe(self, key, double value):
        cdef _Series series = self._series.get(key)
        if series is None:
            series = _Series()
            self._series[key] = series
        self._bounds.add(series.counts, value)

    def series(self):
        return {key: series_list((<_Series>series).counts, self._bounds.n) for key, series in self._series.items()}


@cython.final
cdef class _Row:
    """Everything counted for one (route, model label, provider)."""

    cdef str route, label, provider
    cdef int statuses
    cdef long status[STATUS_SLOTS]
    cdef long long status_count[STATUS_SLOTS]
    cdef dict more_statuses  # status -> count, past the inline slots
    cdef dict errors  # error class -> count
    cdef long long tokens_in, tokens_out
    cdef double duration[SERIES]
    cdef double overhead[SERIES]
    cdef double upstream[SERIES]
    cdef double ttft[SERIES]
    cdef double token_input[SERIES]
    cdef double token_output[SERIES]

    def __init__(self, str route, str label, str provider):
        self.route, self.label, self.provider = route, label, provider
        self.more_statuses = {}
        self.errors = {}

    cdef inline void count_status(self, long status):
        cdef int i
        for i in range(self.statuses):
            if self.status[i] == status:
                self.status_count[i] += 1
                return
        if self.statuses < STATUS_SLOTS:
            self.status[self.statuses] = status
            self.status_count[self.statuses] = 1
            self.statuses += 1
        else:
            self.more_statuses[status] = self.more_statuses.get(status, 0) + 1

    cdef list status_rows(self):
        rows = [[self.route, self.label, self.provider, self.status[i], self.status_count[i]]
                for i in range(self.statuses)]
        rows += [[self.route, self.label, self.provider, status, count] for status, count in self.more_statuses.items()]
        return rows


@cython.final
cdef class _Sums:
    """One family's series summed by label set, in the order the label sets first appear."""

    cdef int n
    cdef dict series  # key -> _Series

    def __init__(self, int n):
        self.n = n
        self.series = {}

    cdef void add(self, object key, double* series):
        cdef _Series total = self.series.get(key)
        if total is None:
            total = _Series()
            self.series[key] = total
        add_series(total.counts, series, self.n)

    cdef list rows(self, bint spread):
        """[*key, series] when ``spread`` (tuple keys), else [key, series]."""
        if spread:
            return [[*key, series_list((<_Series>total).counts, self.n)] for key, total in self.series.items()]
        return [[key, series_list((<_Series>total).counts, self.n)] for key, total in self.series.items()]


@cython.final
cdef class RequestStats:
    """Everything /metrics counts about finished requests, updated in one call per request."""

    cdef frozenset _models
    cdef _Bounds _duration, _overhead, _tokens
    cdef dict _by_route  # route -> model label -> provider -> _Row
    cdef list _rows  # in the order they were made
    cdef bint _dirty  # observed since the last snapshot
    cdef _Row _last  # the last call's row, for its route, model and provider arguments:
    cdef str _last_route
    cdef object _last_model, _last_provider

    def __init__(self, models, duration_bounds, overhead_bounds, token_bounds):
        self._models = frozenset(models)
        self._duration = _Bounds(duration_bounds)
        self._overhead = _Bounds(overhead_bounds)
        self._tokens = _Bounds(token_bounds)
        self._by_route = {}
        self._rows = []
        self._dirty = False

    cdef _Row _row(self, str route, str label, str provider):
        cdef dict by_label = self._by_route.get(route)
        cdef dict by_provider
        cdef _Row row
        if by_label is None:
            by_label = self._by_route[route] = {}
        by_provider = by_label.get(label)
        if by_provider is None:
            by_provider = by_label[label] = {}
        row = by_provider.get(provider)
        if row is None:
            row = by_provider[provider] = _Row(route, label, provider)
            self._rows.append(row)
        return row

    cdef inline bint _same(self, str route, object model, object provider):
        """The last call's arguments (provider names are the config's own strings: compared by identity)."""
        if provider is not self._last_provider or not route == self._last_route:
            return False
        if model is self._last_model:
            return True
        return type(model) is str and type(self._last_model) is str and <str>model == <str>self._last_model

    def observe(self, str route, object model, object provider, long status, object error, double duration,
                double overhead, double upstream, double ttft, long long tokens_in, long long tokens_out):
        """One finished request; True when it is the first since the last snapshot (time to schedule one)."""
        return self._observe(route, model, provider, status, error, duration, overhead, upstream, ttft, tokens_in,
                             tokens_out)

    def observe_context(self, RequestContext context not None, str route, long status, double duration):
        """``observe`` with the other facts read from a request context: its model, provider, error,
        overhead_s, upstream_s (not known when not above 0), ttft_s, tokens_in and tokens_out."""
        cdef double upstream = context.upstream_s
        return self._observe(route, get(<PyObject*>context.model, context),
                             get(<PyObject*>context.provider, context), status, get(<PyObject*>context.error, context),
                             duration, context.overhead_s, upstream if upstream > 0 else -1.0, context.ttft_s,
                             context.tokens_in, context.tokens_out)

    cdef bint _observe(self, str route, object model, object provider, long status, object error, double duration,
                       double overhead, double upstream, double ttft, long long tokens_in,
                       long long tokens_out) except -1:
        cdef str label
        cdef bint first = not self._dirty
        cdef _Row row = self._last
        if row is None or not self._same(route, model, provider):
            if model is None:
                label = "none"
            elif model in self._models:
                label = model
            else:
                label = "unknown"
            row = self._row(route, label, provider or "none")
            self._last, self._last_route, self._last_model, self._last_provider = row, route, model, provider
        row.count_status(status)
        if error is not None:
            row.errors[error] = row.errors.get(error, 0) + 1
        self._duration.add(row.duration, duration)
        self._overhead.add(row.overhead, overhead)
        if upstream >= 0:
            self._duration.add(row.upstream, upstream)
        if ttft >= 0:
            self._duration.add(row.ttft, ttft)
        if tokens_in >= 0:
            row.tokens_in += tokens_in
            self._tokens.add(row.token_input, <double>tokens_in)
        if tokens_out >= 0:
            row.tokens_out += tokens_out
            self._tokens.add(row.token_output, <double>tokens_out)
        self._dirty = True
        return first

    def snapshot(self):
        cdef _Row row
        cdef int duration_n = self._duration.n, token_n = self._tokens.n
        cdef _Sums duration = _Sums(duration_n), overhead = _Sums(self._overhead.n)
        cdef _Sums upstream = _Sums(duration_n), ttft = _Sums(duration_n), token_usage = _Sums(token_n)
        requests = []
        errors = {}
        tokens_in = {}
        tokens_out = {}
        self._dirty = False
        for row in self._rows:
            requests += row.status_rows()
            for error, count in row.errors.items():
                errors[(row.route, error)] = errors.get((row.route, error), 0) + count
            duration.add(row.route, row.duration)
            overhead.add(row.route, row.overhead)
            if sum_buckets(row.upstream, duration_n) > 0:
                upstream.add((row.provider, row.label), row.upstream)
            if sum_buckets(row.ttft, duration_n) > 0:
                ttft.add((row.provider, row.label), row.ttft)
            if sum_buckets(row.token_input, token_n) > 0:
                tokens_in[row.label] = tokens_in.get(row.label, 0) + row.tokens_in
                token_usage.add(("input", row.label, row.provider), row.token_input)
            if sum_buckets(row.token_output, token_n) > 0:
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
