"""The store on PostgreSQL (asyncpg): what many instances share.

One asyncpg pool per process (``pool_size`` connections at most, opened on
demand, closed after a minute idle), created at the first call.  Every call
(acquiring a connection, waiting for a lock, the queries) is bounded by
``timeout_s`` (``migrate`` and ``verify_audit`` by ``LONG_TIMEOUT_S``); a
connection whose call failed or timed out is terminated, not reused.  Writes
are READ COMMITTED transactions that lock the rows they change
(``SELECT … FOR UPDATE``); consistent reads (the change feed, verifying the
audit chain) are read-only REPEATABLE READ.  See ``_common`` for how the change
feed and the audit chain stay ordered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..config.extras import missing_extra

try:
    import asyncpg
except ImportError as exc:  # the postgres extra is not installed: say which, not a traceback
    raise missing_extra("postgres", "store.postgres_url") from exc

from . import migrations
from ._common import LONG_TIMEOUT_S, Dialect, Op, Query, SqlStore, Tx, Want, advisory_key, drive_async
from .base import RecordConflict, StoreError, StoreUnavailable
from .dead_letters import DeadLetterOps

__all__ = ["PostgresStore", "redact_url"]

T = TypeVar("T")

DIALECT = Dialect(
    name="postgres",
    for_update=" FOR UPDATE",
    lock_changes=f"SELECT pg_advisory_xact_lock({advisory_key('sluice.store.changes')})",
    has_team="teams @> jsonb_build_array(?::text)",
)
_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
# After these the transaction was rolled back cleanly and the connection can serve again.
_CLEAN = (StoreError, ValueError, asyncpg.IntegrityConstraintViolationError)


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``, … (the store's SQL has no other ``?``)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))


def redact_url(url: str) -> str:
    """The URL without its password or query (which may hold one)."""
    parts = urlsplit(url)
    if parts.password is None and not parts.query:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.password is not None else (f"{parts.username}@" if parts.username else "")
    return urlunsplit((parts.scheme, user + host, parts.path, "", ""))


class PostgresStore(DeadLetterOps, SqlStore):  # DeadLetterOps: the dead_letters table
    def __init__(self, url: str, *, pool_size: int = 10, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self._clock = clock
        self._dialect = DIALECT
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    @property
    def dialect(self) -> str:
        return "postgres"

    @property
    def location(self) -> str:
        return redact_url(self.url)

    async def migrate(self) -> list[tuple[int, str]]:
        now = self._clock()
        applied = await self._with_connection(lambda conn: migrations.migrate_postgres(conn, now),
                                              max(self.timeout_s, LONG_TIMEOUT_S))
        return [(m.version, m.name) for m in applied]

    async def current_version(self) -> int:
        return await self._with_connection(migrations.current_version_postgres, self.timeout_s)

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await pool.close()
        except (TimeoutError, *_FAILURES):
            pool.terminate()

    async def _run(self, op: Op[T], tx: Tx, timeout_s: float | None = None) -> T:
        bound = self.timeout_s if timeout_s is None else max(self.timeout_s, timeout_s)
        self.calls += 1
        return await self._with_connection(lambda conn: self._transact(conn, op, tx), bound)

    async def _transact(self, conn: asyncpg.Connection, op: Op[T], tx: Tx) -> T:
        execute = functools.partial(self._execute, conn)
        if tx is Tx.READ:
            return await drive_async(op, execute)
        snapshot = tx is Tx.SNAPSHOT
        async with conn.transaction(isolation="repeatable_read" if snapshot else "read_committed", readonly=snapshot):
            return await drive_async(op, execute)

    @staticmethod
    async def _execute(conn: asyncpg.Connection, query: Query) -> Any:
        sql = numbered(query.sql)
        if query.want is Want.ROWS:
            return await conn.fetch(sql, *query.args)
        if query.want is Want.ROW:
            return await conn.fetchrow(sql, *query.args)
        if query.want is Want.VALUE:
            return await conn.fetchval(sql, *query.args)
        await conn.execute(sql, *query.args)
        return None

    async def _with_connection(self, work: Callable[[Any], Awaitable[T]], bound: float) -> T:
        if self._closed:
            raise StoreUnavailable(f"store {self.location}: closed")
        try:
            async with asyncio.timeout(bound):
                pool = await self._get_pool()
                conn = await pool.acquire()
                try:
                    result = await work(conn)
                except BaseException as exc:
                    if not isinstance(exc, _CLEAN):
                        conn.terminate()  # in an unknown state (a timeout cancelled it mid-query, say)
                    with contextlib.suppress(*_FAILURES):
                        await pool.release(conn)
                    raise
                with contextlib.suppress(*_FAILURES):  # the work is done: a failed reset only loses the connection
                    await pool.release(conn)
                return result
        except asyncpg.UniqueViolationError as exc:
            raise RecordConflict(f"store {self.location}: {exc}") from exc
        except TimeoutError as exc:
            raise StoreUnavailable(f"store {self.location}: no answer within {bound:g}s") from exc
        except _FAILURES as exc:
            raise StoreUnavailable(f"store {self.location}: {type(exc).__name__}: {exc}") from exc

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                # min_size=0: nothing connects until a call needs it, so opening never fails.
                self._pool = await asyncpg.create_pool(self.url, min_size=0, max_size=self.pool_size,
                                                       timeout=self.timeout_s, max_inactive_connection_lifetime=60.0)
            return self._pool
