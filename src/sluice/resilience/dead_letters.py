"""The dead-letter queue: requests that finally failed after their retries, kept for a look and a replay.

On the request path the gateway calls ``DeadLetters.record(Failure(...))``: an
append to a bounded in-process deque, O(1), never waiting, never raising (past
``queue_size`` the failure is dropped and counted in ``dropped``).  The background
writer (``sluice.state.writer``, started by ``start()`` or the first record) takes what is queued in
batches of up to ``batch_size`` and, off the event loop in a worker thread,
turns each ``Failure`` into a ``DeadLetter`` with ``letter_for``: the body
redacted of secrets and personal data (``sluice.observability.redact``, the
patterns of the debug access log) and clipped to ``max_body_bytes``, the error
redacted too, no credential kept (the caller is named by key id and display
prefix only).  Then it writes the batch to the backend.  While the backend is
down the batch waits and is retried with backoff; the queue keeps its bound.

Backends (``Backend``): the store (``StoreBackend``: the ``dead_letters`` table
of SQLite or PostgreSQL, see ``sluice.store.dead_letters``) or a Redis stream
(``sluice.state.dead_letters_redis.RedisBackend``), picked by
``resilience.dead_letters.redis`` in ``open_dead_letters``.

Retention is bounded: ``trim()`` removes the letters older than ``max_age_s``
and all but the newest ``max_entries``.  The writer trims every
``trim_every_s`` and whenever it has written a tenth of ``max_entries`` since
its last trim; ``purge`` trims too.  ``trim`` and ``purge`` take ``now`` so a
test needs no sleep.

The reader API (``list``, ``get``, ``purge``, ``note_replay``, ``count``) is
what ``sluice dlq`` uses.  Errors::

    DeadLetterError
    ├── LetterNotFound          no letter with that id
    └── DeadLettersUnavailable  the store or Redis failed or did not answer (``__cause__`` says why; also a
                                sluice.errors.DependencyUnavailable)
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode

import msgspec

from ..errors import ConfigError, DeadLetterError, DeadLettersUnavailable, LetterNotFound
from ..observability.redact import redact
from ..state.writer import BackgroundWriter, SinkDown, WriterCounts
from ..store import RecordNotFound, Store, StoreError, display_prefix
from ..store.dead_letters import Attempt, DeadLetter

if TYPE_CHECKING:
    from ..config import Config, DeadLetterConfig

__all__ = ["Attempt", "Backend", "DeadLetter", "DeadLetterError", "DeadLetters", "DeadLettersUnavailable", "Failure",
           "LetterNotFound", "StoreBackend", "letter_for", "open_dead_letters", "redact_body"]

log = logging.getLogger("sluice.dlq")
T = TypeVar("T")

MAX_ERROR_CHARS = 1000  # of a letter's error text
MAX_ATTEMPTS = 64  # attempts kept per letter (the first ones and the last ones)
_MAX_TEXT = 2000  # request ids, routes, labels, content types
# Query parameters that carry credentials (Gemini's ?key=): never kept in a letter's route.
_SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "token", "access_token", "secret", "password",
                            "signature", "sig", "x-amz-signature", "x-goog-signature"})


class Failure(NamedTuple):
    """What the request path hands to ``DeadLetters.record``: raw references, nothing computed.

    ``error`` may be the exception itself; ``attempts`` ``Attempt`` structs or dicts of their fields;
    ``body`` the raw request body (redacted and clipped later, by the writer)."""

    request_id: str
    route: str  # the path (and query) the client called
    model: str | None
    provider: str | None  # of the last attempt
    status: int  # the final status given to the client
    error: BaseException | str
    attempts: Sequence[Attempt | Mapping[str, Any]] = ()
    body: bytes | str = b""
    key_id: str | None = None
    key_prefix: str | None = None  # the display prefix of the caller's key, never the key
    content_type: str | None = None
    method: str = "POST"


# -- building a letter (in the writer's thread, never on the request path) -----------------------------------


def redact_body(body: bytes | str, max_bytes: int) -> tuple[str, bool]:
    """The body as text redacted of secrets and personal data, at most ``max_bytes`` of UTF-8; and whether it
    was clipped (the text kept is not the whole body)."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    # Redact a margin past the limit, then clip: a secret cut in two at the limit is still found.  Within the
    # margin redact() does not clip (its limit counts characters, never more than bytes).
    margin = 4 * max_bytes + 1024
    text = _clean(redact(raw[:margin], margin))
    clipped = len(raw) > margin
    encoded = text.encode()
    if len(encoded) > max_bytes:
        text, clipped = encoded[:max_bytes].decode("utf-8", "ignore"), True
    return text, clipped


