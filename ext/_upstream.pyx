# cython: language_level=3, boundscheck=False, wraparound=False
#
# One upstream HTTP/1.1 connection, compiled: the per-request part of sluice/upstream/client.py (which keeps
# the pools, their limits and waiters, connecting, and the client).  The pure-Python twin is
# sluice/_native/_pure_upstream.py: same classes, same methods, same behaviour.
#
# Why compiled.  In the bare in-process path the client was ~44 % of sluice's own instructions per request
# (bench/README.md, "Where the time goes"), spread over many small Python calls: the protocol's callbacks from
# httptools (one per header, the head, the body, the end), the wake-ups, the waiter and its timer, the
# request head, the response object.  Compiling the same Python gains nothing (CPython 3.11 specialises it
# as well); what gains is typed state (C flags and counters in a `cdef class`), callbacks that are C
# functions with no frame, and fewer calls per request:
#   - `send` begins the exchange and writes in one call; `head_waiter` returns None once the head is in
#     (usually the first time it is asked after one await), `response` builds the answer;
#   - a header's framing (content-length, chunked) is noted as the header arrives, not looked for after;
#   - a wake-up clears the waiter, so the callbacks after the first of a feed (the body, the end) test a
#     field instead of calling `done()`;
#   - the read timer is armed lazily (below): no timer is made or cancelled per request.
#
# The read timer.  A wait (for the head's next bytes, or the body's next piece) ends at `until` = min(now +
# read_timeout, deadline): the read timeout is silence between bytes.  Arming a timer handle per wait and
# cancelling it when the bytes came cost two loop calls and an allocation per request.  Instead one timer per
# connection stays armed: a wait arms it only when there is none or it fires later than `until` (a shorter
# deadline); when it fires it compares the time with the current wait's `until`: past it (less TIMER_SLACK,
# the loop's clock granularity), the read times out; before it, it re-arms itself at `until`; with nobody
# waiting it lapses, and the next wait arms one.  Under steady traffic a connection arms one timer per
# read_timeout, not one per request.  Closing the connection cancels it.
#
# A HEAD exchange's answer has no body whatever its head says; llhttp cannot be told, so after one the
# connection gets a new parser.

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_GET_LENGTH, PyUnicode_KIND
from libc.string cimport memcmp, memcpy

import asyncio

import httptools

from ._upstream_errors import ConnectionClosed, MalformedResponse, ReadTimeout, ResponseTooLarge, TruncatedBody

__all__ = ["BIG_BODY", "HIGH_WATER", "LOW_WATER", "MAX_HEAD_BYTES", "Connection", "Response", "closed_while_idle",
           "head"]

cdef enum:
    _HIGH_WATER = 256 * 1024
    _LOW_WATER = 64 * 1024
    _BIG_BODY = 64 * 1024
    _MAX_HEAD_BYTES = 64 * 1024

HIGH_WATER = _HIGH_WATER  # pause reading the socket past this many unread body bytes
LOW_WATER = _LOW_WATER  # ... and resume below this
BIG_BODY = _BIG_BODY  # bodies above this are written beside the head, not copied into it
MAX_HEAD_BYTES = _MAX_HEAD_BYTES  # a response head larger than this is refused
cdef double TIMER_SLACK = 0.001  # a read timer that fires this early counts as on time

cdef class Response  # (below; Connection.response makes them)

cdef object HttpResponseParser = httptools.HttpResponseParser
cdef object HttpParserUpgrade = httptools.HttpParserUpgrade
cdef object HttpParserError = httptools.HttpParserError


cdef inline bint _is_name(bytes name, const char* lower, Py_ssize_t size):
    """Whether ``name`` is ``lower`` (ASCII, lower case) in any case."""
    if PyBytes_GET_SIZE(name) != size:
        return False
    cdef const char* data = PyBytes_AS_STRING(name)
    cdef Py_ssize_t i
    cdef char c
    for i in range(size):
        c = data[i]
        if 65 <= c <= 90:
            c += 32
        if c != lower[i]:
            return False
    return True


