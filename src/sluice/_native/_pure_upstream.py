"""Pure-Python twin of ext/_upstream.pyx: one upstream HTTP/1.1 connection, its response, the request head.

Same API, same behaviour; the design (what the parser callbacks do, the read timer, why the head is built
in one call) is explained at the top of ext/_upstream.pyx.  sluice/upstream/client.py holds the pools and
the client, and uses whichever twin sluice._native picked.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable
from typing import Any

import httptools

from ._upstream_errors import (
    ConnectionClosed,
    MalformedResponse,
    ReadTimeout,
    ResponseTooLarge,
    TruncatedBody,
    UpstreamError,
)

__all__ = ["BIG_BODY", "HIGH_WATER", "LOW_WATER", "MAX_HEAD_BYTES", "Connection", "Response", "closed_while_idle",
           "head"]

HIGH_WATER = 256 * 1024  # pause reading the socket past this many unread body bytes
LOW_WATER = 64 * 1024  # ... and resume below this
BIG_BODY = 64 * 1024  # bodies above this are written beside the head, not copied into it
MAX_HEAD_BYTES = 64 * 1024  # a response head larger than this is refused
TIMER_SLACK = 0.001  # a read timer that fires this early (the loop's clock granularity) counts as on time


class Connection:
    """One HTTP/1.1 connection (an asyncio protocol): parser callbacks fill the state of the current exchange."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_drain_waiter",
        "_head_bytes",
        "_is_head_request",
        "_loop",
        "_parser",
        "_reading_paused",
        "_timer",
        "_timer_at",
        "_until_close",
        "_wait_until",
        "_waiter",
        "_write_paused",
        "closed",
        "complete",
        "error",
        "head_done",
        "headers",
        "idle_since",
        "in_exchange",
        "keep_alive",
        "pool",
        "received_any",
        "status",
        "transport",
        "upload_unfinished",
    )

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._loop: asyncio.AbstractEventLoop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wait_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._chunks: deque[bytes] = deque()
        self._reading_paused = False
        self._is_head_request = False
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        if self._reading_paused:
            self._resume_reading()
        self._head_bytes = 0
        self._is_head_request = False
        self.upload_unfinished = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.error: UpstreamError | None = None
        self.in_exchange = False
        self._chunks.clear()
        self._buffered = 0
        self._until_close = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_exchange:
            # Bytes nobody asked for: the connection is out of step; never reuse it.
            self.close()
            return
        self.received_any = True
        if not self.head_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES and b"\r\n\r\n" not in data:
                self._fail(MalformedResponse(f"the upstream's response head is over {MAX_HEAD_BYTES} bytes"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedResponse("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"malformed HTTP response from upstream: {exc}"))
        else:
            if not self.head_done:
                self._wake()  # bytes of the head count as activity for the read timeout

    def connection_lost(self, exc: Exception | None) -> None:
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

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself: connection_lost follows

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        self.status = parser.get_status_code()
        if self.status < 200:
            # An interim 1xx answer: the real head follows.
            self.headers = []
            return
        self.head_done = True
        self.keep_alive = parser.should_keep_alive()
        if self._is_head_request:
            # No body follows, whatever the head announces.  The parser cannot be told so:
            # it would wait for one, so the next exchange on this connection gets a new parser.
            self.complete = True
            self._wake()
            return
        if self.status not in (204, 304) and not _framed(self.headers):
            self._until_close = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.complete = True
        self._wake()

    # -- waiting -----------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None  # woken once: the later callbacks of the same feed find no waiter
            if not waiter.done():  # (a cancelled one is done)
                waiter.set_result(None)

    def _set_error(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error

    def _fail(self, error: UpstreamError) -> None:
        self._set_error(error)
        self._wake()
        self.close()

    def _wait(self, until: float) -> asyncio.Future[None]:
        """A future that the parser's next progress completes, or the read timer at ``until`` (loop time)."""
        waiter = self._waiter = self._loop.create_future()
        self._wait_until = until
        timer = self._timer
        if timer is None or self._timer_at > until:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(until, self._on_timer)
            self._timer_at = until
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits (or is already woken): the next wait arms a timer again
        if self._loop.time() + TIMER_SLACK >= self._wait_until:
            self._fail(ReadTimeout("the upstream did not answer in time"))
        else:  # armed for an earlier wait: on to this one's end
            self._timer = self._loop.call_at(self._wait_until, self._on_timer)
            self._timer_at = self._wait_until

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None

    # -- the exchange ------------------------------------------------------------------

    def begin(self, head_request: bool) -> None:
        if self._is_head_request:
            self._parser = httptools.HttpResponseParser(self)
        self._reset()
        self._is_head_request = head_request
        self.in_exchange = True

    def _start(self, head: bytes) -> asyncio.Transport:
        """Begins an exchange for ``head`` (a HEAD request's answer has no body); its transport."""
        self.begin(head.startswith(b"HEAD "))
        if self.closed or self.transport is None:
            raise ConnectionClosed("the upstream closed the connection without answering")
        return self.transport

    def send(self, head: bytes, body: bytes | None) -> None:
        """Begins an exchange and writes its head and (bytes) body."""
        transport = self._start(head)
        if body and len(body) > BIG_BODY:
            transport.writelines((head, body))
        else:
            transport.write(head + body if body else head)

    async def send_stream(self, head: bytes, body: AsyncIterable[bytes]) -> None:
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
                    await self._drain()
        transport.write(b"0\r\n\r\n")

    async def _drain(self) -> None:
        self._drain_waiter = self._loop.create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None

    def head_waiter(self, read_timeout: float, deadline: float) -> asyncio.Future[None] | None:
        """None once the head has arrived, else a future to await before asking again; raises a failure first.

        The caller awaits the future itself: a coroutine to wait in would cost a coroutine level on every
        request.  A wait is ended by the next bytes of the head, or by the read timeout."""
        if self.head_done:
            return None
        if self.error is not None:
            raise self.error
        return self._wait(min(self._loop.time() + read_timeout, deadline))

    def response(self, read_timeout: float, deadline: float) -> Response:
        """The response of the exchange once its head has arrived; the error that came with the head, unless
        there is still a body to read."""
        if self.error is not None and not self._chunks and not self.complete:
            raise self.error
        return Response(self, read_timeout, deadline)

    async def next_chunk(self, read_timeout: float, deadline: float) -> bytes:
        """The next piece of the body; b"" once it is complete."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < LOW_WATER:
                    self._resume_reading()
                return chunk
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(min(self._loop.time() + read_timeout, deadline))

    def take_buffered(self) -> bytes:
        """All body bytes received so far (fast path for a response that arrived whole)."""
        data = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()
        return data

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and not self.closed and self.error is None
                and not self.upload_unfinished)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self._cancel_timer()


def _framed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a head announces its body's length (content-length, or a chunked transfer-encoding)."""
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
            return True
    return False


class Response:
    """An upstream response; the body is read with ``read`` or ``next_chunk``, then ``release``."""

    __slots__ = ("_conn", "_deadline", "_read_timeout", "_released", "headers", "status")

    def __init__(self, conn: Connection, read_timeout: float, deadline: float) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._released = False
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header; ``name`` in lower case."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def read_arrived(self, limit: int) -> bytes | None:
        """The whole body if it has all arrived (no await: the hot path), else None."""
        conn = self._conn
        if not conn.complete or conn.error is not None:
            return None
        data = conn.take_buffered()
        if len(data) > limit:
            self.abort()
            raise ResponseTooLarge(f"the upstream response is larger than {limit} bytes")
        self.release()
        return data

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (ResponseTooLarge past that)."""
        conn = self._conn
        try:
            if conn.complete:
                data = conn.take_buffered()
            else:
                parts = []
                size = 0
                while chunk := await conn.next_chunk(self._read_timeout, self._deadline):
                    size += len(chunk)
                    if size > limit:
                        raise ResponseTooLarge(f"the upstream response is larger than {limit} bytes")
                    parts.append(chunk)
                data = b"".join(parts)
            if len(data) > limit:
                raise ResponseTooLarge(f"the upstream response is larger than {limit} bytes")
        except BaseException:
            self.abort()
            raise
        self.release()
        return data

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        return await self._conn.next_chunk(self._read_timeout, self._deadline)

    def release(self) -> None:
        """Gives the connection back: to the pool if the exchange is complete, else closed."""
        if not self._released:
            self._released = True
            conn = self._conn
            conn.pool.put_back(conn)
            if conn.closed:
                # The body bytes nobody will read go now: a connection closed unfinished (a caller gone or
                # stalled while reading was paused: up to HIGH_WATER plus one read) is kept alive by a cycle
                # (its error's traceback holds a frame that holds it) until a full collection (bench/README.md,
                # "Soak").  Not in close(): _fail closes too, and the body read whole before it is still read.
                conn._chunks.clear()
                conn._buffered = 0

    def abort(self) -> None:
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


def closed_while_idle(exc: BaseException, conn: Connection, body: object) -> bool:
    """A reused connection failed as one the peer closed while it sat idle: before any byte of an answer, and
    with a body that can be sent again."""
    return (isinstance(exc, ConnectionClosed) and not isinstance(exc, TruncatedBody) and not conn.received_any
            and (body is None or isinstance(body, bytes)))


def head(method: str, target: str, host_header: str, headers: list[tuple[str, str]], body: object) -> bytes:
    """The request head: Host first, then ``headers`` as given, then the body's framing."""
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {host_header}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body is None or isinstance(body, bytes):
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"content-length: {len(body) if body else 0}\r\n")
    else:
        lines.append("transfer-encoding: chunked\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
