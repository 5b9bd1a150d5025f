"""Hybrid rate limits: each instance admits from its own credit, synced with the Redis bucket in the background.

For rates too high for a round trip per request (``mode: hybrid``; the stage is
``sluice.pipeline.ratelimit``).  Each instance (each worker) admits from its own
credit, without waiting: Redis' level at the last sync minus what it took since.
Every ``interval_s`` it pushes those takes to the Redis bucket in one pipelined
round trip (``RedisLimiter.sync``) and adopts the (signed) level Redis answers.
Refills reach an instance only through syncs, so check-config refuses a bucket
that would refill more than half its burst in one sync interval.  The
trade-off: between two syncs each of N instances may spend the whole credit it
last saw, so a burst can admit up to (N - 1) x burst more than the limit; that
excess is kept in full as debt in Redis, never clamped, and the next syncs hand
it to every instance, so over longer spans the admitted rate is the limit
(bench/hybrid_accuracy.py measures both).  Hybrid policies are token buckets: a
window forgets within two periods what the instances overspent, so its
overshoot would come back every period.  A subject an instance has not synced
yet (or forgot, idle long enough to be full again) starts full there.  While
Redis fails, hybrid policies go on from their credit (``fail_open``, refilled
by nothing) or answer 503 until a sync succeeds (``down``).

**Bounded memory.**  An instance keeps at most ``max_subjects`` (policy,
subject) pairs (a flood of random IPs or keys cannot grow it).  At the bound
(``full``) the stage checks a subject it does not hold on Redis per request, as
a distributed policy would (the same bucket: exact, one round trip), and the
pair never enters the maps; nothing is evicted that is not synced, so no usage
is lost and no subject gets a fresh bucket because of the bound.  A pair leaves
only through a sync: once pushed, and idle until its bucket would be full again
(at the bound, without the ten intervals' grace).  Syncs go in round trips of at
most ``SYNC_CHUNK`` keys.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ..tasks import cancel_and_wait

if TYPE_CHECKING:
    from .redis_limits import RedisLimiter

__all__ = ["HybridPolicy", "HybridSync"]

log = logging.getLogger("sluice.ratelimit")


class HybridPolicy(Protocol):
    """What the sync reads of a policy (``sluice.pipeline.ratelimit.Policy``); hashed by identity."""

    name: str
    algorithm: str
    limit: float
    period: float
    burst: float
    capacity: float

    def count(self, decision: str) -> None: ...


P = TypeVar("P", bound=HybridPolicy)


class HybridSync(Generic[P]):
    """One instance's credit per (policy, subject) of hybrid policies, and its sync with Redis.

    ``spill(policy, subject, cost)`` takes units straight from the Redis bucket, in the background: a take
    for a pair there is no room for (``take`` never loses units).
    """

    def __init__(self, redis: RedisLimiter | None, *, interval_s: float, timeout_s: float, max_subjects: int,
                 fails_closed: bool, spill: Callable[[P, str, float], None]) -> None:
        self.redis = redis
        self.interval_s = interval_s
        self.timeout_s = timeout_s  # of one sync: the longer of the Redis timeout and the interval
        self.max_subjects = max_subjects
        self.fails_closed = fails_closed  # a fail-closed hybrid policy answers 503 while syncs fail (logged)
        self._spill = spill
        # The three hold the same pairs (unsynced some of them), at most max_subjects: a pair enters at a take
        # when there is room and leaves at a sync, once synced and idle (``sync``).  ``credit`` is never
        # rebound: the stage may keep a reference to it for its per-request bound check.
        self.credit: dict[tuple[P, str], float] = {}  # Redis' level at the last sync - takes since
        self.unsynced: dict[tuple[P, str], float] = {}  # taken here since the last sync
        self.active: dict[tuple[P, str], float] = {}  # last local take, to refresh the view
        self._synced_at = -math.inf  # when credit last adopted Redis' levels (monotonic)
        self._full_warned = False  # the bound was met: warned once, until a sync finds room again
        self._task: asyncio.Task[None] | None = None
        self._syncing = False  # the task is inside sync(): aclose lets it finish instead of cancelling
        self._closing = False
        self.down = False  # the last sync failed

    # -- the request side -----------------------------------------------------------------------------

    def full(self) -> bool:
        return len(self.credit) >= self.max_subjects

    def warn_full(self) -> None:
        """Once per episode at the bound: new subjects go to Redis until syncs forget idle ones."""
        if not self._full_warned:
            self._full_warned = True
            log.warning("hybrid rate limits hold %d subjects (ratelimit.hybrid_max_subjects): new subjects are "
                        "checked on Redis, one round trip per request, until syncs forget idle ones",
                        len(self.credit))

    def take(self, policy: P, subject: str, cost: float, now: float) -> None:
        """Takes ``cost`` from the credit (a negative cost gives back), to be pushed at the next sync."""
        key = (policy, subject)
        credit = self.credit.get(key)
        if credit is None:
            if len(self.credit) >= self.max_subjects:
                # No room (filled while this request waited, or a settlement after a sync forgot it):
                # the units go straight to the Redis bucket, never lost.
                self._spill(policy, subject, -cost)
                return
            credit = policy.capacity
        self.credit[key] = credit - cost
        self.unsynced[key] = self.unsynced.get(key, 0.0) + cost
        self.active[key] = now
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    def wait(self, policy: P, subject: str, cost: float) -> float:
        """0 when the credit covers ``cost``; else the seconds until the refill would (learnt at a sync)."""
        credit = self.credit.get((policy, subject), policy.capacity)
        if cost <= credit:
            return 0.0
        if cost > policy.capacity:
            return math.inf
        return max((cost - credit) * policy.period / policy.limit, self.interval_s)

    def touch(self, policy: P, subject: str, now: float) -> None:
        """A refused request still asks for the subject: it stays in the syncs (if held)."""
        if (policy, subject) in self.credit:
            self.active[policy, subject] = now

    def level(self, policy: P, subject: str) -> float:
        """What this instance may still take before its next sync (signed)."""
        return self.credit.get((policy, subject), policy.capacity)

    def view(self, policy: P, subject: str) -> tuple[float, float]:
        """(remaining, seconds until full) as this instance sees them."""
        credit = self.credit.get((policy, subject), policy.capacity)
        return max(credit, 0.0), (policy.capacity - credit) * policy.period / policy.limit

    # -- the sync -------------------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        # A flag as well as the cancel: redis-py may turn a cancellation into a connection error,
        # which sync() takes for Redis failing.
        while not self._closing:
            await asyncio.sleep(self.interval_s)
            self._syncing = True
            try:
                await self.sync()
            finally:
                self._syncing = False

    async def sync(self) -> None:
        """Pushes the takes of this instance to Redis and adopts Redis' levels as its credit.

        Subjects taken from in the last ten intervals are refreshed even when idle here, so that
        another instance's spending reaches this one's view before its next request.  A subject
        leaves only here, with nothing unsynced and idle until its bucket would be full again (at
        ``max_subjects``, without the ten intervals' grace): coming back, it starts full, as it
        would be.  Round trips of at most ``SYNC_CHUNK`` keys (``RedisLimiter.sync``).
        """
        assert self.redis is not None
        from .redis_limits import Check, LimiterUnavailable  # the Redis client is loaded only when configured

        now = time.monotonic()
        grace = 0.0 if self.full() else 10 * self.interval_s
        unsynced = self.unsynced
        self.active = {key: at for key, at in self.active.items()
                       if key in unsynced or not self._forgotten(key, at, now, grace)}
        for key in self.credit.keys() - self.active.keys():
            del self.credit[key]
        if self._full_warned and not self.full():
            self._full_warned = False
        pushed, self.unsynced = unsynced, {}
        keys = list(self.active)  # every pair pushed is in it: unsynced ones are never forgotten
        if not keys:
            return
        takes = [Check(p.name, s, p.algorithm, p.limit, p.period, p.burst, pushed.get((p, s), 0.0)) for p, s in keys]
        try:
            levels = await self.redis.sync(takes, self.timeout_s)
        except BaseException as exc:
            answered = exc.answered if isinstance(exc, LimiterUnavailable) else []
            for i, key in enumerate(keys):  # not applied (or maybe, unanswered): kept for the next sync
                cost = pushed.get(key)
                if cost is not None and (i >= len(answered) or answered[i] is None):
                    self.unsynced[key] = self.unsynced.get(key, 0.0) + cost
            self._adopt(keys, answered)
            if not isinstance(exc, LimiterUnavailable):
                raise  # cancelled (shutdown: aclose pushes them once more) or a bug
            for policy in {p for p, _ in keys}:
                policy.count("redis_unavailable")
            if not self.down:
                log.warning("hybrid rate-limit sync failed (%s): serving from local buckets%s", exc,
                            "; fail-closed hybrid policies answer 503" if self.fails_closed else "")
            self.down = True
            return
        self.down = False
        self._adopt(keys, levels)

    def _adopt(self, keys: list[tuple[P, str]], levels: Sequence[float | None]) -> None:
        """Redis' levels (of the first ``len(levels)`` keys, but None) become this instance's credit."""
        if not levels:
            return
        unsynced = self.unsynced
        for key, level in zip(keys, levels, strict=False):
            if level is not None:  # what was taken here while Redis answered is not in its level yet
                self.credit[key] = level - unsynced.get(key, 0.0)
        self._synced_at = time.monotonic()  # no earlier than Redis read them: refills are counted from here

    def _forgotten(self, key: tuple[P, str], at: float, now: float, grace: float) -> bool:
        """A subject nobody asked for here in ``grace`` and whose bucket is full again by now unless others
        took from it (its credit refilling since the later of its last take and the last sync): it leaves
        the sync, and starts full here if it comes back."""
        policy = key[0]
        refill = (policy.capacity - self.credit.get(key, policy.capacity)) * policy.period / policy.limit
        return now - at > grace and now - max(at, self._synced_at) > refill

    async def aclose(self) -> None:
        """Stops the background sync after a last push (the Redis client is its owner's to close)."""
        self._closing = True
        if self._task is not None:
            # Asleep: cancelled.  A sync under way ends by itself (cancelled, its pushed round trips would be
            # pushed again below).
            await cancel_and_wait(self._task, cancel=not self._syncing)
            self._task = None
            await self.sync()
