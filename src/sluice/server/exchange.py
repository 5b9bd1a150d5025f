"""The small request/response interface the gateway is written against.

The gateway handles one ``Exchange`` per request and never sees the server's
own protocol; ``rsgi.py`` (Granian's native interface, the fast one) and
``asgi.py`` (any ASGI server) adapt to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from ..errors import InvalidRequest, PayloadTooLarge

__all__ = ["DISCARD_TIMEOUT_S", "ClientGone", "Exchange", "Headers", "check_declared_length"]

DISCARD_TIMEOUT_S = 2.0  # the most a refused body is read for, to be dropped

Headers = list[tuple[str, str]]


class ClientGone(Exception):
    """The caller disconnected; nothing more can be sent to it."""


class Exchange(Protocol):
    """One request and its response.  An adapter that keeps its header map in a ``_headers`` slot keeps there,
    once set, a mapping whose ``get(name)`` answers ``header(name)``: the access log reads it directly."""

    method: str
    path: str
    started: bool  # a response (or a stream) has begun
    status: int  # its status, once started (0 before)

    @property
    def query(self) -> str:
        """The query string, without the "?"."""

    @property
    def client(self) -> str:
        """The peer address, "ip:port"."""

    def header(self, name: str) -> str | None:
        """The value of a request header (its first line, if it came more than once); ``name`` in lower case."""

    def header_all(self, name: str) -> list[str]:
        """Every value of a request header, one per line it came on, in order; ``name`` in lower case.

        For headers whose lines add up (X-Forwarded-For: a proxy may append a line of its own
        rather than extend the one it received), where the first line alone would be the caller's.
        """

    async def read_body(self, limit: int) -> bytes:
        """The whole body; PayloadTooLarge as soon as it is known to exceed ``limit``."""

    def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The body piece by piece as it arrives (for relaying uploads without buffering them)."""

    async def discard_body(self, limit: int) -> None:
        """Reads and drops what is left of the body, up to ``limit`` bytes.

        Before refusing a body: a connection closed on unread bytes is reset, and the reset can
        destroy the refusal before the client reads it (nginx's lingering close, in short).
        """

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """Sends a complete response."""

    async def start_stream(self, status: int, headers: Headers) -> None:
        """Starts a streamed response; ``write`` sends its pieces, ``end_stream`` ends it."""

    async def write(self, chunk: bytes) -> None:
        """Sends a piece of a streamed response, waiting while the client is slow (ClientGone if it left)."""

    async def end_stream(self) -> None: ...

    def on_disconnect(self, callback: Callable[[], object]) -> Callable[[], object]:
        """Calls ``callback`` if the client disconnects; returns a function that cancels the watch."""


def check_declared_length(value: str, limit: int) -> None:
    """Rejects a Content-Length over ``limit`` before a byte of the body is read."""
    if not value.isdigit():
        raise InvalidRequest("Invalid Content-Length header.", code="invalid_content_length")
    if int(value) > limit:
        raise PayloadTooLarge.over(limit)
