"""Rate limits: policies over requests and tokens, local (compiled buckets) or distributed (Redis).

Each policy applies to the requests it matches (models, routes, caller keys)
and counts per subject: the caller's key (by hash, never the key itself), its
client IP (X-Forwarded-For believed only from trusted proxies), the route, the
model, or one global bucket.  A request is admitted only when every policy
admits it, and a rejection by one consumes nothing from the others: local
buckets are checked first without consuming, then the distributed ones are
checked and taken in one Redis round trip (all or nothing), then the local ones
are taken.

Token policies reserve an estimate before the call (a quarter of the body's
bytes for the prompt, plus max_tokens or ``default_max_tokens``) and settle with
the provider's usage afterwards, giving back or taking the difference.

A Redis that fails or is slower than ``redis_timeout_s`` costs at most that
timeout: a ``fail_open`` policy falls back to its local bucket (counted), the
others answer 503.  Policies of scope user and team wait for authentication.

**Hybrid** policies are for rates too high for a round trip per request: each
instance admits from its own credit, synced with the Redis bucket every
``sync_interval_s`` in the background (``sluice.state.hybrid``: the model, its
overshoot, and the bound of ``hybrid_max_subjects`` pairs per process).  At
that bound a subject the process does not hold is checked on Redis per request,
as a distributed policy would (``overflow`` in the decision counts, a warning
logged once per episode).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from .._native import LocalLimiter
from ..auth.credential import key_digest, presented_key
from ..auth.iprules import ClientIp
from ..config import PolicyConfig, RateLimitConfig
from ..errors import LimiterDown, RateLimited, TokensLimited
from ..state.hybrid import HybridSync

if TYPE_CHECKING:
    from types import EllipsisType

    from ..context import Exchange
    from ..state.redis_limits import RedisLimiter
    from .quotas import Quota, Quotas, QuotaTaken, QuotaWant

__all__ = ["Admission", "Caller", "RateLimits", "duration", "key_fingerprint", "own_policy"]


class Caller(Protocol):
    """What the rate limits read of an authenticated caller (sluice.auth.principal.Principal)."""

    @property
    def key_id(self) -> str | None: ...  # the key's id in the key store (or its static name)

    @property
    def user(self) -> str | None: ...

    @property
    def team(self) -> str | None: ...

    @property
    def policies(self) -> tuple[dict[str, Any], ...]: ...  # the key's own rate-limit policies (PolicyConfig fields)

    @property
    def quotas(self) -> tuple[dict[str, Any], ...]: ...  # the key's own quotas (QuotaConfig fields)


def own_policy(raw: dict[str, Any]) -> PolicyConfig:
    """A key's own policy from the key store: PolicyConfig fields, counted per key unless it names a
    scope; ValueError naming the field when it is not one (the admin API checks with this)."""
    try:
        config = msgspec.convert({"scope": "key", **raw}, PolicyConfig)
        # Named apart from the config's policies: its buckets (Redis keys, counters) are its own.
        config = msgspec.structs.replace(config, name=f"own:{config.name}")
        LocalLimiter(config.algorithm.value, config.rate, config.period_s,
                     config.burst if config.burst is not None else config.rate)  # a usable rate, or ValueError
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"invalid rate-limit policy: {exc}") from None
    return config

log = logging.getLogger("sluice.ratelimit")


def key_fingerprint(api_key: str) -> str:
    """What identifies a caller's key in buckets and Redis: a hash prefix, never the key (the digest is computed
    once per key: the auth stage uses the same one)."""
    return key_digest(api_key)[:24]


@dataclass(slots=True, eq=False)  # hashed by identity: a key of the hybrid sync's maps
class Policy:
    name: str
    scope: str
    tokens: bool
    limit: float
    period: float
    burst: float
    algorithm: str
    distributed: bool
    hybrid: bool
    fail_open: bool
    soft: float | None
    models: frozenset[str]
    routes: frozenset[str]
    keys: frozenset[str]
    local: LocalLimiter
    capacity: float = 0.0  # what the headers call the limit: the burst, or a window's limit
    counts: dict[str, int] = field(default_factory=dict)  # decision -> count
    twin: Policy | None = None  # a hybrid policy's distributed twin (``distributed_twin``)
    limit_header: tuple[str, str] = ("", "")  # x-ratelimit-limit-<unit>, written once: it never changes
    per_key: bool = False  # scope key, matching every request: its subject is the key's, no _subject call
    plain: bool = False  # neither on Redis nor hybrid: this process's bucket decides alone

    def __post_init__(self) -> None:
        self.capacity = self.burst if self.algorithm == "token_bucket" else self.limit
        self.limit_header = (_HEADER_NAMES[self.tokens][0], f"{self.capacity:g}")
        self.per_key = self.scope == "key" and not (self.models or self.routes or self.keys)
        self.plain = not (self.distributed or self.hybrid)

    @classmethod
    def build(cls, config: PolicyConfig, limits: RateLimitConfig) -> Policy:
        burst = config.burst if config.burst is not None else config.rate
        mode = config.mode.value if config.mode is not None else ("distributed" if limits.redis else "local")
        shared = limits.redis is not None
        return cls(config.name, config.scope.value, config.unit.value == "tokens", config.rate, config.period_s,
                   burst, config.algorithm.value, mode == "distributed" and shared, mode == "hybrid" and shared,
                   config.fail_open, config.soft_limit if config.soft_limit is not None else limits.soft_limit,
                   frozenset(config.match.models), frozenset(config.match.routes),
                   frozenset(key_fingerprint(k) for k in config.match.keys),
                   LocalLimiter(config.algorithm.value, config.rate, config.period_s, burst))

    def count(self, decision: str) -> None:
        self.counts[decision] = self.counts.get(decision, 0) + 1

    def distributed_twin(self) -> Policy:
        """This hybrid policy checked on Redis per request, for a subject the process has no room for:
        the same name (so the same Redis bucket), limits, local fallback and decision counts."""
        if self.twin is None:
            self.twin = replace(self, distributed=True, hybrid=False)
        return self.twin


# What one policy took: (policy, subject, cost, on Redis, remaining after, seconds to full).
Taken = tuple[Policy, str, float, bool, float, float]
Wanted = tuple[Policy, str, float]  # (policy, subject, cost)


@dataclass(slots=True, eq=False)  # compared by identity: the stage tests ``admission != "await"`` per request
class Admission:
    """What a request took, for its response headers and for settling its tokens afterwards."""

    taken: list[Taken] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    quota: QuotaTaken | None = None  # what the daily and monthly quotas took
    settles: bool = True  # a token policy or a quota took from it: ``settle`` has work once the answer is in


class RateLimits:
    def __init__(self, config: RateLimitConfig, redis: RedisLimiter | None = None,
                 quotas: Quotas | None = None) -> None:
        self.policies = [Policy.build(p, config) for p in config.policies]
        self._config = config
        self._key_policies: dict[str | None, tuple[tuple[dict[str, Any], ...], list[Policy]]] = {}
        self.redis = redis
        self.quotas = quotas
        self.default_max_tokens = config.default_max_tokens
        # The caller's address (X-Forwarded-For from trusted proxies only): the auth stage's IP rules use the same.
        self.client_ip = ClientIp(config.trusted_proxies)
        self._wants_key = any(p.scope == "key" or p.keys for p in self.policies) or quotas is not None
        self._key_subjects: dict[str, tuple[str, str]] = {}  # a key -> (its fingerprint, "key:<fingerprint>"), bounded
        self.remote = any(p.distributed for p in self.policies)  # some policy needs Redis: admit() awaits
        self._plain = all(p.plain for p in self.policies)  # the config's policies never need Redis nor a sync
        # Nothing of the config's own applies to anyone: only a key's own policies or quotas (auth on) can.  The
        # admission stage then skips a caller whose key carries none, read from its principal per request, so
        # a key given limits later (admin API, change feed) is limited from its next request on.
        self.idle = not self.policies and (quotas is None or not quotas.quotas)
        self.fails_closed = any((p.distributed or p.hybrid) and not p.fail_open for p in self.policies)
        self._pending: set[asyncio.Task[None]] = set()
        self.hybrid: HybridSync[Policy] = HybridSync(
            redis, interval_s=config.sync_interval_s, timeout_s=max(config.redis_timeout_s, config.sync_interval_s),
            max_subjects=config.hybrid_max_subjects, fails_closed=self.fails_closed, spill=self._adjust_remote)
        # The hybrid credit's map and bound, read per request as plain attributes (HybridSync.full() is the same
        # test behind a method call, kept off the hot path; the sync never rebinds the map).
        self._credit = self.hybrid.credit
        self.max_subjects = self.hybrid.max_subjects

    def admit_local(self, ex: Exchange, route: str, model: str, body_size: int, max_tokens: int | None,
                    caller: Caller | None = None, *,
                    key: str | EllipsisType | None = ...) -> Admission | Literal["await"] | None:
        """The admission when nothing needs Redis: no await, the fast path (None: nothing applies).

        "await" when it cannot decide without one (a quota meeting a subject for the first time in this
        process, a caller's own distributed policy): then ``admit``.
        """
        wanted, quota_wanted = self._wants(ex, route, model, body_size, max_tokens, caller, key)
        own = caller is not None and caller.policies
        if (self.remote or own) and any(policy.distributed for policy, _, _ in wanted):
            return "await"
        if len(self._credit) >= self.max_subjects and self._overflowing(wanted):
            return "await"  # a hybrid subject this process has no room for: checked on Redis
        quota = None
        if quota_wanted:
            assert self.quotas is not None
            quota = self.quotas.admit_cached(quota_wanted)
            if quota is None:
                return "await"
        if not wanted and quota is None:
            return None
        if self._plain and not own and quota is None:
            return _take_plain(wanted, time.monotonic())
        try:
            if self.hybrid.down:
                _refuse_unsynced(wanted)
            now = time.monotonic()
            self._check_local(wanted, now)
            return self._take_local(wanted, now, Admission(quota=quota))
        except BaseException:  # a rejection (or anything else) takes nothing from the quotas either
            self._refund_quota(quota)
            raise

    async def admit(self, ex: Exchange, route: str, model: str, body_size: int, max_tokens: int | None,
                    caller: Caller | None = None, *, key: str | EllipsisType | None = ...) -> Admission | None:
        """Admits the request or raises RateLimited / LimiterDown; the admission carries its headers.

        ``key`` is the caller's credential when the caller read it already (``ctx.credential``); else it is read
        from ``ex``'s headers."""
        wanted, quota_wanted = self._wants(ex, route, model, body_size, max_tokens, caller, key)
        quota = None
        if quota_wanted:
            assert self.quotas is not None
            quota = self.quotas.admit_cached(quota_wanted) or await self.quotas.admit(quota_wanted)
        if not wanted and quota is None:
            return None
        try:
            return await self._admit_policies(wanted, Admission(quota=quota))
        except BaseException:  # a rejection, a cancellation: the quotas get back what they gave
            self._refund_quota(quota)
            raise

    def _wants(self, ex: Exchange, route: str, model: str, body_size: int, max_tokens: int | None,
               caller: Caller | None, key: str | EllipsisType | None) -> tuple[list[Wanted], list[QuotaWant]]:
        """The policies and quotas this request falls under, with their subjects and costs."""
        key_print = key_subject = None
        if self._wants_key or caller is not None:
            if key is ...:
                key = presented_key(ex)
            if key:
                subjects = self._key_subjects.get(key)
                if subjects is None:
                    subjects = self._key_subject(key)
                key_print, key_subject = subjects
        estimate = float(body_size // 4 + (self.default_max_tokens if max_tokens is None else max(max_tokens, 0)))
        user = team = None
        policies = self.policies
        quota_extra: list[Quota] = []
        if caller is not None:
            user, team = caller.user, caller.team
            if caller.policies:
                policies = [*policies, *self._own_policies(caller)]
            if caller.quotas and self.quotas is not None:
                quota_extra = self.quotas.own_quotas(caller.key_id, caller.quotas)
        wanted = []
        for policy in policies:
            subject = key_subject if policy.per_key else self._subject(policy, ex, route, model, key_print, user,
                                                                        team)
            if subject is not None:
                wanted.append((policy, subject, estimate if policy.tokens else 1.0))
        quotas = self.quotas
        quota_wanted = (quotas.wanted(route, model, key_print, user, team, estimate, quota_extra)
                        if quotas is not None and (quotas.quotas or quota_extra) else [])
        return wanted, quota_wanted

    def _key_subject(self, key: str) -> tuple[str, str]:
        """A key's fingerprint and its per-key subject, computed once per key (bounded: a flood of keys cannot
        grow it)."""
        subjects = self._key_subjects
        if len(subjects) >= 10_000:
            subjects.clear()
        fingerprint = key_fingerprint(key)
        subjects[key] = found = (fingerprint, f"key:{fingerprint}")
        return found

    def _own_policies(self, caller: Caller) -> list[Policy]:
        """The policies a key carries in the key store, built once per version of them."""
        cached = self._key_policies.get(caller.key_id)
        if cached is None or cached[0] is not caller.policies:
            if len(self._key_policies) >= 10_000:
                self._key_policies.clear()
            built = [Policy.build(own_policy(raw), self._config) for raw in caller.policies]
            cached = self._key_policies[caller.key_id] = (caller.policies, built)
        return cached[1]

    def _refund_quota(self, quota: QuotaTaken | None) -> None:
        if quota is not None and self.quotas is not None:
            self.quotas.refund(quota)

    async def _admit_policies(self, wanted: list[Wanted], admission: Admission) -> Admission:
        if self.hybrid.down:
            _refuse_unsynced(wanted)
        if len(self._credit) >= self.max_subjects:
            wanted = self._overflow(wanted)
        now = time.monotonic()
        local = [w for w in wanted if not w[0].distributed]
        remote = [w for w in wanted if w[0].distributed]
        self._check_local(local, now)
        if remote:
            await self._take_remote(remote, local, admission)
            now = time.monotonic()
            try:
                self._check_local(local, now)  # others may have taken from them while Redis answered
            except RateLimited:
                self._refund_remote(admission)  # a rejection takes nothing from the other policies
                raise
        return self._take_local(local, now, admission)

    def _refund_remote(self, admission: Admission) -> None:
        for policy, subject, cost, remote, _, _ in admission.taken:
            if remote:
                self._adjust_remote(policy, subject, cost)

    def _take_local(self, local: list[Wanted], now: float, admission: Admission) -> Admission:
        taken = admission.taken
        for policy, subject, cost in local:
            if policy.hybrid:
                self.hybrid.take(policy, subject, cost, now)
                taken.append((policy, subject, cost, False, *self.hybrid.view(policy, subject)))
                continue
            limiter = policy.local
            limiter.consume(subject, cost, now)
            taken.append((policy, subject, cost, False, limiter.remaining(subject, now),
                          limiter.reset_after(subject, now)))
        for entry in taken:
            entry[0].count("admitted")
        admission.settles = admission.quota is not None or any(entry[0].tokens for entry in taken)
        admission.headers, warned = _state_headers(taken)
        if admission.quota is not None and self.quotas is not None:
            admission.headers += self.quotas.headers(admission.quota)
        if warned is not None:
            warned.count("warned")
            log.info("soft rate limit passed on policy %s", warned.name)
        return admission

    def decision_counts(self) -> dict[tuple[str, ...], int]:
        """(policy, decision) -> count, for /metrics."""
        return {(p.name, decision): n for p in self.policies for decision, n in p.counts.items()}

    def _subject(self, policy: Policy, ex: Exchange, route: str, model: str, key: str | None, user: str | None,
                 team: str | None) -> str | None:
        if policy.models and model not in policy.models:
            return None
        if policy.routes and route not in policy.routes:
            return None
        if policy.keys and key not in policy.keys:
            return None
        scope = policy.scope
        if scope == "key":
            return f"key:{key}" if key else None
        if scope == "ip":
            return f"ip:{self.client_ip(ex)}"
        if scope == "route":
            return f"route:{route}"
        if scope == "model":
            return f"model:{model}"
        if scope == "global":
            return "global"
        if scope == "user":
            return f"user:{user}" if user else None
        return f"team:{team}" if team else None

    def _check_local(self, wanted: list[Wanted], now: float) -> None:
        for policy, subject, cost in wanted:
            if policy.hybrid:
                hybrid = self.hybrid
                wait = hybrid.wait(policy, subject, cost)
                if wait > 0:
                    hybrid.touch(policy, subject, now)  # still asked for: kept in the sync
                    self._reject(policy, wait, [(policy, subject, cost, False, *hybrid.view(policy, subject))])
                continue
            wait = policy.local.check(subject, cost, now)
            if wait > 0:
                self._reject(policy, wait, [(policy, subject, cost, False, policy.local.remaining(subject, now),
                                             policy.local.reset_after(subject, now))])

    async def _take_remote(self, remote: list[Wanted], local: list[Wanted], admission: Admission) -> None:
        from ..state.redis_limits import Check, LimiterUnavailable

        assert self.redis is not None
        checks = [Check(p.name, s, p.algorithm, p.limit, p.period, p.burst, c) for p, s, c in remote]
        try:
            decision = await self.redis.acquire(checks)
        except LimiterUnavailable as exc:
            closed = [p for p, _, _ in remote if not p.fail_open]
            for policy, _, _ in remote:
                policy.count("redis_unavailable")
            suppressed = self.redis.warnings.due()  # one line per interval, not one per request
            if suppressed is not None:
                log.warning("rate limiter Redis unavailable (%s): %s%s", exc,
                            "failing closed" if closed else "falling back to local buckets",
                            self.redis.warnings.suffix(suppressed))
            if closed:
                raise LimiterDown(f"The rate limiter is unavailable for policy '{closed[0].name}'; "
                                  "the request was not sent.", code="ratelimiter_unavailable") from None
            local.extend(remote)  # fail open: this instance's buckets stand in
            self._check_local(remote, time.monotonic())
            return
        states = [(p, s, c, True, r.remaining, r.reset_after) for (p, s, c), r in zip(remote, decision.results,
                                                                                      strict=True)]
        _mirror(states)
        if not decision.allowed:
            for (policy, _, _), result in zip(remote, decision.results, strict=True):
                if not result.allowed:
                    self._reject(policy, result.retry_after, states)
        admission.taken.extend(states)

    @staticmethod
    def _reject(policy: Policy, wait: float, states: list[Taken]) -> None:
        policy.count("rejected")
        unit = "tokens" if policy.tokens else "requests"
        retry = "a while" if math.isinf(wait) else f"{wait:.3g}s"
        headers = _state_headers(states)[0]
        if not math.isinf(wait):
            headers += [("retry-after", str(max(1, math.ceil(wait)))), ("retry-after-ms", str(math.ceil(wait * 1000)))]
        kind = TokensLimited if policy.tokens else RateLimited
        raise kind(f"Rate limit reached for policy '{policy.name}' on {unit}: limit {policy.capacity:g} per "
                            f"{policy.period:g}s. Please try again in {retry}.", code="rate_limit_exceeded",
                            headers=tuple(headers))

    def settle(self, admission: Admission, tokens_used: int) -> None:
        """Gives back (or takes) the difference between a token reservation and the usage reported."""
        if tokens_used < 0:
            return
        if admission.quota is not None and self.quotas is not None:
            self.quotas.settle(admission.quota, tokens_used)  # no usage reported: the reservation stands
        now = time.monotonic()
        for policy, subject, cost, remote, _, _ in admission.taken:
            if not policy.tokens:
                continue
            delta = cost - tokens_used
            if remote:
                self._adjust_remote(policy, subject, delta)
            elif policy.hybrid:
                self.hybrid.take(policy, subject, -delta, now)
            else:
                policy.local.adjust(subject, delta, now)

    def _adjust_remote(self, policy: Policy, subject: str, delta: float) -> None:
        """Gives back (or takes) units on Redis in the background: nobody waits for it."""
        if self.redis is None:
            return
        task = asyncio.get_running_loop().create_task(
            self.redis.adjust(policy.name, subject, policy.algorithm, policy.limit, policy.period, policy.burst,
                              delta))
        self._pending.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            gate = self.redis.warnings if self.redis is not None else None
            suppressed = gate.due() if gate is not None else 0
            if suppressed is not None:
                log.warning("settling tokens on Redis failed: %s%s", task.exception(),
                            gate.suffix(suppressed) if gate is not None else "")

    # -- hybrid mode -------------------------------------------------------------------------

    def _overflowing(self, wanted: list[Wanted]) -> bool:
        credit = self._credit
        return any(policy.hybrid and (policy, subject) not in credit for policy, subject, _ in wanted)

    def _overflow(self, wanted: list[Wanted]) -> list[Wanted]:
        """At the bound: the hybrid checks of subjects this process does not hold go to Redis, exact."""
        if not self._overflowing(wanted):
            return wanted
        self.hybrid.warn_full()
        routed: list[Wanted] = []
        for policy, subject, cost in wanted:
            if policy.hybrid and (policy, subject) not in self._credit:
                policy.count("overflow")
                policy = policy.distributed_twin()
            routed.append((policy, subject, cost))
        return routed

    def credit(self, policy_name: str, subject: str) -> float:
        """What this instance may still take on a hybrid policy before its next sync (signed)."""
        policy = next(p for p in self.policies if p.name == policy_name)
        return self.hybrid.level(policy, subject)

    async def aclose(self) -> None:
        """Stops the hybrid sync after a last push, and closes the Redis client."""
        await self.hybrid.aclose()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
        if self.quotas is not None:
            await self.quotas.aclose()

    def sweep(self) -> None:
        now = time.monotonic()
        for policy in self.policies:
            policy.local.sweep(now)


def _mirror(states: list[Taken]) -> None:
    """Redis' level of each fail-open policy's subject, copied into the policy's local bucket: if Redis fails,
    the bucket that stands in starts where Redis was, not full (it refills at the policy's rate from there)."""
    now = time.monotonic()
    for policy, subject, _, _, remaining, _ in states:
        if policy.fail_open:
            local = policy.local
            local.adjust(subject, remaining - local.remaining(subject, now), now)


def _take_plain(wanted: list[Wanted], now: float) -> Admission:
    """``_check_local`` then ``_take_local`` for policies this process's buckets decide alone (none on Redis,
    none hybrid, no quota): the per-request path of local rate limits, in one call and with headers read from
    tables (``_state_headers``' answer for them)."""
    for policy, subject, cost in wanted:  # every policy first: a refusal takes nothing from the others
        limiter = policy.local
        wait = limiter.check(subject, cost, now)
        if wait > 0:
            RateLimits._reject(policy, wait, [(policy, subject, cost, False, limiter.remaining(subject, now),
                                               limiter.reset_after(subject, now))])
    taken: list[Taken] = []
    settles = False
    for policy, subject, cost in wanted:
        limiter = policy.local
        limiter.consume(subject, cost, now)
        taken.append((policy, subject, cost, False, limiter.remaining(subject, now), limiter.reset_after(subject, now)))
        counts = policy.counts
        counts["admitted"] = counts.get("admitted", 0) + 1
        settles = settles or policy.tokens
    if len(taken) == 1 and taken[0][0].soft is None:  # one policy, no soft limit: it is the tightest of its unit
        policy, _, _, _, remaining, reset = taken[0]
        _, remaining_name, reset_name = _HEADER_NAMES[policy.tokens]
        headers = [policy.limit_header, (remaining_name, _count_text(remaining)), (reset_name, duration(reset))]
        return Admission(taken, headers, None, settles)
    headers, warned = _state_headers(taken)
    if warned is not None:
        warned.count("warned")
        log.info("soft rate limit passed on policy %s", warned.name)
    return Admission(taken, headers, None, settles)


def _count_text(remaining: float) -> str:
    """What x-ratelimit-remaining-* says: the whole units left, never below 0."""
    whole = math.floor(remaining) if remaining > 0 else 0
    return _SMALL[whole] if whole < _SMALL_MAX else str(whole)


_SMALL_MAX = 1024
_SMALL = [str(i) for i in range(_SMALL_MAX)]  # the small counts' texts, made once


def _refuse_unsynced(wanted: list[Wanted]) -> None:
    """503 for a fail-closed hybrid policy while its syncs with Redis fail."""
    for policy, _, _ in wanted:
        if policy.hybrid and not policy.fail_open:
            policy.count("redis_unavailable")
            raise LimiterDown(f"The rate limiter is unavailable for policy '{policy.name}'; the request was not "
                              "sent.", code="ratelimiter_unavailable")


# x-ratelimit-limit-, -remaining- and -reset- of each unit, by Policy.tokens.
_HEADER_NAMES = {tokens: tuple(f"x-ratelimit-{part}-{'tokens' if tokens else 'requests'}"
                               for part in ("limit", "remaining", "reset")) for tokens in (False, True)}


def _state_headers(states: list[Taken]) -> tuple[list[tuple[str, str]], Policy | None]:
    """OpenAI's x-ratelimit-* headers for the tightest request and token policies, and a soft limit passed."""
    headers: list[tuple[str, str]] = []
    warned = None
    for tokens in (False, True):
        tightest: Taken | None = None
        ratio = math.inf
        for state in states:
            policy = state[0]
            if policy.tokens is tokens and state[4] / policy.capacity < ratio:
                tightest, ratio = state, state[4] / policy.capacity
        if tightest is None:
            continue
        policy, remaining, reset = tightest[0], tightest[4], tightest[5]
        _, remaining_name, reset_name = _HEADER_NAMES[tokens]
        headers += [policy.limit_header, (remaining_name, _count_text(remaining)), (reset_name, duration(reset))]
        if policy.soft is not None and ratio < 1 - policy.soft:
            warned = policy
            unit = "tokens" if tokens else "requests"
            headers.append(("x-sluice-ratelimit-warning", f"policy '{policy.name}' is past "
                                                          f"{policy.soft:.0%} of its {unit} limit"))
    return headers, warned


def duration(seconds: float) -> str:
    """A reset time the way OpenAI writes it: 20ms, 1s, 6m0s, 1h2m3s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return _MILLISECONDS[math.ceil(seconds * 1000)]
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


_MILLISECONDS = [f"{ms}ms" for ms in range(1001)]  # a reset under a second: made once, read per request
