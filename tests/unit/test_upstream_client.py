"""UpstreamClient against real local servers speaking raw bytes (asyncio.start_server on 127.0.0.1:0).

Every test runs twice: with the compiled connection (ext/_upstream.pyx) and with its pure-Python twin
(sluice/_native/_pure_upstream.py), bound into sluice.upstream.client by the ``twin`` fixture (the compiled
case skipped where it is not built).  Every test runs its own event loop with ``asyncio.run`` (through
``async_test``), starts the servers it needs, and closes the client and the servers before the loop ends, so
that no transport, socket or task outlives the test (pytest runs with ``filterwarnings = error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure_upstream
from sluice.upstream import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    MalformedResponse,
    PoolTimeout,
    ReadTimeout,
    ResponseTooLarge,
    TruncatedBody,
    UpstreamClient,
    UpstreamTimeout,
    parse_base_url,
)
from sluice.upstream import client as client_module
from sluice.upstream.client import HIGH_WATER
from tests.conftest import async_wait_until

try:
    from sluice._native import _upstream
except ImportError:  # not built here
    _upstream = None  # type: ignore[assignment]

# Every test's own bound, well under pytest-timeout's 120 s: only for a test that would hang (a timeout that
# never fires), so generous for a loaded machine, yet below the 50-60 s a missing deadline would take here.
TEST_TIMEOUT = 30.0

TWINS = [
    pytest.param(_pure_upstream, id="pure"),
    pytest.param(_upstream, id="compiled", marks=pytest.mark.skipif(_upstream is None, reason="extension not built")),
]


OPENED: list[Any] = []  # the connections the client opened in the running test, in order (the ``twin`` fixture)


@pytest.fixture(autouse=True, params=TWINS)
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Binds one twin's connection, response and request head into the client for the test; records the
    connections it opens in OPENED (their public ``complete`` and ``transport`` are what a test waits on)."""
    impl = request.param

    def connection(pool: Any) -> Any:
        conn = impl.Connection(pool)
        OPENED.append(conn)
        return conn

    OPENED.clear()
    monkeypatch.setattr(client_module, "Connection", connection)
    monkeypatch.setattr(client_module, "Response", impl.Response)
    monkeypatch.setattr(client_module, "closed_while_idle", impl.closed_while_idle)
    monkeypatch.setattr(client_module, "upstream_head", impl.head)
    yield impl
    OPENED.clear()


def test_compiled_is_active_when_required() -> None:
    if os.environ.get("SLUICE_REQUIRE_COMPILED") == "1":
        assert _upstream is not None, "the Cython extensions did not build or import"
        assert native.UpstreamConnection is _upstream.Connection
    compiled = native.IMPLEMENTATION == "compiled"
    assert native.UpstreamResponse is (_upstream.Response if compiled else _pure_upstream.Response)
    assert _pure_upstream.HIGH_WATER == HIGH_WATER and (_upstream is None or _upstream.HIGH_WATER == HIGH_WATER)


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs an async test function in a fresh event loop, bounded by TEST_TIMEOUT."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            async with asyncio.timeout(TEST_TIMEOUT):
                await fn(*args, **kwargs)

        asyncio.run(main())

    return wrapper


# -- a raw HTTP/1.1 server ---------------------------------------------------------------


@dataclass
class Request:
    conn: int  # index of the server connection (1-based, in accept order)
    method: bytes
    target: bytes
    raw_head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunk_sizes: list[int] = field(default_factory=list)  # the chunk sizes of a chunked body

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class BadRequest(Exception):
    """The client sent bytes that are not a well-formed request: a client bug, so ``serving`` fails the test."""


Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """An asyncio server on 127.0.0.1:0 whose handler writes raw bytes; counts its connections."""

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None,
                 host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.host = host
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self.open = 0  # connections open now
        self.max_open = 0  # most connections open at once
        self.active = 0  # requests being answered now
        self.max_active = 0
        self.requests: list[Request] = []
        self.eof: dict[int, float] = {}  # connection index -> monotonic time its client closed it
        self.closed: dict[int, float] = {}  # connection index -> time the handler ended
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_conn, self.host, 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for _ in range(3):  # let freshly accepted connections start their handler
            await asyncio.sleep(0)  # pacing: three turns of the loop, for handlers accepted but not started
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        # the client side sees the ends and closes its sockets to this server (the last of them: those with unsent
        # bytes, which the client closed but could only let go now)
        await async_wait_until(lambda: all(_socket_closed(c) for c in OPENED if _peer_port(c) == self.port),
                         "the client's sockets to the stopped server closed")

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        index = self.accepted
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.handler(self, reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a broken test handler: remembered, and failed on by ``serving``
            self.errors.append(exc)
        finally:
            self.open -= 1
            self.closed[index] = time.monotonic()
            writer.close()
            try:
                async with asyncio.timeout(1):
                    await writer.wait_closed()
            except BaseException:
                writer.transport.abort()
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader, conn: int) -> Request | None:
        """Reads one request (content-length or chunked body); None at a clean EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            self.eof[conn] = time.monotonic()
            return None
        lines = head[:-4].split(b"\r\n")
        try:
            method, target, _version = lines[0].split(b" ")
        except ValueError:
            raise BadRequest(lines[0]) from None
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        request = Request(conn, method, target, head, headers, b"")
        te = request.header(b"transfer-encoding")
        if te is not None and b"chunked" in te.lower():
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BadRequest(size_line) from None
                if size == 0:
                    if await reader.readuntil(b"\r\n") != b"\r\n":
                        raise BadRequest("trailers")
                    break
                request.chunk_sizes.append(size)
                parts.append(await reader.readexactly(size))
                if await reader.readexactly(2) != b"\r\n":
                    raise BadRequest("chunk end")
            request.body = b"".join(parts)
        elif (length := request.header(b"content-length")) is not None:
            request.body = await reader.readexactly(int(length))
        self.requests.append(request)
        return request


@contextlib.asynccontextmanager
async def serving(handler: Handler, **kwargs: Any) -> AsyncIterator[Server]:
    """A started Server, stopped at the end; the test fails if the server's handler raised (a broken handler
    would otherwise pass for a client bug, or hide one)."""
    server = Server(handler, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    assert not server.errors, f"the test server's handler raised: {server.errors!r}"


@contextlib.asynccontextmanager
async def upstream_client(**kwargs: Any) -> AsyncIterator[UpstreamClient]:
    client = UpstreamClient(**kwargs)
    try:
        yield client
    finally:
        await client.close()
        # the transports finish closing (those with bytes the peer never read close when the peer goes)
        await async_wait_until(lambda: all(_socket_closed(c) or _waits_for_peer(c) for c in OPENED),
                         "the client's sockets closed")
        # and asyncio's own done-callbacks of a cancelled connect (a timed-out one) run: scheduled with call_soon,
        # they run in the next turn of the loop, and nothing exposes them to wait on
        await asyncio.sleep(0)  # pacing: one turn of the loop, not a time


def origin_of(server: Server, **kwargs: Any) -> Any:
    origin, _prefix = parse_base_url(server.url, **kwargs)
    return origin


def reply(body: bytes = b"ok", *, status: bytes = b"200 OK", headers: bytes = b"",
          version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s\r\ncontent-length: %d\r\n%s\r\n%s" % (version, status, len(body), headers, body)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def keepalive(respond: Callable[[Request], bytes] = lambda req: reply(b"ok " + req.target)) -> Handler:
    """A handler answering every request of a connection with respond(request)."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        while (request := await server.read_request(reader, conn)) is not None:
            writer.write(respond(request))
            await writer.drain()

    return handler


