"""The store's operations, written once for both databases.

Each operation is a generator that yields ``Query`` objects and is sent back
their results (sans-IO): it holds the logic (checks, the change feed, the audit
chain) and no I/O.  A backend drives it inside the transaction the operation
asks for (``Tx``): SQLite in its one worker thread with plain ``sqlite3`` calls,
PostgreSQL with ``await`` on an asyncpg connection.  SQL is written with ``?``
placeholders (PostgreSQL's backend numbers them) and the few places where the
dialects differ are the fields of ``Dialect``.

Ordering guarantees, on both databases:

* **Change feed.**  Every mutation of a key, user, team or role appends to
  ``changes`` in its own transaction.  Versions must become visible in order,
  or a poller that saw version 7 could miss a 6 that commits later: SQLite
  writers are serialised by ``BEGIN IMMEDIATE``; on PostgreSQL the change is
  appended last, under a transaction-level advisory lock held until commit.
* **Audit chain.**  An append reads the chain head (``audit_head``, one row)
  locked (``FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), writes
  the record with ``seq = head.seq + 1`` and moves the head in the same
  transaction, so the chain never forks and has no gaps.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, NamedTuple, TypeVar, cast

import msgspec

from .base import MAX_PAGE, RecordConflict, RecordNotFound, StoreError
from .records import GENESIS_HASH, ApiKey, AuditRecord, Change, Role, Team, User, audit_hash, canonical_json

__all__ = ["HASH_PAGE", "LONG_TIMEOUT_S", "Dialect", "Query", "SqlStore", "Tx", "Want", "advisory_key", "drive",
           "drive_async"]

T = TypeVar("T")
R = TypeVar("R", bound=msgspec.Struct)


class Want(enum.Enum):
    """What a query's result is sent back as."""

    NOTHING = 0
    ROWS = 1  # a list of rows (tuples or asyncpg Records: indexable)
    ROW = 2  # the first row or None
    VALUE = 3  # the first column of the first row, or None


class Tx(enum.Enum):
    READ = "read"  # no transaction: each statement on its own
    SNAPSHOT = "snapshot"  # read-only, one consistent view (PostgreSQL REPEATABLE READ)
    WRITE = "write"  # serialised writes (SQLite BEGIN IMMEDIATE, PostgreSQL READ COMMITTED with row locks)


class Query(NamedTuple):
    sql: str
    args: tuple[Any, ...] = ()
    want: Want = Want.NOTHING


Op = Generator[Query, Any, T]


class Dialect(NamedTuple):
    name: str
    for_update: str  # appended to a SELECT whose rows the transaction will change
    lock_changes: str | None  # run before a change is appended (PostgreSQL: an advisory lock)
    has_team: str  # condition with one ? placeholder: the user's teams (a JSON array) hold it


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_*lock, from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def drive(op: Op[T], execute: Callable[[Query], Any]) -> T:
    """Runs an operation with a blocking ``execute``."""
    try:
        query = next(op)
        while True:
            query = op.send(execute(query))
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        op.close()


async def drive_async(op: Op[T], execute: Callable[[Query], Awaitable[Any]]) -> T:
    """Runs an operation with an awaitable ``execute``."""
    try:
        query = next(op)
        while True:
            query = op.send(await execute(query))
    except StopIteration as stop:
        return cast(T, stop.value)
    finally:
        op.close()


# -- tables -----------------------------------------------------------------------------------------------


class _Table(NamedTuple):
    name: str
    record: type[msgspec.Struct]
    kind: str  # in the change feed
    key: str  # primary key column
    json: frozenset[str]  # columns holding JSON text
    bools: frozenset[str]
    mutable: frozenset[str]  # what update_* may change
    columns: tuple[str, ...]
    select: str
    insert: str
    update: str  # every column but the key, then WHERE key = ?


def _table(name: str, record: type[msgspec.Struct], kind: str, key: str, json_columns: set[str],
           bools: set[str], fixed: set[str]) -> _Table:
    columns = tuple(record.__struct_fields__)
    rest = [c for c in columns if c != key]
    return _Table(
        name, record, kind, key, frozenset(json_columns), frozenset(bools),
        frozenset(columns) - fixed - {key, "created_at", "updated_at"}, columns,
        f"SELECT {', '.join(columns)} FROM {name}",
        f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        f"UPDATE {name} SET {', '.join(f'{c} = ?' for c in rest)} WHERE {key} = ?",
    )


