"""Dead letters in a Redis stream: what several gateways share without a database.

Keys (the ``{letters}`` hash tag puts both in one Redis Cluster slot)::

    <prefix>:{letters}            a stream: one entry per letter, field "d" = the letter as JSON (without id)
    <prefix>:{letters}:replays    a hash: letter id -> {"replays": n, "attempts": [...]} of failed replays

A letter's id is its stream entry id (``<ms>-<n>``).  Entries are added with
an explicit ``<ms of the letter's time>-*`` id, so ids order letters by time
and ``XTRIM MINID`` drops them by age; a letter older than the newest entry
(another gateway wrote a newer one first) gets ``*`` instead (the time of the
write: kept at most a few seconds longer).  ``XADD ... MAXLEN ~ max_entries``
bounds the stream as it grows (whole macro nodes at a time: a little over
``max_entries``); ``trim`` applies the bounds exactly.  A stream entry cannot
change, so failed replays are counted in the side hash, whose fields for
entries no longer in the stream are removed by ``delete`` and ``trim``.

Every call is bounded by ``timeout_s``; a timeout or any Redis error raises
``DeadLettersUnavailable`` (``__cause__`` says why).
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import msgspec
import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from ..errors import DeadLettersUnavailable, LetterNotFound
from ..store.dead_letters import Attempt, DeadLetter

__all__ = ["RedisBackend"]

T = TypeVar("T")
_ID = re.compile(r"\d{1,20}-\d{1,20}")
_PAGE = 200  # entries read per XREVRANGE while filtering
_ENCODER = msgspec.json.Encoder()
_LETTER = msgspec.json.Decoder(DeadLetter)


class _Replays(msgspec.Struct, kw_only=True):
    replays: int = 0
    attempts: tuple[Attempt, ...] = ()


_REPLAYS = msgspec.json.Decoder(_Replays)


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


def _text(value: Any) -> str:
    """A reply's bytes as text (the client does not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend:
    """Letters in a Redis stream (see the module docstring)."""

    kind = "redis"

    def __init__(self, client: redis.asyncio.Redis | redis.asyncio.RedisCluster, *, prefix: str = "sluice:dlq",
                 timeout_s: float = 2.0, owns_client: bool = False) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.owns_client = owns_client
        self.stream = f"{prefix}:{{letters}}"
        self.replays_key = f"{prefix}:{{letters}}:replays"

    def valid_id(self, letter_id: str) -> bool:
        return _ID.fullmatch(letter_id) is not None

    async def add(self, letters: Sequence[DeadLetter], max_entries: int) -> builtins.list[str]:
        if not letters:
            return []
        bodies: builtins.list[dict[Any, Any]] = [{"d": _ENCODER.encode(msgspec.structs.replace(letter, id=""))}
                                                 for letter in letters]

        async def write() -> builtins.list[str]:
            pipe = self.client.pipeline(transaction=False)
            for letter, fields in zip(letters, bodies, strict=True):
                pipe.xadd(self.stream, fields, id=f"{max(0, int(letter.at * 1000))}-*", maxlen=max_entries)
            results = await pipe.execute(raise_on_error=False)
            ids = []
            for result, fields in zip(results, bodies, strict=True):
                if isinstance(result, ResponseError):  # older than the newest entry: at the time of the write
                    result = await self.client.xadd(self.stream, fields, maxlen=max_entries)
                elif isinstance(result, Exception):
                    raise result
                ids.append(_text(result))
            return ids

        return await self._call(write())

    async def list(self, *, route: str | None, model: str | None, before: str | None,
                   limit: int) -> builtins.list[DeadLetter]:
        async def read() -> builtins.list[DeadLetter]:
            found: builtins.list[DeadLetter] = []
            upper = "+" if before is None else f"({before}"
            filtered = route is not None or model is not None
            while len(found) < limit:
                count = _PAGE if filtered else limit - len(found)
                page = await self.client.xrevrange(self.stream, max=upper, min="-", count=count)
                for entry_id, fields in page or ():
                    letter = self._decode(entry_id, fields)
                    if (route is None or letter.route == route) and (model is None or letter.model == model):
                        found.append(letter)
                if not page or len(page) < count:
                    break
                upper = f"({_text(page[-1][0])}"
            return await self._with_replays(found[:limit])

        return await self._call(read())

    async def get(self, letter_id: str) -> DeadLetter:
        async def read() -> DeadLetter:
            page = await self.client.xrange(self.stream, min=letter_id, max=letter_id, count=1)
            if not page:
                raise LetterNotFound(f"no dead letter {letter_id!r}")
            [letter] = await self._with_replays([self._decode(*page[0])])
            return letter

        return await self._call(read())

    async def delete(self, ids: Sequence[str]) -> builtins.list[str]:
        unique = list(dict.fromkeys(ids))

        async def remove() -> builtins.list[str]:
            pipe = self.client.pipeline(transaction=False)
            for letter_id in unique:
                pipe.xdel(self.stream, letter_id)
            pipe.hdel(self.replays_key, *unique)
            results = await pipe.execute()
            return [letter_id for letter_id, removed in zip(unique, results, strict=False) if removed]

        return await self._call(remove()) if unique else []

    async def trim(self, *, max_entries: int | None, before: float | None) -> int:
        async def trim() -> int:
            removed = 0
            if before is not None:
                removed += int(await self.client.xtrim(self.stream, minid=str(max(0, int(before * 1000))),
                                                       approximate=False))
            if max_entries is not None:
                removed += int(await self.client.xtrim(self.stream, maxlen=max_entries, approximate=False))
            await self._forget_replays()
            return removed

        return await self._call(trim())

    async def note_replay(self, letter_id: str, attempt: Attempt) -> DeadLetter:
        async def note() -> DeadLetter:
            letter = await self.get(letter_id)
            raw = await self.client.hget(self.replays_key, letter_id)
            state = _Replays() if raw is None else _REPLAYS.decode(raw)
            state = _Replays(replays=state.replays + 1, attempts=(*state.attempts, attempt))
            await self.client.hset(self.replays_key, letter_id, _ENCODER.encode(state))
            if not await self.client.xrange(self.stream, min=letter_id, max=letter_id, count=1):
                await self.client.hdel(self.replays_key, letter_id)  # removed meanwhile: forget it again
                raise LetterNotFound(f"no dead letter {letter_id!r}")
            return msgspec.structs.replace(letter, replays=letter.replays + 1, attempts=(*letter.attempts, attempt))

        return await self._call(note())

    async def count(self) -> int:
        return int(await self._call(self.client.xlen(self.stream)))

    async def aclose(self) -> None:
        if self.owns_client:
            await self.client.aclose()

    # -- helpers --------------------------------------------------------------------------------------

    def _decode(self, entry_id: Any, fields: Any) -> DeadLetter:
        data = fields.get(b"d") if isinstance(fields, dict) else None
        if data is None:
            raise DeadLettersUnavailable(f"dead letters on Redis: entry {_text(entry_id)} is no letter")
        return msgspec.structs.replace(_LETTER.decode(data), id=_text(entry_id))

    async def _with_replays(self, letters: builtins.list[DeadLetter]) -> builtins.list[DeadLetter]:
        if not letters:
            return letters
        states = await self.client.hmget(self.replays_key, [letter.id for letter in letters])
        merged = []
        for letter, raw in zip(letters, states, strict=True):
            if isinstance(raw, bytes | str):
                state = _REPLAYS.decode(raw)
                letter = msgspec.structs.replace(letter, replays=letter.replays + state.replays,
                                                 attempts=(*letter.attempts, *state.attempts))
            merged.append(letter)
        return merged

    async def _forget_replays(self) -> None:
        """Removes the replay counts of entries trimmed away: every id below the stream's first."""
        noted = [_text(field) for field in await self.client.hkeys(self.replays_key)]
        if not noted:
            return
        first = await self.client.xrange(self.stream, min="-", max="+", count=1)
        floor = _key(_text(first[0][0])) if first else None
        gone = [i for i in noted if not self.valid_id(i) or floor is None or _key(i) < floor]
        if gone:
            await self.client.hdel(self.replays_key, *gone)

    async def _call(self, work: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await work
        except TimeoutError as exc:
            raise DeadLettersUnavailable(f"dead letters on Redis: no answer within {self.timeout_s:g}s") from exc
        except (RedisError, OSError, msgspec.DecodeError) as exc:
            raise DeadLettersUnavailable(f"dead letters on Redis: {type(exc).__name__}: {exc}") from exc
