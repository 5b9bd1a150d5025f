"""Quotas: daily and monthly allowances of requests or tokens per key, user or team, kept across restarts.

A quota applies to the requests its ``match`` fits (models, routes, caller
keys) and counts per subject: the caller's key (``key:<fingerprint>``, a hash,
never the key), its user or its team (``user:<id>``, ``team:<id>``; those
come with authentication, until then such quotas never apply).  A request
costs 1 on a requests quota and its token estimate on a tokens quota; it is
admitted only when every quota that applies admits it, and a rejection by one
takes nothing from the others.  Token quotas settle afterwards with the usage
the provider reported, like the token rate limits.

Periods are calendar days and months in ``ratelimit.timezone``: a day ends at
the next local midnight, a month on the 1st (``period_bounds``; a DST change
makes a day of 23 or 25 hours, up to 27 in a few Antarctic zones).  Each
period has its own counter, named by its id ("2026-11-23", "2026-11"), so a
new period starts from 0 and an old one is forgotten by the store a day after
it ended.

**Where the numbers live.**  The store (``sluice.state.quota_store``: a SQLite
file shared by the workers of one host, or Redis shared by every instance)
holds what was used.  Each process keeps, per (quota, subject, period) it has
seen: ``used``, the store's total as last heard, and ``pending``, what it
admitted (or settled) since it last told the store.  The hot path never waits
on the store except the first time a process meets a (quota, subject, period):
``admit`` loads that counter once (``admit_cached`` answers None until then).
From then on a request is admitted in memory when ``used + pending + cost <=
limit``.  A background task, started on the running loop at first use, sends
every ``quota_sync_s`` one ``add`` with the pending deltas of every counter
asked for in the last minute (0 for one with nothing pending) and takes the
totals it answers as the new ``used``: that is how the workers and instances
learn about each other, even a process that only reads a counter.

**Slack.**  Between two syncs each process decides from its own view, so a
quota can be exceeded by what the other processes admit before they hear of
each other: with N processes in all (instances times workers), by at most
(N - 1) times what one process admits in one ``quota_sync_s``.  A process that
was idle for a while starts from an older view, and its excess is bounded the
same way: by what it admits until its next sync, at most ``quota_sync_s``
later.  A single process on its own never exceeds a quota, except by tokens
reported beyond their estimate (settled after the response) and while the
store is down (fail open, below).

**Failures.**  When the store fails (a load or a sync), quotas fail open: a
counter that could not be loaded starts from 0 (or keeps what was cached),
each failure counts ``store_unavailable`` for the quotas involved, one warning
is logged per failure episode, and pending deltas are kept for the next sync,
never dropped.  While the store is down a new counter is not loaded at all
(no request waits for a store known to be down); the next sync that succeeds
brings every counter back in line.

**Bounded memory.**  A process keeps at most ``quota_max_subjects`` counters (a
flood of random keys cannot grow it).  A new subject meeting the bound first
makes room by forgetting the counters whose usage the store holds in full
(nothing pending or in flight), the least recently asked first, down to nine
tenths of the bound (counted as ``evicted``): no usage is lost, and a subject
that comes back loads its counter from the store again, exact.  When every
counter still carries usage not sent (more new subjects within one
``quota_sync_s`` than the bound), the request waits for one early sync (shared
by every request waiting for room), which makes them forgettable.  Only while
the store fails is there nothing to forget: then, as quotas fail open, a new
subject is admitted without a counter (counted as ``unrecorded``, one warning
per episode): the only usage ever dropped.  Syncs send at most ``PUSH_CHUNK``
counters per call to the store.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from ..config import QuotaConfig, RateLimitConfig
from ..errors import QuotaExceeded, TokenQuotaExceeded
from ..state.quota_store import QuotaStore, QuotaStoreUnavailable
from ..tasks import cancel_and_wait
from .ratelimit import duration, key_fingerprint

__all__ = ["Quota", "QuotaTaken", "QuotaWant", "Quotas", "own_quota", "period_bounds"]

log = logging.getLogger("sluice.quotas")

_SWEEP_EVERY_S = 60.0
_REFRESHED_FOR_S = 60.0  # a counter asked for within this is refreshed at every sync
PUSH_CHUNK = 1000  # the most counters one call to the store carries
_ROOM_TRIES = 3  # early syncs a request waits for before a new subject goes uncounted


class _Full(Exception):
    """No room for a new counter without waiting (``_counter``)."""


def own_quota(raw: dict[str, Any]) -> QuotaConfig:
    """A key's own quota from the key store: QuotaConfig fields, counted per key unless it names a scope;
    ValueError naming the field when it is not one (the admin API checks with this)."""
    try:
        config = msgspec.convert({"scope": "key", **raw}, QuotaConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid quota: {exc}") from None
    if not 0 < config.limit < math.inf or config.scope.value not in ("key", "user", "team"):
        raise ValueError("invalid quota: limit must be more than zero and scope one of key, user, team")
    # Named apart from the config's quotas: its counters are its own.
    return msgspec.structs.replace(config, name=f"own:{config.name}")


def period_bounds(period: str, zone: ZoneInfo, now_epoch: float) -> tuple[str, float]:
    """The id of the calendar period holding ``now_epoch`` in ``zone`` and the epoch second it ends.

    A day ("2026-11-23") ends at the next local midnight, a month ("2026-11")
    on the 1st of the next at midnight.  A midnight that does not exist (a
    zone whose clocks jump forward at 00:00) is the instant of the jump.
    """
    local = datetime.fromtimestamp(now_epoch, zone)
    if period == "day":
        nxt = local.date() + timedelta(days=1)
        return (f"{local.year:04d}-{local.month:02d}-{local.day:02d}",
                datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone).timestamp())
    if period == "month":
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return f"{local.year:04d}-{local.month:02d}", datetime(year, month, 1, tzinfo=zone).timestamp()
    raise ValueError(f"unknown quota period {period!r}")


@dataclass(slots=True, eq=False)
class Quota:
    """One configured quota, built once."""

    name: str
    scope: str
    tokens: bool
    limit: float
    period: str  # "day" | "month"
    models: frozenset[str]
    routes: frozenset[str]
    keys: frozenset[str]  # key ids (hashes)
    counts: dict[str, int] = field(default_factory=dict)  # decision -> count
    limit_text: str = ""  # the limit as its header says it

    def __post_init__(self) -> None:
        self.limit_text = f"{self.limit:g}"

    @classmethod
    def build(cls, config: QuotaConfig) -> Quota:
        return cls(config.name, config.scope.value, config.unit.value == "tokens", config.limit, config.period.value,
                   frozenset(config.match.models), frozenset(config.match.routes),
                   frozenset(key_fingerprint(k) for k in config.match.keys))

    @property
    def unit(self) -> str:
        return "tokens" if self.tokens else "requests"

    def count(self, decision: str) -> None:
        self.counts[decision] = self.counts.get(decision, 0) + 1


@dataclass(slots=True)  # not frozen: one per request and quota, and a frozen __init__ costs
class QuotaWant:
    """What a request asks of one quota."""

    quota: Quota
    subject: str  # "key:<fingerprint>", "user:<id>", "team:<id>"
    cost: float


@dataclass(slots=True, eq=False)
class _Counter:
    """This process's view of one (quota, subject, period)."""

    quota: Quota
    subject: str
    period: str
    ends: float  # epoch second
    used: float = 0.0  # the store's total, as last heard
    inflight: float = 0.0  # sent to the store, not answered yet
    pending: float = 0.0  # admitted or settled here, not sent yet
    loaded: bool = False  # used holds the store's word (or the store failed and 0 stands in)
    asked_at: float = 0.0  # the last request that wanted it (clock), to keep it refreshed while in use
    loading: asyncio.Task[None] | None = None

    _reset: tuple[int, str] = (-1, "")  # (the second it was written for, the reset header's value)

    def remaining(self) -> float:
        return self.quota.limit - (self.used + self.inflight + self.pending)

    def reset_text(self, now: float) -> str:
        """How long until the period ends, as the reset header writes it (formatted once a second)."""
        second = int(now)
        if self._reset[0] != second:
            self._reset = (second, duration(self.ends - second))
        return self._reset[1]


