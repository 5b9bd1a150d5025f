"""The gateway over ASGI, for any ASGI server (uvicorn, hypercorn, Granian's ASGI mode)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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

__all__ = ["ASGIApp", "ASGIExchange"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ASGIExchange(CallerWatch):
    """One request over ASGI.

    A caller that disconnects before the response is complete cancels the request's task, once the watch is
    armed (``arm``: by ``ASGIApp``'s sweep, or at once by ``on_disconnect``), as over RSGI (see
    ``RSGIExchange``); the callbacks given to ``on_disconnect`` run first.  The disconnect is an
    ``http.disconnect`` message, and ``receive`` has one reader at a time: an armed watch starts receiving
    once the request's body has been read (by the handler, or at once when there is none), and until then
    a disconnect is what the body's reader gets.

    A disconnect in the middle of the body is how Granian's ASGI tells a body that failed (cut short by a
    FIN or a reset, or broken chunked framing) as well as a caller gone: the body is never taken for a whole
    one, the reader raises ``incomplete_body()`` (400, written if the connection still can be).  A body read
    is bounded by the worker's ``Watches``: one too slow raises BodyTimeout (408).
    """

    __slots__ = ("_armed", "_body_done", "_headers", "_receive", "_scope", "_send", "_watch", "client", "method",
                 "path", "query", "started", "status")

    def __init__(self, scope: Scope, receive: Receive, send: Send, watches: Watches) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._watches = watches
        self._headers: dict[str, str] | None = None
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: str = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else ""
        self.started = False
        self.status = 0
        self.gone = self._done = False
        self._body_done = self._bodyless()  # nothing (more) of the body to receive
        self._task = None
        self._armed = False  # watched from now on: the watch starts receiving once the body is in
        self._watch: asyncio.Task[None] | None = None  # the task that receives the http.disconnect
        self._listeners = None

    def header(self, name: str) -> str | None:
        if self._headers is None:
            self._headers = {}
            for key, value in self._scope["headers"]:
                self._headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        return self._headers.get(name)

    def header_all(self, name: str) -> list[str]:
        key = name.encode("latin-1")
        return [value.decode("latin-1") for raw, value in self._scope["headers"] if raw.lower() == key]

    async def read_body(self, limit: int) -> bytes:
        length = self.header("content-length")
        declared = None if length is None else check_declared_length(length, limit)
        if self._body_done:
            return b""
        parts = bytearray()
        async for chunk in self._chunks(limit, declared, True):
            parts += chunk
        return bytes(parts)

    async def discard_body(self, limit: int) -> None:
        drained = 0
        if self._body_done:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DISCARD_TIMEOUT_S):
                while drained <= limit:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        self.gone = True
                        return
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        self._body_read()
                        return

    def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        length = self.header("content-length")
        return self._chunks(limit, None if length is None else check_declared_length(length, limit), False)

    async def _chunks(self, limit: int, declared: int | None, whole: bool) -> AsyncIterator[bytes]:
        """The body's pieces as they come (``whole``: for read_body, whose task only waits for them)."""
        size = 0
        receive = self._receive
        self._read_begins(declared or 0, whole)
        try:
            while not self._body_done:
                if self._slow:  # the deadline passed while the consumer (an upload's upstream) held us
                    raise BodyTimeout()
                self._awaiting = True
                message = await receive()
                self._awaiting = whole
                if message["type"] == "http.disconnect":
                    raise incomplete_body()  # a failed read, or the caller gone: never a whole body
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge.over(limit)
                if declared is None:
                    self.body_bytes = size
                if not message.get("more_body", False):
                    self._body_read()
                    if declared is not None and size != declared:  # (an ASGI server that does not check it)
                        raise incomplete_body()
                if chunk:
                    yield chunk
        except asyncio.CancelledError as cancel:
            raise self._deadline_or(cancel) from None
        finally:
            self._read_ends()

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
        await self._send({"type": "http.response.body", "body": body})
        self._done = True

    async def start_stream(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": _encode(headers)})

    async def write(self, chunk: bytes) -> None:
        if self.gone:
            raise ClientGone
        try:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:
            raise ClientGone from None

    async def end_stream(self) -> None:
        if not self.gone:
            await self._send({"type": "http.response.body", "body": b""})
            self._done = True

    def _watch_now(self) -> None:
        self._armed = True
        if self._watch is None:  # (a stream's relay asks once the body is in; an upload's reader is done with it)
            self._watch = asyncio.ensure_future(self._watch_for_disconnect())

    # -- the disconnect watch ----------------------------------------------------------

    def arm(self) -> None:
        """Watches for the caller's disconnect: from now if the request has no body left to read, else once the
        body has been read."""
        self._armed = True
        if self._body_done and self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_for_disconnect())

    def unwatch(self) -> None:
        """At the end of an armed request: the watch stops, and no reference cycle is left behind."""
        watch = self._watch
        if watch is not None:
            self._watch = None
            watch.cancel()
        self._task = None
        self._listeners = None

    def _bodyless(self) -> bool:
        """An HTTP/1 request that declares no body (no Content-Length but 0, no Transfer-Encoding): its one
        http.request message is empty, and the disconnect watch may receive it.  (An HTTP/2 request need not
        declare its body: its watch waits for the handler to read it.)"""
        if self._scope.get("http_version", "1.1") not in ("1.1", "1.0"):
            return False
        length = self.header("content-length")
        return (length is None or length.strip() == "0") and self.header("transfer-encoding") is None

    def _body_read(self) -> None:
        self._body_done = True
        if self._armed and self._watch is None:
            self._watch = asyncio.ensure_future(self._watch_for_disconnect())

    async def _watch_for_disconnect(self) -> None:
        receive = self._receive
        while (await receive())["type"] != "http.disconnect":
            pass  # the empty body of a request that has none
        self._caller_left()


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]




class ASGIApp:
    """An ASGI application around a handler of Exchanges; lifespan events are acknowledged.

    A caller that disconnects before its response is complete cancels the handler (``ASGIExchange``, once
    ``Watches`` armed its watch); the CancelledError that ends the handler then is this adapter's own, and
    ends here.
    """

    def __init__(self, handler: Callable[[Exchange], Awaitable[None]],
                 on_shutdown: Callable[[], Awaitable[None]] | None = None, *,
                 body_timeout_s: float = BODY_TIMEOUT_S, body_min_rate: int = BODY_MIN_RATE) -> None:
        self._handler = handler
        self._on_shutdown = on_shutdown
        self._watches = Watches(body_timeout_s, body_min_rate)
        self._running = self._watches.running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            ex = ASGIExchange(scope, receive, send, self._watches)
            host = ex.header("host")
            if not host or ex.method == "CONNECT":
                refused = refusal(ex.method, ex.path, host, scope.get("http_version", "1.1"))
                if refused is not None:
                    await ex.respond(*refused)
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
                if ex._watch is not None or ex._armed:
                    ex.unwatch()
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown is not None:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return