def letter_for(request_id: str, route: str, model: str | None, provider: str | None, status: int,
               error: BaseException | str, attempts: Iterable[Attempt | Mapping[str, Any]], body: bytes | str,
               key_id: str | None = None, max_body_bytes: int = 64 * 1024, *, key_prefix: str | None = None,
               content_type: str | None = None, method: str = "POST", at: float | None = None) -> DeadLetter:
    """A letter from what a failed request left: body and error redacted and clipped, no credential kept.
    Costly on big bodies (regular expressions over up to 4 times ``max_body_bytes``): not for the request path."""
    text, clipped = redact_body(body, max_body_bytes)
    return DeadLetter(
        request_id=_short(request_id), at=time.time() if at is None else float(at), method=_short(method, 16),
        route=_route(route), model=_short_or_none(model), provider=_short_or_none(provider), status=int(status),
        error=describe_error(error), attempts=_attempts(attempts), body=text, clipped=clipped,
        content_type=_short_or_none(content_type), key_id=_short_or_none(key_id), key_prefix=_key_prefix(key_prefix))


def describe_error(error: BaseException | str) -> str:
    """``Class: message``, redacted of secrets and personal data, at most ``MAX_ERROR_CHARS``."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    return _clean(redact(text.encode(), MAX_ERROR_CHARS))


def _attempts(attempts: Iterable[Attempt | Mapping[str, Any]]) -> tuple[Attempt, ...]:
    kept = [a if isinstance(a, Attempt) else msgspec.convert(dict(a), Attempt) for a in attempts]
    if len(kept) > MAX_ATTEMPTS:
        kept = kept[: MAX_ATTEMPTS // 2] + kept[-MAX_ATTEMPTS // 2:]
    return tuple(msgspec.structs.replace(a, deployment=_short(a.deployment, 200),
                                         error=None if a.error is None else describe_error(a.error)[:200])
                 for a in kept)


def _route(route: str) -> str:
    path, _, query = route.partition("?")
    if query:
        kept = [(name, value) for name, value in parse_qsl(query, keep_blank_values=True)
                if name.lower() not in _SECRET_PARAMS]
        path = f"{path}?{urlencode(kept)}" if kept else path
    return _short(path)


def _key_prefix(prefix: str | None) -> str | None:
    if prefix is None:
        return None
    return _short(prefix if prefix.endswith("…") else display_prefix(prefix), 64)  # never a whole key


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")  # PostgreSQL's text and JSONB refuse NUL


def _short(text: str, limit: int = _MAX_TEXT) -> str:
    return _clean(str(text)[:limit])


def _short_or_none(text: str | None, limit: int = _MAX_TEXT) -> str | None:
    return None if text is None else _short(text, limit)


# -- backends ---------------------------------------------------------------------------------------------


class Backend(Protocol):
    """Where letters are kept.  Every method raises ``DeadLettersUnavailable`` when the backend fails."""

    kind: str  # "store" or "redis"

    def valid_id(self, letter_id: str) -> bool:
        """Whether ``letter_id`` has the shape of this backend's ids."""
        ...

    async def add(self, letters: Sequence[DeadLetter], max_entries: int) -> builtins.list[str]:
        """Stores the letters (their ``id`` ignored); answers their ids.  May trim to about ``max_entries``."""
        ...

    async def list(self, *, route: str | None, model: str | None, before: str | None,
                   limit: int) -> builtins.list[DeadLetter]:
        """Newest first, after ``before`` (an id) when given."""
        ...

    async def get(self, letter_id: str) -> DeadLetter:
        """``LetterNotFound`` when there is none."""
        ...

    async def delete(self, ids: Sequence[str]) -> builtins.list[str]:
        """Answers the ids that were there."""
        ...

    async def trim(self, *, max_entries: int | None, before: float | None) -> int:
        """Removes the letters older than ``before`` and all but the newest ``max_entries``; answers how many."""
        ...

    async def note_replay(self, letter_id: str, attempt: Attempt) -> DeadLetter:
        """Counts a failed replay and appends its attempt; answers the letter."""
        ...

    async def count(self) -> int: ...

    async def aclose(self) -> None: ...


