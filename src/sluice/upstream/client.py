"""sluice's HTTP/1.1 client for upstream providers, on asyncio protocols + httptools.

Why not a library: in the same Granian forwarding proxy on one core, aiohttp's
client did 10.6 K requests/s and this one 25.7 K, 2.4x (bench/client_compare.py,
figures in bench/README.md).  The difference is that this client does almost
nothing per request: one write of a prebuilt head, one parser feed, no tasks, one
await (the head) when a warm connection is idle and the answer arrives whole,
timeouts as one lazily re-armed timer per connection instead of wrappers.

The per-request part, one connection (the protocol, the parser callbacks, the
response, the request head), is compiled: ext/_upstream.pyx, with its pure-Python
twin sluice/_native/_pure_upstream.py, picked by sluice._native.  This module
keeps the pools, their limits and waiters, connecting, and the client.

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

from .._native import UpstreamConnection as Connection
from .._native import UpstreamResponse as Response
from .._native import closed_while_idle, upstream_head
from .._native._pure_upstream import HIGH_WATER, LOW_WATER, MAX_HEAD_BYTES
from .errors import ConnectError, ConnectTimeout, PoolTimeout, ReadTimeout
from .origin import Origin

__all__ = ["HIGH_WATER", "LOW_WATER", "MAX_HEAD_BYTES", "Body", "Response", "UpstreamClient"]

Body = bytes | AsyncIterable[bytes] | None


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
        self.idle: list[Connection] = []  # a stack: the warmest connection is reused first
        self.in_use = 0  # connections lent out or being opened
        self._sweep: asyncio.TimerHandle | None = None

    def live_idle(self) -> int:
        return sum(1 for conn in self.idle if not conn.closed)

    def has_room(self) -> bool:
        client = self.client
        return self.in_use < client.max_per_origin and client.in_use < client.max_connections

    def take_idle(self) -> Connection | None:
        """A live idle connection, lent out at once (the hot path: no await)."""
        conn = self._pop_idle()
        if conn is not None:
            self.in_use += 1
            self.client.in_use += 1
        return conn

    async def acquire(self, deadline: float, fresh: bool = False) -> tuple[Connection, bool]:
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

    def _pop_idle(self) -> Connection | None:
        expiry = time.monotonic() - self.client.idle_timeout
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > expiry:
                return conn
            conn.close()
        return None

    async def _connect(self, deadline: float) -> Connection:
        origin = self.origin
        client = self.client
        limit = min(self.loop.time() + client.connect_timeout, deadline)
        try:
            async with asyncio.timeout_at(limit):
                # (A protocol by its methods: a compiled class cannot subclass asyncio.Protocol.)
                _, conn = await self.loop.create_connection(  # type: ignore[type-var]
                    lambda: Connection(self), origin.host, origin.port,
                    ssl=origin.ssl, server_hostname=origin.host if origin.ssl else None,
                )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {origin.key} timed out") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"TLS handshake with {origin.key} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {origin.key}: {exc.strerror or exc}") from None
        return conn

    def put_back(self, conn: Connection) -> None:
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
        return self._exchange(pool, upstream_head(method, target, origin.host_header, headers, body), body,
                              deadline)

    async def _exchange(self, pool: _Pool, head: bytes, body: Body, deadline: float,
                        fresh: bool = False) -> Response:
        """One exchange on a connection of ``pool`` (a warm idle one when there is, without an await); again on
        a ``fresh`` one when a reused connection turns out closed by its peer while it sat idle.

        The connection (compiled: ext/_upstream.pyx) does the work in a few calls: ``send`` begins the
        exchange and writes, ``head_waiter`` hands a future to await until the head has come, ``response``
        builds the answer; the await is here, in the caller's one coroutine level."""
        conn = None if fresh else pool.take_idle()
        reused = conn is not None
        if conn is None:
            conn, reused = await pool.acquire(deadline, fresh)
        try:
            if body is None or isinstance(body, bytes):
                conn.send(head, body)
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        await conn.send_stream(head, body)
                except TimeoutError:
                    raise ReadTimeout("sending the request body did not finish in time") from None
            read_timeout = self.read_timeout
            while (waiter := conn.head_waiter(read_timeout, deadline)) is not None:
                await waiter
            return conn.response(read_timeout, deadline)
        except BaseException as exc:
            conn.close()
            conn.pool.put_back(conn)
            if not (reused and closed_while_idle(exc, conn, body)):
                raise
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
