"""Exact limits across instances: two `sluice serve` sharing one real redis-server (examples/ratelimit.yaml)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT, Proc, Reply, call, start_gateway
from tests.redis_server import RedisServer

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
DEMO = {"authorization": "Bearer sk-sluice-demo"}


def gateways(tmp_path: Path, mock: Proc, redis: RedisServer, config: str, count: int) -> list[Proc]:
    """``count`` instances on one config, sharing the Redis."""
    env = {"SLUICE_UPSTREAM": mock.url, "SLUICE_REDIS": f"{redis.url}/0"}
    started = []
    for i in range(count):
        (tmp_path / f"gateway-{i}").mkdir()
        started.append(start_gateway(tmp_path / f"gateway-{i}", config, env=env))
    return started


def burst(urls: list[str], count: int, headers: dict[str, str]) -> list[tuple[str, Reply]]:
    """``count`` requests at once (one thread each), spread over the gateways in turn: (url, reply) pairs."""
    start = threading.Barrier(count)

    def send(i: int) -> tuple[str, Reply]:
        url = urls[i % len(urls)]
        start.wait(10)
        return url, call(url, "POST", "/v1/chat/completions", CHAT, headers)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(send, range(count)))


def test_two_instances_admit_exactly_the_limit(tmp_path, mock_upstream, redis) -> None:
    pair = gateways(tmp_path, mock_upstream, redis, (ROOT / "examples" / "ratelimit.yaml").read_text(), 2)
    try:
        started = time.monotonic()
        sent = burst([g.url for g in pair], 100, DEMO)
        elapsed = time.monotonic() - started
        other_key = call(pair[0].url, "POST", "/v1/chat/completions", CHAT, {"authorization": "Bearer sk-x"})
    finally:
        for gateway in pair:
            gateway.stop()
    statuses = Counter(reply.status for _, reply in sent)
    # The bucket holds 30 and refills one every 2 s: the burst gets 30, plus what refilled while it lasted.
    assert set(statuses) == {200, 429} and 30 <= statuses[200] <= 30 + int(elapsed / 2)
    for _, reply in sent:
        assert reply.headers["x-ratelimit-limit-requests"] == "30"
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
        if reply.status == 429:
            assert reply.headers["x-ratelimit-remaining-requests"] == "0"
            assert int(reply.headers["retry-after"]) >= 1
            assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    assert other_key.status == 200 and "x-ratelimit-limit-requests" not in other_key.headers  # the policy's key only


def test_a_dead_redis_fails_open_or_closed_and_recovers(tmp_path, mock_upstream, redis) -> None:
    config = (ROOT / "examples" / "ratelimit.yaml").read_text().replace("rate: 30", "rate: 1000").replace(
        "burst: 30", "burst: 1000")
    config = config.replace("    - name: demo-key-rpm", """    - name: strict-global
      scope: global
      rate: 1000
      period_s: 60
      mode: distributed
      fail_open: false
      match: {models: [other]}
    - name: demo-key-rpm""")
    other = "  other: {targets: [{provider: mock, model: gpt-4o}]}\n"
    config = config.replace("models:\n  gpt-4o-mini:", f"models:\n{other}  gpt-4o-mini:")
    (gateway,) = gateways(tmp_path, mock_upstream, redis, config, 1)
    try:
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, DEMO).status == 200
        ready = call(gateway.url, "GET", "/health/ready")
        redis.kill()
        not_ready = call(gateway.url, "GET", "/health/ready")
        open_reply = call(gateway.url, "POST", "/v1/chat/completions", CHAT, DEMO)  # fail open: local bucket
        closed_reply = call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "other"}, DEMO)
        redis.restart()
        recovered = [call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "other"}, DEMO).status
                     for _ in range(3)]
        ready_again = call(gateway.url, "GET", "/health/ready")
    finally:
        gateway.stop()
    assert open_reply.status == 200
    assert closed_reply.status == 503 and closed_reply.json()["error"]["code"] == "ratelimiter_unavailable"
    assert recovered[-1] == 200  # reconnected by itself
    assert ready.status == 200 and ready.json()["checks"]["redis"]["ok"] is True
    assert not_ready.status == 503 and not_ready.json()["checks"]["redis"]["ok"] is False
    assert ready_again.status == 200
