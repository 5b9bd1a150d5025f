"""Dead letters in the store: the records, and the store methods over the ``dead_letters`` table.

A dead letter is a request that finally failed after its retries, kept so an
operator can list it and replay it (``sluice.resilience.dead_letters`` queues
and writes them; ``sluice dlq`` reads them).  In the table a letter's id is its
``seq`` (an ever-increasing integer, given by the database on insert), so ids
order letters by arrival and are never reused.  Lists are newest first, paged
with ``before`` (the last id seen).

``DeadLetterOps`` holds the methods; ``SqliteStore`` and ``PostgresStore``
inherit them.  Each method is one sans-IO operation run in one transaction,
like the rest of the store (``_common``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ._common import Op, Query, SqlStore, Tx, Want
from .base import MAX_PAGE, RecordNotFound

__all__ = ["Attempt", "DeadLetter", "DeadLetterOps"]


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One try of a failed request: where it went and how it ended."""

    deployment: str  # the deployment's label (provider/model, or "replay" for a replay by `sluice dlq`)
    status: int | None = None  # the upstream's (or the replayed gateway's) status, when one came
    error: str | None = None  # the error's class when no status came (ConnectError, ReadTimeout, ...)
    duration_ms: float = 0.0
    at: float | None = None  # when it started (replays record it)


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A request that finally failed after its retries.  Never holds a credential: the body is redacted of
    secrets and personal data (not of the prompt), the caller is named by key id and display prefix only."""

    id: str = ""  # given when written: the store's seq, or the Redis stream entry id
    request_id: str
    at: float  # epoch seconds, when it finally failed
    method: str = "POST"
    route: str  # the path the client called, e.g. /v1/chat/completions (a replay is sent there)
    model: str | None = None  # the model the client asked for
    provider: str | None = None  # the provider of the last attempt, if one was tried
    status: int  # the final status the client was given
    error: str  # the error's class and message
    attempts: tuple[Attempt, ...] = ()
    body: str = ""  # the request body, redacted, at most max_body_bytes of UTF-8
    clipped: bool = False  # the body was longer than max_body_bytes: replay refuses it
    content_type: str | None = None  # the one request header a replay sends again
    key_id: str | None = None  # the caller's key id, when it used a stored key
    key_prefix: str | None = None  # the display prefix of the caller's key (sk-sl-ab12…)
    replays: int = 0  # replays that failed again (a replay that succeeds removes the letter)


_COLUMNS = ("seq", "at", "request_id", "method", "route", "model", "provider", "status", "error", "attempts",
            "body", "clipped", "content_type", "key_id", "key_prefix", "replays")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM dead_letters"
_INSERT = (f"INSERT INTO dead_letters ({', '.join(_COLUMNS[1:])}) VALUES ({', '.join('?' * (len(_COLUMNS) - 1))}) "
           "RETURNING seq")
_ATTEMPTS = msgspec.json.Decoder(tuple[Attempt, ...])


def _row(letter: DeadLetter) -> tuple[Any, ...]:
    attempts = msgspec.json.encode(letter.attempts).decode()
    return (letter.at, letter.request_id, letter.method, letter.route, letter.model, letter.provider, letter.status,
            letter.error, attempts, letter.body, letter.clipped, letter.content_type, letter.key_id, letter.key_prefix,
            letter.replays)


def _letter(row: Sequence[Any]) -> DeadLetter:
    data = dict(zip(_COLUMNS, row, strict=True))
    seq = data.pop("seq")
    data["attempts"] = _ATTEMPTS.decode(data["attempts"])
    data["clipped"] = bool(data["clipped"])
    return DeadLetter(id=str(seq), **data)


def _seq(letter_id: str) -> int | None:
    """The seq an id names; None for an id the table cannot hold (a Redis id, a typo)."""
    if not letter_id.isascii() or not letter_id.isdigit() or len(letter_id) > 18:
        return None
    return int(letter_id)


# -- operations -------------------------------------------------------------------------------------------


def _add(letters: Sequence[DeadLetter]) -> Op[list[str]]:
    ids = []
    for letter in letters:
        seq = yield Query(_INSERT, _row(letter), Want.VALUE)
        ids.append(str(seq))
    return ids


def _list(route: str | None, model: str | None, before: str | None, limit: int) -> Op[list[DeadLetter]]:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    where: list[tuple[str, Any]] = []
    if route is not None:
        where.append(("route = ?", route))
    if model is not None:
        where.append(("model = ?", model))
    if before is not None:
        seq = _seq(before)
        if seq is None:
            raise ValueError(f"not a dead-letter id: {before!r}")
        where.append(("seq < ?", seq))
    clause = " AND ".join(condition for condition, _ in where)
    sql = f"{_SELECT}{' WHERE ' + clause if clause else ''} ORDER BY seq DESC LIMIT ?"
    rows = yield Query(sql, (*(value for _, value in where), limit), Want.ROWS)
    return [_letter(row) for row in rows]


def _get(letter_id: str, lock: str = "") -> Op[DeadLetter]:
    seq = _seq(letter_id)
    row = None if seq is None else (yield Query(f"{_SELECT} WHERE seq = ?{lock}", (seq,), Want.ROW))
    if row is None:
        raise RecordNotFound(f"no dead letter {letter_id!r}")
    return _letter(row)


def _delete(ids: Sequence[str]) -> Op[list[str]]:
    gone = []
    for letter_id in dict.fromkeys(ids):
        seq = _seq(letter_id)
        if seq is not None and (yield Query("DELETE FROM dead_letters WHERE seq = ? RETURNING seq", (seq,),
                                            Want.VALUE)) is not None:
            gone.append(letter_id)
    return gone


def _trim(max_entries: int | None, before: float | None) -> Op[int]:
    removed = 0
    if before is not None:
        rows = yield Query("DELETE FROM dead_letters WHERE at < ? RETURNING seq", (before,), Want.ROWS)
        removed += len(rows)
    if max_entries is not None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be at least 0, got {max_entries}")
        # Everything at or below the seq of the (max_entries + 1)-th newest: none when there are fewer.
        rows = yield Query("DELETE FROM dead_letters WHERE seq <= (SELECT seq FROM dead_letters ORDER BY seq DESC "
                           "LIMIT 1 OFFSET ?) RETURNING seq", (max_entries,), Want.ROWS)
        removed += len(rows)
    return removed


def _note_replay(letter_id: str, attempt: Attempt, lock: str) -> Op[DeadLetter]:
    letter = yield from _get(letter_id, lock)
    updated = msgspec.structs.replace(letter, replays=letter.replays + 1, attempts=(*letter.attempts, attempt))
    yield Query("UPDATE dead_letters SET replays = ?, attempts = ? WHERE seq = ?",
                (updated.replays, msgspec.json.encode(updated.attempts).decode(), int(letter.id)))
    return updated


def _count() -> Op[int]:
    value = yield Query("SELECT count(*) FROM dead_letters", (), Want.VALUE)
    return int(value or 0)


class DeadLetterOps(SqlStore):
    """The dead-letter methods of the SQL stores (see ``Store`` in ``base`` for their contract)."""

    async def add_dead_letters(self, letters: Sequence[DeadLetter]) -> list[str]:
        if not letters:
            return []
        return await self._run(_add(letters), Tx.WRITE)

    async def list_dead_letters(self, *, route: str | None = None, model: str | None = None,
                                before: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._run(_list(route, model, before, limit), Tx.READ)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return await self._run(_get(letter_id), Tx.READ)

    async def delete_dead_letters(self, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        return await self._run(_delete(ids), Tx.WRITE)

    async def trim_dead_letters(self, *, max_entries: int | None = None, before: float | None = None) -> int:
        if max_entries is None and before is None:
            return 0
        return await self._run(_trim(max_entries, before), Tx.WRITE)

    async def note_dead_letter_replay(self, letter_id: str, attempt: Attempt) -> DeadLetter:
        return await self._run(_note_replay(letter_id, attempt, self._dialect.for_update), Tx.WRITE)

    async def count_dead_letters(self) -> int:
        return await self._run(_count(), Tx.READ)
