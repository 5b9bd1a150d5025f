# cython: language_level=3
#
# The request context, declared once: the fields of sluice/_native/_pure_context.py's RequestContext (its
# pure twin: same names, same defaults), with C types where the compiled code does arithmetic.  _speedups,
# _stats and _logline cimport it and read and write the fields as C struct members (ctx.tokens_in), with no
# lookup by name; they take only this class (TypeError for anything else), as the pure twins take theirs.
#
# Python reads and writes the fields by attribute (the stages, ~50 times per request).  Cython makes every
# `public` field a property (a getset descriptor), which CPython 3.11 does not specialise.  Measured with
# callgrind (instructions per read / write from Python): an object field as a property 222 / 239, as a member
# descriptor 60 / 59, a plain class's slot 58 / 58.  _context.pyx therefore swaps each object field's property
# for a member descriptor on the same C field (T_OBJECT_EX: what __slots__ makes), so that LOAD_ATTR and
# STORE_ATTR specialise (LOAD_ATTR_SLOT, STORE_ATTR_SLOT) as for a slot.  The C fields keep Cython's
# properties: their values are boxed or unboxed either way (a double 284 / 243, a long 253 / 253; as T_DOUBLE
# and T_LONG member descriptors 278 / 266 and 247 / 275: nothing gained).  Cython's conversions apply: a long
# field takes a float by truncating it (200.7 -> 200), a bint field takes any object by its truth.
#
# One consequence: like a slot, an object field can be deleted from Python (`del ctx.model`), which leaves
# NULL in the C field (Python then raises AttributeError on reading it, as for the twin).  Cython's own reads
# and writes of an object field assume it is never NULL, so the compiled code reads an object field through
# `get` and checks it with `settable` before writing it: a NULL test, then AttributeError (for a read, where the
# twin raises it; for a write, where the twin would set it: the compiled code never replaces a deleted field).

from cpython.object cimport PyObject
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
cimport cython


@cython.final
cdef class RequestContext:
    # C fields (properties to Python).  Times in seconds; -1 for a time not reached, a count not known.
    cdef public double started  # perf_counter() at arrival
    cdef public double upstream_s  # time spent waiting on the upstream
    cdef public double overhead_s  # the gateway's own time, once the response head is ready (-1 until then)
    cdef public double ttfb_s  # arrival to the response head (-1)
    cdef public double ttft_s  # streams: request sent upstream to its first event (-1)
    cdef public double total_s  # arrival to the end (finish)
    cdef public double at  # the wall-clock time of the end (time.time(), the access log)
    cdef public long status  # the response's status (finish)
    cdef public long retries
    cdef public long tokens_in, tokens_out  # -1: not known
    cdef public bint usage_asked  # the gateway asked the upstream for stream usage the caller did not ask for
    # Object fields (slots to Python: see the top; None unless said).
    cdef public object request_id
    cdef public object route  # the route's name, for metrics and logs ("other" for paths outside the table)
    cdef public object wire  # the caller's wire format, for errors ("openai")
    cdef public object credential  # the caller's key or token as presented (pipeline.auth.credential)
    cdef public object body  # the request body, once a stage read it whole
    cdef public object request  # the body decoded (pipeline.validate), for the stages after
    cdef public object plan  # the routing decision (sluice.routing.plan.Plan)
    cdef public object admission  # what the rate limits took (pipeline.ratelimit.Admission)
    cdef public object model, provider, upstream_status
    cdef public object error  # the error class, for metrics and logs
    cdef public object answer  # the tail of the answer where usage is
    cdef public object request_body  # only with observability.log_bodies
    cdef public object trace  # the request's spans, when it is traced and sampled (observability.tracing)
    cdef public object propagated  # traced, not sampled: the trace context it carries upstream
    cdef public object traceparent  # ... and its traceparent for the access log (tracing off: the caller's)
    cdef public object key_prefix  # what the logs show of the caller's key
    cdef public object user
    cdef public object principal  # who is calling, when auth is on (sluice.auth.principal.Principal)
    cdef public object security  # the security headers (SECURITY_HEADERS)
    cdef public object served_model  # the model whose deployment answered (a fallback's, or an A/B arm's)
    cdef public object variant  # the A/B arm, for models that have variants
    cdef public object cache
    cdef public object method, path  # the exchange's, at the end ("")


cdef int deleted(RequestContext ctx) except -1  # raises AttributeError naming the object field Python deleted


cdef inline RequestContext context(object value):
    """``value`` as a RequestContext; TypeError for anything else (None too): the compiled code takes only this
    class, whose fields it reads as C struct members (the class is final: an exact type test)."""
    if type(value) is not RequestContext:
        raise TypeError(f"expected a compiled RequestContext (sluice._native), not {type(value).__qualname__}")
    return <RequestContext>value


cdef inline object get(PyObject* field, RequestContext ctx):
    """An object field read from C: ``get(<PyObject*>ctx.model, ctx)`` (AttributeError if it was deleted)."""
    if field == NULL:
        deleted(ctx)
    return <object>field


cdef inline int settable(PyObject* field, RequestContext ctx) except -1:
    """Checks an object field before C writes it: ``settable(<PyObject*>ctx.path, ctx)``, then ``ctx.path = ...``
    (Cython's write releases the old value, which must be there).  AttributeError if it was deleted."""
    if field == NULL:
        deleted(ctx)
    return 0


cdef inline double perf_counter() noexcept:
    """time.perf_counter() (the clock of ``started``), with CPython's own steps: CLOCK_MONOTONIC in nanoseconds,
    then seconds."""
    cdef timespec now
    cdef int64_t ns
    clock_gettime(CLOCK_MONOTONIC, &now)
    ns = now.tv_sec * 1000000000LL + now.tv_nsec
    if ns % 1000000000LL == 0:
        return <double>(ns // 1000000000LL)
    return <double>ns / 1e9
