"""Rate-limit checks on Redis: one round trip per request, atomic per policy, Redis' clock.

The model (the same as the in-process twin):

- **Token bucket**: capacity ``burst``, refilled at ``limit / period`` units per
  second, full at first sight.  Stored as ``{t: tokens, ts: time}``; the tokens
  of now are computed from them when read.  An absent key is a full bucket, so
  a key expires once it would be full again.
- **Sliding window**: at most ``limit`` units per ``period``, estimated with two
  fixed windows: the current window's count plus the previous window's count
  weighted by the part of the previous window the sliding one still covers.
  Windows are aligned on Redis' epoch.  Stored as ``{w: window, c: count,
  p: previous count}``; a key expires two periods after its last write, when it
  no longer counts.  ``burst`` is ignored.

One ``acquire`` is one EVALSHA of one Lua script holding every check of the
request: the script reads all the states, decides, and consumes from all of
them only when all admit (all or nothing), so a rejection by one policy takes
nothing from the others and concurrent gateways cannot interleave (two checks
on the same policy and subject in one call see each other's take).  The script
reads the time with ``TIME`` (allowed in scripts with effects replication, the
default since Redis 5), so the gateways' clocks never matter.

Key names are ``<prefix>:<tb|sw>:{<policy_id>:<key>}``: the hash tag makes every
key of one subject land in one Redis Cluster slot (``%``, ``:``, ``{`` and
``}`` in the policy id, and ``%``, ``{``, ``}`` in the key, are
percent-escaped so names cannot collide and tags stay whole).

On **Redis Cluster** (a ``redis.asyncio.RedisCluster`` client) the keys of one
request live in different slots, which one script call cannot touch.  There
the checks go as one pipelined EVALSHA per check (one round trip per node, in
parallel), and when one rejected, the checks that admitted are refunded by a
second pipeline.  That is all or nothing in outcome but not atomic: between
the two round trips a concurrent request may see the units taken, and if the
second round trip fails (or a node fails in the first) the units taken stay
taken until they refill.

**Settlement** (``adjust``) gives back (delta > 0) or takes more (delta < 0)
after the call, when the provider reported its usage.  A bucket never holds
more than ``burst`` and never less than ``-burst``: a huge underestimate puts
the key in debt for at most two bucket-fills, never forever.  A window gives
back from its current count first, then from the previous one, never below
zero; it takes more without a bound, as a window forgets everything within two
periods anyway.

**Failures**: each call is bounded by ``asyncio.timeout(timeout_s)``; a timeout,
a connection error or any error answered by Redis raises ``LimiterUnavailable``
(its ``__cause__`` is the original), and the caller applies its fail-open or
fail-closed policy.  A call that timed out after it was sent may still be
applied when Redis catches up: the units count against the caller, and the
call is never resent (only a dropped connection is retried, once, by the
client of ``connect``).  The client reconnects by itself on the next call.

**Short circuit** (``Circuit``): after ``BREAKER_FAILURES`` calls in a row
failed (timed out, refused, answered an error), ``acquire`` and ``adjust``
fail at once, without touching Redis, for ``BREAKER_OPEN_S``; then one call is
let through as a probe (the others still fail at once meanwhile): its success
closes the circuit, its failure opens it again.  So a hung Redis costs
``timeout_s`` to a few requests per cool-down, not to every request.  The
readiness ping and the hybrid syncs (in the background) do not go through it.

**Warnings** about Redis failing go through ``warnings`` (a ``LogGate``): one
line per ``LOG_EVERY_S`` with the count of those suppressed since.  The
script is loaded at first use (SCRIPT LOAD) and called by its SHA; after a
NOSCRIPT (a restart, SCRIPT FLUSH, a new cluster primary) it is loaded again
and the call retried once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from ..errors import DependencyUnavailable

__all__ = ["BREAKER_FAILURES", "BREAKER_OPEN_S", "LOG_EVERY_S", "SYNC_CHUNK", "Check", "Circuit", "Decision",
           "LimiterUnavailable", "LogGate", "RedisLimiter", "Result", "key_name"]

SCRIPT = """
-- sluice rate limits; the model is in sluice/state/redis_limits.py.
-- ARGV[1] is the mode.  "acquire": one key per check; from ARGV[2], five values
-- per check: algorithm ("tb" token bucket, "sw" sliding window), limit, period
-- (s), burst, cost.  All checks are evaluated, then all are consumed only if all
-- admit.  Reply: {all admitted, then per check: admitted, remaining,
-- reset_after, retry_after}.  "adjust": one key, the same five values with a
-- delta (> 0 gives back, < 0 takes more) for the cost, and optionally the
-- lowest a bucket may go (default -burst); reply: {remaining, reset_after}.
-- Numbers go back as strings (a Lua number would be truncated).
-- Time is Redis' clock in microseconds (exact in a double).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local function str(x) return string.format('%.17g', x) end

