"""Readiness reflects the dependencies a worker needs (issue 15, finding 8), with reasons in /health/details.

Before: /health/ready stayed 200 with the key store down or hung.  Now the store (authentication on: a key
not cached yet needs it) and the rate limits' Redis under a fail-closed policy are *required*: down, or hung
past the probe's bound, and readiness is 503 naming them; a Redis that only fail-open policies use is
reported, not required.  Real PostgreSQL (paused with SIGSTOP: hung) and redis-server.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sluice.config import StoreConfig
from tests.conftest import Proc, call, start_gateway
from tests.integration.test_auth import bearer, chat, gateway_yaml, migrated, new_key, serve
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "details-token-0123456789"
DETAILS = {"authorization": f"Bearer {TOKEN}"}


def with_details(config: str) -> str:
    return config + f"observability: {{health_details_token: {TOKEN}}}\n"


def ready(gateway: Proc) -> tuple[int, dict[str, Any]]:
    reply = call(gateway.url, "GET", "/health/ready", timeout=10)
    return reply.status, reply.json()["checks"]


def dependencies(gateway: Proc) -> dict[str, Any]:
    reply = call(gateway.url, "GET", "/health/details", headers=DETAILS, timeout=10)
    assert reply.status == 200
    found: dict[str, Any] = reply.json()["dependencies"]
    return found


@pytest.fixture
def pg_store(postgres: Any) -> Iterator[StoreConfig]:
    name, url = postgres.create_database()
    try:
        yield migrated(StoreConfig(postgres_url=url, timeout_s=5.0))
    finally:
        postgres.drop_database(name)


def test_ready_is_503_while_the_store_hangs_or_is_down_and_200_again_after(pg_store: StoreConfig, postgres: Any,
                                                               mock_upstream: Proc, tmp_path: Path) -> None:
    if not isinstance(postgres, PostgresServer):
        pytest.skip("the machine's own PostgreSQL is not ours to pause")
    gateway = serve(tmp_path, with_details(gateway_yaml(pg_store, mock_upstream.url)))
    try:
        key, _ = new_key(pg_store)
        assert chat(gateway, bearer(key)).status == 200
        status, checks = ready(gateway)
        assert status == 200 and checks["store"]["ok"] is True and checks["store"]["latency_ms"] >= 0
        postgres.pause()
        try:
            status, checks = ready(gateway)  # answered within the probe's bound, not the store's timeout
            assert status == 503 and checks["store"]["ok"] is False
            assert "hung" in checks["store"]["error"]
            assert chat(gateway, bearer(key)).status == 200  # a cached key still goes on meanwhile
        finally:
            postgres.resume()
        status, checks = ready(gateway)
        assert status == 200 and checks["store"]["ok"] is True
        postgres.stop()  # down: connections refused
        try:
            status, checks = ready(gateway)
            store = checks["store"]
            assert status == 503 and store["ok"] is False and store["required"] is True and store["error"]
            assert store["needed_for"] == "API keys not cached yet" and checks["config"]["ok"] is True
            assert dependencies(gateway)["store"]["ok"] is False
        finally:
            postgres.start()
        assert ready(gateway)[0] == 200
    finally:
        if not postgres.running:
            postgres.start()
        gateway.stop()


def limits_config(mock_url: str, redis_url: str, fail_open: bool) -> str:
    return with_details(f"""
ratelimit:
  redis: {redis_url}
  redis_timeout_s: 0.2
  policies:
    - {{name: per-key, scope: key, rate: 1000, period_s: 60, mode: distributed, fail_open: {str(fail_open).lower()}}}
providers:
  mock: {{kind: openai, base_url: "{mock_url}", api_keys: [sk-upstream]}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
""")


def test_a_hung_redis_makes_fail_closed_limits_unready_and_is_reported_under_fail_open(
        redis: RedisServer, mock_upstream: Proc, tmp_path: Path) -> None:
    closed = start_gateway(tmp_path, limits_config(mock_upstream.url, redis.url, fail_open=False))
    open_ = start_gateway(tmp_path, limits_config(mock_upstream.url, redis.url, fail_open=True))
    try:
        for gateway in (closed, open_):
            status, checks = ready(gateway)
            assert status == 200 and checks["redis"]["ok"] is True
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)  # hung: connections open, no answer
        try:
            status, checks = ready(closed)
            assert status == 503
            assert checks["redis"]["ok"] is False and checks["redis"]["required"] is True
            assert checks["redis"]["needed_for"] == "fail-closed rate limits"
            status, checks = ready(open_)
            assert status == 200  # fail-open policies serve from local buckets: not a reason to leave
            assert checks["redis"]["ok"] is False and checks["redis"]["required"] is False
            assert dependencies(open_)["redis"]["ok"] is False
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        redis.kill()
        status, checks = ready(closed)
        assert status == 503 and checks["redis"]["error"]
        redis.restart()
        assert ready(closed)[0] == 200
    finally:
        closed.stop()
        open_.stop()