def raw_handler(data: bytes, *, then_close: bool = True, read_first: bool = True) -> Handler:
    """A handler that (reads one request and) writes ``data``, then closes or waits for EOF."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        if read_first:
            await server.read_request(reader, conn)
        writer.write(data)
        await writer.drain()
        if not then_close:
            await reader.read()

    return handler


async def get(client: UpstreamClient, server: Server, target: str = "/", **kwargs: Any) -> tuple[int, bytes]:
    response = await client.request(origin_of(server), "GET", target, [], **kwargs)
    return response.status, await response.read(1 << 20)


def arrived_whole(index: int = 0) -> Callable[[], bool]:
    """A check for async_wait_until: the response on the ``index``-th opened connection has arrived whole."""
    return lambda: OPENED[index].complete


def reading_stopped(index: int = 0) -> Callable[[], bool]:
    """A check for async_wait_until: the client holds all it will take of the response before the consumer reads (it
    arrived whole, or reading paused at the high-water mark)."""
    return lambda: OPENED[index].complete or not OPENED[index].transport.is_reading()


def _socket_closed(conn: Any) -> bool:
    """The connection's socket is closed (a transport closes it a loop turn after ``close()``)."""
    transport = getattr(conn, "transport", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    return sock is None or sock.fileno() == -1


def _waits_for_peer(conn: Any) -> bool:
    """Closed by the client with bytes still unsent: its socket closes once the peer reads them or goes."""
    return conn.transport.is_closing() and conn.transport.get_write_buffer_size() > 0


def _peer_port(conn: Any) -> int | None:
    transport = getattr(conn, "transport", None)
    peer = None if transport is None else transport.get_extra_info("peername")
    return None if peer is None else int(peer[1])


def since(start: float) -> float:
    """Seconds on the loop's clock (the one its timers run on) since ``start``.

    Tests compare it only with a lower bound (a timeout must not fire early): load can delay a timer, never bring
    it forward.  That a timeout fires at all is bounded by TEST_TIMEOUT, far above every timeout set here."""
    return asyncio.get_running_loop().time() - start


# -- the request head ----------------------------------------------------------------------

_TEXT = st.text(st.characters(max_codepoint=0x2FF, exclude_characters="\r\n"), max_size=12)


@pytest.mark.skipif(_upstream is None, reason="extension not built")
@given(st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS", "PUT", "PÖST"]), _TEXT, _TEXT,
       st.lists(st.tuples(_TEXT, _TEXT), max_size=5),
       st.none() | st.binary(max_size=3) | st.just(b"x" * 70_000) | st.just([b"chunk"]))
def test_request_head_twins_agree(method: str, target: str, host: str, headers: list[tuple[str, str]],
                                  body: Any) -> None:
    """The compiled head copies latin-1 text straight in and falls back for the rest: the same bytes (or the
    same UnicodeEncodeError) as the twin's f-strings for any text, body and method."""
    try:
        expected: bytes | type[Exception] = _pure_upstream.head(method, target, host, headers, body)
    except UnicodeEncodeError:
        expected = UnicodeEncodeError
    if expected is UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            _upstream.head(method, target, host, headers, body)
    else:
        assert _upstream.head(method, target, host, headers, body) == expected
        assert _upstream.head(method, target, host, [list(pair) for pair in headers], body) == expected


# -- response framing --------------------------------------------------------------------


@async_test
async def test_content_length_response(twin: Any) -> None:
    body = b"hello world" * 1000
    async with serving(keepalive(lambda req: reply(body, headers=b"x-answer: 42\r\n"))) as server, \
            upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/a", [])
        assert type(response) is twin.Response  # the twin under test serves
        assert response.status == 200
        assert response.header(b"x-answer") == b"42"
        assert response.header(b"content-length") == str(len(body)).encode()
        assert response.header(b"missing") is None
        assert await response.read(1 << 20) == body


@async_test
async def test_chunked_response_read_whole() -> None:
    chunks = [b"hello", b" ", b"chunked", b"x" * 70000, b"world"]
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    async with serving(keepalive(lambda req: head + chunked(*chunks))) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        assert response.status == 200
        assert await response.read(1 << 20) == b"".join(chunks)
        assert client.stats()["idle"] == 1  # complete and keep-alive: back in the pool


async def _slow_chunks(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       conn: int) -> None:
    while await server.read_request(reader, conn) is not None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        for piece in (b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"):
            await asyncio.sleep(0.03)  # pacing: the pieces arrive apart, to be read one by one
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        await asyncio.sleep(0.03)  # pacing: the end comes apart too
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@async_test
async def test_chunked_response_incremental() -> None:
    async with serving(_slow_chunks) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/stream", [])
        pieces = []
        while piece := await response.next_chunk():
            pieces.append(piece)
        assert await response.next_chunk() == b""  # stays at the end
        assert pieces == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
        response.release()
        assert client.stats()["idle"] == 1
        # ... and the connection is reused for the next streamed response
        response = await client.request(origin_of(server), "GET", "/stream", [])
        assert await response.read(1000) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
        assert server.accepted == 1


@async_test
async def test_body_delimited_by_connection_close() -> None:
    body = b"until the end " * 5000
    handler = raw_handler(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + body)
    async with serving(handler) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        assert response.status == 200
        assert await response.read(1 << 20) == body
        assert client.stats() == {"in_use": 0, "idle": 0, "waiting": 0,
                                  "origins": {f"http://127.0.0.1:{server.port}": {"in_use": 0, "idle": 0}}}
        # a new request needs a new connection
        response = await client.request(origin_of(server), "GET", "/", [])
        assert await response.read(1 << 20) == body
        assert server.accepted == 2


@async_test
async def test_body_delimited_by_close_even_if_server_says_keep_alive() -> None:
    async def close_later(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          conn: int) -> None:
        await server.read_request(reader, conn)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.1)  # pacing: the rest of the body comes later
        writer.write(b"def")

    async with serving(close_later) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        assert await response.read(100) == b"abcdef"
        assert client.stats()["idle"] == 0


@async_test
async def test_no_body_statuses_and_interim_responses() -> None:
    answers = [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-final: 1\r\n\r\nfinal",
    ]
    async with serving(keepalive(lambda req: answers[len(server.requests) - 1])) as server, \
            upstream_client(read_timeout=1.0) as client:
        results = []
        for _ in answers:
            response = await client.request(origin_of(server), "GET", "/", [])
            results.append((response.status, response.header(b"x-final"), await response.read(100)))
        assert results == [(204, None, b""), (304, None, b""), (200, b"1", b"final")]
        assert server.accepted == 1  # all on one keep-alive connection


@async_test
async def test_head_response_has_no_body() -> None:
    def respond(req: Request) -> bytes:
        if req.method == b"HEAD":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
        return reply(b"after head")

    async with serving(keepalive(respond)) as server, \
            upstream_client(read_timeout=0.5) as client:
        response = await client.request(origin_of(server), "HEAD", "/", [])
        assert response.status == 200
        assert response.header(b"content-length") == b"1234"
        assert await response.read(10_000) == b""
        assert (await get(client, server))[0] == 200
        assert server.accepted == 1


# -- request bodies and the request head -------------------------------------------------


@pytest.mark.parametrize("size", [0, 5, 64 * 1024 + 1, 300_000])
@async_test
async def test_request_body_bytes(size: int) -> None:
    body = bytes(i % 251 for i in range(size))
    async with serving(keepalive()) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "POST", "/upload", [("content-type", "x/y")], body)
        assert await response.read(100) == b"ok /upload"
        (request,) = server.requests
        assert request.method == b"POST"
        assert request.header(b"content-length") == str(size).encode()
        assert request.header(b"transfer-encoding") is None
        assert request.body == body


