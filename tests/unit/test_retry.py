"""The retry budget, backoff, Retry-After and timeout parsing (resilience/retry.py), and the config checks
of retries, deadline and dead letters."""

from __future__ import annotations

import pytest

from sluice.config import parse_config
from sluice.errors import ConfigError
from sluice.resilience.retry import RetryBudget, backoff_s, parse_retry_after, parse_timeout

BASE = """
providers:
  mock: {kind: openai, base_url: "http://127.0.0.1:9000"}
models:
  a: {targets: [{provider: mock, model: m}]}
"""


def test_the_budget_allows_its_ratio_of_recent_requests() -> None:
    budget = RetryBudget(0.2, 0.0, 10.0)
    now = 1000.0
    for _ in range(100):
        budget.requested(now)
    taken = sum(budget.try_retry(now) for _ in range(50))
    assert taken == 20 and budget.exhausted == 30


def test_the_floor_lets_a_quiet_gateway_retry() -> None:
    budget = RetryBudget(0.2, 1.0, 10.0)  # 1 a second over 10 s: 10 retries with no requests at all
    assert sum(budget.try_retry(5.0) for _ in range(15)) == 10


def test_old_requests_and_retries_leave_the_window() -> None:
    budget = RetryBudget(0.5, 0.0, 10.0)
    for _ in range(10):
        budget.requested(0.0)
    assert sum(budget.try_retry(0.0) for _ in range(10)) == 5
    assert not budget.try_retry(9.0)  # still inside the window
    assert not budget.try_retry(11.0)  # the requests left with the retries: nothing to take a share of
    for _ in range(4):
        budget.requested(11.0)
    assert sum(budget.try_retry(11.0) for _ in range(4)) == 2
    assert sum(budget.try_retry(1000.0) for _ in range(4)) == 0  # a long gap clears every bucket


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    assert backoff_s(1, 0.1, 2.0, draw=0.999) == pytest.approx(0.0999)
    assert backoff_s(3, 0.1, 2.0, draw=0.5) == pytest.approx(0.2)
    assert backoff_s(10, 0.1, 2.0, draw=0.5) == pytest.approx(1.0)  # capped at max
    assert backoff_s(200, 0.1, 2.0, draw=0.5) == pytest.approx(1.0)  # no overflow
    assert all(0 <= backoff_s(2, 0.1, 2.0) < 0.2 for _ in range(100))


@pytest.mark.parametrize(("seconds", "milliseconds", "expected"), [
    (b"3", None, 3.0), (b" 1.5 ", None, 1.5), (None, b"250", 0.25), (b"30", b"1500", 1.5),
    (b"Wed, 21 Oct 2015 07:28:10 GMT", None, 10.0), (b"soon", None, None), (b"-1", None, None),
    (b"inf", None, None), (None, b"nan", None), (None, None, None), (b"Wed, 21 Oct 2015", None, None),
])
def test_retry_after(seconds: bytes | None, milliseconds: bytes | None, expected: float | None) -> None:
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    assert parse_retry_after(seconds, milliseconds, now=now) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("30", 30.0), (" 2.5", 2.5), ("0", None), ("-1", None), ("nan", None), ("inf", None), ("soon", None),
    ("NOT_GIVEN", None),
])
def test_timeout_header(value: str, expected: float | None) -> None:
    assert parse_timeout(value) == expected


@pytest.mark.parametrize(("section", "path"), [
    ("retries: -1", "resilience.retries"),
    ("retries: 11", "resilience.retries"),
    ("retry_on: [200]", "resilience.retry_on[0]"),
    ("backoff_base_s: 3", "resilience.backoff_base_s"),
    ("backoff_max_s: .nan", "resilience.backoff_max_s"),
    ("retry_budget: -0.1", "resilience.retry_budget"),
    ("retry_budget_window_s: 0", "resilience.retry_budget_window_s"),
    ("timeout_s: 0", "resilience.timeout_s"),
    ("timeout_header: 'x timeout'", "resilience.timeout_header"),
    ("dead_letters: {max_entries: 0}", "resilience.dead_letters.max_entries"),
    ("dead_letters: {enabled: true, redis: true}", "resilience.dead_letters.redis"),
    ("redis: 'http://x'", "resilience.redis"),
])
def test_bad_resilience_settings_are_refused_with_their_path(section: str, path: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(BASE + f"resilience:\n  {section}\n", {})
    assert refused.value.path == path


def test_good_resilience_settings_load() -> None:
    config = parse_config(BASE + "resilience: {retries: 3, retry_on: [429, 503], timeout_s: 30, "
                                 "dead_letters: {enabled: true}}\n", {})
    assert config.resilience.retries == 3 and config.resilience.retry_on == (429, 503)
