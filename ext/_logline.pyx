# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
#
# Access-log lines from finished requests, compiled.  The pure-Python twin is
# sluice/_native/_pure_logline.py; both make the same lines.
#
# The access log formats each finished request once, on the gateway's one core,
# right after its response went out.  `line` builds the line record (a msgspec
# Struct) from ~20 fields of the request context.  `add` writes the line as JSON
# text straight into the formatter's buffer, the bytes msgspec would make from
# that record, without the record; the buffer holds the lines until `write`
# gives them to the sink (one write(2), from the buffer itself: no copy), is
# bounded in lines and bytes (`limit`) and counts what it refuses.  `lines`
# gives a batch's text without touching the buffer.  The writing:
#
# - The entry's fields are read as C struct members: the entries are compiled
#   RequestContexts (_context.pxd; TypeError for anything else), the times and
#   counts C numbers.  Generic attribute lookup was a third of the cost of a
#   line.  The exchange's method, path and header map are read from its slots
#   (_slots.pxd): for its class the offset of each slot is found once.
# - Strings are copied with JSON's escapes (", \ and control characters, the
#   short forms where JSON has them), as msgspec writes them; eight bytes at a
#   time are checked for one that needs an escape (the bit tricks of "Bit
#   Twiddling Hacks": a byte below 0x20, or equal to '"' or '\').
# - Integers and milliseconds are written by hand.  Milliseconds are rounded
#   half up to the microsecond with the same IEEE steps as the twin: the value
#   is the double nearest k / 1000 for an integer k of at most 15 digits, whose
#   shortest text (msgspec's, like repr) is k / 1000 in decimal without
#   trailing zeros.
# - A line holding anything else (a string subclass, an integer past 64 bits,
#   a time out of range, ...) is encoded from its record by msgspec, so the
#   output never depends on the fast path.
#
# The time text is cached per second.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from libc.math cimport floor, fmod
from libc.stdio cimport snprintf
from libc.errno cimport EINTR, errno
from libc.string cimport memchr, memcpy, memmove
from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec
from posix.unistd cimport write
cimport cython

from _slots cimport slot_offset, slot_value
from sluice._native._context cimport RequestContext, context, get, settable

import time

import msgspec