class StoreBackend:
    """Letters in the store's ``dead_letters`` table (SQLite or PostgreSQL)."""

    kind = "store"

    def __init__(self, store: Store, *, owns_store: bool = False) -> None:
        self.store = store
        self.owns_store = owns_store

    def valid_id(self, letter_id: str) -> bool:
        return letter_id.isascii() and letter_id.isdigit() and len(letter_id) <= 18

    async def add(self, letters: Sequence[DeadLetter], max_entries: int) -> builtins.list[str]:
        return await _store_call(self.store.add_dead_letters(letters))

    async def list(self, *, route: str | None, model: str | None, before: str | None,
                   limit: int) -> builtins.list[DeadLetter]:
        return await _store_call(self.store.list_dead_letters(route=route, model=model, before=before, limit=limit))

    async def get(self, letter_id: str) -> DeadLetter:
        return await _store_call(self.store.get_dead_letter(letter_id))

    async def delete(self, ids: Sequence[str]) -> builtins.list[str]:
        return await _store_call(self.store.delete_dead_letters(ids))

    async def trim(self, *, max_entries: int | None, before: float | None) -> int:
        return await _store_call(self.store.trim_dead_letters(max_entries=max_entries, before=before))

    async def note_replay(self, letter_id: str, attempt: Attempt) -> DeadLetter:
        return await _store_call(self.store.note_dead_letter_replay(letter_id, attempt))

    async def count(self) -> int:
        return await _store_call(self.store.count_dead_letters())

    async def aclose(self) -> None:
        if self.owns_store:
            await self.store.aclose()


async def _store_call(call: Awaitable[T]) -> T:
    try:
        return await call
    except RecordNotFound as exc:
        raise LetterNotFound(str(exc)) from None
    except StoreError as exc:
        raise DeadLettersUnavailable(str(exc)) from exc


# -- the queue --------------------------------------------------------------------------------------------


