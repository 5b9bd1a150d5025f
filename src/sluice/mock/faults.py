"""Faults the mock upstream injects: error answers in each format's shape, and broken answers.

An error answer (``--error-rate``, ``mock-status-<code>``, ``mock-429-<s>``) is a well-formed
error in the format's own shape; ``retry_headers`` gives the Retry-After it carries.

A broken answer is the answer the mock would have given, damaged on its way out by a
``FaultyExchange`` wrapped around the request's Exchange, so the format handlers need not
know about faults (and the fast path pays nothing when there are none). The kinds:

    hang-after-headers  a 200 head (a streamed body, even for a JSON answer), then nothing until the
                        client disconnects, or HANG_LIMIT_S
    trickle             the answer one byte at a time, ``trickle_ms`` between bytes (a JSON answer
                        keeps its content-length)
    invalid-json        200 and the answer's headers, but the JSON broken: a JSON body, or the first
                        event of a stream
    close-mid-stream    the connection closed in the middle of the answer: a stream halfway through
                        its third event (CUT_AT), a JSON answer after half its body; each under a
                        content-length that promises more (a stream: PROMISED bytes), so the client
                        sees a truncated body, not a well-ended chunked one
    error-200           200 with the format's error object as the body; a stream: its error event
                        (OpenAI ``data: {"error": ...}``, Anthropic ``event: error``, Gemini an error
                        chunk) and nothing else
    reset               the connection closed without any answer

Only successful answers are broken: a request the mock refuses gets its error as usual.

How the connection is broken: Granian ends a chunked stream cleanly even when the handler raises
(so ``mock-cut-stream``'s raise truncates the events, not the HTTP body), and no RSGI call drops
a connection. But a body that ends short of its content-length makes Granian close the
connection, after flushing what was written: close-mid-stream uses that. reset, which must send
nothing at all, shuts the socket itself down (``reset_connection``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Literal, get_args

import orjson

from . import anthropic, gemini
from . import openai as wire

if TYPE_CHECKING:
    from ..context import Exchange, Headers

__all__ = [
    "CUT_AT",
    "DEFAULT_RETRY_AFTER_S",
    "FAULTS",
    "HANG_LIMIT_S",
    "PROMISED",
    "Fault",
    "FaultStop",
    "FaultyExchange",
    "error_body",
    "error_event",
    "reset_connection",
    "retry_headers",
]

Fault = Literal["hang-after-headers", "trickle", "invalid-json", "close-mid-stream", "error-200", "reset"]
FAULTS: tuple[str, ...] = get_args(Fault)
HANG_LIMIT_S = 300.0  # a hang ends by itself after this, so a forgotten client cannot pin the mock forever
CUT_AT = 2  # close-mid-stream: the event cut in half (the first two arrive whole)
PROMISED = 1 << 20  # close-mid-stream: the content-length a stream claims, more than any mock stream
DEFAULT_RETRY_AFTER_S = 1.0  # what a 429 carries when no --retry-after is set
_BROKEN = b"<mock: invalid JSON>"
_MESSAGE = "The mock upstream failed on purpose (error-200)."


class FaultStop(Exception):
    """The fault has ended the answer: the handler stops, and nothing more is sent."""


# -- error answers ----------------------------------------------------------------------------------

def error_body(dialect: str, status: int, message: str) -> bytes:
    """The error object of ``dialect`` (openai, anthropic, gemini, azure)."""
    if dialect == "anthropic":
        return anthropic.error_body(status, message)
    if dialect == "gemini":
        return gemini.error_body(status, message)
    if dialect == "azure":
        return orjson.dumps({"error": {"code": str(status), "message": message}})
    return wire.error_body(message, "server_error")


def error_event(dialect: str, status: int, message: str, *, sse: bool) -> bytes:
    """The error a stream of ``dialect`` carries in place of its events."""
    if dialect == "anthropic":
        return anthropic.error_event(status, message)
    if dialect == "gemini":
        return gemini.error_event(status, message, sse=sse)
    if dialect == "azure":
        return b"data: " + error_body(dialect, status, message) + b"\n\n"
    return wire.error_event(message)


def retry_headers(seconds: float) -> Headers:
    """Retry-After in whole seconds (as HTTP has it), and OpenAI's retry-after-ms for the exact delay."""
    return [("retry-after", str(math.ceil(seconds))), ("retry-after-ms", str(round(seconds * 1000)))]


# -- broken answers ---------------------------------------------------------------------------------

def _break_json(data: bytes) -> bytes:
    """``data`` cut at two thirds, with a marker: no JSON parser takes it; an SSE event keeps its end."""
    content = data.rstrip(b"\r\n")
    return content[: len(content) * 2 // 3] + _BROKEN + data[len(content):]


def _is_sse(headers: Headers) -> bool:
    return any(name == "content-type" and value.startswith("text/event-stream") for name, value in headers)


def _open_fds() -> list[int]:
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return [int(name) for name in os.listdir(folder) if name.isdigit()]
    return []


def reset_connection(client: str) -> bool:
    """Closes the connection from ``client`` ("ip:port") under the server's feet; False if it was not found.

    Neither RSGI nor the Exchange can drop a connection without an answer (an exception becomes a
    500), so this finds the connected socket among the process's descriptors by its peer address,
    and shuts it down with a zero linger: the client sees the connection end (or reset) with no
    answer, and Granian's own close then sends a RST.
    """
    host, _, port = client.rpartition(":")
    if not port.isdigit():
        return False
    target = (host.strip("[]"), int(port))
    for fd in _open_fds():
        try:
            copy = os.dup(fd)
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=copy)  # the family comes from the descriptor
        except OSError:
            os.close(copy)
            continue
        with sock:
            try:
                peer = sock.getpeername()
            except OSError:
                continue
            if isinstance(peer, tuple) and (peer[0].removeprefix("::ffff:"), peer[1]) == target:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
                return True
    return False