@pytest.mark.parametrize(("method", "body", "length"), [
    ("GET", None, None), ("GET", b"", None), ("DELETE", None, None), ("POST", None, b"0"),
    ("POST", b"", b"0"), ("PUT", None, b"0"), ("GET", b"q", b"1"),
])
@async_test
async def test_content_length_of_bodiless_requests(method: str, body: bytes | None, length: bytes | None) -> None:
    async with serving(keepalive()) as server, upstream_client() as client:
        response = await client.request(origin_of(server), method, "/", [], body)
        await response.read(100)
        (request,) = server.requests
        assert request.header(b"content-length") == length
        assert request.body == (body or b"")


@async_test
async def test_request_body_async_iterable() -> None:
    pieces = [b"first", b"", b"x" * 100_000, b"\r\n0\r\n\r\n", b"last"]

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            await asyncio.sleep(0)  # pacing: a body that gives the loop a turn between pieces
            yield piece

    async with serving(keepalive()) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "POST", "/stream-up", [], body())
        assert await response.read(100) == b"ok /stream-up"
        (request,) = server.requests
        assert request.header(b"transfer-encoding") == b"chunked"
        assert request.header(b"content-length") is None
        assert request.body == b"".join(pieces)
        assert request.chunk_sizes == [len(p) for p in pieces if p]  # empty pieces are not sent
        # the connection is in step afterwards: reused for the next request
        assert (await get(client, server, "/next"))[1] == b"ok /next"
        assert server.accepted == 1


@async_test
async def test_big_streamed_upload_to_a_slow_reader() -> None:
    """An async-iterable body bigger than the socket buffers: the writer waits for the reader."""
    piece = b"u" * 65536
    count = 128  # 8 MiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield piece

    async def slow_reader(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          conn: int) -> None:
        await asyncio.sleep(0.2)  # pacing: a reader that starts late, so the client's writes must wait
        request = await server.read_request(reader, conn)
        assert request is not None
        writer.write(reply(b"%d" % len(request.body)))
        await reader.read()

    async with serving(slow_reader) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "PUT", "/", [], body())
        assert await response.read(100) == str(len(piece) * count).encode()


@async_test
async def test_host_header_and_headers_sent_verbatim() -> None:
    headers = [("X-Mixed-Case", "Some  Value"), ("accept", "*/*"), ("x-dup", "1"), ("x-dup", "2"),
               ("authorization", "Bearer sk-123")]
    async with serving(keepalive()) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/v1/models?x=1&y=%20", headers)
        await response.read(100)
        (request,) = server.requests
        assert request.raw_head == (
            b"GET /v1/models?x=1&y=%20 HTTP/1.1\r\n"
            b"host: 127.0.0.1:" + str(server.port).encode() + b"\r\n"
            b"X-Mixed-Case: Some  Value\r\naccept: */*\r\nx-dup: 1\r\nx-dup: 2\r\n"
            b"authorization: Bearer sk-123\r\n\r\n"
        )


@async_test
async def test_host_header_ipv6() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    async with serving(keepalive(), host="::1") as server, upstream_client() as client:
        assert (await get(client, server))[0] == 200
        assert server.requests[0].header(b"host") == b"[::1]:%d" % server.port


@pytest.mark.parametrize(("url", "host_header", "key", "prefix"), [
    ("http://api.example.com", "api.example.com", "http://api.example.com:80", ""),
    ("http://api.example.com:80/v1/", "api.example.com", "http://api.example.com:80", "/v1"),
    ("https://api.example.com/v1", "api.example.com", "https://api.example.com:443", "/v1"),
    ("https://api.example.com:8443", "api.example.com:8443", "https://api.example.com:8443", ""),
    ("http://127.0.0.1:9000/a/b", "127.0.0.1:9000", "http://127.0.0.1:9000", "/a/b"),
    ("http://[::1]:9000", "[::1]:9000", "http://[::1]:9000", ""),
])
def test_parse_base_url_host_header(url: str, host_header: str, key: str, prefix: str) -> None:
    origin, path = parse_base_url(url)
    assert (origin.host_header, origin.key, path) == (host_header, key, prefix)
    assert (origin.ssl is not None) == url.startswith("https")


