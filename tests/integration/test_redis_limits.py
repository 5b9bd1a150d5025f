"""The Redis rate-limit backend against a real redis-server (never the machine's Redis on 6379)."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError

from sluice.state.redis import connect
from sluice.state.redis_limits import Check, Decision, LimiterUnavailable, RedisLimiter, key_name
from tests.conftest import async_wait_until
from tests.redis_server import RedisServer, command, encode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

T = TypeVar("T")
HOUR = 3600.0


def run(make: Callable[[], Awaitable[T]], timeout: float = 15.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await make()
    return asyncio.run(bounded())


@asynccontextmanager
async def limiter(url: str, prefix: str, timeout_s: float = 10.0) -> AsyncIterator[RedisLimiter]:
    limits = RedisLimiter(connect(url, timeout_s=timeout_s, name="ratelimit"), prefix=prefix, timeout_s=timeout_s)
    try:
        yield limits
    finally:
        await limits.aclose()


@asynccontextmanager
async def raw(url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


def bucket(policy: str, key: str, limit: float, period: float, burst: float, cost: float = 1.0) -> Check:
    return Check(policy, key, "token_bucket", limit, period, burst, cost)


def window(policy: str, key: str, limit: float, period: float, cost: float = 1.0) -> Check:
    return Check(policy, key, "sliding_window", limit, period, 0.0, cost)


async def take(limits: RedisLimiter, check: Check, times: int) -> list[Decision]:
    return [await limits.acquire([check]) for _ in range(times)]


async def remaining(limits: RedisLimiter, check: Check) -> float:
    """What the check has left, taking nothing (a probe of cost 0)."""
    probe = Check(check.policy_id, check.key, check.algorithm, check.limit, check.period, check.burst, 0)
    return (await limits.acquire([probe])).results[0].remaining


async def at_a_window_start(client: redis.asyncio.Redis, period: float) -> None:
    """Waits for the start of the next sliding window on Redis' clock, so that a burst of takes never straddles
    two windows (where the estimate weighs the previous window's count down and admits more)."""
    seconds, micros = await client.time()
    now = seconds + micros / 1e6
    await asyncio.sleep(period - now % period + 0.005)  # pacing: until Redis' clock enters the next window


def test_token_bucket_admits_its_burst_then_refills_on_redis_time(redis_server: RedisServer, prefix: str) -> None:
    # 5 tokens, one every 2 s: six takes in a row see no refill in between, even on a loaded machine.
    check = bucket("per-key", "key:abc", limit=5, period=10.0, burst=5)
    rate = 0.5

    async def scenario() -> None:
        async with limiter(redis_server.url, prefix) as limits:
            first, *rest = await take(limits, check, 6)
            taken = first.results[0]
            assert first.allowed and taken.retry_after == 0
            assert 4 <= taken.remaining < 4.5
            assert taken.reset_after == pytest.approx((5 - taken.remaining) / rate, abs=1e-3)  # back to full
            assert [d.allowed for d in rest] == [True] * 4 + [False]
            rejected = rest[-1].results[0]
            assert rejected.remaining < 1
            assert rejected.retry_after == pytest.approx((1 - rejected.remaining) / rate, abs=1e-3)
            assert rejected.reset_after == pytest.approx((5 - rejected.remaining) / rate, abs=1e-3)
            await async_wait_until(lambda: _at_least(limits, check, 1), "a token refilled on Redis' clock")
            assert (await limits.acquire([check])).allowed
            never = await limits.acquire([bucket("per-key", "key:abc", 5, 10.0, 5, cost=6)])
            assert not never.allowed and math.isinf(never.results[0].retry_after)
            full = bucket("per-key", "key:full", limit=5, period=10.0, burst=5)
            assert await remaining(limits, full) == 5
            await asyncio.sleep(2.5)  # pacing: more than a token's worth of time passes on a full bucket
            assert await remaining(limits, full) == pytest.approx(5, abs=1e-9)  # never more than the burst

    run(scenario)


def test_sliding_window_admits_its_limit_then_slides_on_redis_time(redis_server: RedisServer, prefix: str) -> None:
    check = window("per-ip", "ip:10.0.0.1", limit=5, period=1.0)

    async def scenario() -> None:
        async with limiter(redis_server.url, prefix) as limits, raw(redis_server.url) as client:
            await at_a_window_start(client, check.period)
            decisions = await take(limits, check, 6)
            assert [d.allowed for d in decisions] == [True] * 5 + [False]
            assert [d.results[0].remaining for d in decisions[:3]] == pytest.approx([4, 3, 2], abs=0.2)
            rejected = decisions[-1].results[0]
            assert rejected.remaining < 1
            assert 0 < rejected.retry_after <= 2.0  # at most two periods
            assert 1.0 <= rejected.reset_after <= 2.0 + 1e-6  # the count leaves the estimate within two periods
            await async_wait_until(lambda: _at_least(limits, check, 1), "the window sliding on")
            assert (await limits.acquire([check])).allowed
            await asyncio.sleep(2.05)  # pacing: two periods pass: nothing counts any more
            await at_a_window_start(client, check.period)
            assert [d.allowed for d in await take(limits, check, 6)] == [True] * 5 + [False]
            never = await limits.acquire([window("per-ip", "ip:10.0.0.1", 5, 1.0, cost=6)])
            assert not never.allowed and math.isinf(never.results[0].retry_after)

    run(scenario)


async def _at_least(limits: RedisLimiter, check: Check, tokens: float) -> bool:
    return await remaining(limits, check) >= tokens


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_a_rejection_by_one_check_takes_nothing_from_the_others(redis_server: RedisServer, prefix: str,
                                                                algorithm: str) -> None:
    roomy = Check("tokens", "key:abc", algorithm, 1000, HOUR, 1000, 100)
    tight = Check("requests", "key:abc", algorithm, 1, HOUR, 1, 1)

    async def scenario() -> None:
        async with limiter(redis_server.url, prefix) as limits, raw(redis_server.url) as client:
            assert (await limits.acquire([tight])).allowed
            decision = await limits.acquire([roomy, tight])
            assert not decision.allowed
            assert [r.allowed for r in decision.results] == [True, False]
            assert decision.results[0].remaining == pytest.approx(1000)  # reported untouched
            assert await client.exists(key_name(prefix, algorithm, "tokens", "key:abc")) == 0  # never written
            alone = await limits.acquire([roomy])
            assert alone.allowed and alone.results[0].remaining == pytest.approx(900, abs=0.01)

    run(scenario)


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_concurrent_gateways_admit_exactly_the_limit(redis_server: RedisServer, prefix: str, algorithm: str) -> None:
    check = Check("global", "global", algorithm, 50, HOUR, 50, 1)

    async def scenario() -> list[bool]:
        gateways = [RedisLimiter(connect(redis_server.url, timeout_s=5.0, name="ratelimit"),
                                 prefix=prefix, timeout_s=5.0) for _ in range(4)]
        try:
            decisions = await asyncio.gather(*(gateways[i % 4].acquire([check]) for i in range(200)))
        finally:
            for gateway in gateways:
                await gateway.aclose()
        return [d.allowed for d in decisions]

    assert sum(run(scenario)) == 50


def test_the_script_is_loaded_again_after_script_flush(redis_server: RedisServer, prefix: str) -> None:
    check = bucket("per-key", "key:abc", limit=10, period=HOUR, burst=10)

    async def scenario() -> None:
        async with limiter(redis_server.url, prefix) as limits, raw(redis_server.url) as client:
            assert (await limits.acquire([check])).allowed
            await client.script_flush()
            decision = await limits.acquire([check])
            assert decision.allowed and decision.results[0].remaining == pytest.approx(8, abs=0.01)
            await client.script_flush()
            await limits.adjust("per-key", "key:abc", "token_bucket", 10, HOUR, 10, 1)
            assert (await limits.acquire([check])).results[0].remaining == pytest.approx(8, abs=0.01)

    run(scenario)


def test_keys_are_hash_tagged_and_expire(redis_server: RedisServer, prefix: str) -> None:
    async def scenario() -> None:
        async with limiter(redis_server.url, prefix) as limits, raw(redis_server.url) as client:
            await limits.acquire([bucket("tpm", "key:abc", limit=10, period=100, burst=10, cost=4),
                                  window("rpm", "ip:1.2.3.4", limit=10, period=7)])
            names = sorted([k.decode() async for k in client.scan_iter(f"{prefix}:*")])
            assert names == [f"{prefix}:sw:{{rpm:ip:1.2.3.4}}", f"{prefix}:tb:{{tpm:key:abc}}"]
            # expiring when the state no longer matters: the bucket once full again (4 tokens at 0.1/s), the window
            # after two periods (bounds with no lower margin to spend: a loaded machine only makes them smaller)
            assert 14_000 < await client.pttl(f"{prefix}:tb:{{tpm:key:abc}}") <= 40_000
            assert 0 < await client.pttl(f"{prefix}:sw:{{rpm:ip:1.2.3.4}}") <= 14_000
            # separators and braces are escaped: no collisions, tags stay whole
            assert key_name(prefix, "token_bucket", "a:b", "c") != key_name(prefix, "token_bucket", "a", "b:c")
            assert key_name("p", "sliding_window", "x}", "{y}") == "p:sw:{x%7D:%7By%7D}"
            await limits.acquire([bucket("a:b", "c", 10, 100, 10), bucket("a", "b:c", 10, 100, 10, cost=2)])
            first = await limits.acquire([bucket("a:b", "c", 10, 100, 10, cost=0)])
            assert first.results[0].remaining == pytest.approx(9, abs=0.01)

    run(scenario)


def test_only_redis_clock_counts(redis_server: RedisServer, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway whose clock is a day ahead (or behind) decides exactly like one on time."""
    check = bucket("per-key", "key:abc", limit=5, period=HOUR, burst=5)

    async def scenario(skew: float) -> list[Decision]:
        async with limiter(redis_server.url, f"{prefix}:{skew}") as on_time, \
                limiter(redis_server.url, f"{prefix}:{skew}") as skewed:
            decisions = await take(on_time, check, 3)
            real = time.time
            monkeypatch.setattr(time, "time", lambda: real() + skew)
            monkeypatch.setattr(time, "time_ns", lambda: int((real() + skew) * 1e9))
            try:
                decisions += await take(skewed, check, 3)
            finally:
                monkeypatch.undo()
            return decisions

    for skew in (86_400.0, -86_400.0):
        decisions = run(lambda skew=skew: scenario(skew))  # type: ignore[misc]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.results[0].remaining for d in decisions] == pytest.approx([4, 3, 2, 1, 0, 0], abs=0.05)


def asleep(port: int) -> bool:
    """True while the server does not answer a PING within a short timeout (held by DEBUG SLEEP)."""
    try:
        command(port, "PING", timeout=0.05)
    except TimeoutError:
        return True
    return False


def test_a_stalled_redis_costs_at_most_the_timeout(redis: RedisServer, prefix: str) -> None:
    check = bucket("per-key", "key:abc", limit=10, period=HOUR, burst=10)

    async def scenario() -> None:
        async with limiter(redis.url, prefix, timeout_s=0.05) as limits:
            assert (await limits.acquire([check])).allowed  # connected, script loaded
            with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as stall:
                stall.sendall(encode("DEBUG", "SLEEP", "1"))
                await async_wait_until(lambda: asleep(redis.port), "the server asleep")
                for call in (lambda: limits.acquire([check]), limits.ping):
                    with pytest.raises(LimiterUnavailable) as caught:  # the limiter's timeout, not the server's
                        await call()
                    assert isinstance(caught.value.__cause__, TimeoutError)
                    assert "no answer in time" in str(caught.value)
                assert stall.recv(16) == b"+OK\r\n"  # awake again
            decision = await limits.acquire([check])  # the same limiter, a fresh connection
            # the request that timed out had been sent: Redis ran it when it woke (counted, never retried)
            assert decision.allowed and decision.results[0].remaining == pytest.approx(7, abs=0.01)
            assert await limits.ping() > 0  # a round trip again

    run(scenario)


def test_a_dead_redis_fails_fast_and_the_limiter_reconnects_after_restart(redis: RedisServer,
                                                                         prefix: str) -> None:
    check = window("per-key", "key:abc", limit=10, period=HOUR)

    async def scenario() -> None:
        async with limiter(redis.url, prefix, timeout_s=0.2) as limits:
            assert (await limits.acquire([check])).allowed
            redis.kill()
            for _ in range(2):
                with pytest.raises(LimiterUnavailable) as caught:  # refused at once, no timeout waited
                    await limits.acquire([check])
                assert isinstance(caught.value.__cause__, RedisConnectionError)
                assert "Connect call failed" in str(caught.value)  # refused: nothing to wait for
            with pytest.raises(LimiterUnavailable):
                await limits.adjust("per-key", "key:abc", "sliding_window", 10, HOUR, 0, 1)
            redis.restart()  # empty: nothing persisted, no script loaded
            assert limits.circuit.open  # three failures in a row: the next call waits out the cool-down
            await async_wait_until(lambda: limits.circuit.retry_in() == 0, "the circuit's cool-down")
            decision = await limits.acquire([check])
            assert decision.allowed and decision.results[0].remaining == pytest.approx(9, abs=0.01)

    run(scenario)


def test_adjust_gives_back_and_takes_more_within_bounds(redis_server: RedisServer, prefix: str) -> None:
    async def scenario() -> None:
        async with limiter(redis_server.url, prefix) as limits:
            tb = bucket("tpm", "key:abc", limit=10, period=HOUR, burst=10, cost=8)
            assert (await limits.acquire([tb])).allowed
            adjust = limits.adjust
            await adjust("tpm", "key:abc", "token_bucket", 10, HOUR, 10, 5)  # gives back 5
            assert await remaining(limits, tb) == pytest.approx(7, abs=0.01)
            await adjust("tpm", "key:abc", "token_bucket", 10, HOUR, 10, 100)  # never past the burst
            assert await remaining(limits, tb) == pytest.approx(10, abs=0.01)
            await adjust("tpm", "key:abc", "token_bucket", 10, HOUR, 10, -25)  # debt, but never below -burst
            in_debt = await limits.acquire([bucket("tpm", "key:abc", 10, HOUR, 10, cost=1)])
            assert not in_debt.allowed
            assert in_debt.results[0].remaining == pytest.approx(-10, abs=0.01)
            assert in_debt.results[0].retry_after == pytest.approx(11 / (10 / HOUR), rel=0.01)

            sw = window("rpm", "key:abc", limit=10, period=HOUR, cost=8)
            assert (await limits.acquire([sw])).allowed
            await adjust("rpm", "key:abc", "sliding_window", 10, HOUR, 0, 5)
            assert await remaining(limits, sw) == pytest.approx(7, abs=0.01)
            await adjust("rpm", "key:abc", "sliding_window", 10, HOUR, 0, -3)
            assert await remaining(limits, sw) == pytest.approx(4, abs=0.01)
            await adjust("rpm", "key:abc", "sliding_window", 10, HOUR, 0, 100)  # never below an empty window
            assert await remaining(limits, sw) == pytest.approx(10, abs=0.01)

    run(scenario)


def test_no_checks_need_no_redis_and_unknown_algorithms_are_refused() -> None:
    async def scenario() -> None:
        # nothing listens on port 1
        limits = RedisLimiter(connect("redis://127.0.0.1:1/0", timeout_s=0.05, name="ratelimit"))
        try:
            assert await limits.acquire([]) == Decision(True, [])
            with pytest.raises(ValueError, match="leaky_bucket"):
                await limits.acquire([Check("p", "k", "leaky_bucket", 1, 1, 1, 1)])
            with pytest.raises(LimiterUnavailable):
                await limits.ping()
        finally:
            await limits.aclose()

    run(scenario)


def test_cluster_path_is_all_or_nothing_by_refund(tmp_path: Path, prefix: str) -> None:
    """A one-node Redis Cluster: one pipelined EVALSHA per check, a refund when one rejected."""
    roomy = bucket("tokens", "key:abc", limit=1000, period=HOUR, burst=1000, cost=100)
    tight = window("requests", "key:abc", limit=1, period=HOUR)

    async def scenario(url: str) -> None:
        client: Any = redis.asyncio.RedisCluster.from_url(url, socket_timeout=1.0)
        limits = RedisLimiter(client, prefix=prefix, timeout_s=1.0)
        try:
            assert (await limits.acquire([tight])).allowed
            decision = await limits.acquire([roomy, tight])
            assert [r.allowed for r in decision.results] == [True, False] and not decision.allowed
            assert decision.results[0].remaining == pytest.approx(1000)  # given back
            await client.script_flush()
            alone = await limits.acquire([roomy])
            assert alone.allowed and alone.results[0].remaining == pytest.approx(900, abs=0.01)
            assert [d.allowed for d in await take(limits, tight, 1)] == [False]
        finally:
            await limits.aclose()

    with RedisServer(tmp_path / "cluster", cluster=True) as server:
        run(lambda: scenario(server.url))


class CountingLimiter(RedisLimiter):
    """A RedisLimiter that records how many calls each pipeline round trip carries."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.round_trips: list[int] = []

    async def _run_pipeline(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        self.round_trips.append(len(calls))
        return await super()._run_pipeline(calls)


@pytest.mark.parametrize(("chunk", "takes", "round_trips"), [(7, 50, [7] * 7 + [1]), (None, 2500, [1000, 1000, 500])])
def test_a_sync_of_more_keys_than_a_chunk_goes_in_round_trips_of_a_chunk(redis_server: RedisServer, prefix: str,
                                                                          chunk: int | None, takes: int,
                                                                          round_trips: list[int]) -> None:
    checks = [bucket("hybrid", f"ip:10.0.{i // 250}.{i % 250}", 10, HOUR, 10, cost=i % 5) for i in range(takes)]

    async def scenario() -> tuple[list[float], list[int], list[Any]]:
        options = {} if chunk is None else {"sync_chunk": chunk}
        limits = CountingLimiter(connect(redis_server.url, timeout_s=1.0, name="ratelimit"),
                                 prefix=prefix, timeout_s=1.0, **options)
        try:
            levels = await limits.sync(checks)
            async with raw(redis_server.url) as client:
                stored = [await client.hget(key_name(prefix, "token_bucket", c.policy_id, c.key), "t")
                          for c in checks[:60]]
            return levels, limits.round_trips, stored
        finally:
            await limits.aclose()

    levels, trips, stored = run(scenario)
    assert trips == round_trips
    assert [round(level, 2) for level in levels] == [10.0 - i % 5 for i in range(takes)]  # every take, in order
    full = 10.0  # a full bucket is an absent key (a take of 0 leaves it full)
    assert [full if t is None else round(float(t), 2) for t in stored] == [10.0 - i % 5 for i in range(len(stored))]
    with pytest.raises(ValueError, match="sync_chunk"):
        RedisLimiter(connect(redis_server.url, timeout_s=1.0, name="ratelimit"), sync_chunk=0)
