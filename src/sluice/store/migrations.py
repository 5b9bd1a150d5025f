"""Versioned schema migrations: ``sql/<dialect>/NNNN_name.sql``, applied in order.

``schema_migrations(version, name, applied_at)`` records what was applied.
Each migration runs in its own transaction together with its row in that table,
so a migration is applied completely or not at all, and running ``migrate``
again applies nothing.  Two processes migrating at once are safe: on SQLite each
migration's transaction begins with ``BEGIN IMMEDIATE`` (one writer at a time;
the second waits, then sees the version applied); on PostgreSQL it first takes a
transaction-level advisory lock, then checks.

A database migrated by a newer sluice (versions this one does not know) is left
alone: migrations only add, so an older instance keeps working during a rolling
upgrade.  The files ship as package data (pyproject.toml).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from importlib import resources
from typing import TYPE_CHECKING, NamedTuple

from ._common import advisory_key

if TYPE_CHECKING:
    import asyncpg

__all__ = ["Migration", "available", "current_version_postgres", "current_version_sqlite", "latest_version",
           "migrate_postgres", "migrate_sqlite", "split_statements"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_CREATE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)"""
MIGRATE_LOCK = advisory_key("sluice.store.migrate")


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


@functools.cache
def available(dialect: str) -> tuple[Migration, ...]:
    """The migrations shipped for ``"sqlite"`` or ``"postgres"``, in version order."""
    folder = resources.files(__package__ or "sluice.store").joinpath("sql", dialect)
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [m.version for m in found]
    if not found or versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"sluice.store: the {dialect} migrations are not numbered 1..n: {versions}")
    return tuple(found)


def latest_version(dialect: str) -> int:
    return available(dialect)[-1].version


def split_statements(sql: str) -> list[str]:
    """SQLite text cut into whole statements (``sqlite3.complete_statement``: trigger bodies stay whole)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(part.strip().startswith("--") or not part.strip() for part in buffer.splitlines()):
        raise ValueError(f"an incomplete statement at the end of a migration: {buffer.strip()[:80]!r}")
    return statements


def migrate_sqlite(db: sqlite3.Connection, now: float) -> list[Migration]:
    """Applies the missing migrations on an autocommit (``isolation_level=None``) connection."""
    applied = []
    for migration in available("sqlite"):
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(_CREATE)
            if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone() is None:
                for statement in split_statements(migration.sql):
                    db.execute(statement)
                db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                           (migration.version, migration.name, now))
                applied.append(migration)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return applied


def current_version_sqlite(db: sqlite3.Connection) -> int:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if exists is None:
        return 0
    return int(db.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])


async def migrate_postgres(conn: asyncpg.Connection, now: float) -> list[Migration]:
    applied = []
    for migration in available("postgres"):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute(_CREATE)
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version) is None:
                await conn.execute(migration.sql)  # no arguments: the simple protocol runs every statement
                await conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                                   migration.version, migration.name, now)
                applied.append(migration)
    return applied


async def current_version_postgres(conn: asyncpg.Connection) -> int:
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
