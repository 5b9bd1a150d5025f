"""Active health checks against real mock upstreams: a healthy one, one answering 503, one answering 429, a dead port.

Each check goes through the deployment's own provider kind, base URL and key; a pass turns an open breaker
half-open, a failure keeps it open (or opens a closed one), a 429 rests the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from sluice.config import HealthCheckConfig, parse_config
from sluice.routing import Deployment, HealthChecker, Router
from sluice.upstream import UpstreamClient
from tests.conftest import Proc, async_wait_until, call, free_port, start_mock


@pytest.fixture(scope="module")
def sick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("sick"), "--error-rate", "1.0", "--error-status", "503")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("limited"), "--error-rate", "1.0", "--error-status", "429")
    yield proc
    proc.stop()


def router(mock: str, sick: str, limited: str, *, only_unhealthy: bool = True, interval_s: float = 10.0) -> Router:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    unhealthy = str(only_unhealthy).lower()
    config = parse_config(f"""
providers:
  oai: {{kind: openai, base_url: "{mock}", api_keys: [sk-health-one, sk-health-two]}}
  ant: {{kind: anthropic, base_url: "{mock}", api_keys: [sk-ant-health]}}
  gem: {{kind: gemini, base_url: "{mock}", api_keys: [gem-health]}}
  az: {{kind: azure, base_url: "{mock}", api_keys: [az-health], api_version: "2024-10-21"}}
  sick: {{kind: openai, base_url: "{sick}"}}
  limited: {{kind: openai, base_url: "{limited}", key_cooldown_s: 45}}
  dead: {{kind: openai, base_url: "{dead}"}}
models:
  m:
    targets: [{{provider: oai, model: a}}, {{provider: ant, model: b}}, {{provider: gem, model: c}},
              {{provider: az, model: d}}, {{provider: sick, model: e}}, {{provider: limited, model: f}},
              {{provider: dead, model: g}}]
  n: {{targets: [{{provider: oai, model: a}}]}}
resilience:
  breaker: {{enabled: true, consecutive_failures: 1, open_s: 300}}
  health_check: {{interval_s: {interval_s}, timeout_s: {min(5.0, interval_s)}, only_unhealthy: {unhealthy}}}
