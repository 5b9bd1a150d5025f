"""Hybrid rate limits: local admission, batched syncs with a real redis-server; the overshoot it allows.

The slack (pipeline/ratelimit.py): between two syncs each of N instances may spend the level it
last saw plus what refills meanwhile, so admitted <= limit + (N - 1) x (burst + rate x elapsed);
the excess becomes debt on Redis that every instance adopts at its next sync.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from typing import Any

import msgspec
import pytest

from sluice.config import RateLimitConfig
from sluice.errors import LimiterDown, RateLimited
from sluice.pipeline.ratelimit import RateLimits
from sluice.state.redis import connect
from sluice.state.redis_limits import RedisLimiter
from tests.conftest import ROOT, call, wait_until
from tests.integration.test_distributed_limits import CHAT, DEMO, burst, gateways
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Caller:
    """What the limits read of a request: its headers and its peer."""

    def __init__(self, key: str = "sk-test") -> None:
        self.client = "127.0.0.1:5000"
        self._headers = {"authorization": f"Bearer {key}"}

    def header(self, name: str) -> str | None:
        return self._headers.get(name)


def limits(url: str, *, rate: float, period: float, burst: float, sync_s: float = 3600.0, fail_open: bool = True,
           unit: str = "requests", timeout_s: float = 0.5) -> RateLimits:
    """One instance's limits: one hybrid global policy (sync_s large: the test syncs by hand)."""
    config = msgspec.convert({
        "redis": url, "redis_timeout_s": timeout_s, "sync_interval_s": sync_s,
        "policies": [{"name": "hybrid-global", "scope": "global", "unit": unit, "rate": rate, "period_s": period,
                      "burst": burst, "mode": "hybrid", "fail_open": fail_open}],
    }, RateLimitConfig)
    return RateLimits(config, RedisLimiter(connect(url, timeout_s=timeout_s, name="ratelimit"), timeout_s=timeout_s))


def admitted(instance: RateLimits, times: int, ex: Any = None) -> int:
    count = 0
    for _ in range(times):
        try:
            instance.admit_local(ex or Caller(), "/v1/chat/completions", "m", 100, 10)
            count += 1
        except RateLimited:
            pass
    return count


