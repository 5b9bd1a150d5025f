"""The rate limits while their Redis is hung or dead (issue 15, finding 9), against a real redis-server.

- A hung Redis (SIGSTOP) used to cost ``redis_timeout_s`` to every request: after ``BREAKER_FAILURES`` timeouts
  in a row the limiter fails at once for ``BREAKER_OPEN_S``, then lets one probe through.
- One WARNING per request while Redis was down: now one per ``LOG_EVERY_S``, saying how many it stands for.
- Fail-open fell back onto a fresh, full local bucket (60 admitted in a minute on a limit of 30): the local
  bucket now starts at the level Redis last answered for the subject.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import msgspec
import pytest

from sluice.config import RateLimitConfig
from sluice.errors import RateLimited
from sluice.pipeline.ratelimit import RateLimits
from sluice.state.redis import connect
from sluice.state.redis_limits import (
    BREAKER_FAILURES,
    BREAKER_OPEN_S,
    Check,
    Circuit,
    LimiterUnavailable,
    LogGate,
    RedisLimiter,
)
from tests.integration.test_redis_limits import run
from tests.redis_server import RedisServer
from tests.unit.test_auth_keys import Clock
from tests.unit.test_ratelimit_callers import Request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOUR = 3600.0


def limits(url: str, prefix: str, rate: int, *, timeout_s: float = 0.2) -> RateLimits:
    config = msgspec.convert({"redis": url, "redis_timeout_s": timeout_s, "policies": [
        {"name": f"{prefix}-per-key", "scope": "key", "rate": rate, "period_s": HOUR, "mode": "distributed",
         "fail_open": True}]}, RateLimitConfig)
    return RateLimits(config, RedisLimiter(connect(url, timeout_s=timeout_s, name="ratelimit"),
                                           prefix=prefix, timeout_s=timeout_s))


async def admitted(rl: RateLimits, times: int, key: str = "sk-caller-0001") -> int:
    count = 0
    for _ in range(times):
        try:
            await rl.admit(Request(key), "/v1/chat/completions", "m", 100, 10)  # type: ignore[arg-type]
            count += 1
        except RateLimited:
            pass
    return count


def test_a_hung_redis_is_short_circuited_after_a_few_timeouts(redis: RedisServer, prefix: str) -> None:
    check = Check("per-key", "key:abc", "token_bucket", 10, HOUR, 10, 1)

    async def scenario() -> None:
        limiter = RedisLimiter(connect(redis.url, timeout_s=0.5, name="ratelimit"), prefix=prefix, timeout_s=0.5)
        clock = Clock(0.0)  # the cool-down's clock: no time passes in it unless the test says so
        limiter.circuit = Circuit(clock=clock)
        try:
            assert (await limiter.acquire([check])).allowed
            assert redis.process is not None
            os.kill(redis.process.pid, signal.SIGSTOP)  # hung: connections stay open, nothing answers
            try:
                for _ in range(10):
                    with pytest.raises(LimiterUnavailable):
                        await limiter.acquire([check])
                # Only the first BREAKER_FAILURES waited for their timeout; the others failed at once.
                assert limiter.circuit.short_circuited == 10 - BREAKER_FAILURES
                assert limiter.circuit.open
            finally:
                os.kill(redis.process.pid, signal.SIGCONT)
            clock.now += BREAKER_OPEN_S  # the cool-down: then one probe goes through
            assert (await limiter.acquire([check])).allowed
            assert not limiter.circuit.open
        finally:
            await limiter.aclose()

    run(scenario, 40.0)


def test_a_dead_redis_is_warned_about_once_per_interval(redis: RedisServer, prefix: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        rl = limits(redis.url, prefix, rate=1000)
        assert rl.redis is not None
        rl.redis.warnings = LogGate(clock=Clock(0.0))  # its interval never ends within the test
        try:
            assert await admitted(rl, 1) == 1
            redis.kill()
            with caplog.at_level(logging.WARNING, logger="sluice.ratelimit"):
                assert await admitted(rl, 50) == 50  # fail open: the local bucket stands in
        finally:
            await rl.aclose()

    run(scenario, 40.0)
    warnings = [r for r in caplog.records if r.name == "sluice.ratelimit" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "falling back to local buckets" in warnings[0].getMessage()


def test_fail_open_starts_from_the_level_redis_last_answered(redis: RedisServer, prefix: str) -> None:
    async def scenario() -> dict[str, Any]:
        rl = limits(redis.url, prefix, rate=30)  # 30 an hour: nothing refills within the test
        try:
            spent = await admitted(rl, 31)
            redis.kill()
            after = await admitted(rl, 30)
        finally:
            await rl.aclose()
        return {"spent": spent, "after": after}

    seen = run(scenario, 40.0)
    assert seen["spent"] == 30
    # Before: a fresh, full local bucket admitted 30 more (60 on a limit of 30).  A refill of one may come.
    assert seen["after"] <= 1, seen
