"""The gateway over RSGI, Granian's native interface: the fast path ``sluice serve`` uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from granian.rsgi import ProtocolClosed  # type: ignore[attr-defined]  # re-exported, not in __all__

from ..errors import BodyTimeout, PayloadTooLarge
from .exchange import (
    BODY_MIN_RATE,
    BODY_TIMEOUT_S,
    DISCARD_TIMEOUT_S,
    CallerWatch,
    ClientGone,
    Exchange,
    Headers,
    Watches,
    check_declared_length,
    incomplete_body,
    refusal,
)

__all__ = ["RSGIApp", "RSGIExchange"]

class RSGIExchange(CallerWatch):
    """One request over RSGI.

    A caller that disconnects before the response is complete cancels the request's task, once the watch is
    armed (``arm``: by ``RSGIApp``'s sweep, or at once by ``on_disconnect``): that is the one way to stop a
    handler that waits on the upstream, on Redis, or between retries, with nothing to write yet.  The
    callbacks given to ``on_disconnect`` run first (a stream's relay aborts its upstream read).  Granian
    itself never stops a handler whose caller left: unwatched, it would go on until its upstream answered,
    or timed out.

    A body cut short (a FIN before its Content-Length, a reset) or whose chunked framing broke is never
    taken for a whole one: it raises ``incomplete_body()`` (400).  Granian's RSGI tells this to ``proto()``
    by raising, but to its iterator only by an empty chunk that is not the last (it answers a failed read
    as b"" and then the body's end as b"" again), which the chunk readers look for; over HTTP/1.1 a
    chunked body with trailers looks the same, and is refused too.  A body read is bounded by the worker's
    ``Watches`` (``_read_begins``): one too slow raises BodyTimeout (408).
    """

    __slots__ = ("_headers", "_proto", "_scope", "_stream", "_watch", "method", "path", "started", "status")

    def __init__(self, scope: Any, proto: Any, watches: Watches) -> None:
        self._scope = scope
        self._proto = proto
        self._watches = watches
        self._headers = scope.headers
        self._stream: Any = None
        self.method: str = scope.method
        self.path: str = scope.path
        self.started = False
        self.status = 0
        self.gone = self._done = False
        self._task = None
        self._watch: Any = None  # Granian's client_disconnect() future, once armed
        self._listeners = None

    @property
    def query(self) -> str:
        query: str = self._scope.query_string
        return query

    @property
    def client(self) -> str:
        client: str = self._scope.client
        return client

    def header(self, name: str) -> str | None:
        value: str | None = self._headers.get(name)
        return value

    def header_all(self, name: str) -> list[str]:
        values: list[str] = self._headers.get_all(name)  # Granian's RSGIHeaders; not in its .pyi
        return values

    async def read_body(self, limit: int) -> bytes:
        length = self._headers.get("content-length")
        if length is None:  # chunked (or HTTP/2 without a length): read as it comes, bounded by the limit
            parts = bytearray()
            async for chunk in self.body_chunks(limit):
                parts += chunk
            return bytes(parts)
        # _read_begins and _read_ends, inline: every request with a body comes this way
        self.body_bytes = check_declared_length(length, limit)
        self._slow = False
        self._awaiting = True
        watches = self._watches
        reading = watches.reading
        reading[self] = watches.generation
        if watches.timer is None:
            watches.start()
        try:
            body: bytes = await self._proto()
        except ProtocolClosed:  # hyper could not read all of it: the caller closed or reset mid-body
            raise incomplete_body() from None
        except asyncio.CancelledError as cancel:
            raise self._deadline_or(cancel) from None
        finally:
            reading.pop(self, None)
        return body

    async def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        length = self._headers.get("content-length")
        declared = None if length is None else check_declared_length(length, limit)
        h1 = self._scope.http_version != "2"  # (an HTTP/2 body may end with an empty DATA frame: no sign there)
        chunks = self._proto.__aiter__()
        size = 0
        ended = False  # an empty chunk came: the end, unless another one follows (then the read failed)
        self._read_begins(declared or 0, awaiting=False)
        try:
            while True:
                if self._slow:  # the deadline passed while the consumer (an upload's upstream) held us
                    raise BodyTimeout()
                self._awaiting = True
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    self._awaiting = False
                if not chunk:
                    if ended and h1:
                        raise incomplete_body()
                    ended = True
                    continue
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge.over(limit)
                if declared is None:
                    self.body_bytes = size
                yield chunk
            if declared is not None and size != declared:  # (HTTP/1.1 ends such a read with an error first)
                raise incomplete_body()
        except ProtocolClosed:
            raise incomplete_body() from None
        except asyncio.CancelledError as cancel:
            raise self._deadline_or(cancel) from None
        finally:
            self._read_ends()

    async def discard_body(self, limit: int) -> None:
        drained = 0
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DISCARD_TIMEOUT_S):
                async for chunk in self._proto:
                    drained += len(chunk)
                    if drained > limit:
                        return

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        self.started = self._done = True
        self.status = status
        self._proto.response_bytes(status, headers, body)

    async def start_stream(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        self._stream = self._proto.response_stream(status, headers)

    async def write(self, chunk: bytes) -> None:
        try:
            await self._stream.send_bytes(chunk)
        except ProtocolClosed:
            raise ClientGone from None

    async def end_stream(self) -> None:
        # Granian ends the chunked body when the stream transport is dropped, not when the handler returns:
        # a reference kept alive longer (an upstream error's traceback holds this exchange's frames until the
        # cycle collector runs) would leave the caller waiting for the last chunk.
        self._stream = None
        self._done = True

    def _watch_now(self) -> None:
        self.arm()

    # -- the disconnect watch ----------------------------------------------------------

    def arm(self) -> None:
        """Watches for the caller's disconnect from now on (a disconnect that came already is seen at once).

        One Granian future per request, whatever the number of ``on_disconnect`` callbacks: its result
        is delivered to a single done-callback (Granian's futures keep one).
        """
        if self._watch is None:
            watch = self._watch = asyncio.ensure_future(self._proto.client_disconnect())
            watch.add_done_callback(self._disconnected)

    def unwatch(self) -> None:
        """At the end of an armed request: no more disconnect callbacks, and no reference cycle left behind."""
        watch = self._watch
        if watch is not None:
            self._watch = None
            watch.remove_done_callback(self._disconnected)  # (else cancel() would still schedule it)
            watch.cancel()
        self._task = None
        self._listeners = None

    def _disconnected(self, watch: Any) -> None:
        if not watch.cancelled():
            self._caller_left()


class RSGIApp:
    """An RSGI application around a handler of Exchanges.

    A caller that disconnects before its response is complete cancels the handler (``RSGIExchange``, once
    ``Watches`` armed its watch); the CancelledError that ends the handler then is this adapter's own, and
    ends here.
    """

    def __init__(self, handler: Callable[[Exchange], Awaitable[None]],
                 on_shutdown: Callable[[], Awaitable[None]] | None = None, *,
                 body_timeout_s: float = BODY_TIMEOUT_S, body_min_rate: int = BODY_MIN_RATE) -> None:
        self._handler = handler
        self._on_shutdown = on_shutdown
        self._closing: asyncio.Task[None] | None = None
        self._watches = Watches(body_timeout_s, body_min_rate)
        self._running = self._watches.running

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        ex = RSGIExchange(scope, proto, self._watches)
        if "host" not in ex._headers or ex.method == "CONNECT":  # (a header test is the cheaper one)
            refused = refusal(ex.method, ex.path, ex._headers.get("host"), scope.http_version)
            if refused is not None:
                proto.response_bytes(*refused)
                return
        ex._task = task = asyncio.current_task()
        watches = self._watches
        self._running[ex] = watches.generation
        if watches.timer is None:
            watches.start()
        try:
            await self._handler(ex)
        except asyncio.CancelledError:
            if not ex.gone or task is None:
                raise
            task.uncancel()  # the caller left: the handler has accounted for it, nothing more to do
        finally:
            self._running.pop(ex, None)  # (gone already if it was armed)
            if ex._watch is not None:
                ex.unwatch()

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        # Granian calls this once the worker's loop has stopped serving: the loop can run the
        # shutdown (last rate-limit and quota syncs, connections closed, logs written) to its end.
        # (Granian's embedded server calls it from inside its running loop: then it is scheduled.)
        if self._on_shutdown is None:
            return
        if loop.is_running():
            self._closing = loop.create_task(self._on_shutdown())
        else:
            loop.run_until_complete(self._on_shutdown())