-- Token bucket: state = tokens now; an absent key is a full bucket.
local function tb_read(c)
  local s = redis.call('HMGET', c.key, 't', 'ts')
  if not s[1] then return c.burst end
  local elapsed = now - tonumber(s[2])
  if elapsed < 0 then elapsed = 0 end -- after a failover to a node whose clock is behind
  return math.min(c.burst, tonumber(s[1]) + elapsed / 1e6 * c.rate)
end

local function tb_write(c, tokens)
  redis.call('HSET', c.key, 't', str(tokens), 'ts', str(now))
  -- forgotten when full again: an absent key reads as a full bucket
  redis.call('PEXPIRE', c.key, math.max(1, math.ceil((c.burst - tokens) / c.rate * 1000)))
end

local function tb_describe(c, tokens)
  return tokens, (c.burst - tokens) / c.rate
end

local function tb_check(c, tokens)
  if c.cost <= tokens then return tokens - c.cost, 0 end
  if c.cost > c.burst then return nil, math.huge end
  return nil, (c.cost - tokens) / c.rate
end

-- Sliding window: state = {window index, its count, previous window's count}.
local function sw_read(c)
  local w = math.floor(now / c.period)
  local s = redis.call('HMGET', c.key, 'w', 'c', 'p')
  if s[1] then
    local stored = tonumber(s[1])
    if stored >= w then return {stored, tonumber(s[2]), tonumber(s[3])} end
    if stored == w - 1 then return {w, 0, tonumber(s[2])} end
  end
  return {w, 0, 0}
end

local function sw_write(c, st)
  redis.call('HSET', c.key, 'w', str(st[1]), 'c', str(st[2]), 'p', str(st[3]))
  -- it counts until the end of the next window: at most two periods from now
  redis.call('PEXPIRE', c.key, math.max(1, math.ceil(2 * c.period / 1000)))
end

-- how far into its window now is, in [0, 1]
local function sw_into(c, st)
  local f = (now - st[1] * c.period) / c.period
  if f < 0 then return 0 end
  if f > 1 then return 1 end
  return f
end

local function sw_describe(c, st)
  local f = sw_into(c, st)
  local reset = 0
  if st[2] > 0 then reset = (2 - f) * c.period
  elseif st[3] > 0 then reset = (1 - f) * c.period end
  return c.limit - (st[3] * (1 - f) + st[2]), reset / 1e6
end

local function sw_check(c, st)
  local f = sw_into(c, st)
  local cur, prev = st[2], st[3]
  if prev * (1 - f) + cur + c.cost <= c.limit then return {st[1], cur + c.cost, prev}, 0 end
  if c.cost > c.limit then return nil, math.huge end
  local room = c.limit - cur - c.cost
  if room >= 0 then -- fits in this window once the previous one's weight has shrunk
    return nil, (1 - room / prev - f) * c.period / 1e6
  end
  -- fits in the next window once this one's weight has shrunk
  local g = 1 - (c.limit - c.cost) / cur
  if g < 0 then g = 0 end
  return nil, (1 - f + g) * c.period / 1e6
end

local function parse(key, b)
  local c = {key = key, algo = ARGV[b], limit = tonumber(ARGV[b + 1]), period = tonumber(ARGV[b + 2]),
             burst = tonumber(ARGV[b + 3]), cost = tonumber(ARGV[b + 4])}
  if c.algo == 'tb' then c.rate = c.limit / c.period else c.period = c.period * 1e6 end
  return c
end

if ARGV[1] == 'adjust' then
  local c = parse(KEYS[1], 2)
  local delta = c.cost
  if c.algo == 'tb' then
    local floor = tonumber(ARGV[7]) or -c.burst
    local tokens = math.max(floor, math.min(c.burst, tb_read(c) + delta))
    tb_write(c, tokens)
    local remaining, reset = tb_describe(c, tokens)
    return {str(remaining), str(reset)}
  end
  local st = sw_read(c)
  st[2] = st[2] - delta
  if st[2] < 0 then
    st[3] = math.max(0, st[3] + st[2])
    st[2] = 0
  end
  sw_write(c, st)
  local remaining, reset = sw_describe(c, st)
  return {str(remaining), str(reset)}
end

local checks, pending, all = {}, {}, 1
for i = 1, #KEYS do
  local c = parse(KEYS[i], 2 + (i - 1) * 5)
  local before = pending[c.key] -- an earlier check of this call on the same key
  if c.algo == 'tb' then
    if before == nil then before = tb_read(c) end
    c.after, c.retry = tb_check(c, before)
  else
    if before == nil then before = sw_read(c) end
    c.after, c.retry = sw_check(c, before)
  end
  c.before = before
  if c.after == nil then all = 0 else pending[c.key] = c.after end
  checks[i] = c
end

local reply = {all}
for i = 1, #checks do
  local c = checks[i]
  local st = c.before
  if all == 1 then
    st = c.after
    if c.algo == 'tb' then tb_write(c, st) else sw_write(c, st) end
  end
  local remaining, reset
  if c.algo == 'tb' then remaining, reset = tb_describe(c, st) else remaining, reset = sw_describe(c, st) end
  local admitted = 1
  if c.after == nil then admitted = 0 end
  reply[#reply + 1] = admitted
  reply[#reply + 1] = str(remaining)
  reply[#reply + 1] = str(reset)
  reply[#reply + 1] = str(c.retry)
end
return reply
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
BREAKER_FAILURES = 3  # calls failed in a row that open the circuit
BREAKER_OPEN_S = 1.0  # how long an open circuit fails calls at once before it lets a probe through
LOG_EVERY_S = 10.0  # one warning about Redis failing per this long
_NO_FLOOR = "-1e300"  # a bucket's debt, kept in full
SYNC_CHUNK = 1000  # the most keys one round trip of a hybrid sync carries

_ALGORITHMS = {"token_bucket": "tb", "sliding_window": "sw"}
_POLICY_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_KEY_ESCAPES = str.maketrans({"%": "%25", "{": "%7B", "}": "%7D"})
# What "Redis did not answer in time or at all" looks like: asyncio.timeout's
# TimeoutError, the client's errors (connection, timeout, error replies such as
# LOADING, READONLY, OOM), cluster routing errors, and raw socket errors.
_FAILURES = (TimeoutError, RedisError, RedisClusterException, OSError)


class LimiterUnavailable(DependencyUnavailable):
    """Redis did not answer within the timeout, or failed; ``__cause__`` holds why.

    From ``RedisLimiter.sync``, ``answered`` holds the level of each take answered before the failure, in
    order, None for one that Redis refused (not applied); the takes past its end got no answer (those
    of a round trip that timed out may still be applied).  Empty otherwise.
    """

    dependency = "the rate limiter (Redis)"

    def __init__(self, message: str, answered: Sequence[float | None] = ()) -> None:
        super().__init__(message)
        self.answered = list(answered)


@dataclass(frozen=True, slots=True)
class Check:
    """One policy's check for one subject; ``limit`` and ``period`` must be > 0 (the config ensures it)."""

    policy_id: str  # stable id of the policy (its name in config)
    key: str  # the subject: a hashed API key, "ip:1.2.3.4", "model:gpt-4o", "global"
    algorithm: str  # "token_bucket" | "sliding_window"
    limit: float  # units per period
    period: float  # seconds
    burst: float  # token bucket capacity (ignored by the sliding window)
    cost: float  # units this request takes


@dataclass(frozen=True, slots=True)
class Result:
    allowed: bool  # this check admits (the request is admitted only if every check does)
    remaining: float  # after this request; nothing is taken when the decision rejects; < 0 in debt
    reset_after: float  # seconds until full again
    retry_after: float  # 0 if allowed, else seconds until ``cost`` would fit (inf if never)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool  # all checks admitted (and consumed)
    results: list[Result]


class Circuit:
    """Closed, open (calls fail at once) for ``open_s`` after ``failures`` failures in a row, then half-open:
    one probe at a time until one succeeds (closed) or fails (open again)."""

    __slots__ = ("_clock", "_failed", "_probing", "_until", "failures", "open_s", "short_circuited")

    def __init__(self, failures: int = BREAKER_FAILURES, open_s: float = BREAKER_OPEN_S, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.open_s = open_s
        self._clock = clock
        self._failed = 0  # failures in a row
        self._until = -math.inf  # open until then
        self._probing = False  # a half-open probe is in flight
        self.short_circuited = 0  # calls failed at once

    @property
    def open(self) -> bool:
        return self._failed >= self.failures

    def allow(self) -> bool:
        """True: make the call (and report it); False: fail it at once (counted)."""
        if self._failed < self.failures:
            return True
        if self._probing or self._clock() < self._until:
            self.short_circuited += 1
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failed = 0
        self._probing = False

    def failed(self) -> None:
        self._failed += 1
        self._probing = False
        if self._failed >= self.failures:
            self._until = self._clock() + self.open_s

    def abandoned(self) -> None:
        """The call was cancelled before it could tell: a probe is owed again."""
        self._probing = False

    def retry_in(self) -> float:
        return max(0.0, self._until - self._clock())


class LogGate:
    """One line per ``every_s``: ``due()`` answers None while quiet, else how many were suppressed since."""

    __slots__ = ("_clock", "_last", "_suppressed", "every_s")

    def __init__(self, every_s: float = LOG_EVERY_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._last = -math.inf
        self._suppressed = 0

    def due(self) -> int | None:
        now = self._clock()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return None
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        return suppressed

    @staticmethod
    def suffix(suppressed: int) -> str:
        """What a line adds about the lines it stands for."""
        return f" ({suppressed} more like this since the last warning)" if suppressed else ""


def key_name(prefix: str, algorithm: str, policy_id: str, key: str) -> str:
    """The Redis key of one policy and subject (hash-tagged by both)."""
    return (f"{prefix}:{_code(algorithm)}:{{{policy_id.translate(_POLICY_ESCAPES)}:"
            f"{key.translate(_KEY_ESCAPES)}}}")


def _code(algorithm: str) -> str:
    try:
        return _ALGORITHMS[algorithm]
    except KeyError:
        raise ValueError(f"unknown rate-limit algorithm {algorithm!r}") from None


class RedisLimiter:
    """Rate-limit checks on Redis: one round trip per request, atomic per policy, Redis' clock."""

    def __init__(self, client: redis.asyncio.Redis | redis.asyncio.RedisCluster, *, prefix: str = "sluice:rl",
                 timeout_s: float = 0.05, sync_chunk: int = SYNC_CHUNK) -> None:
        if sync_chunk < 1:
            raise ValueError(f"sync_chunk must be at least 1, got {sync_chunk}")
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.sync_chunk = sync_chunk
        self._cluster = isinstance(client, redis.asyncio.RedisCluster)
        self._loaded = False
        self.circuit = Circuit()
        self.warnings = LogGate()  # the callers' warnings about Redis failing, one per interval

    async def acquire(self, checks: Sequence[Check]) -> Decision:
        """Admits the request if every check admits, taking from all of them; otherwise takes nothing."""
        if not checks:
            return Decision(True, [])
        keys = [key_name(self.prefix, c.algorithm, c.policy_id, c.key) for c in checks]
        circuit = self._enter()
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._cluster:
                    decision = await self._acquire_cluster(keys, checks)
                    circuit.succeeded()
                    return decision
                args: list[Any] = ["acquire"]
                for c in checks:
                    args += (_code(c.algorithm), c.limit, c.period, c.burst, c.cost)
                reply = await self._eval(len(keys), *keys, *args)
        except _FAILURES as exc:
            circuit.failed()
            raise LimiterUnavailable(f"rate-limit Redis: {_describe(exc)}") from exc
        except BaseException:
            circuit.abandoned()
            raise
        circuit.succeeded()
        results = [Result(bool(reply[i]), float(reply[i + 1]), float(reply[i + 2]), float(reply[i + 3]))
                   for i in range(1, len(reply), 4)]
        return Decision(bool(reply[0]), results)

    async def adjust(self, policy_id: str, key: str, algorithm: str, limit: float, period: float, burst: float,
                     delta: float) -> None:
        """Settles a reservation: gives back ``delta`` units (delta > 0) or takes ``-delta`` more (delta < 0)."""
        name = key_name(self.prefix, algorithm, policy_id, key)
        circuit = self._enter()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._eval(1, name, "adjust", _code(algorithm), limit, period, burst, delta)
        except _FAILURES as exc:
            circuit.failed()
            raise LimiterUnavailable(f"rate-limit Redis: {_describe(exc)}") from exc
        except BaseException:
            circuit.abandoned()
            raise
        circuit.succeeded()

    def _enter(self) -> Circuit:
        """The circuit, once it lets this call through; LimiterUnavailable at once while it is open."""
        circuit = self.circuit
        if not circuit.allow():
            raise LimiterUnavailable(f"rate-limit Redis: short-circuited after {circuit.failures} failures in a "
                                     f"row; the next try in {circuit.retry_in():.2g}s")
        return circuit

    async def sync(self, takes: Sequence[Check], timeout_s: float | None = None) -> list[float]:
        """Takes each check's cost without checking it (a negative cost gives back) and answers each
        subject's remaining units, signed: the hybrid mode's batched sync.

        Pipelined ``adjust`` calls, at most ``sync_chunk`` per round trip (one per node on a
        cluster), the round trips one after the other, each bounded by ``timeout_s``: a sync of many
        subjects never builds one unbounded command.  The first that fails ends the sync with
        LimiterUnavailable, whose ``answered`` holds the levels of the takes answered (applied; None
        for one Redis refused, not applied); a round trip that got no answer may have been applied,
        the later ones were not sent.
        The debt of a bucket is kept in full (not clamped at -burst as settlements are): it is what
        the instances overspent together, and paying it back is what brings them back to the limit.
        """
        answered: list[float | None] = []
        for start in range(0, len(takes), self.sync_chunk):
            calls = [(key_name(self.prefix, c.algorithm, c.policy_id, c.key), "adjust", _code(c.algorithm), c.limit,
                      c.period, c.burst, -c.cost, _NO_FLOOR) for c in takes[start:start + self.sync_chunk]]
            try:
                async with asyncio.timeout(self.timeout_s if timeout_s is None else timeout_s):
                    replies = await self._pipeline(calls, raise_errors=False)
            except _FAILURES as exc:
                raise LimiterUnavailable(f"rate-limit Redis: {_describe(exc)}", answered) from exc
            # A refused call (an error reply) is not applied; the others of its round trip are.
            answered += [None if isinstance(reply, Exception) else float(reply[0]) for reply in replies]
            refused = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if refused is not None:
                raise LimiterUnavailable(f"rate-limit Redis: {_describe(refused)}", answered) from refused
        return [level for level in answered if level is not None]  # all of them: none was refused

    async def ping(self) -> float:
        """The round trip to Redis in seconds (readiness, health details); raises LimiterUnavailable."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.ping()
        except _FAILURES as exc:
            raise LimiterUnavailable(f"rate-limit Redis: {_describe(exc)}") from exc
        return time.perf_counter() - start

    async def aclose(self) -> None:
        """Closes the client (and its connections)."""
        await self.client.aclose()

    async def _load(self) -> None:
        sha = await self.client.script_load(SCRIPT)
        if sha != SCRIPT_SHA:  # pragma: no cover - Redis hashes the same bytes
            raise RedisError(f"SCRIPT LOAD answered {sha}, expected {SCRIPT_SHA}")
        self._loaded = True

    async def _eval(self, numkeys: int, *keys_and_args: Any) -> Any:
        if not self._loaded:
            await self._load()
        try:
            return await self.client.evalsha(SCRIPT_SHA, numkeys, *keys_and_args)
        except NoScriptError:  # Redis restarted or flushed its scripts: load again, retry once
            await self._load()
            return await self.client.evalsha(SCRIPT_SHA, numkeys, *keys_and_args)

    async def _acquire_cluster(self, keys: list[str], checks: Sequence[Check]) -> Decision:
        """One EVALSHA per check in one pipeline; if one rejected, the ones that admitted are given back."""
        calls = [(key, "acquire", _code(c.algorithm), c.limit, c.period, c.burst, c.cost)
                 for key, c in zip(keys, checks, strict=True)]
        replies = await self._pipeline(calls)
        results = [Result(bool(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in replies]
        allowed = all(r.allowed for r in results)
        if not allowed:
            admitted = [i for i, r in enumerate(results) if r.allowed]
            refunds = await self._pipeline([(calls[i][0], "adjust", *calls[i][2:]) for i in admitted])
            for i, refund in zip(admitted, refunds, strict=True):
                results[i] = Result(True, float(refund[0]), float(refund[1]), 0.0)
        return Decision(allowed, results)

    async def _pipeline(self, calls: list[tuple[Any, ...]], *, raise_errors: bool = True) -> list[Any]:
        """EVALSHA of one key each, pipelined (grouped by node); NOSCRIPT ones are loaded and retried once.

        The first error reply is raised, or with ``raise_errors=False`` answered in its call's place."""
        if not calls:
            return []
        if not self._loaded:
            await self._load()
        replies = await self._run_pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._load()
            for i, reply in zip(missing, await self._run_pipeline([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        if raise_errors:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    async def _run_pipeline(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for key, *args in calls:
            pipe.execute_command("EVALSHA", SCRIPT_SHA, 1, key, *args)  # pipe.evalsha is blocked on clusters
        return list(await pipe.execute(raise_on_error=False))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