class FaultyExchange:
    """An Exchange whose successful answer ``fault`` breaks; the rest goes to the Exchange it wraps."""

    def __init__(self, inner: Exchange, fault: str, dialect: str, *, trickle_ms: float, error_status: int) -> None:
        self._inner = inner
        self.fault = fault
        self._dialect = dialect
        self._trickle_s = trickle_ms / 1000
        self._error_status = error_status
        self._events = 0  # stream events written so far
        self._bytes = 0  # bytes trickled so far
        self._passing = False  # an error answer's stream: not broken
        self.method = inner.method
        self.path = inner.path

    # -- delegated --------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._inner.started

    @started.setter
    def started(self, value: bool) -> None:
        self._inner.started = value

    @property
    def status(self) -> int:
        return self._inner.status

    @status.setter
    def status(self, value: int) -> None:
        self._inner.status = value

    @property
    def query(self) -> str:
        return self._inner.query

    @property
    def client(self) -> str:
        return self._inner.client

    def header(self, name: str) -> str | None:
        return self._inner.header(name)

    def header_all(self, name: str) -> list[str]:
        return self._inner.header_all(name)

    async def read_body(self, limit: int) -> bytes:
        return await self._inner.read_body(limit)

    def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        return self._inner.body_chunks(limit)

    async def discard_body(self, limit: int) -> None:
        await self._inner.discard_body(limit)

    def on_disconnect(self, callback: Callable[[], object]) -> Callable[[], object]:
        return self._inner.on_disconnect(callback)

    # -- the answer, broken -----------------------------------------------------------------------

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        fault = self.fault
        if status >= 300:
            await self._inner.respond(status, headers, body)
        elif fault == "invalid-json":
            await self._inner.respond(status, headers, _break_json(body))
        elif fault == "error-200":
            message = error_body(self._dialect, self._error_status, _MESSAGE)
            await self._inner.respond(200, headers, message)
        elif fault in ("trickle", "close-mid-stream"):
            await self._inner.start_stream(status, [*headers, ("content-length", str(len(body)))])
            if fault == "trickle":
                await self._trickle(body)
            else:  # the content-length is not met: Granian closes the connection after these bytes
                await self._inner.write(body[: len(body) // 2])
            await self._inner.end_stream()
        else:
            await self._head_then_stop(status, headers)

    async def start_stream(self, status: int, headers: Headers) -> None:
        fault = self.fault
        if status >= 300:
            self._passing = True
            await self._inner.start_stream(status, headers)
        elif fault == "error-200":
            await self._inner.start_stream(200, headers)
            message = error_event(self._dialect, self._error_status, _MESSAGE, sse=_is_sse(headers))
            await self._inner.write(message)
            await self._inner.end_stream()
            raise FaultStop
        elif fault in ("hang-after-headers", "reset"):
            await self._head_then_stop(status, headers)
        elif fault == "close-mid-stream":
            await self._inner.start_stream(status, [*headers, ("content-length", str(PROMISED))])
        else:
            await self._inner.start_stream(status, headers)

    async def write(self, chunk: bytes) -> None:
        position = self._events
        self._events += 1
        fault = self.fault
        if self._passing:
            await self._inner.write(chunk)
        elif fault == "trickle":
            await self._trickle(chunk)
        elif fault == "invalid-json":
            await self._inner.write(_break_json(chunk) if position == 0 else chunk)
        elif fault == "close-mid-stream" and position == CUT_AT:
            await self._inner.write(chunk[: len(chunk) // 2])
            raise FaultStop  # the body ends short of its content-length: Granian closes the connection
        else:
            await self._inner.write(chunk)

    async def end_stream(self) -> None:
        if self.fault == "close-mid-stream" and not self._passing:
            raise FaultStop  # a stream shorter than the cut: it ends short of its content-length all the same
        await self._inner.end_stream()

    async def _head_then_stop(self, status: int, headers: Headers) -> None:
        """hang-after-headers: the head, then the wait; reset: no answer at all."""
        if self.fault == "reset":
            if not reset_connection(self._inner.client):
                # No socket to shut (not found): the nearest thing, a head and then the close.
                await self._inner.start_stream(status, [*headers, ("content-length", "1")])
            raise FaultStop
        await self._inner.start_stream(status, headers)
        await _wait_for_disconnect(self._inner)
        raise FaultStop

    async def _trickle(self, data: bytes) -> None:
        for byte in range(len(data)):
            if self._bytes and self._trickle_s:
                await asyncio.sleep(self._trickle_s)
            self._bytes += 1
            await self._inner.write(data[byte:byte + 1])


async def _wait_for_disconnect(ex: Exchange) -> None:
    """Until the client disconnects, or HANG_LIMIT_S."""
    gone = asyncio.Event()
    cancel = ex.on_disconnect(gone.set)
    try:
        async with asyncio.timeout(HANG_LIMIT_S):
            await gone.wait()
    except TimeoutError:
        pass
    finally:
        cancel()