""", {})
    table = Router(config)
    CHECKS[id(table)] = config.resilience.health_check
    return table


CHECKS: dict[int, HealthCheckConfig] = {}  # each test router's health_check section


def trip(d: Deployment, now: float) -> None:
    d.begin(now)
    d.failed(now, 0.1)
    assert d.state == "open"


def states(table: Router) -> dict[str, str]:
    return {f"{model}:{d.label}": d.state for model, d in table.deployments()}


async def check_once(table: Router) -> tuple[int, HealthChecker]:
    client = UpstreamClient(connect_timeout=2.0)
    checker = HealthChecker(table, lambda: client, table_config(table))
    try:
        return await checker.check_once(), checker
    finally:
        await client.close()


def table_config(table: Router) -> HealthCheckConfig:
    return CHECKS[id(table)]


def build(mock_upstream: Proc, sick: Proc, limited: Proc, *, only_unhealthy: bool = True,
          interval_s: float = 10.0) -> Router:
    return router(mock_upstream.url, sick.url, limited.url, only_unhealthy=only_unhealthy, interval_s=interval_s)


def test_checks_reopen_healthy_deployments_and_keep_failing_ones_open(mock_upstream: Proc, sick: Proc,
                                                                        limited: Proc) -> None:
    table = build(mock_upstream, sick, limited)
    now = time.monotonic()
    for _, d in table.deployments():
        trip(d, now)
    checked, checker = asyncio.run(check_once(table))
    # oai's two keys (shared by models m and n: checked once each), ant, gem, az, sick, limited, dead
    assert checked == 8 and checker.passed == 6 and checker.failed == 2
    after = states(table)
    healthy = ["m:oai[0]#0", "m:oai[0]#1", "n:oai[0]#0", "n:oai[0]#1", "m:ant[0]#0", "m:gem[0]#0", "m:az[0]#0"]
    assert {label: after[label] for label in healthy} == dict.fromkeys(healthy, "half_open")
    assert after["m:sick[0]"] == "open" and after["m:dead[0]"] == "open" and after["m:limited[0]"] == "open"
    m = table.get("m")
    assert m is not None
    limited_one = next(d for d in m.targets if d.label == "limited[0]")
    retry_after = call(limited.url, "GET", "/v1/models").headers.get("retry-after")
    rest = float(retry_after) if retry_after else 45.0  # the upstream's Retry-After, else key_cooldown_s
    assert limited_one.cooling(now) and now + rest <= limited_one.cooldown_until <= time.monotonic() + rest
    sick_one = next(d for d in m.targets if d.label == "sick[0]")
    assert sick_one.breaker is not None and sick_one.breaker.opened_at > now  # its open_s starts again


def test_each_check_uses_its_deployments_key_and_kind(mock_upstream: Proc, sick: Proc, limited: Proc) -> None:
    table = build(mock_upstream, sick, limited)
    m = table.get("m")
    assert m is not None
    now = time.monotonic()
    for d in m.targets[:5]:  # oai#0, oai#1, ant, gem, az
        trip(d, now)
    asyncio.run(check_once(table))
    seen = [r for r in call(mock_upstream.url, "GET", "/_mock/requests").json() if r["method"] == "GET"][-5:]
    by_path: dict[str, list[dict[str, str | None]]] = {}
    for request in seen:
        by_path.setdefault(request["path"], []).append(request["headers"])
    assert sorted(h["authorization"] or h["x-api-key"] or "" for h in by_path["/v1/models"]) == [
        "Bearer sk-health-one", "Bearer sk-health-two", "sk-ant-health"]
    assert any(h["anthropic-version"] for h in by_path["/v1/models"])
    assert by_path["/v1beta/models"][0]["x-goog-api-key"] == "gem-health"
    assert by_path["/openai/models"][0]["api-key"] == "az-health"


def test_only_unhealthy_skips_closed_breakers_and_all_counts_failures(mock_upstream: Proc, sick: Proc,
                                                                        limited: Proc) -> None:
    table = build(mock_upstream, sick, limited)
    assert asyncio.run(check_once(table))[0] == 0  # every breaker closed: nothing to check
    everyone = build(mock_upstream, sick, limited, only_unhealthy=False)
    checked, _ = asyncio.run(check_once(everyone))
    assert checked == 8
    after = states(everyone)
    assert after["m:sick[0]"] == "open" and after["m:dead[0]"] == "open"  # one failure is enough here
    assert [label for label, state in after.items() if state != "closed"] == ["m:sick[0]", "m:dead[0]"]


def test_the_checker_runs_in_the_background_until_closed(mock_upstream: Proc, sick: Proc, limited: Proc) -> None:
    # Rounds every 2 s, each check with as long (the most allowed): with rounds every 0.2 s, the 0.2 s timeout
    # failed the healthy mock's check on a loaded machine, which then stayed open and the test waited in vain.
    table = build(mock_upstream, sick, limited, interval_s=2.0)
    m = table.get("m")
    assert m is not None
    healthy, dead = m.targets[0], m.targets[-1]

    async def scenario() -> tuple[str, str, int]:
        client = UpstreamClient(connect_timeout=2.0)
        checker = HealthChecker(table, lambda: client, table_config(table))
        now = time.monotonic()
        trip(healthy, now)
        trip(dead, now)
        checker.start()
        task = checker._task
        await async_wait_until(lambda: healthy.state != "open", "a background round reopening the healthy one")
        state = healthy.state
        await checker.aclose()
        assert task is not None and task.done()  # closed: nothing left to run another round
        rounds = checker.rounds
        await client.close()
        return state, dead.state, rounds

    healthy_state, dead_state, rounds = asyncio.run(scenario())
    assert healthy_state == "half_open" and dead_state == "open" and rounds >= 1


def test_without_breakers_nothing_starts() -> None:
    config = parse_config("""
providers: {p: {kind: openai, base_url: "http://127.0.0.1:9"}}
models: {m: {targets: [{provider: p, model: a}]}}
resilience: {health_check: {interval_s: 1, timeout_s: 1}}
""", {})
    table = Router(config)

    async def scenario() -> bool:
        checker = HealthChecker(table, UpstreamClient, config.resilience.health_check)
        checker.start()
        started = checker._task is not None
        await checker.aclose()
        return started

    assert asyncio.run(scenario()) is False
