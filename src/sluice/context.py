"""The bottom floor every layer may import: the request context, the Exchange protocol, the handler type.

``RequestContext`` is declared once, in ext/_context.pxd (compiled) and its pure twin
sluice/_native/_pure_context.py; ``sluice._native`` picks one.  An ``Exchange`` is one request
and its response as the server faces (server/rsgi.py, server/asgi.py) present it: the stages
are written against it and never see the server's own protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from ._native import SECURITY_HEADERS, RequestContext

__all__ = ["ADMIN_SECURITY_HEADERS", "SECURITY_HEADERS", "ClientGone", "Exchange", "Handler", "Headers",
           "RequestContext"]

Headers = list[tuple[str, str]]
ADMIN_SECURITY_HEADERS = (*SECURITY_HEADERS, ("cache-control", "no-store"))  # admin answers are never cached


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


Handler = Callable[[Exchange, RequestContext], Awaitable[None]]