@dataclass(slots=True)
class QuotaTaken:
    """What a request took from each quota, for its headers and for settling its tokens."""

    entries: list[tuple[QuotaWant, _Counter]] = field(default_factory=list)
    remaining: list[float] = field(default_factory=list)  # after this request, per entry


class Quotas:
    def __init__(self, config: RateLimitConfig, store: QuotaStore, clock: Callable[[], float] = time.time) -> None:
        self.quotas = [Quota.build(q) for q in config.quotas]
        self.store = store
        self.zone = ZoneInfo(config.timezone)
        self.sync_s = config.quota_sync_s
        self._clock = clock
        self._bounds: dict[str, tuple[str, float, float]] = {}  # period -> (id, ends, computed at)
        self._current: dict[tuple[str, str], _Counter] = {}  # (quota, subject) -> its current period's counter
        self._touched: set[_Counter] = set()  # to send at the next sync
        self._lock = asyncio.Lock()  # one sync at a time
        self._task: asyncio.Task[None] | None = None
        self._down = False  # in a store failure episode
        self._closed = False
        self._sweep_at = 0.0
        self._own: dict[str | None, tuple[tuple[dict[str, Any], ...], list[Quota]]] = {}  # keys' own quotas
        self.max_subjects = config.quota_max_subjects  # the most counters in _current
        self.push_chunk = PUSH_CHUNK
        self._early: asyncio.Task[None] | None = None  # a sync to make room, shared by the requests waiting
        self._full_warned = False  # the bound was met with nothing to forget: warned once per episode
        self._scanned_dry = False  # the last _make_room found too few to forget: no scan before a push

    def wanted(self, route: str, model: str, key_fingerprint: str | None, user: str | None, team: str | None,
               tokens_estimate: float, own: Sequence[Quota] = ()) -> list[QuotaWant]:
        """The quotas this request falls under (``key_fingerprint`` is ``ratelimit.key_fingerprint`` of the key
        presented; ``own`` the caller's key's own quotas, from ``own_quotas``)."""
        wanted = []
        for quota in (*self.quotas, *own) if own else self.quotas:
            if quota.models and model not in quota.models:
                continue
            if quota.routes and route not in quota.routes:
                continue
            if quota.keys and key_fingerprint not in quota.keys:
                continue
            ident = key_fingerprint if quota.scope == "key" else user if quota.scope == "user" else team
            if ident is None:
                continue
            wanted.append(QuotaWant(quota, f"{quota.scope}:{ident}", tokens_estimate if quota.tokens else 1.0))
        return wanted

    def own_quotas(self, key: str | None, raws: tuple[dict[str, Any], ...]) -> list[Quota]:
        """The quotas a key carries in the key store, built once per version of them."""
        cached = self._own.get(key)
        if cached is None or cached[0] is not raws:
            if len(self._own) >= 10_000:
                self._own.clear()
            cached = self._own[key] = (raws, [Quota.build(own_quota(raw)) for raw in raws])
        return cached[1]

    def admit_cached(self, wanted: list[QuotaWant]) -> QuotaTaken | None:
        """The admission from memory, no await; None when a counter must be loaded first (then await ``admit``).

        Raises QuotaExceeded.
        """
        now = self._clock()
        try:
            counters = [self._counter(w, now) for w in wanted]
        except _Full:  # admit() makes room
            return None
        if not all(c.loaded for c in counters):
            return None
        return self._take(wanted, counters, now)

    async def admit(self, wanted: list[QuotaWant]) -> QuotaTaken:
        """Admits the request (loading the counters met for the first time) or raises QuotaExceeded."""
        wanted, counters = await self._counters(wanted)
        missing = [c for c in counters if not c.loaded]
        while missing:
            await self._load(missing)
            missing = [c for c in missing if not c.loaded]
        return self._take(wanted, counters, self._clock())

    def settle(self, taken: QuotaTaken, tokens_used: int) -> None:
        """Replaces the token estimate by the usage reported (tokens_used < 0: unknown, the estimate stands)."""
        if tokens_used < 0:
            return
        for want, counter in taken.entries:
            if want.quota.tokens and tokens_used != want.cost:
                counter.pending += tokens_used - want.cost  # in the period the request was admitted in
                self._touched.add(counter)

    def refund(self, taken: QuotaTaken) -> None:
        """Gives back everything a request took: another stage refused it after the quotas admitted it."""
        for want, counter in taken.entries:
            counter.pending -= want.cost
            self._touched.add(counter)

    def headers(self, taken: QuotaTaken) -> list[tuple[str, str]]:
        """x-sluice-quota-{limit,remaining,reset}-{requests,tokens} of the tightest quota of each unit."""
        return _headers(list(zip(taken.entries, taken.remaining, strict=True)), self._clock())

    def decision_counts(self) -> dict[tuple[str, ...], int]:
        """(quota, decision) -> count, for /metrics; decisions are admitted, rejected, store_unavailable,
        evicted and unrecorded."""
        return {(q.name, decision): n for q in self.quotas for decision, n in q.counts.items()}

    async def flush(self) -> None:
        """Sends the pending deltas now (and refreshes the counters touched)."""
        async with self._lock:
            await self._push()

    async def aclose(self) -> None:
        """Stops the background sync, sends what is pending, closes the store (once)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()  # it sleeps or waits for the lock: never cancelled inside a store call
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await cancel_and_wait(task, cancel=False)  # cancelled above, under the lock
        await self.flush()
        lost = sum(abs(c.pending) for c in self._touched)
        if lost:
            log.warning("quota store unavailable at shutdown: %g units of quota usage were not saved", lost)
        await self.store.aclose()

    def _period(self, period: str, now: float) -> tuple[str, float]:
        bounds = self._bounds.get(period)
        if bounds is None or not bounds[2] <= now < bounds[1]:
            ident, ends = period_bounds(period, self.zone, now)
            bounds = self._bounds[period] = (ident, ends, now)
        return bounds[0], bounds[1]

    async def _counters(self, wanted: list[QuotaWant]) -> tuple[list[QuotaWant], list[_Counter]]:
        """The counters of ``wanted``, room made for new ones (``_make_room``); when the store fails and
        there is none, the wants without a counter are left out: admitted uncounted, as quotas fail open."""
        for _ in range(_ROOM_TRIES):
            try:
                return wanted, [self._counter(w, self._clock()) for w in wanted]
            except _Full:
                if self._down:  # nothing to wait for: no sync succeeds while the store fails
                    break
                await self._sync_early()
        kept: list[QuotaWant] = []
        counters: list[_Counter] = []
        for want in wanted:
            try:
                counters.append(self._counter(want, self._clock()))
                kept.append(want)
            except _Full:
                want.quota.count("unrecorded")
                if not self._full_warned:
                    self._full_warned = True
                    log.warning("quotas hold %d counters with usage the store has not taken "
                                "(ratelimit.quota_max_subjects): new subjects are admitted uncounted while there is "
                                "no room", len(self._current))
        return kept, counters

    async def _sync_early(self) -> None:
        """One sync now, shared by every request waiting for room: it makes the counters forgettable."""
        task = self._early
        if task is None or task.done():
            task = self._early = asyncio.get_running_loop().create_task(self.flush(), name="sluice-quota-room")
        await asyncio.shield(task)

    def _make_room(self) -> bool:
        """Forgets the counters the store holds in full (nothing pending, in flight, loading or to send),
        the least recently asked first, down to nine tenths of the bound; False if none could go."""
        if self._scanned_dry:  # a scan per new subject would cost O(bound) each: wait for a push
            return False
        touched = self._touched
        idle = [(counter.asked_at, key) for key, counter in self._current.items()
                if not counter.pending and not counter.inflight and counter.loading is None
                and counter not in touched]
        excess = len(self._current) - (self.max_subjects - max(1, self.max_subjects // 10))
        self._scanned_dry = len(idle) < excess
        if not idle:
            return False
        for _, key in heapq.nsmallest(excess, idle, key=lambda entry: entry[0]):
            self._current.pop(key).quota.count("evicted")
        self._full_warned = False
        return True

    def _counter(self, want: QuotaWant, now: float) -> _Counter:
        """Raises _Full when it would be new and there is no room without a sync."""
        ident, ends = self._period(want.quota.period, now)
        key = (want.quota.name, want.subject)
        counter = self._current.get(key)
        if counter is not None and counter.quota is not want.quota:
            counter.quota = want.quota  # the key's quota changed (a new limit): it counts from now on
        if counter is None or counter.period != ident:  # a new subject, or a new period: from 0 in it
            if counter is None and len(self._current) >= self.max_subjects and not self._make_room():
                raise _Full
            counter = self._current[key] = _Counter(want.quota, want.subject, ident, ends, asked_at=now)
            if self._down:  # no request waits for a store known to be down: 0 stands in until a sync answers
                counter.loaded = True
                self._touched.add(counter)
                want.quota.count("store_unavailable")
        return counter

    def _take(self, wanted: list[QuotaWant], counters: list[_Counter], now: float) -> QuotaTaken:
        for counter in counters:
            counter.asked_at = now
        for want, counter in zip(wanted, counters, strict=True):
            if want.cost > counter.remaining():
                self._touched.update(counters)  # refreshed at the next sync: others may have given back
                self._ensure_sync()
                self._reject(want, counter, wanted, counters, now)
        taken = QuotaTaken()
        for want, counter in zip(wanted, counters, strict=True):
            counter.pending += want.cost
            self._touched.add(counter)
            want.quota.count("admitted")
            taken.entries.append((want, counter))
            taken.remaining.append(counter.remaining())
        if wanted:
            self._ensure_sync()
        return taken

    def _reject(self, want: QuotaWant, counter: _Counter, wanted: list[QuotaWant], counters: list[_Counter],
                now: float) -> None:
        quota = want.quota
        quota.count("rejected")
        wait = counter.ends - now
        resets = datetime.fromtimestamp(counter.ends, self.zone)
        headers = _headers([((w, c), c.remaining()) for w, c in zip(wanted, counters, strict=True)], now)
        headers.append(("retry-after", str(max(1, math.ceil(wait)))))
        kind = TokenQuotaExceeded if quota.tokens else QuotaExceeded
        raise kind(f"Quota '{quota.name}' reached on {quota.unit}: limit {quota.limit:g} per {quota.period}. "
                   f"It resets at {resets:%Y-%m-%d %H:%M} {self.zone.key} (in {duration(wait)}).",
                   code="quota_exceeded", headers=tuple(headers))

    async def _load(self, missing: list[_Counter]) -> None:
        fresh = [c for c in missing if c.loading is None]
        if fresh:
            task = asyncio.get_running_loop().create_task(self._load_batch(fresh), name="sluice-quota-load")
            for counter in fresh:
                counter.loading = task
        for task in {c.loading for c in missing if c.loading is not None}:
            await asyncio.shield(task)  # a caller that goes away does not cancel the others' load

    async def _load_batch(self, counters: list[_Counter]) -> None:
        try:
            found = await self.store.load([(c.quota.name, c.subject, c.period) for c in counters])
        except QuotaStoreUnavailable as exc:
            self._failed(exc, counters, "loading")
            found = [0.0] * len(counters)  # fail open: from 0 until a sync answers
            self._touched.update(counters)
            self._ensure_sync()
        else:
            self._recovered()
        finally:
            for counter in counters:
                counter.loading = None
        for counter, used in zip(counters, found, strict=True):
            counter.used = used
            counter.loaded = True

    async def _push(self) -> None:
        """``add`` of every touched counter's pending delta, ``push_chunk`` counters per call; their ``used``
        becomes the store's answer.  A call that fails ends the sync: its counters and the later ones
        keep their deltas for the next."""
        recent = self._clock() - _REFRESHED_FOR_S
        batch = list(self._touched.union(c for c in self._current.values() if c.loaded and c.asked_at >= recent))
        self._touched.clear()
        sent = 0
        try:
            while sent < len(batch):
                chunk = batch[sent:sent + self.push_chunk]
                if not await self._push_chunk(chunk):
                    return
                sent += len(chunk)
        finally:
            if sent < len(batch):
                self._touched.update(batch[sent:])  # sent at the next sync, never lost
        self._sweep(self._clock())

    async def _push_chunk(self, chunk: list[_Counter]) -> bool:
        """One ``add``; False when the store failed (the deltas are pending again)."""
        for counter in chunk:
            counter.inflight, counter.pending = counter.pending, 0.0
        try:
            totals = await self.store.add([(c.quota.name, c.subject, c.period, c.inflight, c.ends) for c in chunk])
        except BaseException as exc:
            for counter in chunk:  # kept for the next sync, never lost
                counter.pending += counter.inflight
                counter.inflight = 0.0
            if not isinstance(exc, QuotaStoreUnavailable):
                raise
            self._failed(exc, chunk, "syncing")
            return False
        self._recovered()
        for counter, total in zip(chunk, totals, strict=True):
            counter.used = total
            counter.inflight = 0.0
        self._scanned_dry = False  # these may be forgotten now
        return True

    def _sweep(self, now: float) -> None:
        """Forgets the counters of periods that ended (their deltas were sent)."""
        if now < self._sweep_at:
            return
        self._sweep_at = now + _SWEEP_EVERY_S
        for key, counter in list(self._current.items()):
            if counter.ends <= now and counter not in self._touched and counter.loading is None:
                del self._current[key]

    def _failed(self, exc: QuotaStoreUnavailable, counters: list[_Counter], doing: str) -> None:
        for quota in {c.quota.name: c.quota for c in counters}.values():
            quota.count("store_unavailable")
        if not self._down:
            self._down = True
            log.warning("quota store unavailable while %s (%s): quotas fail open from what is cached until it "
                        "answers; usage is kept for the next sync", doing, exc)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.warning("quota store answers again: quotas are enforced")

    def _ensure_sync(self) -> None:
        """Starts the background sync on the running loop (the first use, or after a loop change)."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test driving the stage by hand): flush() sends
            return
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._sync_loop(), name="sluice-quota-sync")

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            try:
                await self.flush()
            except Exception:  # a bug, not the store (that fails open): keep syncing
                log.exception("quota sync failed")


def _headers(states: list[tuple[tuple[QuotaWant, _Counter], float]], now: float) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for tokens in (False, True):
        tightest: tuple[Quota, _Counter, float] | None = None
        ratio = math.inf
        for (want, counter), remaining in states:
            if want.quota.tokens is tokens and remaining / want.quota.limit < ratio:
                tightest, ratio = (want.quota, counter, remaining), remaining / want.quota.limit
        if tightest is None:
            continue
        quota, counter, remaining = tightest
        limit_name, remaining_name, reset_name = _HEADER_NAMES[tokens]
        headers += [(limit_name, quota.limit_text), (remaining_name, str(max(0, math.floor(remaining)))),
                    (reset_name, counter.reset_text(now))]
    return headers


_HEADER_NAMES = {tokens: tuple(f"x-sluice-quota-{field}-{'tokens' if tokens else 'requests'}"
                               for field in ("limit", "remaining", "reset")) for tokens in (False, True)}