@cython.final
cdef class Connection:
    """One HTTP/1.1 connection (an asyncio protocol): parser callbacks fill the state of the current exchange."""

    cdef public object pool
    cdef public object transport
    cdef public int status
    cdef public list headers
    cdef public object error
    cdef public bint closed, complete, head_done, keep_alive, received_any, in_exchange, upload_unfinished
    cdef public double idle_since
    cdef object _loop, _parser, _waiter, _timer, _drain_waiter
    cdef list _chunks
    cdef Py_ssize_t _next  # the first chunk of _chunks not yet taken
    cdef Py_ssize_t _buffered, _head_bytes
    cdef double _wait_until, _timer_at
    cdef bint _reading_paused, _write_paused, _is_head_request, _until_close, _framed

    def __init__(self, pool):
        self.pool = pool
        self._loop = pool.loop
        self._parser = HttpResponseParser(self)
        self.transport = None
        self._waiter = None
        self._timer = None
        self._drain_waiter = None
        self._chunks = []
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    cdef inline void _reset(self) except *:
        if self._reading_paused:
            self._resume_reading()
        self._head_bytes = 0
        self._is_head_request = False
        self.upload_unfinished = False
        self.status = 0
        self.headers = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.error = None
        self.in_exchange = False
        if self._next or self._chunks:
            self._chunks = []
            self._next = 0
        self._buffered = 0
        self._until_close = False
        self._framed = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, bytes data):
        if not self.in_exchange:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close()
            return
        self.received_any = True
        if not self.head_done:
            self._head_bytes += PyBytes_GET_SIZE(data)
            if self._head_bytes > _MAX_HEAD_BYTES and b"\r\n\r\n" not in data:
                self._fail(MalformedResponse(f"the upstream's response head is over {_MAX_HEAD_BYTES} bytes"))
                return
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(MalformedResponse("the upstream switched protocols"))
        except HttpParserError as exc:
            self._fail(MalformedResponse(f"malformed HTTP response from upstream: {exc}"))
        else:
            if not self.head_done:
                self._wake()  # bytes of the head count as activity for the read timeout

    def eof_received(self):
        return None  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc):
        self.closed = True
        self._cancel_timer()
        if self.in_exchange and not self.complete:
            if self._until_close and self.head_done and exc is None:
                self.complete = True  # a body delimited by the (clean) end of the connection
            elif self.head_done:
                self._set_error(TruncatedBody("the upstream closed the connection before the body was complete"))
            else:
                self._set_error(ConnectionClosed("the upstream closed the connection without answering"))
        self._wake()
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionClosed("the upstream closed the connection while receiving the body"))

    def pause_writing(self):
        self._write_paused = True

    def resume_writing(self):
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, bytes name, bytes value):
        self.headers.append((name, value))
        if not self._framed:
            if _is_name(name, b"content-length", 14):
                self._framed = True
            elif _is_name(name, b"transfer-encoding", 17) and b"chunked" in value.lower():
                self._framed = True

    def on_headers_complete(self):
        parser = self._parser
        self.status = parser.get_status_code()
        if self.status < 200:
            # An interim 1xx answer: the real head follows.
            self.headers = []
            self._framed = False
            return
        self.head_done = True
        self.keep_alive = parser.should_keep_alive()
        if self._is_head_request:
            # No body follows, whatever the head announces.  The parser cannot be told so:
            # it would wait for one, so the next exchange on this connection gets a new parser.
            self.complete = True
            self._wake()
            return
        if self.status != 204 and self.status != 304 and not self._framed:
            self._until_close = True
            self.keep_alive = False
        self._wake()

    def on_body(self, bytes body):
        self._chunks.append(body)
        self._buffered += PyBytes_GET_SIZE(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self):
        if self.status < 200:
            return
        self.complete = True
        self._wake()

    # -- waiting -----------------------------------------------------------------------

    cdef inline void _wake(self) except *:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # woken once: the later callbacks of the same feed find no waiter
            if not waiter.done():  # (a cancelled one is done)
                waiter.set_result(None)

    cdef inline void _set_error(self, error) except *:
        if self.error is None:
            self.error = error

    cdef void _fail(self, error) except *:
        self._set_error(error)
        self._wake()
        self.close()

    cdef object _wait(self, double until):
        """A future that the parser's next progress completes, or the read timer at ``until`` (loop time)."""
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        self._wait_until = until
        timer = self._timer
        if timer is None or self._timer_at > until:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(until, self._on_timer)
            self._timer_at = until
        return waiter

    def _on_timer(self):
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits (or is already woken): the next wait arms a timer again
        if self._loop.time() + TIMER_SLACK >= self._wait_until:
            self._fail(ReadTimeout("the upstream did not answer in time"))
        else:  # armed for an earlier wait: on to this one's end
            self._timer = self._loop.call_at(self._wait_until, self._on_timer)
            self._timer_at = self._wait_until

    cdef inline void _cancel_timer(self) except *:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None

    # -- the exchange ------------------------------------------------------------------

    def begin(self, bint head_request):
        self._begin(head_request)

    cdef void _begin(self, bint head_request) except *:
        if self._is_head_request:
            self._parser = HttpResponseParser(self)
        self._reset()
        self._is_head_request = head_request
        self.in_exchange = True

    cdef object _start(self, bytes head):
        """Begins an exchange for ``head`` (a HEAD request's answer has no body); its transport."""
        self._begin(PyBytes_GET_SIZE(head) >= 5 and memcmp(PyBytes_AS_STRING(head), b"HEAD ", 5) == 0)
        if self.closed or self.transport is None:
            raise ConnectionClosed("the upstream closed the connection without answering")
        return self.transport

    def send(self, bytes head, body):
        """Begins an exchange and writes its head and (bytes) body."""
        transport = self._start(head)
        cdef bytes data = body
        if data is None or PyBytes_GET_SIZE(data) == 0:
            transport.write(head)
        elif PyBytes_GET_SIZE(data) > _BIG_BODY:
            transport.writelines((head, data))
        else:
            transport.write(head + data)

    async def send_stream(self, bytes head, body):
        """Begins an exchange and sends ``body`` chunked, waiting while the peer reads slowly."""
        transport = self._start(head)
        transport.write(head)
        async for chunk in body:
            if self.closed or self.complete:
                # The upstream answered (or left) early: stop uploading; the peer still
                # expects the rest of the body, so the connection cannot be reused.
                self.upload_unfinished = True
                return
            if chunk:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                if self._write_paused:
                    self._drain_waiter = self._loop.create_future()
                    try:
                        await self._drain_waiter
                    finally:
                        self._drain_waiter = None
        transport.write(b"0\r\n\r\n")

    def head_waiter(self, double read_timeout, double deadline):
        """None once the head has arrived, else a future to await before asking again; raises a failure first.

        The caller awaits the future itself: a coroutine to wait in would cost a coroutine level on every
        request.  A wait is ended by the next bytes of the head, or by the read timeout."""
        if self.head_done:
            return None
        if self.error is not None:
            raise self.error
        return self._wait(min(<double>self._loop.time() + read_timeout, deadline))

    def response(self, double read_timeout, double deadline):
        """The response of the exchange once its head has arrived; the error that came with the head, unless
        there is still a body to read."""
        if self.error is not None and self._next == len(self._chunks) and not self.complete:
            raise self.error
        cdef Response response = Response.__new__(Response)
        response._conn = self
        response._read_timeout = read_timeout
        response._deadline = deadline
        response.status = self.status
        response.headers = self.headers
        return response

    async def next_chunk(self, double read_timeout, double deadline):
        """The next piece of the body; b"" once it is complete."""
        return await self._next_chunk(read_timeout, deadline)

    async def _next_chunk(self, double read_timeout, double deadline):
        cdef bytes chunk
        while True:
            if self._next < len(self._chunks):
                chunk = self._chunks[self._next]
                self._next += 1
                if self._next == len(self._chunks):
                    self._chunks = []
                    self._next = 0
                self._buffered -= PyBytes_GET_SIZE(chunk)
                if self._buffered < _LOW_WATER:
                    self._resume_reading()
                return chunk
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(min(<double>self._loop.time() + read_timeout, deadline))

    def take_buffered(self):
        """All body bytes received so far (fast path for a response that arrived whole)."""
        return self._take_buffered()

    cdef bytes _take_buffered(self):
        cdef list chunks = self._chunks
        cdef Py_ssize_t n = len(chunks) - self._next
        cdef bytes data
        if n == 1:
            data = chunks[self._next]
        elif n == 0:
            data = b""
        else:
            data = b"".join(chunks[self._next:])
        if chunks:
            self._chunks = []
            self._next = 0
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()
        return data

    cdef void _resume_reading(self) except *:
        if self._reading_paused:
            self._reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    cpdef bint reusable(self):
        return (self.complete and self.keep_alive and not self.closed and self.error is None
                and not self.upload_unfinished)

    cpdef close(self):
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self._cancel_timer()