def run(scenario: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(30):
            return await scenario()
    return asyncio.run(bounded())


def test_two_instances_overshoot_by_at_most_one_burst_then_adopt_the_debt(redis: RedisServer) -> None:
    async def scenario() -> tuple[int, int, int, float]:
        a = limits(f"{redis.url}/0", rate=30, period=60, burst=30)
        b = limits(f"{redis.url}/0", rate=30, period=60, burst=30)
        started = time.monotonic()
        first = admitted(a, 40) + admitted(b, 40)  # neither has synced: each spends its own full view
        elapsed = time.monotonic() - started
        await a.hybrid.sync()
        await b.hybrid.sync()
        await a.hybrid.sync()  # a learns what b took
        after_sync = admitted(a, 10) + admitted(b, 10)
        await asyncio.sleep(0)  # pacing: one turn of the loop, as a serving loop gives between requests
        level = a.credit("hybrid-global", "global")
        await a.aclose()
        await b.aclose()
        return first, after_sync, round(level), elapsed

    first, after_sync, level, elapsed = run(scenario)
    instances, rate, limit = 2, 0.5, 30
    assert limit <= first <= limit + (instances - 1) * (limit + rate * elapsed) + 1
    assert first == 60  # the whole stated slack: a burst on each instance before any sync
    assert after_sync == 0 and level == -30  # both adopted the whole debt: nothing more until it is paid back


def test_a_sustained_overload_converges_on_the_limit(redis: RedisServer) -> None:
    """Two instances syncing every 50 ms, hammered for about 1.5 s at a limit of 40/s, burst 20."""
    rate, burst_size, sync_s = 40.0, 20.0, 0.05

    async def scenario() -> tuple[int, float]:
        pair = [limits(f"{redis.url}/0", rate=rate, period=1, burst=burst_size, sync_s=sync_s) for _ in range(2)]
        started = time.monotonic()
        total = 0
        while time.monotonic() - started < 1.5:
            total += admitted(pair[0], 5) + admitted(pair[1], 5)
            await asyncio.sleep(0.002)  # pacing: the sync tasks run in between, as in a serving loop
        elapsed = time.monotonic() - started
        for instance in pair:
            await instance.aclose()
        return total, elapsed

    total, elapsed = run(scenario)
    exact = burst_size + rate * elapsed
    slack = 1 * (burst_size + rate * sync_s * 2)  # (N - 1) x (burst + what refills between two syncs)
    assert exact * 0.5 <= total <= exact + slack, (total, exact, slack)


def test_tokens_settled_locally_reach_redis(redis: RedisServer) -> None:
    async def scenario() -> tuple[float, float]:
        a = limits(f"{redis.url}/0", rate=1000, period=3600, burst=1000, unit="tokens")
        b = limits(f"{redis.url}/0", rate=1000, period=3600, burst=1000, unit="tokens")
        admission = a.admit_local(Caller(), "/v1/chat/completions", "m", 400, 100)  # reserves 100 + 100
        assert admission is not None
        a.settle(admission, 50)  # 150 back
        await a.hybrid.sync()
        await b.hybrid.sync()  # b has never taken: nothing to refresh
        b.admit_local(Caller(), "/v1/chat/completions", "m", 0, 1)
        await b.hybrid.sync()
        seen = (a.credit("hybrid-global", "global"), b.credit("hybrid-global", "global"))
        await a.aclose()
        await b.aclose()
        return seen

    at_a, at_b = run(scenario)
    assert math.isclose(at_a, 950, abs_tol=1)
    assert math.isclose(at_b, 949, abs_tol=1)  # 1000 - 50 used at a - 1 reserved at b


def test_redis_down_fails_open_or_closed_and_recovers(redis: RedisServer) -> None:
    async def scenario() -> dict[str, Any]:
        open_ = limits(f"{redis.url}/0", rate=100, period=60, burst=100, timeout_s=0.2)
        closed = limits(f"{redis.url}/0", rate=100, period=60, burst=100, fail_open=False, timeout_s=0.2)
        seen: dict[str, Any] = {"before": admitted(open_, 1) + admitted(closed, 1)}
        await open_.hybrid.sync()
        await closed.hybrid.sync()
        redis.kill()
        admitted(open_, 1)
        admitted(closed, 1)
        async with asyncio.timeout(30):  # bounded by the sync timeout, never hanging (a hang fails here)
            await open_.hybrid.sync()
            await closed.hybrid.sync()
        seen["open_down"] = admitted(open_, 3)
        try:
            closed.admit_local(Caller(), "/v1/chat/completions", "m", 0, 1)
            seen["closed_down"] = "admitted"
        except LimiterDown as exc:
            seen["closed_down"] = exc.code
        redis.restart()
        await open_.hybrid.sync()
        await closed.hybrid.sync()
        seen["closed_back"] = admitted(closed, 1)
        seen["counts"] = open_.decision_counts()
        await open_.aclose()
        await closed.aclose()
        return seen

    seen = run(scenario)
    assert seen["before"] == 2
    assert seen["open_down"] == 3
    assert seen["closed_down"] == "ratelimiter_unavailable"
    assert seen["closed_back"] == 1
    assert seen["counts"][("hybrid-global", "redis_unavailable")] >= 1


HYBRID = (ROOT / "examples" / "ratelimit.yaml").read_text().replace("mode: distributed", "mode: hybrid")


def test_two_serve_instances_in_hybrid_mode_stay_within_the_stated_slack(tmp_path, mock_upstream, redis) -> None:
    pair = gateways(tmp_path, mock_upstream, redis, HYBRID, 2)
    try:
        first = burst([g.url for g in pair], 100, DEMO)
        # Each instance refuses once a sync has brought it Redis' level (in debt after the burst): polled one
        # request at a time, each one it still admits is the slack of an instance that has not synced yet.
        for gateway in pair:
            wait_until(lambda gateway=gateway: call(gateway.url, "POST", "/v1/chat/completions", CHAT, DEMO).status
                       == 429, "an instance hearing of the other's burst")
        second = burst([g.url for g in pair], 20, DEMO)
    finally:
        for gateway in pair:
            gateway.stop()
    first_ok = Counter(reply.status for _, reply in first)[200]
    second_ok = Counter(reply.status for _, reply in second)[200]
    # Each instance admits its own view (30) before its first sync: the stated slack is one burst
    # per extra instance, here 30; a refill of one request every 2 s may add one more.
    assert 30 <= first_ok <= 30 + 30 + 1, first_ok
    assert second_ok <= 1, second_ok  # the overshoot became debt that both instances see
    assert all(reply.headers["x-ratelimit-limit-requests"] == "30" for _, reply in first)


# -- a flood of distinct subjects: the maps stay within hybrid_max_subjects -------------------

class Peer:
    """A request from behind a trusted proxy (127.0.0.1), for the address in X-Forwarded-For."""

    def __init__(self, ip: str) -> None:
        self.client = "127.0.0.1:5000"
        self._forwarded = ip

    def header(self, name: str) -> str | None:
        return self._forwarded if name == "x-forwarded-for" else None

    def header_all(self, name: str) -> list[str]:
        return [self._forwarded] if name == "x-forwarded-for" else []


def per_ip(url: str, *, rate: float, period: float, burst: float, bound: int, sync_chunk: int = 1000) -> RateLimits:
    """One instance with one hybrid per-IP policy, at most ``bound`` subjects held (the test syncs by hand)."""
    config = msgspec.convert({
        "redis": url, "redis_timeout_s": 1.0, "sync_interval_s": 3600.0, "trusted_proxies": ["127.0.0.0/8"],
        "hybrid_max_subjects": bound,
        "policies": [{"name": "per-ip", "scope": "ip", "rate": rate, "period_s": period, "burst": burst,
                      "mode": "hybrid"}],
    }, RateLimitConfig)
    return RateLimits(config, RedisLimiter(connect(url, timeout_s=1.0, name="ratelimit"),
                                           timeout_s=1.0, sync_chunk=sync_chunk))


async def ask(instance: RateLimits, ip: str) -> bool:
    """One request the way the server admits it: locally when it can, else awaiting Redis."""
    try:
        if instance.admit_local(Peer(ip), "/v1/chat/completions", "m", 0, 1) == "await":
            await instance.admit(Peer(ip), "/v1/chat/completions", "m", 0, 1)
    except RateLimited:
        return False
    return True


def held(instance: RateLimits) -> tuple[int, int, int]:
    return len(instance.hybrid.credit), len(instance.hybrid.active), len(instance.hybrid.unsynced)


async def redis_levels(url: str, ips: list[str], *, rate: float, period: float, burst: float) -> list[float]:
    """What Redis holds for each subject now (a take of 0 through a fresh limiter)."""
    from sluice.state.redis_limits import Check

    reader = RedisLimiter(connect(url, timeout_s=1.0, name="ratelimit"), timeout_s=1.0)
    try:
        return await reader.sync([Check("per-ip", f"ip:{ip}", "token_bucket", rate, period, burst, 0.0)
                                  for ip in ips])
    finally:
        await reader.aclose()


def test_a_flood_of_distinct_ips_stays_within_the_bound_and_every_take_reaches_redis(redis: RedisServer) -> None:
    """200 random IPs against a bound of 50, while two clients keep sending: the maps never pass 50,
    the clients get exactly their burst (5), and Redis holds every admitted request after the syncs."""
    rate, period, burst_size, bound = 5.0, 3600.0, 5.0, 50
    flood = [f"10.{i // 250}.{i % 250}.1" for i in range(200)]
    early, late = "203.0.113.1", "203.0.113.2"  # the first held before the flood, the second meets the bound

    async def scenario() -> dict[str, Any]:
        instance = per_ip(redis.url, rate=rate, period=period, burst=burst_size, bound=bound, sync_chunk=16)
        seen: dict[str, Any] = {"early": int(await ask(instance, early)), "late": 0, "most": (0, 0, 0)}
        for i, ip in enumerate(flood):
            assert await ask(instance, ip)  # each sends once: always within its burst
            if i % 10 == 0:
                seen["early"] += await ask(instance, early)
                if i >= bound:
                    seen["late"] += await ask(instance, late)
            if i % 40 == 39:
                await instance.hybrid.sync()
            seen["most"] = tuple(max(a, b) for a, b in zip(seen["most"], held(instance), strict=True))
        seen["early_held"] = ((instance.policies[0], f"ip:{early}") in instance.hybrid.credit)
        seen["late_held"] = ((instance.policies[0], f"ip:{late}") in instance.hybrid.credit)
        seen["counts"] = instance.decision_counts()
        await instance.aclose()  # the last sync
        seen["levels"] = await redis_levels(redis.url, [early, late, *flood], rate=rate, period=period,
                                            burst=burst_size)
        return seen

    seen = run(scenario)
    assert max(seen["most"]) <= bound, seen["most"]
    assert seen["early"] == 5 and seen["early_held"]  # 21 asked, held here all along: its burst, no more
    assert seen["late"] == 5 and not seen["late_held"]  # 15 asked, each checked on Redis: exact
    counts = seen["counts"]
    assert counts[("per-ip", "overflow")] == 200 - (bound - 1) + 15  # every request of a subject not held
    assert counts[("per-ip", "admitted")] == 5 + 5 + 200
    # Each level is burst - what it took (a refill of 5/h adds at most ~0.05 during the test).
    expected = [0.0, 0.0] + [burst_size - 1] * len(flood)
    assert all(math.isclose(level, want, abs_tol=0.1) for level, want in zip(seen["levels"], expected,
                                                                              strict=True)), seen["levels"]


def test_subjects_synced_and_full_again_leave_at_the_bound_and_new_ones_are_held_again(redis: RedisServer) -> None:
    """A fast refill (1000/s): once their takes are pushed and refilled, the flood's subjects are forgotten
    (no ten intervals' grace at the bound), and a new subject is admitted locally again."""

    async def scenario() -> tuple[tuple[int, int, int], tuple[int, int, int], int, int]:
        instance = per_ip(redis.url, rate=1000, period=1, burst=10, bound=20)
        for i in range(30):
            assert await ask(instance, f"10.0.0.{i}")
        full = held(instance)
        await instance.hybrid.sync()  # pushes the 20 held: nothing unsynced is forgotten
        await asyncio.sleep(0.05)  # pacing: refilled on Redis (10 tokens at 1000/s take 0.01 s; longer only caps)
        await instance.hybrid.sync()  # adopts the full levels
        await asyncio.sleep(0.02)  # pacing: a little of Redis' time passes (the levels stay full, capped)
        await instance.hybrid.sync()  # idle and full again: forgotten
        drained = held(instance)
        overflow = instance.decision_counts()[("per-ip", "overflow")]
        assert await ask(instance, "10.0.1.1")
        again = instance.decision_counts()[("per-ip", "overflow")] - overflow
        await instance.aclose()
        return full, drained, overflow, again

    full, drained, overflow, again = run(scenario)
    assert full == (20, 20, 20)
    assert drained == (0, 0, 0)
    assert overflow == 10 and again == 0


def test_a_failed_round_trip_keeps_its_takes_and_the_later_ones_for_the_next_sync(redis: RedisServer) -> None:
    """Chunks of 7: in the third, Redis refuses one take (a key of the wrong type) and applies the six
    others; the fourth and fifth are not sent.  The refused take and the unsent ones (1 + 9) are pushed
    by the next sync: every take reaches Redis exactly once."""
    from tests.integration.test_redis_limits import raw

    ips = [f"10.0.0.{i}" for i in range(30)]

    async def scenario() -> tuple[int, list[float], int]:
        instance = per_ip(redis.url, rate=5, period=3600, burst=5, bound=100, sync_chunk=7)
        for ip in ips:
            assert await ask(instance, ip)
        from sluice.state.redis_limits import key_name

        poisoned = key_name("sluice:rl", "token_bucket", "per-ip", f"ip:{ips[16]}")  # in the third chunk
        async with raw(redis.url) as client:
            await client.set(poisoned, "not a bucket")
            await instance.hybrid.sync()
            kept = len(instance.hybrid.unsynced)
            await client.delete(poisoned)
        await instance.hybrid.sync()
        left = len(instance.hybrid.unsynced)
        await instance.aclose()
        return kept, await redis_levels(redis.url, ips, rate=5, period=3600, burst=5), left

    kept, levels, left = run(scenario)
    assert kept == 1 + 9 and left == 0
    assert [i for i, level in enumerate(levels) if not math.isclose(level, 4.0, abs_tol=0.05)] == [], levels


def test_at_the_bound_with_redis_down_a_new_subject_falls_back_like_a_distributed_policy(redis: RedisServer) -> None:
    """Fail open: a subject not held is checked on this process's compiled bucket (its burst, then 429);
    fail closed: 503.  Neither enters the maps."""

    async def scenario() -> dict[str, Any]:
        config = {"redis": redis.url, "redis_timeout_s": 0.2, "sync_interval_s": 3600.0, "hybrid_max_subjects": 2,
                  "trusted_proxies": ["127.0.0.0/8"]}
        policy = {"name": "per-ip", "scope": "ip", "rate": 3, "period_s": 3600, "burst": 3, "mode": "hybrid"}
        pair = [RateLimits(msgspec.convert({**config, "policies": [{**policy, "fail_open": fail_open}]},
                                           RateLimitConfig),
                           RedisLimiter(connect(redis.url, timeout_s=0.2, name="ratelimit"), timeout_s=0.2))
                for fail_open in (True, False)]
        for instance in pair:
            assert await ask(instance, "10.0.0.1") and await ask(instance, "10.0.0.2")
        redis.kill()
        seen: dict[str, Any] = {"open": [await ask(pair[0], "10.0.0.3") for _ in range(5)]}
        try:
            await ask(pair[1], "10.0.0.3")
        except LimiterDown as exc:
            seen["closed"] = exc.code
        seen["held"] = [held(instance) for instance in pair]
        seen["counts"] = pair[0].decision_counts()
        for instance in pair:
            await instance.aclose()  # its last sync fails (counted), bounded by the timeout
        return seen

    seen = run(scenario)
    assert seen["open"] == [True, True, True, False, False]
    assert seen["closed"] == "ratelimiter_unavailable"
    assert seen["held"] == [(2, 2, 2), (2, 2, 2)]
    assert seen["counts"][("per-ip", "overflow")] == 5 and seen["counts"][("per-ip", "redis_unavailable")] == 5
    assert seen["counts"][("per-ip", "admitted")] == 2 + 3 and seen["counts"][("per-ip", "rejected")] == 2