KEYS = _table("api_keys", ApiKey, "key", "id",
              {"roles", "models", "policies", "quotas", "ip_allow", "ip_deny", "metadata"},
              {"service_account", "signing"},
              {"key_hash", "prefix", "revoked_at", "rotated_to", "grace_until"})
USERS = _table("users", User, "user", "id", {"teams", "roles", "metadata"}, {"disabled"}, set())
TEAMS = _table("teams", Team, "team", "id", {"roles", "metadata"}, set(), set())
ROLES = _table("roles", Role, "role", "name", {"permissions"}, set(), set())
AUDIT_COLUMNS = tuple(AuditRecord.__struct_fields__)
_SELECT_AUDIT = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log"
_SELECT_CHANGES = "SELECT version, kind, ref, op, at FROM changes"
VERIFY_PAGE = 1000
HASH_PAGE = 10_000  # key hashes per call of key_hashes (two short strings a row)
# Whole-table work (migrate, verify_audit) and the wait for another process's migration get this long,
# not the store's per-call timeout_s.
LONG_TIMEOUT_S = 300.0


def _encode(table: _Table, record: msgspec.Struct) -> tuple[Any, ...]:
    values = []
    for column in table.columns:
        value = getattr(record, column)
        values.append(msgspec.json.encode(value).decode() if column in table.json else value)
    return tuple(values)


def _decode(table: _Table, row: Sequence[Any], record: type[R]) -> R:
    data = {}
    for column, value in zip(table.columns, row, strict=True):
        if column in table.json:
            value = msgspec.json.decode(value)
        elif column in table.bools:
            value = bool(value)
        data[column] = value
    return msgspec.convert(data, record)


def _validated(record: R) -> R:
    """The record again, its field types checked (msgspec.ValidationError, a ValueError, if one is wrong)."""
    return msgspec.convert(msgspec.to_builtins(record), type(record))


