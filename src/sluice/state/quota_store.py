"""Where quota usage is kept across restarts: a SQLite file (one host) or Redis (many hosts).

Both backends keep one number per (quota, subject, period id): the units used
in that calendar period.  ``load`` reads them (0 when absent); ``add`` adds a
delta to each (negative gives back) and answers the totals after adding, which
is how a gateway learns what the other workers and instances used.  Every entry
carries the epoch second at which its period ends: a counter is forgotten a day
after that (SQLite deletes it, Redis expires it), never while it still counts.

**SQLite** (``SqliteQuotaStore``): one connection, opened and used by one
worker thread only, in WAL mode with a busy timeout so that several processes
(Granian workers) share the file.  ``add`` is one ``BEGIN IMMEDIATE``
transaction of upserts: all its deltas land or none.  The schema is versioned
with ``PRAGMA user_version`` (1: the ``quota_usage`` table below).  A failure
closes the connection; the next call opens it again, so a file that was
unwritable for a while is used again once it can be.

**Redis** (``RedisQuotaStore``): keys ``<prefix>:{<quota>:<subject>}:<period>``
(the hash tag keeps one subject's periods in one cluster slot; ``%``, ``:``,
``{`` and ``}`` in the quota name and ``%``, ``{`` and ``}`` in the subject are
percent-escaped, as in ``redis_limits.key_name``).  ``add`` is one pipeline of
INCRBYFLOAT and EXPIREAT per entry, ``load`` one pipeline of GETs: one round
trip each (one per node on a cluster).  Each call is bounded by
``asyncio.timeout(timeout_s)``.  A call that timed out after Redis applied it
is not undone: the units count twice once the caller sends them again, an
overcount, never a loss.

Any failure raises ``QuotaStoreUnavailable`` with the original as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import DependencyUnavailable
from ..store.sqlite import connect_shared

if TYPE_CHECKING:
    import redis.asyncio

    from ..config import RateLimitConfig

__all__ = ["QuotaStore", "QuotaStoreUnavailable", "RedisQuotaStore", "SqliteQuotaStore", "open_quota_store",
           "quota_key"]

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_usage (
    quota TEXT NOT NULL,
    subject TEXT NOT NULL,
    period TEXT NOT NULL,
    used REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (quota, subject, period)
) WITHOUT ROWID
"""
_UPSERT = """
INSERT INTO quota_usage (quota, subject, period, used, expires_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (quota, subject, period) DO UPDATE
SET used = used + excluded.used, expires_at = max(expires_at, excluded.expires_at)
RETURNING used
"""
_SELECT = "SELECT used FROM quota_usage WHERE quota = ? AND subject = ? AND period = ?"
KEEP_AFTER_END_S = 86400.0  # a counter is kept this long after its period ends
_CLEANUP_EVERY_S = 3600.0

_QUOTA_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_SUBJECT_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})

Load = Sequence[tuple[str, str, str]]  # (quota, subject, period id)
Add = Sequence[tuple[str, str, str, float, float]]  # (quota, subject, period id, delta, period end epoch)


class QuotaStoreUnavailable(DependencyUnavailable):
    """The quota store failed or did not answer in time; ``__cause__`` holds why."""

    dependency = "the quota store"


class QuotaStore(Protocol):
    async def load(self, entries: Load) -> list[float]:
        """The units used so far by each (quota, subject, period id), 0 when none."""
        ...

    async def add(self, entries: Add) -> list[float]:
        """Adds each delta (it may be negative or 0) and answers each total after adding."""
        ...

    async def aclose(self) -> None: ...


def open_quota_store(config: RateLimitConfig) -> QuotaStore:
    """The store the config names: Redis when ``ratelimit.redis`` is set, else the SQLite file ``quota_store``."""
    if config.redis is None:
        return SqliteQuotaStore(config.quota_store)
    from .redis import connect

    client = connect(config.redis, timeout_s=config.redis_timeout_s, name="quotas")
    return RedisQuotaStore(client, timeout_s=config.redis_timeout_s)


class SqliteQuotaStore:
    """Quota usage in a SQLite file that several processes may share (WAL, busy timeout)."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._clock = clock  # only for deleting old rows
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-quotas")
        self._db: sqlite3.Connection | None = None  # touched by the executor's thread only
        self._cleaned_at = -_CLEANUP_EVERY_S
        self._closed = False

    async def load(self, entries: Load) -> list[float]:
        return await self._run(self._load, entries)

    async def add(self, entries: Add) -> list[float]:
        return await self._run(self._add, entries)

    async def aclose(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(QuotaStoreUnavailable):
            await self._run(self._close)
        self._closed = True
        self._executor.shutdown(wait=False)  # its one thread is idle: it ends by itself

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise QuotaStoreUnavailable(f"quota store {self.path!r}: closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._guarded, work, *args)
        except (sqlite3.Error, OSError) as exc:
            raise QuotaStoreUnavailable(f"quota store {self.path!r}: {type(exc).__name__}: {exc}") from exc

    def _guarded(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return work(*args)
        except BaseException:
            self._close()  # opened again by the next call
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        db = connect_shared(self.path, self.busy_timeout_s)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this sluice ({SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                db.execute(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _load(self, entries: Load) -> list[float]:
        db = self._connection()
        found = []
        for entry in entries:
            row = db.execute(_SELECT, entry).fetchone()
            found.append(float(row[0]) if row is not None else 0.0)
        return found

    def _add(self, entries: Add) -> list[float]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            totals = [float(db.execute(_UPSERT, entry).fetchone()[0]) for entry in entries]
            now = self._clock()
            clean = now - self._cleaned_at >= _CLEANUP_EVERY_S  # old rows go at most once an hour
            if clean:
                db.execute("DELETE FROM quota_usage WHERE expires_at < ?", (now - KEEP_AFTER_END_S,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        if clean:
            self._cleaned_at = now
        return totals

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def quota_key(prefix: str, quota: str, subject: str, period: str) -> str:
    """The Redis key of one quota, subject and period (hash-tagged by quota and subject)."""
    return f"{prefix}:{{{quota.translate(_QUOTA_ESCAPES)}:{subject.translate(_SUBJECT_ESCAPES)}}}:{period}"


class RedisQuotaStore:
    """Quota usage on Redis (or Redis Cluster): one pipelined round trip per call."""

    def __init__(self, client: redis.asyncio.Redis | redis.asyncio.RedisCluster, *, prefix: str = "sluice:q",
                 timeout_s: float = 0.05) -> None:
        from .redis_limits import _FAILURES

        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._failures = _FAILURES

    async def load(self, entries: Load) -> list[float]:
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for quota, subject, period in entries:
            pipe.get(quota_key(self.prefix, quota, subject, period))
        replies = await self._execute(pipe)
        return [float(r) if r is not None else 0.0 for r in replies]

    async def add(self, entries: Add) -> list[float]:
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for quota, subject, period, delta, ends in entries:
            key = quota_key(self.prefix, quota, subject, period)
            pipe.incrbyfloat(key, delta)
            pipe.expireat(key, int(ends + KEEP_AFTER_END_S))
        replies = await self._execute(pipe)
        return [float(r) for r in replies[::2]]

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _execute(self, pipe: Any) -> list[Any]:
        from .redis_limits import _describe

        try:
            async with asyncio.timeout(self.timeout_s):
                return list(await pipe.execute())
        except self._failures as exc:
            raise QuotaStoreUnavailable(f"quota Redis: {_describe(exc)}") from exc
