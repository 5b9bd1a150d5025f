# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# An access-log line from a finished request, compiled.  The pure-Python twin is
# sluice/_native/_pure_logline.py; both make the same lines.
#
# The access log formats queued requests in batches on the event loop, so this
# runs once per logged request on the gateway's one core: reading ~20 fields of
# the request context and building the line record that msgspec encodes.  Here
# the field reads are C calls and the arithmetic is C doubles, not bytecode.
# Milliseconds are rounded half up to the microsecond with the same IEEE steps
# as the twin; the time text is cached per second.

from libc.math cimport floor, fmod
from libc.stdio cimport snprintf
cimport cython

import time


cdef inline double ms(double seconds) noexcept:
    return floor(seconds * 1e6 + 0.5) / 1000.0


@cython.final
cdef class LineFormatter:
    """Makes ``line_type`` records from request contexts; ``trace_id_of`` reads a caller's traceparent."""

    cdef object _line_type, _trace_id_of
    cdef long long _second
    cdef str _second_text

    def __init__(self, line_type, trace_id_of):
        self._line_type = line_type
        self._trace_id_of = trace_id_of
        self._second = -1
        self._second_text = ""

    def line(self, entry):
        cdef double at = entry.at
        cdef long long second = <long long>at
        cdef char millis[8]
        cdef double ttfb = entry.ttfb_s, ttft = entry.ttft_s
        cdef long long tokens_in = entry.tokens_in, tokens_out = entry.tokens_out
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        snprintf(millis, 8, ".%03dZ", <int>(fmod(at, 1.0) * 1000))
        trace_id = entry.trace_id
        if trace_id is None:
            traceparent = entry.traceparent
            if traceparent is not None:
                trace_id = self._trace_id_of(traceparent)
        return self._line_type(
            self._second_text + millis.decode("ascii"), entry.request_id, entry.method, entry.path[:200],
            entry.route, entry.status, ms(entry.total_s), ms(entry.overhead_s), entry.retries, trace_id,
            entry.error, ms(ttfb) if ttfb >= 0 else None, ms(ttft) if ttft >= 0 else None, entry.model, entry.provider,
            entry.upstream_status, tokens_in if tokens_in >= 0 else None, tokens_out if tokens_out >= 0 else None,
            entry.key_prefix, entry.user, entry.cache,
        )