def _page(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    return limit


def _ref(table: _Table, record: msgspec.Struct) -> str:
    return cast(str, getattr(record, "key_hash" if table is KEYS else table.key))


# -- operations ---------------------------------------------------------------------------------------------


def _changed(d: Dialect, at: float, *changes: tuple[str, str, str]) -> Op[None]:
    """Appends (kind, ref, op) to the change feed; last in its transaction (see the module docstring)."""
    if d.lock_changes is not None:
        yield Query(d.lock_changes)
    for kind, ref, op in changes:
        yield Query("INSERT INTO changes (kind, ref, op, at) VALUES (?, ?, ?, ?)", (kind, ref, op, at))


def _load(d: Dialect, table: _Table, record: type[R], key: str, *, lock: bool = False) -> Op[R]:
    sql = f"{table.select} WHERE {table.key} = ?" + (d.for_update if lock else "")
    row = yield Query(sql, (key,), Want.ROW)
    if row is None:
        raise RecordNotFound(f"no {table.kind} {key!r}")
    return _decode(table, row, record)


def _create(d: Dialect, table: _Table, record: R, now: float) -> Op[R]:
    stamp = getattr(record, "created_at") or now  # noqa: B009 - any of the record types
    record = _validated(msgspec.structs.replace(record, created_at=stamp, updated_at=stamp))
    key = getattr(record, table.key)
    if (yield Query(f"SELECT 1 FROM {table.name} WHERE {table.key} = ?", (key,), Want.ROW)) is not None:
        raise RecordConflict(f"{table.kind} {key!r} exists")
    if table is KEYS:
        key_hash = cast(ApiKey, record).key_hash
        if (yield Query("SELECT 1 FROM api_keys WHERE key_hash = ?", (key_hash,), Want.ROW)) is not None:
            raise RecordConflict("a key with that hash exists")
    yield Query(table.insert, _encode(table, record))
    yield from _changed(d, now, (table.kind, _ref(table, record), "create"))
    return record


def _update(d: Dialect, table: _Table, record: type[R], key: str, fields: dict[str, Any], now: float) -> Op[R]:
    unknown = set(fields) - table.mutable
    if unknown or not fields:
        raise ValueError(f"{table.kind}: cannot update {', '.join(sorted(unknown)) or 'nothing'} "
                         f"(may update: {', '.join(sorted(table.mutable))})")
    old = yield from _load(d, table, record, key, lock=True)
    new = _validated(msgspec.structs.replace(old, **fields, updated_at=now))
    values = [v for c, v in zip(table.columns, _encode(table, new), strict=True) if c != table.key]
    yield Query(table.update, (*values, key))
    yield from _changed(d, now, (table.kind, _ref(table, new), "update"))
    return new


def _delete(d: Dialect, table: _Table, key: str, now: float) -> Op[None]:
    ref = table.key if table is not KEYS else "key_hash"
    found = yield Query(f"DELETE FROM {table.name} WHERE {table.key} = ? RETURNING {ref}", (key,), Want.VALUE)
    if found is None:
        raise RecordNotFound(f"no {table.kind} {key!r}")
    yield from _changed(d, now, (table.kind, found, "delete"))


Where = list[tuple[str, tuple[Any, ...]]]  # conditions ANDed, each with the values of its placeholders


def _list(table: _Table, record: type[R], where: Where, after: str | None, limit: int) -> Op[list[R]]:
    if after is not None:
        where = [*where, (f"{table.key} > ?", (after,))]
    clause = " AND ".join(condition for condition, _ in where)
    sql = f"{table.select}{' WHERE ' + clause if clause else ''} ORDER BY {table.key} LIMIT ?"
    rows = yield Query(sql, (*(v for _, values in where for v in values), _page(limit)), Want.ROWS)
    return [_decode(table, row, record) for row in rows]


def _revoke_key(d: Dialect, key_id: str, at: float, now: float) -> Op[ApiKey]:
    key = yield from _load(d, KEYS, ApiKey, key_id, lock=True)
    if key.revoked_at is not None:
        return key
    yield Query("UPDATE api_keys SET revoked_at = ?, updated_at = ? WHERE id = ?", (at, now, key_id))
    yield from _changed(d, now, ("key", key.key_hash, "revoke"))
    return msgspec.structs.replace(key, revoked_at=at, updated_at=now)


def _rotate_key(d: Dialect, old_id: str, new: ApiKey, grace_until: float, now: float) -> Op[ApiKey]:
    old = yield from _load(d, KEYS, ApiKey, old_id, lock=True)
    if old.revoked_at is not None:
        raise RecordConflict(f"key {old_id!r} is revoked")
    if old.rotated_to is not None:
        raise RecordConflict(f"key {old_id!r} was already rotated to {old.rotated_to!r}")
    if new.rotated_to is not None or new.revoked_at is not None:
        raise ValueError("the new key must be neither revoked nor rotated")
    stamp = new.created_at or now
    new = _validated(msgspec.structs.replace(new, created_at=stamp, updated_at=stamp))
    for column, value in (("id", new.id), ("key_hash", new.key_hash)):
        if (yield Query(f"SELECT 1 FROM api_keys WHERE {column} = ?", (value,), Want.ROW)) is not None:
            raise RecordConflict(f"a key with that {column} exists")
    yield Query(KEYS.insert, _encode(KEYS, new))
    yield Query("UPDATE api_keys SET rotated_to = ?, grace_until = ?, updated_at = ? WHERE id = ?",
                (new.id, grace_until, now, old_id))
    yield from _changed(d, now, ("key", new.key_hash, "create"), ("key", old.key_hash, "rotate"))
    return new


def _changes_since(version: int, limit: int) -> Op[tuple[int, list[Change]]]:
    rows = yield Query(f"{_SELECT_CHANGES} WHERE version > ? ORDER BY version LIMIT ?", (version, _page(limit)),
                       Want.ROWS)
    if rows:
        changes = [Change(version=r[0], kind=r[1], ref=r[2], op=r[3], at=r[4]) for r in rows]
        return changes[-1].version, changes
    latest = yield Query("SELECT max(version) FROM changes", (), Want.VALUE)
    return int(latest or 0), []


def _audit_record(row: Sequence[Any]) -> AuditRecord:
    data = dict(zip(AUDIT_COLUMNS, row, strict=True))
    data["details"] = json.loads(data["details"])
    return msgspec.convert(data, AuditRecord)


def _append_audit(d: Dialect, actor: str, action: str, target: str | None, client_ip: str | None,
                  details: dict[str, Any], at: float) -> Op[AuditRecord]:
    text = canonical_json(details)
    details = json.loads(text)  # exactly what verify_audit will read back
    head = yield Query("SELECT seq, hash FROM audit_head WHERE id = 1" + d.for_update, (), Want.ROW)
    if head is None:
        raise StoreError("the audit chain head is missing (audit_head): the log was tampered with")
    seq, prev_hash = int(head[0]) + 1, str(head[1])
    digest = audit_hash(prev_hash, seq, at, actor, action, target, client_ip, details)
    yield Query(f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})",
                (seq, at, actor, action, target, client_ip, text, prev_hash, digest))
    yield Query("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
    return AuditRecord(seq=seq, at=at, actor=actor, action=action, target=target, client_ip=client_ip,
                       details=details, prev_hash=prev_hash, hash=digest)


def _list_audit(filters: dict[str, Any], limit: int) -> Op[list[AuditRecord]]:
    conditions = {"action": "action = ?", "actor": "actor = ?", "target": "target = ?", "since": "at >= ?",
                  "until": "at < ?", "after_seq": "seq > ?"}
    where = [(conditions[name], value) for name, value in filters.items() if value is not None]
    clause = " AND ".join(w for w, _ in where)
    sql = f"{_SELECT_AUDIT}{' WHERE ' + clause if clause else ''} ORDER BY seq LIMIT ?"
    rows = yield Query(sql, (*(v for _, v in where), _page(limit)), Want.ROWS)
    return [_audit_record(row) for row in rows]


def _verify_audit() -> Op[tuple[bool, int | None, int]]:
    """Walks the chain in seq order from 1 and compares its end with the head (one snapshot)."""
    head = yield Query("SELECT seq, hash FROM audit_head WHERE id = 1", (), Want.ROW)
    expected, prev_hash, checked = 1, GENESIS_HASH, 0
    while True:
        rows = yield Query(f"{_SELECT_AUDIT} WHERE seq >= ? ORDER BY seq LIMIT ?", (expected, VERIFY_PAGE),
                           Want.ROWS)
        for row in rows:
            checked += 1
            try:
                record = _audit_record(row)
            except (ValueError, TypeError):
                return False, int(row[0]), checked
            if record.seq != expected:
                return False, expected, checked  # records before this one were removed
            recomputed = audit_hash(prev_hash, record.seq, record.at, record.actor, record.action, record.target,
                                    record.client_ip, record.details)
            if record.prev_hash != prev_hash or record.hash != recomputed:
                return False, record.seq, checked
            prev_hash, expected = record.hash, expected + 1
        if len(rows) < VERIFY_PAGE:
            break
    last = expected - 1
    if head is None or int(head[0]) > last:
        return False, last + 1, checked  # the head is gone, or records were removed from the end
    if int(head[0]) < last:
        return False, int(head[0]) + 1, checked  # records appended without moving the head
    if str(head[1]) != prev_hash:
        return False, max(last, 1), checked  # the last record was replaced
    return True, None, checked


# -- the shared front ---------------------------------------------------------------------------------------


class SqlStore:
    """The Store methods over ``_run``, which each backend implements."""

    _dialect: Dialect
    _clock: Callable[[], float] = time.time
    calls = 0  # operations run on the database (each one statement or one transaction): the flood tests count them

    async def _run(self, op: Op[T], tx: Tx, timeout_s: float | None = None) -> T:
        """Runs ``op`` in a ``tx`` transaction, bounded by ``timeout_s`` (None: the store's)."""
        raise NotImplementedError

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._run(_one(Query("SELECT 1", (), Want.VALUE)), Tx.READ)
        return time.perf_counter() - started

    # keys
    async def create_key(self, key: ApiKey) -> ApiKey:
        return await self._run(_create(self._dialect, KEYS, key, self._clock()), Tx.WRITE)

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._run(_one(Query(f"{KEYS.select} WHERE key_hash = ?", (key_hash,), Want.ROW)), Tx.READ)
        return None if row is None else _decode(KEYS, row, ApiKey)

    async def get_key(self, key_id: str) -> ApiKey:
        return await self._run(_load(self._dialect, KEYS, ApiKey, key_id), Tx.READ)

    async def key_hashes(self, *, after: str | None = None, limit: int = HASH_PAGE) -> list[tuple[str, str]]:
        if not 1 <= limit <= HASH_PAGE:
            raise ValueError(f"limit must be between 1 and {HASH_PAGE}, got {limit}")
        where = " WHERE id > ?" if after is not None else ""
        sql = f"SELECT id, key_hash FROM api_keys{where} ORDER BY id LIMIT ?"
        rows = await self._run(_one(Query(sql, (*((after,) if after is not None else ()), limit), Want.ROWS)),
                               Tx.READ)
        return [(str(row[0]), str(row[1])) for row in rows]

    async def list_keys(self, *, owner_user: str | None = None, owner_team: str | None = None,
                        include_revoked: bool = False, after: str | None = None, limit: int = 100) -> list[ApiKey]:
        where: Where = []
        if owner_user is not None:
            where.append(("owner_user = ?", (owner_user,)))
        if owner_team is not None:
            where.append(("owner_team = ?", (owner_team,)))
        if not include_revoked:
            where.append(("revoked_at IS NULL", ()))
        return await self._run(_list(KEYS, ApiKey, where, after, limit), Tx.READ)

    async def update_key(self, key_id: str, /, **fields: Any) -> ApiKey:
        return await self._run(_update(self._dialect, KEYS, ApiKey, key_id, fields, self._clock()), Tx.WRITE)

    async def revoke_key(self, key_id: str, at: float) -> ApiKey:
        return await self._run(_revoke_key(self._dialect, key_id, at, self._clock()), Tx.WRITE)

    async def rotate_key(self, old_id: str, new: ApiKey, grace_until: float) -> ApiKey:
        return await self._run(_rotate_key(self._dialect, old_id, new, grace_until, self._clock()), Tx.WRITE)

    # users
    async def create_user(self, user: User) -> User:
        return await self._run(_create(self._dialect, USERS, user, self._clock()), Tx.WRITE)

    async def get_user(self, user_id: str) -> User:
        return await self._run(_load(self._dialect, USERS, User, user_id), Tx.READ)

    async def list_users(self, *, team: str | None = None, after: str | None = None, limit: int = 100) -> list[User]:
        where: Where = [] if team is None else [(self._dialect.has_team, (team,))]
        return await self._run(_list(USERS, User, where, after, limit), Tx.READ)

    async def update_user(self, user_id: str, /, **fields: Any) -> User:
        return await self._run(_update(self._dialect, USERS, User, user_id, fields, self._clock()), Tx.WRITE)

    async def delete_user(self, user_id: str) -> None:
        await self._run(_delete(self._dialect, USERS, user_id, self._clock()), Tx.WRITE)

    # teams
    async def create_team(self, team: Team) -> Team:
        return await self._run(_create(self._dialect, TEAMS, team, self._clock()), Tx.WRITE)

    async def get_team(self, team_id: str) -> Team:
        return await self._run(_load(self._dialect, TEAMS, Team, team_id), Tx.READ)

    async def list_teams(self, *, after: str | None = None, limit: int = 100) -> list[Team]:
        return await self._run(_list(TEAMS, Team, [], after, limit), Tx.READ)

    async def update_team(self, team_id: str, /, **fields: Any) -> Team:
        return await self._run(_update(self._dialect, TEAMS, Team, team_id, fields, self._clock()), Tx.WRITE)

    async def delete_team(self, team_id: str) -> None:
        await self._run(_delete(self._dialect, TEAMS, team_id, self._clock()), Tx.WRITE)

    # roles
    async def create_role(self, role: Role) -> Role:
        return await self._run(_create(self._dialect, ROLES, role, self._clock()), Tx.WRITE)

    async def get_role(self, name: str) -> Role:
        return await self._run(_load(self._dialect, ROLES, Role, name), Tx.READ)

    async def list_roles(self, *, after: str | None = None, limit: int = 100) -> list[Role]:
        return await self._run(_list(ROLES, Role, [], after, limit), Tx.READ)

    async def update_role(self, name: str, /, **fields: Any) -> Role:
        return await self._run(_update(self._dialect, ROLES, Role, name, fields, self._clock()), Tx.WRITE)

    async def delete_role(self, name: str) -> None:
        await self._run(_delete(self._dialect, ROLES, name, self._clock()), Tx.WRITE)

    # change feed
    async def changes_since(self, version: int, limit: int = MAX_PAGE) -> tuple[int, list[Change]]:
        return await self._run(_changes_since(version, limit), Tx.SNAPSHOT)

    # audit log
    async def append_audit(self, actor: str, action: str, target: str | None = None, client_ip: str | None = None,
                           details: dict[str, Any] | None = None, at: float | None = None) -> AuditRecord:
        when = float(self._clock() if at is None else at)
        op = _append_audit(self._dialect, actor, action, target, client_ip, details or {}, when)
        return await self._run(op, Tx.WRITE)

    async def list_audit(self, *, action: str | None = None, actor: str | None = None, target: str | None = None,
                         since: float | None = None, until: float | None = None, after_seq: int | None = None,
                         limit: int = 100) -> list[AuditRecord]:
        filters = {"action": action, "actor": actor, "target": target, "since": since, "until": until,
                   "after_seq": after_seq}
        return await self._run(_list_audit(filters, limit), Tx.READ)

    async def verify_audit(self) -> tuple[bool, int | None, int]:
        return await self._run(_verify_audit(), Tx.SNAPSHOT, LONG_TIMEOUT_S)


def _one(query: Query) -> Op[Any]:
    return (yield query)