# -- keep-alive ----------------------------------------------------------------------------


@async_test
async def test_keepalive_reuses_one_connection() -> None:
    async with serving(keepalive()) as server, upstream_client() as client:
        assert await get(client, server, "/one") == (200, b"ok /one")
        assert await get(client, server, "/two") == (200, b"ok /two")
        assert await get(client, server, "/three") == (200, b"ok /three")
        assert server.accepted == 1
        assert [r.conn for r in server.requests] == [1, 1, 1]


@pytest.mark.parametrize("answer", [
    reply(b"bye", headers=b"connection: close\r\n"),
    reply(b"bye", headers=b"Connection: Close\r\n"),
    reply(b"bye", version=b"HTTP/1.0"),
], ids=["connection-close", "Connection-Close", "http-1.0"])
@async_test
async def test_no_reuse_when_server_does_not_keep_alive(answer: bytes) -> None:
    # The server keeps its socket open: the client must decide from the response alone.
    async with serving(keepalive(lambda req: answer)) as server, upstream_client() as client:
        assert await get(client, server) == (200, b"bye")
        assert client.stats()["idle"] == 0
        await async_wait_until(lambda: 1 in server.closed)  # the client closed it
        assert await get(client, server) == (200, b"bye")
        assert server.accepted == 2


@pytest.mark.parametrize("how", ["release", "abort", "partly-read-release"])
@async_test
async def test_unfinished_response_is_never_reused(how: str) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        while (request := await server.read_request(reader, conn)) is not None:
            if request.target == b"/partial":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            else:
                writer.write(reply())
            await writer.drain()

    async with serving(handler) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/partial", [])
        if how == "partly-read-release":
            assert await response.next_chunk() == b"first"
        if how == "abort":
            response.abort()
            response.abort()  # safe twice
        else:
            response.release()
        response.release()  # and a second release is a no-op
        assert client.stats()["in_use"] == 0
        assert client.stats()["idle"] == 0
        await async_wait_until(lambda: 1 in server.closed)
        assert await get(client, server) == (200, b"ok")
        assert server.accepted == 2
        assert client.stats()["in_use"] == 0


@async_test
async def test_unread_but_complete_response_is_reused() -> None:
    async with serving(keepalive()) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/ignored", [])
        await async_wait_until(arrived_whole(), "the small body arriving whole")
        response.release()
        assert await get(client, server, "/next") == (200, b"ok /next")
        assert server.accepted == 1


@async_test
async def test_extra_bytes_after_response_prevent_reuse() -> None:
    async with serving(keepalive(lambda req: reply(b"ok") + b"JUNK")) as server, upstream_client() as client:
        assert await get(client, server) == (200, b"ok")
        assert await get(client, server) == (200, b"ok")
        assert server.accepted == 2


@pytest.mark.parametrize("how", ["read", "release-unread"])
@async_test
async def test_connection_reused_after_large_buffered_body(how: str) -> None:
    body = b"b" * (HIGH_WATER + 1)
    async with serving(keepalive(lambda req: reply(body))) as server, \
            upstream_client(read_timeout=0.5) as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        await async_wait_until(reading_stopped(), "the body arriving before the consumer reads it")
        if how == "read":
            assert await response.read(1 << 20) == body
        else:
            response.release()
        response = await client.request(origin_of(server), "GET", "/", [])
        assert await response.read(1 << 20) == body


# -- stale connections and the retry ------------------------------------------------------


@pytest.mark.parametrize("when", ["on-next-request", "right-after-response"])
@async_test
async def test_stale_idle_connection_is_retried_on_a_fresh_one(when: str) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        request = await server.read_request(reader, conn)
        assert request is not None
        writer.write(reply(b"ok " + request.target))
        await writer.drain()
        if conn == 1:
            if when == "on-next-request":
                await server.read_request(reader, conn)  # then close without answering
            return
        await keepalive()(server, reader, writer, conn)

    async with serving(handler) as server, upstream_client() as client:
        assert await get(client, server, "/1") == (200, b"ok /1")
        if when == "right-after-response":
            await async_wait_until(lambda: OPENED[0].closed, "the client seeing the idle connection closed")
        assert await get(client, server, "/2") == (200, b"ok /2")
        assert server.accepted == 2
        if when == "on-next-request":
            assert [(r.conn, r.target) for r in server.requests] == [(1, b"/1"), (1, b"/2"), (2, b"/2")]


@async_test
async def test_stale_connection_with_streamed_body_is_not_retried() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        await server.read_request(reader, conn)
        writer.write(reply())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next head: close without answering

    async def body() -> AsyncIterator[bytes]:
        yield b"cannot be replayed"

    async with serving(handler) as server, upstream_client() as client:
        assert await get(client, server) == (200, b"ok")
        with pytest.raises(ConnectionClosed):
            await client.request(origin_of(server), "POST", "/", [], body())
        assert server.accepted == 1
        assert client.stats()["in_use"] == 0


@async_test
async def test_fresh_connection_closed_before_answer_raises() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        return  # accept, then close at once

    async with serving(handler) as server, upstream_client() as client:
        with pytest.raises(ConnectionClosed) as info:
            await client.request(origin_of(server), "GET", "/", [])
        assert not isinstance(info.value, TruncatedBody)
        # final once the request raised: a retry's connection would have been accepted (and closed) before it
        assert server.accepted == 1  # no retry on a fresh connection
        assert client.stats()["in_use"] == 0


@async_test
async def test_stale_retry_happens_only_once() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        if conn == 1:
            await server.read_request(reader, conn)
            writer.write(reply())
            await writer.drain()
            await server.read_request(reader, conn)  # the second request: close unanswered
        # every later connection: close at once

    async with serving(handler) as server, upstream_client() as client:
        assert await get(client, server) == (200, b"ok")
        with pytest.raises(ConnectionClosed):
            await get(client, server)
        assert server.accepted == 2  # final once the request raised (as above)


# -- errors --------------------------------------------------------------------------------


@async_test
async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    origin, _ = parse_base_url(f"http://127.0.0.1:{port}")
    async with upstream_client() as client:
        with pytest.raises(ConnectError, match=str(port)):
            await client.request(origin, "GET", "/", [])
        assert client.stats()["in_use"] == 0