@cython.final
cdef class Response:
    """An upstream response; the body is read with ``read`` or ``next_chunk``, then ``release``."""

    cdef Connection _conn
    cdef double _read_timeout, _deadline
    cdef bint _released
    cdef public int status
    cdef public list headers

    def __init__(self, Connection conn, double read_timeout, double deadline):
        self._conn = conn
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._released = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, bytes name):
        """The first value of a header; ``name`` in lower case."""
        cdef tuple pair
        for pair in self.headers:
            if (<bytes>pair[0]).lower() == name:
                return pair[1]
        return None

    def read_arrived(self, Py_ssize_t limit):
        """The whole body if it has all arrived (no await: the hot path), else None."""
        conn = self._conn
        if not conn.complete or conn.error is not None:
            return None
        data = conn._take_buffered()
        if PyBytes_GET_SIZE(data) > limit:
            self.abort()
            raise ResponseTooLarge(f"the upstream response is larger than {limit} bytes")
        self.release()
        return data

    async def read(self, Py_ssize_t limit):
        """The whole body, at most ``limit`` bytes (ResponseTooLarge past that)."""
        conn = self._conn
        cdef list parts
        cdef Py_ssize_t size
        cdef bytes data, chunk
        try:
            if conn.complete:
                data = conn._take_buffered()
            else:
                parts = []
                size = 0
                while True:
                    chunk = await conn._next_chunk(self._read_timeout, self._deadline)
                    if not chunk:
                        break
                    size += PyBytes_GET_SIZE(chunk)
                    if size > limit:
                        raise ResponseTooLarge(f"the upstream response is larger than {limit} bytes")
                    parts.append(chunk)
                data = b"".join(parts)
            if PyBytes_GET_SIZE(data) > limit:
                raise ResponseTooLarge(f"the upstream response is larger than {limit} bytes")
        except BaseException:
            self.abort()
            raise
        self.release()
        return data

    async def next_chunk(self):
        """The next piece of the body as it arrives; b"" at its end."""
        return await self._conn._next_chunk(self._read_timeout, self._deadline)

    cpdef release(self):
        """Gives the connection back: to the pool if the exchange is complete, else closed."""
        cdef Connection conn
        if not self._released:
            self._released = True
            conn = self._conn
            conn.pool.put_back(conn)
            if conn.closed:
                # The body bytes nobody will read go now: a connection closed unfinished (a caller gone or
                # stalled while reading was paused: up to HIGH_WATER plus one read) is kept alive by a cycle
                # (its error's traceback holds a frame that holds it) until a full collection (bench/README.md,
                # "Soak").  Not in close(): _fail closes too, and the body read whole before it is still read.
                if conn._chunks:
                    conn._chunks = []
                    conn._next = 0
                conn._buffered = 0

    cpdef abort(self):
        """Closes the connection now (client gone, error); safe to call more than once.

        A read waiting on the body (``next_chunk``, ``read``), or any later one, fails at once with
        ConnectionClosed: without the error it would wake to a closed connection that is no longer in an
        exchange, find nothing, and wait again until the read timeout.  Once the connection has been given
        back (``release``) it is not this response's any more (it may serve another exchange): nothing.
        """
        if self._released:
            return
        conn = self._conn
        if not conn.complete:
            conn._fail(ConnectionClosed("the exchange was aborted before the response was complete"))
        conn.close()
        self.release()


