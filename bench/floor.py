"""The raw floor: the least a Python forwarder on Granian can do per request, what sluice is measured against.

Granian RSGI (one worker, uvloop) hands each request to ``app``, which reads the whole body,
sends it upstream as a POST to the same path over a pooled keep-alive connection (asyncio
protocol + httptools, one ``write`` per request) and answers with the upstream's status,
content-type and body.  Nothing else: no JSON parsing, no routing, no headers relayed, no
limits, no logs.  It imports nothing of sluice, on purpose: sluice's own code must not move
the yardstick it is measured with.  ``bench/run.py`` serves it the way ``sluice serve`` serves
the gateway (same Granian options):

    BENCH_UPSTREAM_URL=http://127.0.0.1:8001 granian --interface rsgi --factory --loop uvloop \\
        --workers 1 --http auto --no-ws --backlog 2048 --no-access-log --working-dir bench floor:app
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httptools

HEAD = b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream: one request at a time, back to the pool when answered."""

    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes, bytes]] | None = None
        self.content_type = b"application/json"
        self.chunks: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.chunks = []
        self.transport.write(data)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(exc)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if self.parser.should_keep_alive():
            self.pool.append(self)
        elif self.transport is not None:
            self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), self.content_type, b"".join(self.chunks)))

    def fail(self, exc: BaseException) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:
            self.pool.remove(self)
        self.transport = None
        self.fail(exc or ConnectionResetError("upstream closed the connection"))


class Floor:
    """The RSGI app: body in, POST upstream, status + content-type + body out."""

    def __init__(self, url: str) -> None:
        hostport = url.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = hostport.partition(":")
        self.host, self.port, self.hostport = host, int(port or 80), hostport.encode()
        self.idle: list[Upstream] = []

    async def forward(self, path: str, body: bytes) -> tuple[int, bytes, bytes]:
        request = HEAD % (path.encode(), self.hostport, len(body)) + body
        reused = bool(self.idle)
        if reused:
            conn = self.idle.pop()
        else:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self.idle), self.host, self.port)
        try:
            return await conn.send(request)
        except (ConnectionError, httptools.HttpParserError):
            if not reused:
                raise
            # An idle connection the upstream had closed: once more on a new one.
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self.idle), self.host, self.port)
            return await conn.send(request)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        body: bytes = await proto()
        try:
            status, content_type, data = await self.forward(scope.path, body)
        except Exception as exc:  # a 502 that wrk counts as non-2xx
            proto.response_bytes(502, [("content-type", "text/plain")], repr(exc).encode())
            return
        proto.response_bytes(status, [("content-type", content_type.decode("latin-1"))], data)

    def __rsgi_init__(self, loop: Any) -> None:
        pass

    def __rsgi_del__(self, loop: Any) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


def app() -> Floor:
    """Granian's factory (``--factory floor:app``): the upstream from BENCH_UPSTREAM_URL."""
    return Floor(os.environ.get("BENCH_UPSTREAM_URL", "http://127.0.0.1:8001"))
