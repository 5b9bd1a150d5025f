"""A bound on what a stream queues for a caller that does not read it (issue 15: slow readers over RSGI).

Granian's RSGI ``send_bytes`` never waits: each chunk goes on an unbounded channel to the connection, so a
caller that stops reading leaves the whole stream in the worker's memory, and the relay never learns it
(1,000 stalled readers of a 4 MB stream took a worker to 2 GB; bench/README.md, "Slow readers").  ASGI's
``send`` waits, but costs ~30 % more instructions a request.  So sluice reads the signal Granian does not
give from the kernel: the caller's connection is a socket of this very process, and its ``TCP_INFO`` says
how many bytes the caller acknowledged (``tcpi_bytes_acked``, Linux >= 4.1).

``Backlog`` follows one stream.  Up to ``QUIET`` bytes written it does nothing (token streams are smaller:
they pay one addition and one comparison a write).  Past it, it finds the caller's socket once (the
process's TCP socket whose peer is the caller's address and port) and, after each
write, compares the bytes written since with the bytes acknowledged since.  More than ``CAP`` written and
not acknowledged: the relay waits (polling, 10 ms doubling to 200 ms) before it reads the upstream again,
so the upstream read pauses as over ASGI.  No acknowledgement at all for ``STALL_S`` while waiting: the
caller is taken as stalled, ``Stalled`` is raised, and the relay ends the stream with the error
``client_stalled`` and shuts the connection down (which frees what Granian still holds for it).

What it bounds: the bytes written and not yet acknowledged by the caller's TCP stack, per stream, at
``QUIET + CAP`` plus one upstream chunk (the unacknowledged bytes include the kernel's send buffer: what
is in the worker's memory is less); so a worker's stream queues are at most that times its stalled
streams, for ``STALL_S`` at most each.  What it does not bound: a caller that acknowledges slowly but
steadily is paced, never cut (its queue stays under the cap); over HTTP/2 the acknowledgements are the
connection's, shared by its streams (a stalled stream next to a read one is not seen); when the socket is
not found (not Linux, a Unix socket) the stream goes unbounded as before.  The cap also bounds a fast
caller's throughput to ``CAP`` per round trip (~2.6 MB/s at 50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

from ..context import ClientGone, Exchange

__all__ = ["CAP", "QUIET", "STALL_S", "Backlog", "Stalled"]

QUIET = 64 * 1024  # written before the caller's socket is looked at
CAP = 128 * 1024  # written and not acknowledged, past which the relay waits
STALL_S = 10.0  # waiting this long with nothing acknowledged: the caller is stalled, the stream is cut
_POLL_S = (0.01, 0.2)  # the first and the longest wait between two looks at the acknowledgements
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_ACKED = struct.Struct("=Q")  # struct tcp_info's tcpi_bytes_acked: a u64 at offset 120 (Linux >= 4.1)
_ACKED_AT = 120
_INFO_LEN = _ACKED_AT + _ACKED.size


class Stalled(Exception):
    """The caller acknowledged nothing for ``STALL_S`` while the stream waited for it."""


def _acked(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_LEN)  # type: ignore[arg-type]
    if len(info) < _INFO_LEN:
        raise OSError("TCP_INFO without tcpi_bytes_acked")
    acked: int = _ACKED.unpack_from(info, _ACKED_AT)[0]
    return acked


def _address(value: str) -> tuple[str, int] | None:
    """("host", port) of Granian's "host:port" (IPv6 hosts in brackets or not)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _find(peer: tuple[str, int]) -> socket.socket | None:
    """A duplicate of this process's TCP socket connected to ``peer`` (None if none is).

    One pass over /proc/self/fd, once per stream that passes QUIET bytes.  The duplicate is the caller's
    to close (it keeps the connection open while it lives).  The peer is the caller's address and
    ephemeral port: the process's other sockets (to upstreams, Redis, PostgreSQL) have their servers'
    ports for peers.
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    for name in names:
        fd = int(name)
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if (sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.getpeername()[:2] == peer):
                return sock
        except OSError:
            pass
        sock.close()
    return None


class Backlog:
    """One stream's bytes written and not acknowledged by its caller; ``check`` after each write past
    ``next_check`` (see the module's docstring)."""

    __slots__ = ("_acked0", "_client", "_sock", "_written0", "next_check")

    def __init__(self, client: str) -> None:
        self._client = client
        self._sock: socket.socket | None = None
        self._written0 = self._acked0 = 0
        # The number of bytes written past which ``check`` is called: QUIET, then every write once the socket
        # is found, never (a huge number) when it cannot be.
        self.next_check = QUIET if _TCP_INFO is not None else 1 << 62

    async def check(self, written: int) -> None:
        """Waits while more than CAP of the ``written`` bytes are unacknowledged; Stalled if nothing is
        acknowledged for STALL_S."""
        sock = self._sock
        if sock is None:
            sock = self._open(written)
            if sock is None:
                return
        try:
            acked = _acked(sock)
            if written - self._written0 - (acked - self._acked0) <= CAP:
                return
            waited, pause, since = 0.0, _POLL_S[0], acked
            while True:
                await asyncio.sleep(pause)
                waited += pause
                pause = min(pause * 2, _POLL_S[1])
                acked = _acked(sock)
                if written - self._written0 - (acked - self._acked0) <= CAP:
                    return
                if acked != since:
                    since, waited = acked, 0.0
                elif waited >= STALL_S:
                    raise Stalled
        except OSError:
            self.next_check = 1 << 62  # the connection is gone (the write will say so) or TCP_INFO failed

    def _open(self, written: int) -> socket.socket | None:
        peer = _address(self._client)
        sock = _find(peer) if peer is not None else None
        if sock is None:
            self.next_check = 1 << 62
            return None
        try:
            # Counting from here: what was written before and is still unacknowledged is counted as
            # acknowledged, QUIET bytes at most (so the bound is QUIET + CAP).
            self._acked0 = _acked(sock)
        except OSError:
            sock.close()
            self.next_check = 1 << 62
            return None
        self._sock = sock
        self._written0 = written
        self.next_check = 0
        return sock

    async def cut(self, ex: Exchange) -> None:
        """Shuts the stalled caller's connection down and ends the stream: Granian then drops what it still
        holds for it (with the stream's transport alive, it would keep the connection and its queue)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(ClientGone, OSError, TimeoutError):
            async with asyncio.timeout(_POLL_S[1]):  # (over ASGI the end waits for a connection that is gone)
                await ex.end_stream()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

