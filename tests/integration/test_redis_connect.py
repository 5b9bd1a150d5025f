"""sluice.state.redis.connect against a real redis-server: the client's name, timeouts and retry policy."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from sluice.state.redis import HEALTH_CHECK_S, connect
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_the_client_names_itself_and_carries_the_common_settings(redis_server: RedisServer) -> None:
    async def scenario() -> tuple[object, dict[str, object]]:
        client = connect(redis_server.url, timeout_s=0.7, name="test")
        try:
            return await client.client_getname(), client.connection_pool.connection_kwargs
        finally:
            await client.aclose()

    name, settings = asyncio.run(scenario())
    assert name == "sluice-test"
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (0.7, 0.7)
    assert settings["health_check_interval"] == HEALTH_CHECK_S


@pytest.mark.parametrize("retries", [0, 1])
def test_one_retry_covers_the_stale_connection_met_first_after_a_restart(redis: RedisServer, retries: int) -> None:
    async def scenario() -> str:
        client = connect(redis.url, timeout_s=2.0, name="test", retries=retries)
        try:
            assert await client.ping()  # a pooled connection, idle from here on
            redis.restart()  # the pooled connection is dead now; the health check (30 s) does not see it yet
            try:
                await client.set("after-restart", "1")
            except RedisConnectionError:
                return "failed"
            return "answered"
        finally:
            await client.aclose()

    assert asyncio.run(scenario()) == ("answered" if retries else "failed")