class DeadLetters(WriterCounts):
    """``record`` queues (never waits, never raises); a background task redacts and writes in batches;
    ``aclose`` flushes.  The reader methods go straight to the backend."""

    def __init__(self, backend: Backend, *, max_entries: int = 10_000, max_age_s: float = 7 * 86400.0,
                 max_body_bytes: int = 64 * 1024, queue_size: int = 1024, batch_size: int = 100,
                 trim_every_s: float = 60.0, close_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1 or max_age_s <= 0 or max_body_bytes < 0:
            raise ValueError("dead letters: max_entries must be at least 1, max_age_s above 0, "
                             "max_body_bytes at least 0")
        if queue_size < 1 or batch_size < 1 or trim_every_s <= 0:
            raise ValueError("dead letters: queue_size and batch_size must be at least 1, trim_every_s above 0")
        self.backend = backend
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_body_bytes = max_body_bytes
        self.trim_every_s = trim_every_s
        self._clock = clock
        self.writer: BackgroundWriter[tuple[float, DeadLetter | Failure]] = BackgroundWriter(
            self._write_batch, name="dead letters", logger=log, queue_size=queue_size, batch_size=batch_size,
            close_timeout_s=close_timeout_s, tick=self._trim_when_due, idle_s=self._until_trim)
        self._next_trim: float | None = None  # loop time; None: trim at the writer's first round
        self._since_trim = 0  # letters written since the last trim
        self.trimmed = 0  # removed by retention

    @classmethod
    def from_config(cls, config: DeadLetterConfig, backend: Backend, **options: Any) -> DeadLetters:
        return cls(backend, max_entries=config.max_entries, max_age_s=config.max_age_s,
                   max_body_bytes=config.max_body_bytes, **options)

    # -- the hot side ---------------------------------------------------------------------------------

    def record(self, letter: DeadLetter | Failure) -> None:
        """Queues a failed request; O(1), never waits, never raises (a full or closed queue counts a drop).
        A ``DeadLetter`` is kept as given (build it with ``letter_for``); a ``Failure`` is built by the writer."""
        self.writer.put((self._clock(), letter))

    def start(self) -> None:
        """Starts the writer on the running loop (no loop: it starts with the first record made in one)."""
        self.writer.start()

    def stats(self) -> dict[str, int]:
        return {"dlq_pending": self.pending, "dlq_dropped": self.dropped, "dlq_failed": self.failed,
                "dlq_written": self.written, "dlq_trimmed": self.trimmed}

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Waits until everything recorded so far is written; False when that took over ``timeout_s``."""
        return await self.writer.flush(timeout_s)

    async def aclose(self) -> None:
        """Writes what is queued (bounded by ``close_timeout_s``), stops the writer, closes the backend."""
        if self.writer.closed:
            return
        await self.writer.aclose()
        await self.backend.aclose()

    # -- the writer's side ----------------------------------------------------------------------------

    def _until_trim(self) -> float | None:
        """How long the writer may sleep with nothing queued: until the next trim."""
        if self._next_trim is None:
            return 0.0
        return max(0.0, self._next_trim - asyncio.get_running_loop().time())

    async def _trim_when_due(self, forced: bool) -> None:
        """Trims at the writer's first round (the retention may have changed since the last run), every
        ``trim_every_s``, and after a tenth of ``max_entries`` written."""
        now = asyncio.get_running_loop().time()
        if self._next_trim is None or now >= self._next_trim or self._since_trim >= max(100, self.max_entries // 10):
            try:
                await self.trim()
            except DeadLetterError as exc:
                log.warning("dead letters: trimming failed (%s); trying again later", exc)
            self._since_trim = 0
            self._next_trim = asyncio.get_running_loop().time() + self.trim_every_s

    async def _write_batch(self, batch: builtins.list[tuple[float, DeadLetter | Failure]]) -> int:
        """Builds the letters (off the loop) and adds them; answers how many failures could not be made
        letters.  While the backend is down the built letters go back (not redacted twice)."""
        letters = await self._letters(batch)
        try:
            await self.backend.add(letters, self.max_entries)
        except DeadLettersUnavailable as exc:
            raise SinkDown([(letter.at, letter) for letter in letters], failed=len(batch) - len(letters)) from exc
        self._since_trim += len(letters)
        return len(batch) - len(letters)

    async def _letters(self, batch: builtins.list[tuple[float, DeadLetter | Failure]]) -> builtins.list[DeadLetter]:
        ready = [item for _, item in batch if isinstance(item, DeadLetter)]
        if len(ready) == len(batch):
            return ready
        return await asyncio.to_thread(self._build, batch)  # redaction is CPU work: off the event loop

    def _build(self, batch: builtins.list[tuple[float, DeadLetter | Failure]]) -> builtins.list[DeadLetter]:
        """The batch as letters (in a worker thread); a failure that cannot be made one is left out."""
        built = []
        for at, item in batch:
            if isinstance(item, DeadLetter):
                built.append(item)
                continue
            try:
                built.append(letter_for(item.request_id, item.route, item.model, item.provider, item.status,
                                        item.error, item.attempts, item.body, item.key_id, self.max_body_bytes,
                                        key_prefix=item.key_prefix, content_type=item.content_type,
                                        method=item.method, at=at))
            except Exception:  # a malformed failure (attempts of the wrong shape, say): dropped and counted
                log.exception("dead letters: request %s could not be made a letter", item.request_id)
        return built

    # -- the reader side ------------------------------------------------------------------------------

    async def list(self, limit: int = 100, *, before: str | None = None, route: str | None = None,
                   model: str | None = None) -> builtins.list[DeadLetter]:
        """Newest first, at most ``limit`` (1..1000); page with ``before`` (the last id seen)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        if before is not None and not self.backend.valid_id(before):
            raise ValueError(f"not a dead-letter id: {before!r}")
        return await self.backend.list(route=route, model=model, before=before, limit=limit)

    async def get(self, letter_id: str) -> DeadLetter:
        if not self.backend.valid_id(letter_id):
            raise LetterNotFound(f"no dead letter {letter_id!r}")
        return await self.backend.get(letter_id)

    async def delete(self, ids: Sequence[str]) -> builtins.list[str]:
        """Removes the letters; answers the ids that were there."""
        valid = [i for i in ids if self.backend.valid_id(i)]
        return await self.backend.delete(valid) if valid else []

    async def purge(self, *, everything: bool = False, older_than_s: float | None = None, ids: Sequence[str] = (),
                    now: float | None = None) -> int:
        """Removes every letter, or those older than ``older_than_s``, or those named; then applies the
        retention (``trim``).  Answers how many were removed."""
        if older_than_s is not None and older_than_s < 0:
            raise ValueError(f"older_than_s must be at least 0, got {older_than_s}")
        when = self._clock() if now is None else now
        removed = 0
        if everything:
            removed += await self.backend.trim(max_entries=0, before=None)
        elif older_than_s is not None:
            removed += await self.backend.trim(max_entries=None, before=when - older_than_s)
        if ids:
            removed += len(await self.delete(ids))
        return removed + await self.trim(when)

    async def trim(self, now: float | None = None) -> int:
        """Applies the retention at ``now``: drops the letters older than ``max_age_s`` and all but the newest
        ``max_entries``.  Answers how many were removed."""
        when = self._clock() if now is None else now
        removed = await self.backend.trim(max_entries=self.max_entries, before=when - self.max_age_s)
        self.trimmed += removed
        return removed

    async def note_replay(self, letter_id: str, attempt: Attempt) -> DeadLetter:
        if not self.backend.valid_id(letter_id):
            raise LetterNotFound(f"no dead letter {letter_id!r}")
        return await self.backend.note_replay(letter_id, attempt)

    async def count(self) -> int:
        return await self.backend.count()


def open_dead_letters(config: Config, *, store: Store | None = None, prefix: str = "sluice:dlq",
                      redis_timeout_s: float = 2.0, **options: Any) -> DeadLetters:
    """The dead letters the config names: a Redis stream when ``resilience.dead_letters.redis`` (at
    ``resilience.redis``, else ``ratelimit.redis``), else the store (``store``, or one opened from
    ``config.store`` and closed with the queue).  Nothing connects until the first call."""
    settings = config.resilience.dead_letters
    backend: Backend
    if settings.redis:
        url = config.resilience.redis or config.ratelimit.redis
        if url is None:
            raise ConfigError("resilience.dead_letters.redis",
                              "a Redis stream needs resilience.redis or ratelimit.redis")
        from ..state.dead_letters_redis import RedisBackend
        from ..state.redis import connect

        backend = RedisBackend(connect(url, timeout_s=redis_timeout_s, name="dlq"), prefix=prefix,
                               timeout_s=redis_timeout_s, owns_client=True)
    elif store is not None:
        backend = StoreBackend(store)
    else:
        from ..store import open_store

        backend = StoreBackend(open_store(config.store), owns_store=True)
    return DeadLetters.from_config(settings, backend, **options)
