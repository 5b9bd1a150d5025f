"""The store in a SQLite file: the embedded default, shared by the worker processes of one host.

One connection, opened and used by one worker thread only (as
``sluice.state.quota_store.SqliteQuotaStore``), in WAL mode with a busy timeout
so several processes share the file.  Writes are ``BEGIN IMMEDIATE``
transactions (one writer at a time across processes), consistent reads a
deferred ``BEGIN``.  Each call is bounded by ``timeout_s``, the busy timeout
too (``migrate`` and ``verify_audit`` by ``LONG_TIMEOUT_S``).  A failure closes
the connection and the next call opens it again.  A call that timed out keeps
running in the thread and may still commit; calls queue behind it meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import migrations
from ._common import LONG_TIMEOUT_S, Dialect, Op, Query, SqlStore, Tx, Want, drive
from .base import RecordConflict, StoreUnavailable
from .dead_letters import DeadLetterOps

__all__ = ["SqliteStore"]

T = TypeVar("T")

DIALECT = Dialect(
    name="sqlite",
    for_update="",  # BEGIN IMMEDIATE already holds the write lock
    lock_changes=None,
    has_team="EXISTS (SELECT 1 FROM json_each(users.teams) WHERE json_each.value = ?)",
)
_BEGIN = {Tx.READ: None, Tx.SNAPSHOT: "BEGIN", Tx.WRITE: "BEGIN IMMEDIATE"}
_UNIQUE = ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY")


class SqliteStore(DeadLetterOps, SqlStore):  # DeadLetterOps: the dead_letters table
    def __init__(self, path: str, *, timeout_s: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._clock = clock
        self._dialect = DIALECT
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-store")
        self._db: sqlite3.Connection | None = None  # touched by the executor's thread only
        self._closed = False

    @property
    def dialect(self) -> str:
        return "sqlite"

    @property
    def location(self) -> str:
        return self.path

    async def migrate(self) -> list[tuple[int, str]]:
        applied = await self._call(self._migrate, timeout_s=max(self.timeout_s, LONG_TIMEOUT_S))
        return [(m.version, m.name) for m in applied]

    async def current_version(self) -> int:
        return await self._call(lambda: migrations.current_version_sqlite(self._connection()))

    async def aclose(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(StoreUnavailable):
            await self._call(self._close)
        self._closed = True
        self._executor.shutdown(wait=False)  # its one thread is idle: it ends by itself

    async def _run(self, op: Op[T], tx: Tx, timeout_s: float | None = None) -> T:
        self.calls += 1
        return await self._call(self._transact, op, tx,
                                timeout_s=None if timeout_s is None else max(self.timeout_s, timeout_s))

    async def _call(self, work: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        if self._closed:
            raise StoreUnavailable(f"store {self.path!r}: closed")
        bound = self.timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(bound):
                return await loop.run_in_executor(self._executor, self._guarded, work, *args)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorname", "") in _UNIQUE:
                raise RecordConflict(f"store {self.path!r}: {exc}") from exc
            raise StoreUnavailable(f"store {self.path!r}: IntegrityError: {exc}") from exc
        except TimeoutError as exc:
            raise StoreUnavailable(f"store {self.path!r}: no answer within {bound:g}s") from exc
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"store {self.path!r}: {type(exc).__name__}: {exc}") from exc

    def _guarded(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return work(*args)
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.Error, OSError):
            self._close()  # opened again by the next call
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        db = connect_shared(self.path, self.timeout_s)
        try:
            db.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _transact(self, op: Op[T], tx: Tx) -> T:
        db = self._connection()
        begin = _BEGIN[tx]
        if begin is None:
            return drive(op, self._execute)
        db.execute(begin)
        try:
            result = drive(op, self._execute)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    def _execute(self, query: Query) -> Any:
        assert self._db is not None
        cursor = self._db.execute(query.sql, query.args)
        if query.want is Want.ROWS:
            return cursor.fetchall()
        if query.want is Want.ROW:
            return cursor.fetchone()
        if query.want is Want.VALUE:
            row = cursor.fetchone()
            return None if row is None else row[0]
        return None

    def _migrate(self) -> list[migrations.Migration]:
        db = self._connection()
        db.execute(f"PRAGMA busy_timeout = {int(LONG_TIMEOUT_S * 1000)}")  # wait out another migrator
        try:
            return migrations.migrate_sqlite(db, self._clock())
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def connect_shared(path: str, timeout_s: float) -> sqlite3.Connection:
    """A connection to a SQLite file that several processes share: autocommit (explicit BEGINs), WAL,
    waiting up to ``timeout_s`` for another writer."""
    db = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        deadline = time.monotonic() + timeout_s
        while True:
            # While another connection switches the file to WAL, SQLite answers "locked" at once,
            # without its busy handler: wait (bounded) as the busy timeout would.
            try:
                db.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit survives a crash of the process
    except BaseException:
        db.close()
        raise
    return db
