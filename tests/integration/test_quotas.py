"""Daily and monthly quotas through `sluice serve`: 429s with their headers, tokens settled, kept across restarts
(in the embedded SQLite store and in a real redis-server), shared by instances."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Proc, call, start_gateway, wait_until
from tests.integration.test_metrics import finished
from tests.redis_server import command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
ALICE = {"authorization": "Bearer sk-alice"}
BOB = {"authorization": "Bearer sk-bob"}


def zone_at_noon(now: datetime | None = None) -> str:
    """A fixed-offset zone where it is between noon and 1 pm now: a day (or month) ends at least 11 hours away.

    Quota periods are calendar days and months on the real clock; in a fixed zone like Europe/Paris, a test
    running across its midnight would see the counters start again.  Chosen relative to now, the zone leaves every
    test here half a day clear of any boundary, whatever the date and time it runs.
    """
    offset = 12 - (now or datetime.now(UTC)).hour  # local = UTC + offset: from UTC+12 down to UTC-11
    return f"Etc/GMT{-offset:+d}"  # the POSIX sign: Etc/GMT-3 is UTC+3


ZONE = zone_at_noon()


def config(upstream: str, quotas: str, *, store: str = "", redis: str = "", sync_s: float = 0.1) -> str:
    return f"""
ratelimit:
  timezone: {ZONE}
  quota_sync_s: {sync_s}
  {f"quota_store: {json.dumps(store)}" if store else ""}
  {f"redis: {json.dumps(redis)}" if redis else ""}
  quotas:
{quotas}
providers:
  mock: {{kind: openai, base_url: "{upstream}", api_keys: [sk-mock]}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
"""


DAILY_3 = """    - {name: daily-requests, scope: key, limit: 3, period: day}
"""


def chat(gateway: Proc, headers: dict[str, str]) -> int:
    return call(gateway.url, "POST", "/v1/chat/completions", CHAT, headers).status


def test_the_zone_keeps_clear_of_midnight() -> None:
    for hour in range(24):
        now = datetime(2026, 3, 29, hour, 59, tzinfo=UTC)  # a DST change elsewhere: no matter in a fixed zone
        local = now.astimezone(ZoneInfo(zone_at_noon(now)))
        assert local.hour == 12, (hour, zone_at_noon(now))


def stored(redis_port: int, quota: str) -> int:
    """The usage the instances have pushed to Redis for ``quota`` (one subject, one period in these tests)."""
    keys = command(redis_port, "KEYS", f"sluice:q:{{{quota}:*").split(b"\r\n")[2::2]
    return sum(int(float(command(redis_port, "GET", key.decode()))) for key in keys)


def test_a_daily_request_quota_refuses_with_headers_and_survives_a_restart(tmp_path, mock_upstream) -> None:
    # A sync interval longer than the test: only the shutdown flush can have saved the usage.
    text = config(mock_upstream.url, DAILY_3, store=str(tmp_path / "quotas.db"), sync_s=600)
    gateway = start_gateway(tmp_path, text)
    try:
        replies = [call(gateway.url, "POST", "/v1/chat/completions", CHAT, ALICE) for _ in range(4)]
        other = call(gateway.url, "POST", "/v1/chat/completions", CHAT, BOB)
        anonymous = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
        metrics = call(gateway.url, "GET", "/metrics").body.decode()
    finally:
        gateway.stop()
    assert 'sluice_quota_decisions_total{decision="admitted",quota="daily-requests"} 4.0' in metrics
    assert 'sluice_quota_decisions_total{decision="rejected",quota="daily-requests"} 1.0' in metrics
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert [r.headers["x-sluice-quota-remaining-requests"] for r in replies] == ["2", "1", "0", "0"]
    assert all(r.headers["x-sluice-quota-limit-requests"] == "3" for r in replies)
    refused = replies[3]
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and error["type"] == "requests"
    assert "daily-requests" in error["message"] and ZONE in error["message"]
    assert "sk-alice" not in refused.body.decode()
    assert 1 <= int(refused.headers["retry-after"]) <= 25 * 3600
    assert refused.headers["x-sluice-quota-reset-requests"].endswith("s")
    assert other.status == 200 and other.headers["x-sluice-quota-remaining-requests"] == "2"  # per key
    assert anonymous.status == 200 and "x-sluice-quota-limit-requests" not in anonymous.headers  # no key, no quota

    again = start_gateway(tmp_path, text)  # the same SQLite file: the day's usage is still there
    try:
        after_restart = [chat(again, ALICE), chat(again, BOB)]
    finally:
        again.stop()
    assert after_restart == [429, 200]


def test_a_token_quota_is_settled_with_the_usage_the_provider_reported(tmp_path, mock_upstream) -> None:
    quotas = """    - {name: monthly-tokens, scope: key, unit: tokens, limit: 1000, period: month}
"""
    gateway = start_gateway(tmp_path, config(mock_upstream.url, quotas, store=str(tmp_path / "quotas.db")))
    try:
        first = call(gateway.url, "POST", "/v1/chat/completions", CHAT, ALICE)
        used = first.json()["usage"]["total_tokens"]
        wait_until(lambda: finished(gateway.url) >= 1, "the first request settled")
        second = call(gateway.url, "POST", "/v1/chat/completions", CHAT, ALICE)
    finally:
        gateway.stop()
    estimate = len(json.dumps(CHAT).encode()) // 4 + CHAT["max_tokens"]
    assert used > 0 and used != estimate
    assert int(first.headers["x-sluice-quota-remaining-tokens"]) == 1000 - estimate
    assert int(second.headers["x-sluice-quota-remaining-tokens"]) == 1000 - used - estimate


def test_instances_share_a_quota_on_redis_and_it_survives_their_restart(tmp_path, mock_upstream, redis) -> None:
    quotas = """    - {name: daily-requests, scope: key, limit: 6, period: day}
"""
    text = config(mock_upstream.url, quotas, redis=f"{redis.url}/0", sync_s=0.05)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = start_gateway(tmp_path / "a", text), start_gateway(tmp_path / "b", text)
    try:
        statuses = [chat(first, ALICE) for _ in range(3)]
        wait_until(lambda: stored(redis.port, "daily-requests") == 3, "the first instance's use pushed to Redis")
        # The second meets Alice's counter now: it loads the 3 from Redis, then counts on its own, exactly.
        statuses += [chat(second, ALICE) for _ in range(4)]
        wait_until(lambda: stored(redis.port, "daily-requests") == 6, "the second instance's use pushed")
        # The first still holds 3 of its own; its syncs bring the second's use: it refuses from then on.  (Until
        # its next sync it may admit more: the slack quotas document, at most one quota_sync_s of its requests.)
        wait_until(lambda: chat(first, ALICE) == 429, "the first instance hearing of the second's use")
    finally:
        first.stop()
        second.stop()
    assert statuses == [200] * 6 + [429]
    again = start_gateway(tmp_path / "a", text)
    try:
        assert chat(again, ALICE) == 429
        assert chat(again, BOB) == 200
    finally:
        again.stop()


def test_bad_quota_config_fails_check_config(tmp_path, mock_upstream) -> None:
    from sluice.config import load_config
    from sluice.errors import ConfigError

    for quotas, path in ((DAILY_3.replace("scope: key", "scope: ip"), "ratelimit.quotas[0].scope"),
                         (DAILY_3.replace("limit: 3", "limit: 0"), "ratelimit.quotas[0].limit")):
        file = tmp_path / "bad.yaml"
        file.write_text(config(mock_upstream.url, quotas))
        with pytest.raises(ConfigError) as caught:
            load_config(file)
        assert path in str(caught.value)
    file.write_text(config(mock_upstream.url, DAILY_3).replace(ZONE, "Mars/Olympus"))
    with pytest.raises(ConfigError, match=r"ratelimit\.timezone"):
        load_config(file)
