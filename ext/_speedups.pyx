# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# Per-request helpers of the gateway core, compiled.  The pure-Python twin is
# sluice/_native/_pure_speedups.py; both must give the same results for the same input.
#
# Request ids.  An id is 32 lowercase hex digits: 16 for a per-process seed and
# 16 for splitmix64(counter).  splitmix64's finaliser is a bijection on 64-bit
# integers, so a process never repeats an id before 2**64 requests, and two
# processes differ by their seeds; the ids still look random, so they leak
# neither the request count nor the order.
#
# Trace contexts of unsampled requests (TraceIds): trace and span ids drawn the
# same way from a seed of their own, written as hex without a Python integer in
# between; a new trace is sampled when its id's low 64 bits fall under
# ratio x 2**64, as OpenTelemetry's TraceIdRatioBased decides.
#
# Validation.  A client's x-request-id is kept when it is 1..128 visible ASCII
# characters (0x21..0x7e); anything else could forge log lines or headers.
#
# Token counts.  The usage object sits at the end of an OpenAI answer, so the
# last '"usage"' in the tail (USAGE_TAIL bytes) must open an object; from there
# the first '"prompt_tokens"' and '"completion_tokens"' followed by a colon and
# 1..18 digits (more is no count) give the counts, -1 when absent.  Whitespace
# is Python's bytes \s.  No JSON parse: this runs once per request, with the
# GIL held (a few hundred bytes are scanned: releasing it would cost more).
#
# The last '"usage"' is found by a Horspool search run backwards: the window
# [i, i + 7) is compared, then moved left by how far the byte s[i] sits from the
# start of the word (1 for 'u', ..., 6 for '"'), or by the word's length when
# s[i] is not in it.  In JSON text most bytes are not, so the scan takes
# about one step per five bytes where the byte-by-byte loop took one per byte.
# The words after it are found with memchr jumps to their opening quote.
#
# count_tokens(context) is the gateway's use of it, in one call: it reads the
# request context's answer and token counts and stores the counts there, as C
# struct members (the RequestContext of _context.pxd), instead of a dozen
# bytecodes around token_counts.
#
# finish(context, status) is the rest of what the gateway works out of every
# finished request before metrics, traces and the access log read it: the total
# time (perf_counter's clock, computed as CPython does), the overhead if the
# response head did not set it, the status and the error class, then the token
# counts; some twenty bytecodes of attribute reads and writes, done on the
# context's C fields.  (The route is the context's from its start: the pipeline
# knows it.)  Both take only the compiled RequestContext (TypeError otherwise).
#
# answer_head(context, upstream, names, resolve, provider, attempts, json) is
# the head of a model call's answer, whole, in one call (it was four Python
# steps: the relayed headers, the JSON type, the renamed rate limits, then the
# context's headers around them and who served it).  In order:
#   x-request-id, x-sluice-overhead-ms (the overhead so far; ttfb_s and
#   overhead_s are set as RequestContext.headers sets them), the security
#   headers, the upstream's headers as relayed, content-type JSON when the body
#   is the gateway's (``json``), x-sluice-model / -provider / -attempts (unless
#   ``provider`` is None), then the rate limits' own (context.admission).
# Which upstream header goes out under which name is the server's policy
# (server/relay.py): ``names`` maps a name as the upstream spelt it to its
# relayed name ("" for one that is not relayed), ``resolve(name)`` answers and
# remembers a name not in it yet.  With ``json`` the upstream's content-type and
# content-encoding are dropped (the body is the gateway's JSON now); when the
# rate limits admitted the request, the upstream's x-ratelimit-* headers go out
# as x-upstream-ratelimit-* (the gateway's own speak for the gateway).  The
# milliseconds are written by PyOS_double_to_string, as f"{ms:.3f}" writes them.

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy
from cpython.object cimport PyObject
cimport cython

from sluice._native._context cimport RequestContext, get, perf_counter

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_IS_ASCII(object s)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL
    void PyMem_Free(void* p)

cdef const char* HEX = b"0123456789abcdef"
cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL


cdef inline uint64_t splitmix64(uint64_t z) noexcept nogil:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline void put_hex(char* out, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(15, -1, -1):
        out[i] = HEX[v & 0xF]
        v >>= 4


@cython.final
cdef class RequestIds:
    """Generates unique request ids: RequestIds(seed).next() -> 32 hex chars."""

    cdef uint64_t _seed
    cdef uint64_t _state

    def __cinit__(self, uint64_t seed):
        self._seed = seed
        self._state = 0

    cpdef str next(self):
        cdef char buf[32]
        self._state += GOLDEN
        put_hex(buf, self._seed)
        put_hex(buf + 16, splitmix64(self._state))
        return buf[:32].decode("ascii")


@cython.final
cdef class TraceIds:
    """W3C trace contexts for requests that are not sampled: TraceIds(seed).new_trace(ratio), .child(trace_id)."""

    cdef uint64_t _state

    def __cinit__(self, uint64_t seed):
        self._state = seed

    cdef inline uint64_t _draw(self) noexcept:
        self._state += GOLDEN
        return splitmix64(self._state)

    cpdef str new_trace(self, double ratio):
        """A new trace's ``traceparent`` (``00-<trace id>-<span id>-00``) when it is not sampled; None when it is:
        its id's low 64 bits under ratio x 2**64 (TraceIdRatioBased's rule), and the SDK starts it."""
        cdef uint64_t high = self._draw()
        cdef uint64_t low = self._draw()
        if ratio >= 1.0 or <double>low < ratio * 18446744073709551616.0:
            return None
        if high == 0 and low == 0:
            low = 1  # an all-zero id is invalid
        cdef char buf[55]
        buf[0] = buf[1] = b'0'
        buf[2] = buf[35] = buf[52] = b'-'
        put_hex(buf + 3, high)
        put_hex(buf + 19, low)
        self._span(buf)
        return buf[:55].decode("ascii")

    cpdef str child(self, str trace_id):
        """``00-<trace_id>-<a new span id>-00``: an unsampled caller's trace, carried on by this hop."""
        cdef Py_ssize_t n
        cdef const char* ident = PyUnicode_AsUTF8AndSize(trace_id, &n)
        if n != 32:
            raise ValueError("a trace id is 32 hex digits")
        cdef char buf[55]
        buf[0] = buf[1] = b'0'
        buf[2] = buf[35] = buf[52] = b'-'
        memcpy(buf + 3, ident, 32)
        self._span(buf)
        return buf[:55].decode("ascii")

    cdef inline void _span(self, char* buf) noexcept:
        """A new span id and unsampled flags into ``buf[36:55]``."""
        cdef uint64_t span = self._draw()
        put_hex(buf + 36, span if span != 0 else 1)  # an all-zero id is invalid
        buf[53] = buf[54] = b'0'


cpdef bint valid_request_id(str value):
    cdef Py_ssize_t n, i
    cdef const char* s
    if not PyUnicode_IS_ASCII(value):
        return False
    s = PyUnicode_AsUTF8AndSize(value, &n)
    if n == 0 or n > 128:
        return False
    for i in range(n):
        if s[i] < 0x21 or s[i] > 0x7E:
            return False
    return True


cdef enum:
    TAIL = 4096
USAGE_TAIL = TAIL


cdef inline bint is_space(char c) noexcept nogil:
    return c == 32 or (9 <= c <= 13)


cdef inline Py_ssize_t skip_space(const char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and is_space(s[i]):
        i += 1
    return i


cdef Py_ssize_t find(const char* s, Py_ssize_t start, Py_ssize_t n, const char* word, Py_ssize_t size) noexcept nogil:
    """The first `word` (which starts with '"') at or after `start`; -1 if none."""
    cdef const char* at
    cdef Py_ssize_t last = n - size  # the last place the word fits
    while start <= last:
        at = <const char*>memchr(s + start, 34, last - start + 1)  # the next '"' where the word could start
        if at == NULL:
            return -1
        start = at - s
        if memcmp(at, word, size) == 0:
            return start
        start += 1
    return -1


cdef unsigned char USAGE_SHIFT[256]  # Horspool's shifts for '"usage"' searched backwards (see the top)


cdef void init_usage_shift() noexcept:
    cdef int c
    cdef const char* word = b'"usage"'
    for c in range(256):
        USAGE_SHIFT[c] = 7
    for c in range(6, 0, -1):  # the first place from the left wins
        USAGE_SHIFT[<unsigned char>word[c]] = c


init_usage_shift()


cdef Py_ssize_t rfind_usage(const char* s, Py_ssize_t floor, Py_ssize_t n) noexcept nogil:
    """The last '"usage"' starting at or after `floor`; -1 if none."""
    cdef Py_ssize_t i = n - 7
    while i >= floor:
        if s[i] == 34 and memcmp(s + i, b'"usage"', 7) == 0:
            return i
        i -= USAGE_SHIFT[<unsigned char>s[i]]
    return -1


cdef int64_t count_after(const char* s, Py_ssize_t start, Py_ssize_t n, const char* word,
                         Py_ssize_t size) noexcept nogil:
    """The first `word` from `start` followed by ws ':' ws and 1..18 digits; -1 if none."""
    cdef Py_ssize_t at = start, i, digits
    cdef int64_t value
    while True:
        at = find(s, at, n, word, size)
        if at < 0:
            return -1
        i = skip_space(s, at + size, n)
        at += 1
        if i >= n or s[i] != 58:  # ':'
            continue
        i = skip_space(s, i + 1, n)
        value = 0
        digits = 0
        while i < n and 48 <= s[i] <= 57:
            value = value * 10 + (s[i] - 48)
            digits += 1
            i += 1
            if digits > 18:
                break
        if 0 < digits <= 18:
            return value


cdef void counts(const char* s, Py_ssize_t n, int64_t* prompt, int64_t* completion) noexcept nogil:
    """The counts of the last usage object in the tail of ``s`` (see the top), -1 where absent."""
    cdef Py_ssize_t i = rfind_usage(s, n - TAIL if n > TAIL else 0, n)
    prompt[0] = completion[0] = -1
    if i < 0:
        return
    i = skip_space(s, i + 7, n)
    if i >= n or s[i] != 58:  # ':'
        return
    i = skip_space(s, i + 1, n)
    if i >= n or s[i] != 123:  # '{'
        return
    prompt[0] = count_after(s, i + 1, n, b'"prompt_tokens"', 15)
    completion[0] = count_after(s, i + 1, n, b'"completion_tokens"', 19)


def token_counts(bytes answer not None):
    cdef int64_t prompt, completion
    counts(answer, len(answer), &prompt, &completion)
    return prompt, completion


cdef int _count(RequestContext context) except -1:
    cdef int64_t prompt, completion
    answer = get(<PyObject*>context.answer, context)
    if answer is None or context.tokens_in >= 0 or context.tokens_out >= 0:
        return 0
    if type(answer) is not bytes:
        answer = bytes(answer)  # a memoryview or bytearray (not from the gateway), as token_counts takes it
    counts(answer, len(answer), &prompt, &completion)
    context.tokens_in = prompt
    context.tokens_out = completion
    return 0


def count_tokens(RequestContext context not None):
    """Sets ``context.tokens_in`` and ``tokens_out`` from the usage in ``context.answer`` (token_counts), unless
    there is no answer or either count is known already (>= 0: a translator or a native kind counted)."""
    _count(context)


def finish(RequestContext context not None, long status):
    """Completes a finished request's ``context``: ``total_s`` (now minus ``started``, on perf_counter's clock),
    ``overhead_s`` (total minus upstream) unless the response head set it (>= 0), ``status``, ``error`` for a
    status of 400 or more without one ("upstream_4xx" or "upstream_5xx"), and the token counts
    (``count_tokens``)."""
    cdef double total = perf_counter() - context.started
    context.total_s = total
    if context.overhead_s < 0:
        context.overhead_s = total - context.upstream_s
    context.status = status
    if status >= 400 and get(<PyObject*>context.error, context) is None:
        context.error = "upstream_4xx" if status < 500 else "upstream_5xx"
    _count(context)


# -- the answer's head (see the top) ---------------------------------------------------------

cdef tuple JSON_TYPE = ("content-type", "application/json")
cdef tuple ATTEMPT_COUNTS = tuple([str(i) for i in range(16)])  # str(attempts), made once


cdef str milliseconds(double seconds):
    """f"{seconds * 1000:.3f}", without the format mini-language's parsing."""
    cdef char* text = PyOS_double_to_string(seconds * 1000, b'f', 3, 0, NULL)
    try:
        return text.decode("ascii")
    finally:
        PyMem_Free(text)


def answer_head(RequestContext context not None, upstream, dict names not None, resolve, str provider,
                Py_ssize_t attempts, bint json):
    """The answer's head: the context's headers around the upstream's as relayed and who served it (see the
    top)."""
    cdef double elapsed = perf_counter() - context.started
    cdef str relayed
    context.ttfb_s = elapsed
    context.overhead_s = elapsed - context.upstream_s
    cdef list head = [("x-request-id", get(<PyObject*>context.request_id, context)),
                      ("x-sluice-overhead-ms", milliseconds(context.overhead_s))]
    head.extend(get(<PyObject*>context.security, context))
    admission = get(<PyObject*>context.admission, context)
    for name, value in upstream:
        relayed = names.get(name)
        if relayed is None:
            relayed = resolve(name)
        if not relayed or (json and (relayed == "content-type" or relayed == "content-encoding")):
            continue
        if admission is not None and relayed.startswith("x-ratelimit-"):
            relayed = "x-upstream-" + relayed[2:]
        if type(value) is bytes:
            head.append((relayed, (<bytes>value).decode("latin-1")))
        else:
            head.append((relayed, value.decode("latin-1")))
    if json:
        head.append(JSON_TYPE)
    if provider is not None:
        model = get(<PyObject*>context.served_model, context)
        head.append(("x-sluice-model", model if model else ""))
        head.append(("x-sluice-provider", provider))
        head.append(("x-sluice-attempts", ATTEMPT_COUNTS[attempts] if 0 <= attempts < 16 else str(attempts)))
    if admission is not None:
        head += admission.headers
    return head