@pytest.mark.parametrize("data", [
    b"NOT HTTP\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
], ids=["garbage", "bad-status", "two-lengths", "length-and-chunked", "upgrade"])
@pytest.mark.parametrize("then_close", [True, False])
@async_test
async def test_malformed_response_head(data: bytes, then_close: bool) -> None:
    async with serving(raw_handler(data, then_close=then_close)) as server, \
            upstream_client(read_timeout=1.0) as client:
        with pytest.raises(MalformedResponse):
            await client.request(origin_of(server), "GET", "/", [])
        assert client.stats()["in_use"] == 0
        assert client.stats()["idle"] == 0


@async_test
async def test_malformed_chunked_body() -> None:
    data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nnot a chunk\r\n"
    async with serving(raw_handler(data, then_close=False)) as server, \
            upstream_client(read_timeout=1.0) as client:
        with pytest.raises(MalformedResponse):
            response = await client.request(origin_of(server), "GET", "/", [])
            await response.read(1000)
        assert client.stats()["in_use"] == 0
        assert client.stats()["idle"] == 0


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n10\r\nabc",
], ids=["content-length", "no-body-at-all", "chunked"])
@async_test
async def test_truncated_body(data: bytes) -> None:
    async with serving(raw_handler(data)) as server, upstream_client() as client:
        with pytest.raises(TruncatedBody):
            response = await client.request(origin_of(server), "GET", "/", [])
            await response.read(1000)
        assert client.stats()["in_use"] == 0


@async_test
async def test_close_delimited_body_cut_by_a_reset_is_an_error() -> None:
    async def reset(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    conn: int) -> None:
        await server.read_request(reader, conn)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart of the bo")
        await writer.drain()
        await asyncio.sleep(0.1)  # pacing: the part of the body goes out before the reset
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with serving(reset) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        with pytest.raises(ConnectionClosed):
            await response.read(1000)


@async_test
async def test_truncated_body_incremental() -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        await server.read_request(reader, conn)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        await writer.drain()
        await asyncio.sleep(0.05)  # pacing: the close comes after the first piece

    async with serving(handler) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        assert await response.next_chunk() == b"0123456789"
        with pytest.raises(TruncatedBody):
            await response.next_chunk()
        response.release()
        assert client.stats()["in_use"] == 0


async def _never_answer(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        conn: int) -> None:
    await server.read_request(reader, conn)
    await reader.read()


@async_test
async def test_read_timeout_when_server_never_answers() -> None:
    async with serving(_never_answer) as server, upstream_client(read_timeout=0.2) as client:
        start = asyncio.get_running_loop().time()
        with pytest.raises(ReadTimeout):
            await client.request(origin_of(server), "GET", "/", [])
        assert since(start) >= 0.15  # not early (not late: TEST_TIMEOUT)
        assert client.stats()["in_use"] == 0
        await async_wait_until(lambda: 1 in server.closed)  # the client closed the connection


async def _answer_once(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       conn: int) -> None:
    """Answers the first request of a connection, never the second."""
    await server.read_request(reader, conn)
    writer.write(reply())
    await writer.drain()
    await server.read_request(reader, conn)
    await reader.read()


@async_test
async def test_read_timer_left_by_an_earlier_request_times_the_next_one_from_its_own_start() -> None:
    """One read timer per connection, armed by the first request: when it fires during the second one's wait it
    re-arms at that wait's end instead of failing it early, and the wait still times out."""
    async with serving(_answer_once) as server, upstream_client(read_timeout=0.4) as client:
        assert await get(client, server) == (200, b"ok")
        await asyncio.sleep(0.2)  # pacing: the first request's timer fires 0.2 s into the second one's wait
        start = asyncio.get_running_loop().time()
        with pytest.raises(ReadTimeout):
            await client.request(origin_of(server), "GET", "/", [])
        assert since(start) >= 0.35  # not cut short by the earlier timer (load can only make it later)
        assert server.accepted == 1 and client.stats()["in_use"] == 0


@async_test
async def test_a_deadline_shorter_than_the_armed_read_timer_rearms_it() -> None:
    """The timer armed by a request with a long read timeout fires too late for a later one with a short deadline:
    the wait re-arms it (else this test would wait 60 s and hit its own bound)."""
    async with serving(_answer_once) as server, upstream_client(read_timeout=60) as client:
        assert await get(client, server) == (200, b"ok")
        with pytest.raises(ReadTimeout):
            await client.request(origin_of(server), "GET", "/", [], deadline=asyncio.get_running_loop().time() + 0.2)
        assert server.accepted == 1 and client.stats()["in_use"] == 0


@pytest.mark.parametrize("how", ["read", "next_chunk"])
@async_test
async def test_read_timeout_mid_body(how: str) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        await server.read_request(reader, conn)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nsome")
        await writer.drain()
        await reader.read()

    async with serving(handler) as server, upstream_client(read_timeout=0.2) as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        start = asyncio.get_running_loop().time()
        with pytest.raises(ReadTimeout):
            if how == "read":
                await response.read(10_000)
            else:
                assert await response.next_chunk() == b"some"
                await response.next_chunk()
        assert since(start) >= 0.15  # not early (not late: TEST_TIMEOUT)
        response.release()
        assert client.stats()["in_use"] == 0
        await async_wait_until(lambda: 1 in server.closed)


@pytest.mark.parametrize("where", ["body", "head"])
@async_test
async def test_deadline_bounds_a_slow_trickle(where: str) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"

    async def trickle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        await server.read_request(reader, conn)
        if where == "body":
            writer.write(head)
            data = b"x" * 1000
        else:
            data = head + b"x" * 1000
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)  # pacing: a byte every 50 ms, far more often than the read timeout

    # read_timeout is far above the gap between bytes and the deadline: only the deadline can end it in time
    # (without it the trickle would last 50 s and the test hit TEST_TIMEOUT)
    read_timeout = 2.0
    async with serving(trickle) as server, upstream_client(read_timeout=read_timeout) as client:
        loop = asyncio.get_running_loop()
        start = asyncio.get_running_loop().time()
        received = bytearray()
        with pytest.raises(ReadTimeout):
            response = await client.request(origin_of(server), "GET", "/", [], deadline=loop.time() + 0.3)
            while piece := await response.next_chunk():
                received += piece
        assert since(start) >= 0.3  # the deadline's, not early
        if where == "body":
            assert len(received) < 1000  # cut short
            response.release()
        assert client.stats()["in_use"] == 0


