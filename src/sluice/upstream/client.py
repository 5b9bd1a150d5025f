"""sluice's HTTP/1.1 client for upstream providers, on asyncio protocols + httptools.

Why not a library: in the same Granian forwarding proxy on one core, aiohttp's
client did 10.6 K requests/s and this one 25.7 K, 2.4x (bench/client_compare.py,
figures in bench/README.md).  The difference is that this client does almost
nothing per request: one write of a prebuilt head, one parser feed, no tasks, no
await at all when a warm connection is idle and the answer arrives whole,
timeouts as timer handles instead of wrappers.

What it does:
- keep-alive pools per origin, with a limit on connections in use in total and
  per origin, waiters served in order, and idle connections expired;
- TLS (SNI, verification on by default, custom CA file);
- content-length and chunked bodies both ways (a request body is bytes or an
  async iterable, sent chunked);
- responses read incrementally with flow control: reading from the socket
  pauses while more than HIGH_WATER bytes wait for the consumer;
- a connection goes back to its pool only after a complete response that
  allows keep-alive; anything else closes it;
- a request that fails on a reused idle connection before any response byte
  arrived is retried once on a fresh connection (the peer closed it meanwhile);
- connect, read (silence between bytes) and total (deadline) timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, Coroutine
from typing import Any

import httptools

from .errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    MalformedResponse,
    PoolTimeout,
    ReadTimeout,
    ResponseTooLarge,
    TruncatedBody,
    UpstreamError,
)
from .origin import Origin

__all__ = ["Body", "Response", "UpstreamClient"]

Body = bytes | AsyncIterable[bytes] | None

HIGH_WATER = 256 * 1024  # pause reading the socket past this many unread body bytes
LOW_WATER = 64 * 1024  # ... and resume below this
_BIG_BODY = 64 * 1024  # bodies above this are written beside the head, not copied into it
MAX_HEAD_BYTES = 64 * 1024  # a response head larger than this is refused


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: parser callbacks fill the state of the current exchange."""

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
        "_until_close",
        "_upload_unfinished",
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
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._chunks: deque[bytes] = deque()
        self._reading_paused = False
        self._is_head_request = False
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        if self._reading_paused:  # (tested here: a call less per request)
            self._resume_reading()
        self._head_bytes = 0
        self._is_head_request = False
        self._upload_unfinished = False
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
        if self.status not in (204, 304):
            framed = False
            for name, value in self.headers:
                lname = name.lower()
                if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
                    framed = True
                    break
            if not framed:
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

    # -- exchange ----------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_error(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error

    def _fail(self, error: UpstreamError) -> None:
        self._set_error(error)
        self._wake()
        self.close()

    def _on_timeout(self) -> None:
        self._fail(ReadTimeout("the upstream did not answer in time"))

    def waiter(self, deadline: float) -> asyncio.Future[None]:
        """A future that the parser's next progress completes, or the read timeout at ``deadline`` (loop time).

        The caller awaits it itself, then calls ``stop_waiting`` whatever happened: a coroutine to wait in
        would cost a coroutine level (~1,200 instructions) on every request."""
        waiter = self._waiter = self._loop.create_future()
        self._timer = self._loop.call_at(deadline, self._on_timeout)
        return waiter

    def stop_waiting(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        self._waiter = None

    def begin(self, head_request: bool = False) -> None:
        if self._is_head_request:
            self._parser = httptools.HttpResponseParser(self)
        self._reset()
        self._is_head_request = head_request
        self.in_exchange = True

    def send_bytes(self, head: bytes, body: bytes | None) -> None:
        transport = self.transport
        assert transport is not None
        if body and len(body) > _BIG_BODY:
            transport.writelines((head, body))
        else:
            transport.write(head + body if body else head)

    async def send_stream(self, head: bytes, body: AsyncIterable[bytes]) -> None:
        """Sends ``body`` chunked, waiting while the peer reads slowly."""
        transport = self.transport
        assert transport is not None
        transport.write(head)
        async for chunk in body:
            if self.closed or self.complete:
                # The upstream answered (or left) early: stop uploading; the peer still
                # expects the rest of the body, so the connection cannot be reused.
                self._upload_unfinished = True
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

    def check_head(self) -> None:
        """Raises the error that came with a head, unless there is still a body to read."""
        if self.error is not None and not self._chunks and not self.complete:
            raise self.error

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
            try:
                await self.waiter(min(self._loop.time() + read_timeout, deadline))
            finally:
                self.stop_waiting()

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
                and not self._upload_unfinished)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class Response:
    """An upstream response; the body is read with ``read`` or ``next_chunk``, then ``release``."""

    __slots__ = ("_conn", "_deadline", "_read_timeout", "_released", "headers", "status")

    def __init__(self, conn: _Connection, read_timeout: float, deadline: float) -> None:
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
            self._conn.pool.put_back(self._conn)

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