def closed_while_idle(exc, Connection conn, body):
    """A reused connection failed as one the peer closed while it sat idle: before any byte of an answer, and
    with a body that can be sent again."""
    return (isinstance(exc, ConnectionClosed) and not isinstance(exc, TruncatedBody) and not conn.received_any
            and (body is None or isinstance(body, bytes)))


def head(str method, str target, str host_header, headers, body):
    """The request head: Host first, then ``headers`` as given, then the body's framing.

    Latin-1 text (every str whose characters are all below 256: CPython stores it one byte a character) is
    copied straight into the bytes object, sized first; anything else takes the generic way, which encodes
    (and raises UnicodeEncodeError as the twin does)."""
    cdef object framing = None
    if body is None or isinstance(body, bytes):
        if body or not (method == "GET" or method == "HEAD" or method == "DELETE" or method == "OPTIONS"):
            framing = len(body) if body else 0
    else:
        framing = True  # chunked
    cdef list pairs = headers if type(headers) is list else list(headers)
    cdef Py_ssize_t total = 22  # " ", " HTTP/1.1\r\nhost: ", "\r\n" after the host, "\r\n" at the end
    cdef Py_ssize_t size
    for text in (method, target, host_header):
        size = _latin1_size(text)
        if size < 0:
            return _head_generic(method, target, host_header, pairs, framing)
        total += size
    cdef object pair
    for pair in pairs:
        if type(pair) is not tuple or len(<tuple>pair) != 2:
            return _head_generic(method, target, host_header, pairs, framing)
        size = _latin1_size((<tuple>pair)[0])
        if size < 0:
            return _head_generic(method, target, host_header, pairs, framing)
        total += size + 4
        size = _latin1_size((<tuple>pair)[1])
        if size < 0:
            return _head_generic(method, target, host_header, pairs, framing)
        total += size
    cdef char digits[24]
    cdef Py_ssize_t ndigits = 0
    cdef Py_ssize_t length
    if framing is True:
        total += 28  # "transfer-encoding: chunked\r\n"
    elif framing is not None:
        length = framing
        while True:
            digits[23 - ndigits] = <char>(48 + length % 10)
            ndigits += 1
            length //= 10
            if length == 0:
                break
        total += 18 + ndigits  # "content-length: " N "\r\n"
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* p = PyBytes_AS_STRING(out)
    p = _put(p, method)
    p = _put_c(p, b" ", 1)
    p = _put(p, target)
    p = _put_c(p, b" HTTP/1.1\r\nhost: ", 17)
    p = _put(p, host_header)
    p = _put_c(p, b"\r\n", 2)
    for pair in pairs:
        p = _put(p, (<tuple>pair)[0])
        p = _put_c(p, b": ", 2)
        p = _put(p, (<tuple>pair)[1])
        p = _put_c(p, b"\r\n", 2)
    if framing is True:
        p = _put_c(p, b"transfer-encoding: chunked\r\n", 28)
    elif framing is not None:
        p = _put_c(p, b"content-length: ", 16)
        p = _put_c(p, &digits[24 - ndigits], ndigits)
        p = _put_c(p, b"\r\n", 2)
    p = _put_c(p, b"\r\n", 2)
    return out


cdef inline Py_ssize_t _latin1_size(object text):
    """The length of ``text`` when it is a str of one byte a character (latin-1), else -1."""
    if type(text) is str and PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
        return PyUnicode_GET_LENGTH(text)
    return -1


cdef inline char* _put(char* p, str text):
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text)
    memcpy(p, PyUnicode_1BYTE_DATA(text), n)
    return p + n


cdef inline char* _put_c(char* p, const char* text, Py_ssize_t n):
    memcpy(p, text, n)
    return p + n


cdef bytes _head_generic(str method, str target, str host_header, list headers, object framing):
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host_header}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if framing is True:
        lines.append("transfer-encoding: chunked\r\n")
    elif framing is not None:
        lines.append(f"content-length: {framing}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