@async_test
async def test_read_timeout_is_silence_between_bytes_of_the_head() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"  # 41 bytes, one every 20 ms

    async def trickle(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        await server.read_request(reader, conn)
        for i in range(len(head)):
            writer.write(head[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.02)  # pacing: a byte every 20 ms, each gap below the read timeout
        await reader.read()

    async with serving(trickle) as server, upstream_client(read_timeout=0.25) as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        assert await response.read(10) == b"ok"


@async_test
async def test_deadline_already_past() -> None:
    async with serving(keepalive()) as server, upstream_client() as client:
        loop = asyncio.get_running_loop()
        with pytest.raises(UpstreamTimeout):
            response = await client.request(origin_of(server), "GET", "/", [], deadline=loop.time() - 1)
            await response.read(100)
        assert client.stats()["in_use"] == 0


def _saturated_listener() -> tuple[socket.socket, list[socket.socket]] | None:
    """A listening socket whose accept queue is full (nobody accepts): new SYNs are dropped."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(8):
        sock = socket.socket()
        sock.setblocking(False)
        fillers.append(sock)
        sock.connect_ex(listener.getsockname())
        _, writable, _ = select.select([], [sock], [], 0.3)
        if not writable:
            return listener, fillers
    for sock in fillers:
        sock.close()
    listener.close()
    return None


@async_test
async def test_connect_timeout() -> None:
    saturated = _saturated_listener()
    if saturated is None:
        pytest.skip("cannot fill a listen backlog on this system")
    listener, fillers = saturated
    try:
        origin, _ = parse_base_url(f"http://127.0.0.1:{listener.getsockname()[1]}")
        async with upstream_client(connect_timeout=0.2) as client:
            start = asyncio.get_running_loop().time()
            with pytest.raises(ConnectTimeout):
                await client.request(origin, "GET", "/", [])
            assert since(start) >= 0.15  # not early (not late: TEST_TIMEOUT)
            assert client.stats()["in_use"] == 0
            loop = asyncio.get_running_loop()
            with pytest.raises(ConnectTimeout):  # the total deadline also bounds connecting
                await client.request(origin, "GET", "/", [], deadline=loop.time() + 0.1)
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


@pytest.mark.parametrize("how", ["arrived-whole", "streamed"])
@async_test
async def test_response_too_large(how: str) -> None:
    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        await server.read_request(reader, conn)
        if how == "arrived-whole":
            writer.write(reply(b"y" * 1000))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(20):
                writer.write(b"64\r\n" + b"y" * 100 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)  # pacing: a stream, not one write
            writer.write(b"0\r\n\r\n")
        await reader.read()

    async with serving(handler) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        if how == "arrived-whole":
            await async_wait_until(arrived_whole(), "the body arriving whole")
        with pytest.raises(ResponseTooLarge):
            await response.read(999)
        assert client.stats()["in_use"] == 0
        assert client.stats()["idle"] == 0  # the connection was closed, not pooled
        await async_wait_until(lambda: 1 in server.closed)


@async_test
async def test_response_exactly_at_limit() -> None:
    async with serving(keepalive(lambda req: reply(b"z" * 1000))) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        assert await response.read(1000) == b"z" * 1000


# -- pool limits ---------------------------------------------------------------------------


def _gated_handler(gate: asyncio.Event) -> Handler:
    """Answers each request once ``gate`` is set (a busy upstream, for as long as the test wants)."""

    async def handler(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      conn: int) -> None:
        while (request := await server.read_request(reader, conn)) is not None:
            server.active += 1
            server.max_active = max(server.max_active, server.active)
            await gate.wait()
            server.active -= 1
            writer.write(reply(b"slow " + request.target))
            await writer.drain()

    return handler


@async_test
async def test_per_origin_limit_queues_requests() -> None:
    gate = asyncio.Event()
    async with serving(_gated_handler(gate)) as server, \
            upstream_client(max_connections_per_origin=2) as client:
        tasks = [asyncio.create_task(get(client, server, f"/{i}")) for i in range(5)]
        await async_wait_until(lambda: server.active == 2, "two requests at the upstream")
        stats = client.stats()
        assert (stats["in_use"], stats["waiting"]) == (2, 3)
        gate.set()
        results = await asyncio.gather(*tasks)
        assert results == [(200, b"slow /%d" % i) for i in range(5)]
        assert server.max_open <= 2
        assert server.max_active <= 2
        assert server.accepted == 2
        assert client.stats()["in_use"] == 0
        assert client.stats()["waiting"] == 0
        assert client.stats()["idle"] == 2


@async_test
async def test_waiters_are_served_in_order() -> None:
    gate = asyncio.Event()
    async with serving(_gated_handler(gate)) as server, \
            upstream_client(max_connections_per_origin=1) as client:
        order: list[int] = []

        async def one(i: int) -> None:
            await get(client, server, f"/{i}")
            order.append(i)

        tasks = []
        for i in range(6):
            tasks.append(asyncio.create_task(one(i)))
            # queue them in this order: the first at the upstream, each next one behind the last
            await async_wait_until(lambda: server.active == 1 and client.stats()["waiting"] == len(tasks) - 1,
                             f"request {i} queued")
        gate.set()
        await asyncio.gather(*tasks)
        assert order == list(range(6))
        assert server.accepted == 1


@async_test
async def test_pool_timeout_for_a_waiter_past_its_deadline() -> None:
    async with serving(keepalive()) as server, upstream_client(max_connections_per_origin=1) as client:
        loop = asyncio.get_running_loop()
        held = await client.request(origin_of(server), "GET", "/held", [])
        start = asyncio.get_running_loop().time()
        with pytest.raises(PoolTimeout):
            await client.request(origin_of(server), "GET", "/", [], deadline=loop.time() + 0.2)
        assert since(start) >= 0.15  # not early (not late: TEST_TIMEOUT)
        assert client.stats()["waiting"] == 0
        assert client.stats()["in_use"] == 1
        assert await held.read(100) == b"ok /held"
        assert await get(client, server, "/after") == (200, b"ok /after")
        assert server.accepted == 1


@async_test
async def test_global_limit_across_origins() -> None:
    async with serving(keepalive()) as a, serving(keepalive()) as b, \
            upstream_client(max_connections=1) as client:
        loop = asyncio.get_running_loop()
        held = await client.request(origin_of(a), "GET", "/a", [])
        with pytest.raises(PoolTimeout):
            await client.request(origin_of(b), "GET", "/b", [], deadline=loop.time() + 0.1)
        waiting = asyncio.create_task(get(client, b, "/b"))
        await async_wait_until(lambda: client.stats()["waiting"] == 1, "the request for b waiting")
        assert await held.read(100) == b"ok /a"  # releases: the waiter for b gets the room
        assert await waiting == (200, b"ok /b")
        assert b.accepted == 1


@async_test
async def test_cancelled_waiter_does_not_swallow_the_wakeup() -> None:
    async with serving(keepalive()) as server, upstream_client(max_connections_per_origin=1) as client:
        loop = asyncio.get_running_loop()
        held = await client.request(origin_of(server), "GET", "/held", [])
        await async_wait_until(arrived_whole(), "the small body arriving whole")
        first = asyncio.create_task(client.request(origin_of(server), "GET", "/first", []))
        await async_wait_until(lambda: client.stats()["waiting"] == 1, "the first waiter queued")
        second = asyncio.create_task(get(client, server, "/second", deadline=loop.time() + 30))
        await async_wait_until(lambda: client.stats()["waiting"] == 2, "the second waiter queued")
        held.release()  # wakes ``first`` ...
        first.cancel()  # ... which gives up (its caller went away) before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second == (200, b"ok /second")


@async_test
async def test_cancelled_request_gives_its_slot_back() -> None:
    async with serving(_never_answer) as server, upstream_client(max_connections_per_origin=1) as client:
        task = asyncio.create_task(client.request(origin_of(server), "GET", "/", []))
        await async_wait_until(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.stats()["in_use"] == 0
        await async_wait_until(lambda: 1 in server.closed)


@async_test
async def test_failed_connect_gives_its_slot_back() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    origin, _ = parse_base_url(f"http://127.0.0.1:{port}")
    async with upstream_client(max_connections_per_origin=1) as client:
        for _ in range(3):
            with pytest.raises(ConnectError):
                await client.request(origin, "GET", "/", [])
        assert client.stats()["in_use"] == 0


@async_test
async def test_connection_released_after_close_is_closed() -> None:
    async with serving(keepalive()) as server, upstream_client(idle_timeout=30) as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        await client.close()
        assert await response.read(100) == b"ok /"
        await async_wait_until(lambda: 1 in server.closed, "the client closing the connection")
        assert client.stats()["idle"] == 0


# -- idle expiry ---------------------------------------------------------------------------


@async_test
async def test_idle_connections_expire() -> None:
    async with serving(keepalive()) as server, upstream_client(idle_timeout=0.2) as client:
        assert await get(client, server) == (200, b"ok /")
        assert client.stats()["idle"] == 1
        start = time.monotonic()  # the Server's clock
        await async_wait_until(lambda: 1 in server.eof, "the client closing the idle connection")
        assert server.eof[1] - start >= 0.15  # not before the idle timeout (load can only make it later)
        assert client.stats()["idle"] == 0
        assert await get(client, server) == (200, b"ok /")
        assert server.accepted == 2


@async_test
async def test_connection_reused_within_idle_timeout() -> None:
    async with serving(keepalive()) as server, upstream_client(idle_timeout=30) as client:
        for _ in range(4):
            assert await get(client, server) == (200, b"ok /")
            await asyncio.sleep(0.1)  # pacing: idle for a while, well within the idle timeout
        assert server.accepted == 1


# -- flow control --------------------------------------------------------------------------


PIECE = 64 * 1024
PIECES = 80  # 5 MiB


def _piece(i: int) -> bytes:
    return struct.pack(">I", i) * (PIECE // 4)


async def _stalled_at(progress: dict[str, int], settle_s: float, limit_s: float) -> int:
    """What the server had sent once it made no progress for settle_s; fails after limit_s."""
    deadline = asyncio.get_running_loop().time() + limit_s
    last = -1
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(settle_s)  # pacing: the window in which no progress means a stall
        if progress["sent"] == last:
            return last
        last = progress["sent"]
    raise AssertionError(f"the server never stalled: {progress['sent']} bytes sent and counting")


@async_test
async def test_flow_control_bounds_unread_bytes() -> None:
    """The server streams 5 MiB as fast as it can; its writes block while the client's consumer
    does not read, so what the server managed to send bounds what the client holds unread."""
    total = PIECE * PIECES
    progress = {"sent": 0}

    async def firehose(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       conn: int) -> None:
        await server.read_request(reader, conn)
        # A fixed, modest kernel send buffer and a small transport buffer on the server side,
        # so that the server's progress mostly reflects what the client side takes in.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        writer.transport.set_write_buffer_limits(high=16 * 1024)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        for i in range(PIECES):
            writer.write(_piece(i))
            await writer.drain()
            progress["sent"] += PIECE
        await reader.read()

    async with serving(firehose) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        # The consumer reads nothing: the server gets stuck far below 5 MiB. The kernel may still
        # grow its buffers for a moment on a loaded machine, so wait (bounded) for a stall.
        first = await _stalled_at(progress, settle_s=0.25, limit_s=10.0)
        assert first < 2 * 1024 * 1024, first
        # A slow consumer for the first MiB, then a fast one; every byte arrives, in order.
        received = bytearray()
        while piece := await response.next_chunk():
            received += piece
            if len(received) < 1024 * 1024:
                await asyncio.sleep(0.001)  # pacing: a slow consumer
        response.release()
        assert len(received) == total
        assert received == b"".join(_piece(i) for i in range(PIECES))
        assert progress["sent"] == total
        assert client.stats()["idle"] == 1  # complete: the connection goes back to the pool


# -- uploads that the upstream cuts short --------------------------------------------------


@async_test
async def test_connection_not_reused_after_an_unfinished_upload() -> None:
    async def early_answer(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           conn: int) -> None:
        # Like a real server: answers at once, then keeps reading (discarding) the request body;
        # bytes that break the chunked framing get a 400 and the connection is closed.
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(reply(b"early"))
            await writer.drain()
            if b"transfer-encoding: chunked" in head:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    try:
                        size = int(line, 16)
                    except ValueError:
                        writer.write(reply(b"bad", status=b"400 Bad Request", headers=b"connection: close\r\n"))
                        await writer.drain()
                        return
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break

    class SlowBody:
        def __init__(self) -> None:
            self.sent = 0

        def __aiter__(self) -> SlowBody:
            return self

        async def __anext__(self) -> bytes:
            if self.sent == 3:
                raise StopAsyncIteration
            if self.sent:
                await asyncio.sleep(0.2)  # pacing: a slow body; the answer arrives meanwhile
            self.sent += 1
            return b"part"

    async with serving(early_answer) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "POST", "/", [], SlowBody())
        assert await response.read(100) == b"early"
        assert await get(client, server, "/next") == (200, b"early")


@async_test
async def test_deadline_bounds_an_upload_the_server_never_reads() -> None:
    piece = b"u" * 65536

    class EndlessBody:
        def __aiter__(self) -> EndlessBody:
            return self

        async def __anext__(self) -> bytes:
            await asyncio.sleep(0)  # pacing: an endless body that gives the loop a turn between pieces
            return piece

    async def deaf(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   conn: int) -> None:
        await asyncio.sleep(10)  # pacing: a server that never reads (cancelled at the end)

    async with serving(deaf) as server, upstream_client(read_timeout=0.3) as client:
        loop = asyncio.get_running_loop()
        try:
            with pytest.raises(UpstreamTimeout):  # the deadline's (the read timeout never runs while sending)
                await client.request(origin_of(server), "POST", "/", [], EndlessBody(),
                                     deadline=loop.time() + 0.5)
        finally:
            assert client.stats()["in_use"] == 0


# -- stats ---------------------------------------------------------------------------------


@async_test
async def test_stats_in_use_and_idle() -> None:
    async with serving(keepalive()) as a, serving(keepalive()) as b, upstream_client() as client:
        key_a, key_b = origin_of(a).key, origin_of(b).key
        assert client.stats() == {"in_use": 0, "idle": 0, "waiting": 0, "origins": {}}
        r1 = await client.request(origin_of(a), "GET", "/", [])
        r2 = await client.request(origin_of(a), "GET", "/", [])
        r3 = await client.request(origin_of(b), "GET", "/", [])
        assert client.stats() == {"in_use": 3, "idle": 0, "waiting": 0, "origins": {
            key_a: {"in_use": 2, "idle": 0}, key_b: {"in_use": 1, "idle": 0}}}
        await r1.read(100)
        assert client.stats()["origins"][key_a] == {"in_use": 1, "idle": 1}
        await r2.read(100)
        await r3.read(100)
        assert client.stats() == {"in_use": 0, "idle": 3, "waiting": 0, "origins": {
            key_a: {"in_use": 0, "idle": 2}, key_b: {"in_use": 0, "idle": 1}}}
        r4 = await client.request(origin_of(a), "GET", "/", [])
        assert client.stats()["origins"][key_a] == {"in_use": 1, "idle": 1}
        r4.abort()
        assert client.stats()["origins"][key_a] == {"in_use": 0, "idle": 1}
        await client.close()
        assert client.stats() == {"in_use": 0, "idle": 0, "waiting": 0, "origins": {}}


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    yield str(cert), str(key)


def _server_tls(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
@async_test
async def test_tls_verified_with_ca_file(tls_cert: tuple[str, str], host: str) -> None:
    cert, key = tls_cert
    async with serving(keepalive(), ssl_context=_server_tls(cert, key)) as server, \
            upstream_client() as client:
        origin, _ = parse_base_url(f"https://{host}:{server.port}", ca_file=cert)
        for _ in range(2):
            response = await client.request(origin, "GET", "/secure", [])
            assert await response.read(100) == b"ok /secure"
        assert server.requests[0].header(b"host") == f"{host}:{server.port}".encode()
        assert server.accepted == 1  # keep-alive over TLS too


@async_test
async def test_tls_verification_fails_without_ca(tls_cert: tuple[str, str]) -> None:
    cert, key = tls_cert
    async with serving(keepalive(), ssl_context=_server_tls(cert, key)) as server, \
            upstream_client() as client:
        origin, _ = parse_base_url(f"https://localhost:{server.port}")
        with pytest.raises(ConnectError, match=r"(?i)tls|certificate"):
            await client.request(origin, "GET", "/", [])
        assert client.stats()["in_use"] == 0
        assert not server.requests


@async_test
async def test_tls_hostname_mismatch_fails(tls_cert: tuple[str, str]) -> None:
    cert, key = tls_cert
    try:  # 127.0.0.2 is loopback too on Linux, but not among the certificate's names
        with socket.socket() as probe:
            probe.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 not available here")
    async with serving(keepalive(), ssl_context=_server_tls(cert, key), host="127.0.0.2") as server, \
            upstream_client() as client:
        origin, _ = parse_base_url(f"https://127.0.0.2:{server.port}", ca_file=cert)
        with pytest.raises(ConnectError, match=r"(?i)tls|certificate"):
            await client.request(origin, "GET", "/", [])
        assert not server.requests


@async_test
async def test_tls_without_verification(tls_cert: tuple[str, str]) -> None:
    cert, key = tls_cert
    async with serving(keepalive(), ssl_context=_server_tls(cert, key)) as server, \
            upstream_client() as client:
        origin, _ = parse_base_url(f"https://localhost:{server.port}", verify_tls=False)
        response = await client.request(origin, "POST", "/insecure", [], b"payload")
        assert await response.read(100) == b"ok /insecure"
        assert server.requests[0].body == b"payload"


@async_test
async def test_tls_server_that_never_handshakes_times_out() -> None:
    async def silent(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     conn: int) -> None:
        await reader.read()  # a plain TCP server: never answers the ClientHello

    async with serving(silent) as server, upstream_client(connect_timeout=0.2) as client:
        origin, _ = parse_base_url(f"https://127.0.0.1:{server.port}")
        with pytest.raises(ConnectTimeout):  # bounded by the connect timeout, not the 60 s read timeout
            await client.request(origin, "GET", "/", [])
        assert client.stats()["in_use"] == 0



@pytest.mark.parametrize("how", ["abort", "release"])
@async_test
async def test_closing_unfinished_drops_the_buffered_body(twin: Any, how: str) -> None:
    # A stream whose caller stopped reading: its body buffered past HIGH_WATER (reading paused), then the
    # exchange ended unfinished.  The bytes go with the close, not with the Connection object, which a cycle
    # (its error's traceback) may keep alive until a full collection: the soak's kept memory (bench/README.md).
    body = b"b" * (2 * HIGH_WATER)
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (4 * HIGH_WATER)
    async with serving(raw_handler(head + body, then_close=False)) as server, upstream_client() as client:
        response = await client.request(origin_of(server), "GET", "/", [])
        conns = list(OPENED)  # (not a scan of gc.get_objects(): seconds on the heap of a whole suite run)
        assert len(conns) == 1 and isinstance(conns[0], twin.Connection)
        await async_wait_until(reading_stopped(), "the body arriving (reading paused) before the consumer reads it")
        response.abort() if how == "abort" else response.release()
        assert conns[0].closed
        assert conns[0].take_buffered() == b""