class _Waiter:
    __slots__ = ("future", "pool")

    def __init__(self, pool: _Pool, future: asyncio.Future[None]) -> None:
        self.pool = pool
        self.future = future


class _Pool:
    """The connections to one origin."""

    __slots__ = ("_sweep", "client", "idle", "in_use", "loop", "origin")

    def __init__(self, client: UpstreamClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.loop = client.loop
        self.idle: list[_Connection] = []  # a stack: the warmest connection is reused first
        self.in_use = 0  # connections lent out or being opened
        self._sweep: asyncio.TimerHandle | None = None

    def live_idle(self) -> int:
        return sum(1 for conn in self.idle if not conn.closed)

    def has_room(self) -> bool:
        client = self.client
        return self.in_use < client.max_per_origin and client.in_use < client.max_connections

    def take_idle(self) -> _Connection | None:
        """A live idle connection, lent out at once (the hot path: no await)."""
        conn = self._pop_idle()
        if conn is not None:
            self.in_use += 1
            self.client.in_use += 1
        return conn

    async def acquire(self, deadline: float, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection for one exchange, and whether it was reused from the idle stack."""
        client = self.client
        while True:
            if not fresh:
                conn = self.take_idle()
                if conn is not None:
                    return conn, True
            if self.has_room():
                break
            await client.wait_for_room(self, deadline)
        self.in_use += 1
        client.in_use += 1
        try:
            conn = await self._connect(deadline)
        except BaseException:
            self._returned()
            raise
        return conn, False

    def _pop_idle(self) -> _Connection | None:
        expiry = time.monotonic() - self.client.idle_timeout
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > expiry:
                return conn
            conn.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        origin = self.origin
        client = self.client
        limit = min(self.loop.time() + client.connect_timeout, deadline)
        try:
            async with asyncio.timeout_at(limit):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), origin.host, origin.port,
                    ssl=origin.ssl, server_hostname=origin.host if origin.ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {origin.key} timed out") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {origin.key} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {origin.key}: {exc.strerror or exc}") from None
        return conn

    def put_back(self, conn: _Connection) -> None:
        conn.in_exchange = False
        if conn.reusable() and not self.client.closed:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
            if self._sweep is None:
                self._sweep = self.loop.call_later(self.client.idle_timeout, self._expire_idle)
        else:
            conn.close()
        self._returned()

    def _returned(self) -> None:
        client = self.client
        self.in_use -= 1
        client.in_use -= 1
        if client._waiters:  # nobody waits for room, almost always: no call
            client.wake_waiter()

    def _expire_idle(self) -> None:
        self._sweep = None
        expiry = time.monotonic() - self.client.idle_timeout
        keep = []
        for conn in self.idle:
            if conn.closed or conn.idle_since <= expiry:
                conn.close()
            else:
                keep.append(conn)
        self.idle[:] = keep
        if keep:
            self._sweep = self.loop.call_later(self.client.idle_timeout, self._expire_idle)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class UpstreamClient:
    """Pools of keep-alive connections, one per origin, with shared limits."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        total_timeout: float = 600.0,
        max_connections: int = 1024,
        max_connections_per_origin: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_connections = max_connections
        self.max_per_origin = max_connections_per_origin
        self.idle_timeout = idle_timeout
        self.in_use = 0
        self.closed = False
        self._pools: dict[str, _Pool] = {}
        self._waiters: deque[_Waiter] = deque()

    def stats(self) -> dict[str, Any]:
        """Connections in use and idle, in total and per origin."""
        return {
            "in_use": self.in_use,
            "idle": sum(p.live_idle() for p in self._pools.values()),
            "waiting": len(self._waiters),
            "origins": {key: {"in_use": p.in_use, "idle": p.live_idle()} for key, p in self._pools.items()},
        }

    def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: Body = None,
        *,
        deadline: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """Sends a request; the coroutine returned ends once the response head has arrived.

        ``target`` is the path and query; ``headers`` exclude Host, Content-Length and
        Transfer-Encoding, which the client writes.  ``deadline`` is in loop time and
        defaults to now + total_timeout.  (A plain function returning the exchange's coroutine:
        awaiting it costs one coroutine level, not two.)
        """
        if deadline is None:
            deadline = self.loop.time() + self.total_timeout
        pool = self._pools.get(origin.key)
        if pool is None:
            pool = self._pools[origin.key] = _Pool(self, origin)
        return self._exchange(pool, _head(method, target, origin, headers, body), body, deadline)

    async def _exchange(self, pool: _Pool, head: bytes, body: Body, deadline: float,
                        fresh: bool = False) -> Response:
        """One exchange on a connection of ``pool`` (a warm idle one when there is, without an await); again on
        a ``fresh`` one when a reused connection turns out closed by its peer while it sat idle."""
        conn = None if fresh else pool.take_idle()
        reused = conn is not None
        if conn is None:
            conn, reused = await pool.acquire(deadline, fresh)
        conn.begin(head.startswith(b"HEAD "))
        try:
            if conn.closed:
                raise ConnectionClosed("the upstream closed the connection without answering")
            if body is None or isinstance(body, bytes):
                conn.send_bytes(head, body)
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        await conn.send_stream(head, body)
                except TimeoutError:
                    raise ReadTimeout("sending the request body did not finish in time") from None
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                try:
                    await conn.waiter(min(self.loop.time() + self.read_timeout, deadline))
                finally:
                    conn.stop_waiting()
            conn.check_head()
        except BaseException as exc:
            conn.close()
            conn.pool.put_back(conn)
            if not (reused and _closed_while_idle(exc, conn, body)):
                raise
        else:
            return Response(conn, self.read_timeout, deadline)
        return await self._exchange(pool, head, body, deadline, fresh=True)

    async def wait_for_room(self, pool: _Pool, deadline: float) -> None:
        waiter = _Waiter(pool, self.loop.create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter.future
        except BaseException as exc:
            # Woken, but leaving anyway (cancelled, or the deadline passed just then): pass the turn on.
            woken = waiter.future.done() and not waiter.future.cancelled()
            waiter.future.cancel()
            self._remove_waiter(waiter)
            if woken:
                self.wake_waiter()
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(f"no connection to {pool.origin.key} became free in time") from None
            raise
        self._remove_waiter(waiter)

    def _remove_waiter(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def wake_waiter(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done() and waiter.pool.has_room():
                waiter.future.set_result(None)
                return

    async def close(self) -> None:
        """Closes idle connections now, and the ones in use when they come back."""
        self.closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()


def _closed_while_idle(exc: BaseException, conn: _Connection, body: Body) -> bool:
    """A reused connection failed as one the peer closed while it sat idle: before any byte of an answer, and
    with a body that can be sent again."""
    return (isinstance(exc, ConnectionClosed) and not isinstance(exc, TruncatedBody) and not conn.received_any
            and (body is None or isinstance(body, bytes)))


def _head(method: str, target: str, origin: Origin, headers: list[tuple[str, str]], body: Body) -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {origin.host_header}\r\n"]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
    if body is None or isinstance(body, bytes):
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"content-length: {len(body) if body else 0}\r\n")
    else:
        lines.append("transfer-encoding: chunked\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
