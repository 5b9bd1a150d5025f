"""The gateway over ASGI, for any ASGI server (uvicorn, hypercorn, Granian's ASGI mode)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..errors import PayloadTooLarge
from .exchange import DISCARD_TIMEOUT_S, ClientGone, Exchange, Headers, check_declared_length

__all__ = ["ASGIApp", "ASGIExchange"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ASGIExchange:
    __slots__ = ("_headers", "_receive", "_scope", "_send", "client", "gone", "method", "path", "query",
                 "started", "status")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._headers: dict[str, str] | None = None
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: str = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else ""
        self.started = False
        self.status = 0
        self.gone = False

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
        if length is not None:
            check_declared_length(length, limit)
        parts = bytearray()
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone
            parts += message.get("body", b"")
            if len(parts) > limit:
                raise PayloadTooLarge.over(limit)
            if not message.get("more_body", False):
                return bytes(parts)

    async def discard_body(self, limit: int) -> None:
        drained = 0
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DISCARD_TIMEOUT_S):
                while drained <= limit:
                    message = await self._receive()
                    if message["type"] == "http.disconnect":
                        self.gone = True
                        return
                    drained += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return

    async def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        length = self.header("content-length")
        if length is not None:
            check_declared_length(length, limit)
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge.over(limit)
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": _encode(headers)})
        await self._send({"type": "http.response.body", "body": body})

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

    def on_disconnect(self, callback: Callable[[], object]) -> Callable[[], object]:
        async def watch() -> None:
            while (await self._receive())["type"] != "http.disconnect":
                pass
            self.gone = True
            callback()

        task = asyncio.ensure_future(watch())
        return task.cancel


def _encode(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]



class ASGIApp:
    """An ASGI application around a handler of Exchanges; lifespan events are acknowledged."""

    def __init__(self, handler: Callable[[Exchange], Awaitable[None]],
                 on_shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        self._handler = handler
        self._on_shutdown = on_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._handler(ASGIExchange(scope, receive, send))
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