cdef extern from "Python.h":
    Py_ssize_t PY_SSIZE_T_MAX
    object PyErr_SetFromErrno(object type)
    int PyErr_CheckSignals() except -1
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    bint PyLong_CheckExact(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1


cdef const char* HEX = b"0123456789abcdef"
cdef const char* SHORT_ESCAPES = b"btn fr"  # JSON's escapes of the control characters 8 to 13 (none for 11)
cdef double MAX_MICROS = 1e15  # k below this has at most 15 digits (see the top)
cdef long long MAX_K = 1000000000000000
# Room kept free for what a line writes besides its strings (keys, numbers, nulls: under 700 bytes): reserved at
# the start of a line and again by each string with its own worst case, so that nothing else checks for room.
cdef enum:
    LINE_ROOM = 1024
cdef unsigned long long ONES = 0x0101010101010101ULL
cdef unsigned long long HIGHS = 0x8080808080808080ULL
cdef unsigned char PLAIN[256]  # 1: a byte copied as it is into a JSON string


cdef void init_plain() noexcept:
    cdef int c
    for c in range(256):
        PLAIN[c] = c >= 0x20 and c != 34 and c != 92


init_plain()


cdef inline double ms(double seconds) noexcept:
    return floor(seconds * 1e6 + 0.5) / 1000.0


cdef inline bint is_lower_hex(const char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if not (b'0' <= s[i] <= b'9' or b'a' <= s[i] <= b'f'):
            return False
    return True


cdef inline bint all_zero(const char* s, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i
    for i in range(n):
        if s[i] != b'0':
            return False
    return True


cdef object traceparent_id(object traceparent):
    """The trace id of a valid version-00 ``traceparent``, else None: parse_traceparent's rules
    (sluice/traceparent.py), without a Python call per line."""
    cdef Py_ssize_t n
    cdef const char* s
    if not PyUnicode_CheckExact(traceparent) or not PyUnicode_IS_COMPACT_ASCII(traceparent):
        return None  # not a str, or not ASCII: no hex digits there
    s = PyUnicode_AsUTF8AndSize(traceparent, &n)
    if n != 55 or s[0] != b'0' or s[1] != b'0' or s[2] != b'-' or s[35] != b'-' or s[52] != b'-':
        return None
    if not (is_lower_hex(s + 3, 32) and is_lower_hex(s + 36, 16) and is_lower_hex(s + 53, 2)):
        return None
    if all_zero(s + 3, 32) or all_zero(s + 36, 16):
        return None
    return traceparent[3:35]


@cython.final
cdef class LineFormatter:
    """Makes ``line_type`` records from request contexts."""

    cdef object _line_type, _encoder
    cdef long long _second
    cdef str _second_text
    cdef char _second_bytes[20]  # _second_text for the written lines, then 1 when it is valid
    cdef char* _buf
    cdef Py_ssize_t _size, _capacity
    cdef Py_ssize_t _lines, _max_lines, _max_bytes  # the buffer's lines and bounds
    cdef readonly long long dropped  # lines refused by add/add_encoded because the buffer was full
    cdef readonly long long failed  # lines add could not make (a value msgspec cannot encode, a deleted field, ...)
    cdef readonly object last_error  # the exception of the last of those
    cdef type _exchange_class  # the class of the exchanges whose method, path and header map offsets follow
    cdef Py_ssize_t _method_at, _path_at, _headers_at

    def __init__(self, line_type):
        self._line_type = line_type
        self._encoder = msgspec.json.Encoder()
        self._second = -1
        self._second_text = ""
        self._exchange_class = None
        self._max_lines = self._max_bytes = PY_SSIZE_T_MAX

    def __dealloc__(self):
        PyMem_Free(self._buf)

    cdef void _set_second(self, long long second) except *:
        self._second = second
        self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        text = self._second_text.encode("ascii")
        if len(text) != 19:  # a year past 9999: left to the general path
            self._second_bytes[19] = 0
        else:
            memcpy(self._second_bytes, <const char*>text, 19)
            self._second_bytes[19] = 1

    cdef object _trace_id(self, object trace, object traceparent):
        if trace is not None:
            trace_id = trace.trace_id
            if trace_id is not None:
                return trace_id
        if traceparent is not None:
            return traceparent_id(traceparent)
        return None

    def line(self, RequestContext entry not None):
        cdef double at = entry.at
        cdef long long second = <long long>at
        cdef char millis[8]
        cdef double ttfb = entry.ttfb_s, ttft = entry.ttft_s
        cdef long tokens_in = entry.tokens_in, tokens_out = entry.tokens_out
        if second != self._second:
            self._set_second(second)
        snprintf(millis, 8, ".%03dZ", <int>(fmod(at, 1.0) * 1000))
        return self._line_type(
            self._second_text + millis.decode("ascii"), get(<PyObject*>entry.request_id, entry),
            get(<PyObject*>entry.method, entry), get(<PyObject*>entry.path, entry)[:200],
            get(<PyObject*>entry.route, entry), entry.status, ms(entry.total_s), ms(entry.overhead_s), entry.retries,
            self._trace_id(get(<PyObject*>entry.trace, entry), get(<PyObject*>entry.traceparent, entry)),
            get(<PyObject*>entry.error, entry), ms(ttfb) if ttfb >= 0 else None, ms(ttft) if ttft >= 0 else None,
            get(<PyObject*>entry.model, entry), get(<PyObject*>entry.provider, entry),
            get(<PyObject*>entry.upstream_status, entry), tokens_in if tokens_in >= 0 else None,
            tokens_out if tokens_out >= 0 else None, get(<PyObject*>entry.key_prefix, entry),
            get(<PyObject*>entry.user, entry), get(<PyObject*>entry.cache, entry),
        )

    def lines(self, entries):
        """The JSON lines of ``entries`` (request contexts), each ending in a newline: one batch's bytes.

        Written after what the buffer holds and taken back off it: the buffer is left as it was.
        """
        cdef Py_ssize_t start = self._size
        try:
            for entry in entries:
                self._append(context(entry))
            return PyBytes_FromStringAndSize(self._buf + start, self._size - start)
        finally:
            self._size = start

    # -- the buffer ------------------------------------------------------------------------

    def add(self, entry, exchange=None):
        """Appends ``entry``'s line: 1 if it is the buffer's first, 0 if not, -1 if it was not added: the buffer
        is full (counted in ``dropped``) or the line could not be made (counted in ``failed``, the error kept in
        ``last_error``).  With its request's ``exchange``, the entry is completed first (``complete``).  Never
        raises for the entry: it runs at the end of every request."""
        cdef Py_ssize_t start = self._size
        if self._lines >= self._max_lines:
            self.dropped += 1
            return -1
        try:
            ctx = context(entry)
            if exchange is not None:
                self._complete(ctx, exchange)
            self._append(ctx)
        except Exception as exc:
            self._size = start  # no half line left behind
            self.failed += 1
            self.last_error = exc
            return -1
        return self._admit(start)

    def complete(self, RequestContext entry not None, exchange):
        """Completes ``entry`` from its request's ``exchange`` as the gateway does when the request ends: ``at``
        is now, ``method`` and ``path`` are the exchange's, and ``traceparent`` is the caller's header unless the
        entry has a ``trace`` (whose trace id the line then carries) or a ``traceparent`` already (an unsampled
        trace's, which the gateway carried upstream)."""
        self._complete(entry, exchange)

    cdef int _complete(self, RequestContext entry, object exchange) except -1:
        cdef timespec now
        if type(exchange) is not self._exchange_class:
            self._method_at = slot_offset(type(exchange), "method")
            self._path_at = slot_offset(type(exchange), "path")
            self._headers_at = slot_offset(type(exchange), "_headers")
            self._exchange_class = type(exchange)
        clock_gettime(CLOCK_REALTIME, &now)  # what time.time() reads
        entry.at = now.tv_sec + now.tv_nsec * 1e-9
        method = self._exchange_field(exchange, self._method_at, "method")
        path = self._exchange_field(exchange, self._path_at, "path")
        settable(<PyObject*>entry.method, entry)
        settable(<PyObject*>entry.path, entry)
        entry.method, entry.path = method, path
        if get(<PyObject*>entry.trace, entry) is None and get(<PyObject*>entry.traceparent, entry) is None:
            entry.traceparent = self._traceparent(exchange)
        return 0

    cdef object _traceparent(self, object exchange):
        """The caller's traceparent: from the exchange's header map (``Exchange``'s ``_headers``: the mapping its
        ``header`` reads, once it is there) without the method around it, or by ``header``."""
        cdef PyObject* headers = slot_value(exchange, self._headers_at)
        if headers == NULL or <object>headers is None:
            return exchange.header("traceparent")
        return (<object>headers).get("traceparent")

    cdef object _exchange_field(self, object exchange, Py_ssize_t offset, str name):
        cdef PyObject* value = slot_value(exchange, offset)
        if value == NULL:
            return getattr(exchange, name)
        return <object>value

    def add_encoded(self, const unsigned char[:] line not None):
        """Appends a line already encoded (ending in a newline), as ``add`` does (log_bodies)."""
        cdef Py_ssize_t start = self._size, size = line.shape[0]
        if self._lines >= self._max_lines:
            self.dropped += 1
            return -1
        if size:
            self._reserve(size)
            self._raw(<const char*>&line[0], size)
        return self._admit(start)

    cdef int _admit(self, Py_ssize_t start) except -2:
        """The line just written from ``start``: kept (1 if the buffer's first, else 0) or, past the bound, not."""
        if self._size > self._max_bytes:
            self._size = start
            self.dropped += 1
            return -1
        self._lines += 1
        return self._lines == 1

    def write(self, int fd):
        """One write(2) of the buffer to ``fd``: the number of lines it completed, which leave the buffer (a line
        written in part stays, less what was written).  Raises OSError as os.write does (BlockingIOError when a
        non-blocking ``fd`` takes nothing now)."""
        cdef Py_ssize_t written, lines, i
        cdef const char* newline
        if self._size == 0:
            return 0
        while True:
            with nogil:
                written = write(fd, self._buf, self._size)
            if written >= 0:
                break
            if errno != EINTR:
                PyErr_SetFromErrno(OSError)
            PyErr_CheckSignals()  # raises what a signal handler raised; else the write is tried again
        if written == self._size:  # all of it, usually: every line is complete
            lines = self._lines
        else:
            lines, i = 0, 0
            while True:
                newline = <const char*>memchr(self._buf + i, 10, written - i)
                if newline == NULL:
                    break
                lines += 1
                i = newline - self._buf + 1
            memmove(self._buf, self._buf + written, self._size - written)
        self._size -= written
        self._lines -= lines
        return lines

    def discard(self):
        """Empties the buffer: the number of lines lost (a sink gone, or too slow at shutdown)."""
        cdef Py_ssize_t lines = self._lines
        self._size = self._lines = 0
        return lines

    def limit(self, Py_ssize_t lines, Py_ssize_t size):
        """Bounds the buffer: at most ``lines`` lines and ``size`` bytes waiting for the sink."""
        self._max_lines, self._max_bytes = lines, size

    @property
    def buffered(self):
        """Lines waiting for the sink (one written in part included)."""
        return self._lines

    cdef int _append(self, RequestContext entry) except -1:
        """Writes one line after the buffer's bytes (not counted in its lines)."""
        cdef Py_ssize_t start = self._size
        if not self._write_line(entry):  # something the fast path does not write: msgspec encodes the record
            self._size = start
            encoded = self._encoder.encode(self.line(entry))
            self._reserve(len(encoded) + 1)
            self._raw(encoded, len(encoded))
            self._raw(b"\n", 1)
        return 0

    # -- the fast path ---------------------------------------------------------------------

    cdef int _grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t capacity = max(self._capacity * 2, self._size + extra, 65536)
        cdef char* grown = <char*>PyMem_Realloc(self._buf, capacity)
        if grown == NULL:
            raise MemoryError()
        self._buf, self._capacity = grown, capacity
        return 0

    cdef inline int _reserve(self, Py_ssize_t extra) except -1:
        if self._size + extra > self._capacity:
            self._grow(extra)
        return 0

    cdef inline void _raw(self, const char* data, Py_ssize_t size) noexcept:
        """Appends within what was reserved."""
        memcpy(self._buf + self._size, data, size)
        self._size += size

    cdef inline void _byte(self, char c) noexcept:
        self._buf[self._size] = c
        self._size += 1

    cdef bint _string(self, object value) except -1:
        """A JSON string (or null); False for anything but an exact str or None.  Keeps LINE_ROOM free after it."""
        cdef Py_ssize_t size, i, plain = 0, start
        cdef const unsigned char* s
        cdef unsigned char c
        cdef char* out
        cdef unsigned long long word
        if value is None:
            self._raw(b"null", 4)
            return True
        if not PyUnicode_CheckExact(value):
            return False
        if PyUnicode_IS_COMPACT_ASCII(value):  # its characters are its UTF-8
            s, size = <const unsigned char*>PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value)
        else:
            s = <const unsigned char*>PyUnicode_AsUTF8AndSize(value, &size)
        self._reserve(size * 6 + 2 + LINE_ROOM)  # every byte escaped as \u00XX at worst
        self._byte(34)
        out = self._buf + self._size
        if size >= 8:  # copied a word at a time while no byte needs an escape; the last word may overlap
            while True:
                if plain + 8 > size:
                    plain = size - 8
                memcpy(&word, s + plain, 8)
                if (((word - ONES * 0x20) | ((word ^ (ONES * 34)) - ONES) | ((word ^ (ONES * 92)) - ONES))
                        & ~word & HIGHS) != 0:
                    break
                memcpy(out + plain, &word, 8)
                plain += 8
                if plain >= size:
                    plain = size
                    break
        self._size += plain
        start = plain
        for i in range(plain, size):
            if PLAIN[s[i]]:
                continue
            c = s[i]
            self._raw(<const char*>s + start, i - start)
            start = i + 1
            self._byte(92)  # '\'
            if c == 34 or c == 92:
                self._byte(c)
            elif 8 <= c <= 13 and c != 11:
                self._byte(SHORT_ESCAPES[c - 8])
            else:
                self._raw(b"u00", 3)
                self._byte(HEX[c >> 4])
                self._byte(HEX[c & 15])
        if size > start:
            self._raw(<const char*>s + start, size - start)
        self._byte(34)
        return True

    cdef inline void _null(self) noexcept:
        self._raw(b"null", 4)

    cdef void _int(self, long long v) noexcept:
        """At most 20 bytes, within LINE_ROOM."""
        cdef char digits[24]
        cdef int n = 0
        cdef unsigned long long u
        if v < 0:
            self._byte(45)  # '-'
            u = <unsigned long long>(-(v + 1)) + 1
        else:
            u = <unsigned long long>v
        while True:
            digits[n] = 48 + <char>(u % 10)
            n += 1
            u //= 10
            if u == 0:
                break
        while n > 0:
            n -= 1
            self._byte(digits[n])

    cdef inline void _count(self, long v) noexcept:
        """A count, or null when it is not known (negative)."""
        if v < 0:
            self._null()
        else:
            self._int(v)

    cdef bint _integer(self, object value) except -1:
        """A JSON integer; False for anything but an exact 64-bit int."""
        cdef int overflow = 0
        cdef long long v
        if not PyLong_CheckExact(value):
            return False
        v = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            return False
        self._int(v)
        return True

    cdef bint _millis(self, double seconds) except -1:
        """Seconds as milliseconds rounded to the microsecond, as msgspec writes that float; False if out of range."""
        cdef double v = seconds * 1e6 + 0.5
        cdef long long k
        cdef unsigned long long micros, fraction
        cdef int n
        cdef char digits[3]
        if not -MAX_MICROS < v < MAX_MICROS:  # NaN too
            return False
        k = <long long>v  # floor(v), without a libm call: truncated, then down one for a negative fraction
        if k > v:
            k -= 1
        if k <= -MAX_K:
            return False
        if k < 0:
            self._byte(45)  # '-'
            k = -k
        micros = <unsigned long long>k
        self._int(<long long>(micros // 1000))
        self._byte(46)  # '.'
        fraction = micros % 1000
        if fraction == 0:
            self._byte(48)
            return True
        digits[0] = 48 + <char>(fraction // 100)
        digits[1] = 48 + <char>(fraction // 10 % 10)
        digits[2] = 48 + <char>(fraction % 10)
        n = 3
        while digits[n - 1] == 48:
            n -= 1
        self._raw(digits, n)
        return True

    cdef bint _optional_millis(self, double seconds) except -1:
        """Milliseconds, or null for a negative time (not reached)."""
        if seconds < 0:
            self._null()
            return True
        return self._millis(seconds)

    cdef inline void _key(self, const char* key, Py_ssize_t size) noexcept:
        self._raw(key, size)  # within LINE_ROOM

    cdef bint _write_line(self, RequestContext entry) except -1:
        """One line, or False (the caller rewinds) when a field needs the general path."""
        cdef double at = entry.at
        cdef long long second
        cdef int millis
        if not 0 <= at < 253402300800.0:  # from the epoch to the end of year 9999
            return False
        second = <long long>at
        if second != self._second:
            self._set_second(second)
        if self._second_bytes[19] != 1:
            return False
        millis = <int>((at - <double>second) * 1000)  # fmod(at, 1.0) for at >= 0, exactly
        self._reserve(LINE_ROOM)
        self._raw(b'{"time":"', 9)
        self._raw(self._second_bytes, 19)
        self._byte(46)  # '.'
        self._byte(48 + millis // 100)
        self._byte(48 + millis // 10 % 10)
        self._byte(48 + millis % 10)
        self._raw(b'Z","request_id":', 16)
        if not self._string(get(<PyObject*>entry.request_id, entry)):
            return False
        self._key(b',"method":', 10)
        if not self._string(get(<PyObject*>entry.method, entry)):
            return False
        self._key(b',"path":', 8)
        path = get(<PyObject*>entry.path, entry)
        if PyUnicode_CheckExact(path) and PyUnicode_GET_LENGTH(path) > 200:
            path = path[:200]
        if not self._string(path):
            return False
        self._key(b',"route":', 9)
        if not self._string(get(<PyObject*>entry.route, entry)):
            return False
        self._key(b',"status":', 10)
        self._int(entry.status)
        self._key(b',"duration_ms":', 15)
        if not self._millis(entry.total_s):
            return False
        self._key(b',"overhead_ms":', 15)
        if not self._millis(entry.overhead_s):
            return False
        self._key(b',"retries":', 11)
        self._int(entry.retries)
        self._key(b',"trace_id":', 12)
        if not self._string(self._trace_id(get(<PyObject*>entry.trace, entry),
                                           get(<PyObject*>entry.traceparent, entry))):
            return False
        self._key(b',"error":', 9)
        if not self._string(get(<PyObject*>entry.error, entry)):
            return False
        self._key(b',"ttfb_ms":', 11)
        if not self._optional_millis(entry.ttfb_s):
            return False
        self._key(b',"ttft_ms":', 11)
        if not self._optional_millis(entry.ttft_s):
            return False
        self._key(b',"model":', 9)
        if not self._string(get(<PyObject*>entry.model, entry)):
            return False
        self._key(b',"provider":', 12)
        if not self._string(get(<PyObject*>entry.provider, entry)):
            return False
        self._key(b',"upstream_status":', 19)
        upstream_status = get(<PyObject*>entry.upstream_status, entry)
        if upstream_status is None:
            self._null()
        elif not self._integer(upstream_status):
            return False
        self._key(b',"tokens_in":', 13)
        self._count(entry.tokens_in)
        self._key(b',"tokens_out":', 14)
        self._count(entry.tokens_out)
        self._key(b',"key_prefix":', 14)
        if not self._string(get(<PyObject*>entry.key_prefix, entry)):
            return False
        self._key(b',"user":', 8)
        if not self._string(get(<PyObject*>entry.user, entry)):
            return False
        self._key(b',"cache":', 9)
        if not self._string(get(<PyObject*>entry.cache, entry)):
            return False
        self._key(b"}\n", 2)
        return True
