"""The Redis quota store against a real redis-server (never the machine's Redis on 6379)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from sluice.errors import QuotaExceeded
from sluice.pipeline.quotas import Quotas
from sluice.state.quota_store import KEEP_AFTER_END_S, QuotaStoreUnavailable, RedisQuotaStore, quota_key
from sluice.state.redis import connect
from tests.conftest import async_wait_until
from tests.integration.test_redis_limits import asleep, raw
from tests.redis_server import RedisServer, encode
from tests.unit.test_quotas import Clock, ask, at, bounded, flood, limits, run, store_contract, want

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

# The stage's tests run on a fixed day after today's: Redis expires a counter by the real clock
# (EXPIREAT, a day after its period ends), so a past day's counters would vanish as they are written.


@asynccontextmanager
async def quota_store(url: str, prefix: str, timeout_s: float = 1.0) -> AsyncIterator[RedisQuotaStore]:
    store = RedisQuotaStore(connect(url, timeout_s=timeout_s, name="quotas"), prefix=prefix, timeout_s=timeout_s)
    try:
        yield store
    finally:
        await store.aclose()


def test_redis_store_contract(redis_server: RedisServer, prefix: str) -> None:
    async def scenario() -> None:
        async with quota_store(redis_server.url, prefix) as store:
            await store_contract(store, ends=time.time() + 3600)  # the Redis server's clock

    run(scenario)


def test_keys_are_hash_tagged_escaped_and_expire_a_day_after_their_period(redis_server: RedisServer,
                                                                          prefix: str) -> None:
    ends = time.time() + 3600

    async def scenario() -> None:
        async with quota_store(redis_server.url, prefix) as store, raw(redis_server.url) as client:
            await store.add([("daily", "key:abc", "2026-11-23", 2.0, ends), ("a:b}", "{c", "2026-11", 1.0, ends)])
            names = sorted([k.decode() async for k in client.scan_iter(f"{prefix}:*")])
            assert names == [f"{prefix}:{{a%3Ab%7D:%7Bc}}:2026-11", f"{prefix}:{{daily:key:abc}}:2026-11-23"]
            assert names[1] == quota_key(prefix, "daily", "key:abc", "2026-11-23")
            expires = await client.expiretime(names[1])
            assert expires == int(ends + KEEP_AFTER_END_S)
            await store.add([("daily", "key:abc", "2026-11-23", 1.0, ends)])  # each add sets it again
            assert await client.expiretime(names[1]) == expires
            assert float(await client.get(names[1])) == 3.0

    run(scenario)


def test_a_dead_redis_is_unavailable_then_used_again_after_restart(redis: RedisServer, prefix: str) -> None:
    entry = ("daily", "key:abc", "2026-11-23")
    ends = time.time() + 3600

    async def scenario() -> None:
        async with quota_store(redis.url, prefix, timeout_s=0.2) as store:
            assert await store.add([(*entry, 1.0, ends)]) == [1.0]
            redis.kill()
            for call in (lambda: store.load([entry]), lambda: store.add([(*entry, 1.0, ends)])):
                with pytest.raises(QuotaStoreUnavailable) as caught:
                    await call()
                assert caught.value.__cause__ is not None
            redis.restart()  # empty: nothing persisted
            assert await store.add([(*entry, 1.0, ends)]) == [1.0]
            assert await store.load([entry]) == [1.0]

    run(scenario)


def test_a_stalled_redis_is_unavailable_within_the_timeout(redis: RedisServer, prefix: str) -> None:
    entry = ("daily", "key:abc", "2026-11-23")

    async def scenario() -> None:
        async with quota_store(redis.url, prefix, timeout_s=0.05) as store:
            assert await store.load([entry]) == [0.0]  # connected
            with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as stall:
                stall.sendall(encode("DEBUG", "SLEEP", "0.5"))
                await async_wait_until(lambda: asleep(redis.port), "the server asleep")
                with pytest.raises(QuotaStoreUnavailable) as caught:
                    await store.load([entry])
                assert isinstance(caught.value.__cause__, TimeoutError)
                assert "no answer in time" in str(caught.value)
                assert stall.recv(16) == b"+OK\r\n"  # awake again
            assert await store.load([entry]) == [0.0]  # the same store, a fresh connection

    run(scenario)


def test_two_gateways_share_quotas_through_redis(redis_server: RedisServer, prefix: str) -> None:
    clock = Clock(at("UTC", 2037, 11, 23, 12))
    config = limits({"name": "daily", "scope": "key", "limit": 5})

    async def scenario() -> None:
        a = Quotas(config, RedisQuotaStore(connect(redis_server.url, timeout_s=1.0, name="quotas"),
                                           prefix=prefix, timeout_s=1.0), clock)
        b = Quotas(config, RedisQuotaStore(connect(redis_server.url, timeout_s=1.0, name="quotas"),
                                           prefix=prefix, timeout_s=1.0), clock)
        try:
            await a.admit(want(a))
            a.admit_cached(want(a))
            await a.flush()
            await b.admit(want(b))  # loads 2
            for _ in range(2):
                b.admit_cached(want(b))
            with pytest.raises(QuotaExceeded):
                b.admit_cached(want(b))
            await b.flush()
            assert a.admit_cached(want(a)) is not None  # the slack: a has not heard of b until its next sync
            await a.flush()
            with pytest.raises(QuotaExceeded):
                a.admit_cached(want(a))
            with pytest.raises(QuotaExceeded):
                b.admit_cached(want(b))
            await b.flush()  # b only rejected since its last sync: refreshed all the same
            assert b._current[("daily", "key:k1")].used == 6
        finally:
            await a.aclose()
            await b.aclose()
        async with raw(redis_server.url) as client:
            assert float(await client.get(f"{prefix}:{{daily:key:k1}}:2037-11-23")) == 6.0

    run(scenario)


def test_redis_cluster_store(tmp_path: Path, prefix: str) -> None:
    """A one-node Redis Cluster: the pipelines go node by node, the contract holds."""

    async def scenario(url: str) -> None:
        client: Any = redis.asyncio.RedisCluster.from_url(url, socket_timeout=1.0)
        store = RedisQuotaStore(client, prefix=prefix, timeout_s=1.0)
        try:
            await store_contract(store, ends=time.time() + 3600)  # the Redis server's clock
        finally:
            await store.aclose()

    with RedisServer(tmp_path / "cluster", cluster=True) as server:
        run(lambda: scenario(server.url))


def test_a_flood_of_keys_stays_within_the_bound_and_redis_holds_every_admitted_request(
        redis_server: RedisServer, prefix: str) -> None:
    """200 keys against a bound of 50, a key asking 20 times on a limit of 3: the counters never pass 50,
    the key gets exactly 3, and Redis counts every request admitted, once."""
    clock = Clock(at("UTC", 2037, 11, 23, 12))
    keys = [f"flood-{i}" for i in range(200)]

    async def scenario() -> tuple[int, int, list[Any]]:
        store = RedisQuotaStore(connect(redis_server.url, timeout_s=1.0, name="quotas"), prefix=prefix, timeout_s=1.0)
        quotas = Quotas(bounded(50, {"name": "daily", "scope": "key", "limit": 3}), store, clock)
        steady, most = await flood(quotas, keys, "steady")
        await quotas.aclose()
        async with raw(redis_server.url) as client:
            used = [await client.get(quota_key(prefix, "daily", f"key:{k}", "2037-11-23"))
                    for k in [*keys, "steady"]]
        return steady, most, used

    steady, most, used = run(scenario)
    assert most <= 50 and steady == 3
    assert [float(u) for u in used] == [1.0] * 200 + [3.0]


def test_with_the_store_down_and_every_counter_unsent_new_keys_go_uncounted(
        redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """The only usage ever dropped: Redis is down and the 5 counters held all carry usage it has not taken.
    New keys are admitted uncounted (quotas fail open), counted and warned about once; the 5 are kept
    and reach Redis when it is back."""
    clock = Clock(at("UTC", 2037, 11, 23, 12))

    async def scenario() -> tuple[int, dict[tuple[str, ...], int], list[Any]]:
        store = RedisQuotaStore(connect(redis.url, timeout_s=0.2, name="quotas"), prefix=prefix, timeout_s=0.2)
        quotas = Quotas(bounded(5, {"name": "daily", "scope": "key", "limit": 3}), store, clock)
        await flood(quotas, [f"before-{i}" for i in range(5)], "before-0")
        await quotas.flush()
        redis.kill()
        with caplog.at_level(logging.WARNING, logger="sluice.quotas"):
            await flood(quotas, [f"during-{i}" for i in range(5)], "during-0")  # the 5 before are forgotten
            most = 0
            for i in range(20):
                assert await ask(quotas, f"uncounted-{i}")
                most = max(most, len(quotas._current))
        redis.restart()
        await quotas.flush()
        await ask(quotas, "after")  # room again: counted
        counts = quotas.decision_counts()
        await quotas.aclose()
        async with raw(redis.url) as client:
            used = [await client.get(quota_key(prefix, "daily", f"key:{k}", "2037-11-23"))
                    for k in ["during-0", "during-4", "uncounted-0", "after"]]
        return most, counts, used

    most, counts, used = run(scenario)
    assert most == 5
    assert counts[("daily", "unrecorded")] == 20 and counts[("daily", "evicted")] == 5 + 1
    assert [r.getMessage() for r in caplog.records].count(
        "quotas hold 5 counters with usage the store has not taken (ratelimit.quota_max_subjects): new subjects "
        "are admitted uncounted while there is no room") == 1
    assert used[0] is not None and float(used[0]) == 2.0 and float(used[1]) == 1.0  # kept while Redis was down
    assert used[2] is None and float(used[3]) == 1.0
