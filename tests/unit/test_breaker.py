"""The circuit breaker, driven with explicit times: ratio and consecutive opening, half-open probes, re-opening."""

from __future__ import annotations

from sluice.config import BreakerConfig
from sluice.routing.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def breaker(**fields: float) -> tuple[Breaker, dict[tuple[str, str], int]]:
    transitions: dict[tuple[str, str], int] = {}
    config = BreakerConfig(enabled=True, **{"failure_ratio": 0.5, "min_requests": 10, "window_s": 10.0,  # type: ignore[arg-type]
                                            "consecutive_failures": 0, "open_s": 30.0, "half_open_probes": 2,
                                            **fields})
    return Breaker(config, "gpt", transitions), transitions


def run(b: Breaker, now: float, outcomes: str) -> None:
    """One request per character: s succeeds, f fails."""
    for outcome in outcomes:
        assert b.admits(now)
        b.begin()
        if outcome == "s":
            b.succeeded(now)
        else:
            b.failed(now)


def test_opens_on_the_failure_ratio_only_past_min_requests() -> None:
    b, transitions = breaker()
    run(b, 0.0, "ffff")  # 100 % failures, but 4 < min_requests
    assert b.state == CLOSED
    run(b, 1.0, "ssss")  # 4 / 8
    assert b.state == CLOSED
    run(b, 2.0, "s")  # 4 / 9
    run(b, 2.0, "f")  # 5 / 10: the ratio is reached with enough requests
    assert b.state == OPEN and not b.admits(2.0)
    assert transitions == {("gpt", "open"): 1}


def test_below_the_ratio_it_stays_closed() -> None:
    b, _ = breaker()
    run(b, 0.0, "sfsfsssfss" * 3)  # 30 % failures
    assert b.state == CLOSED


def test_failures_leave_the_rolling_window() -> None:
    b, _ = breaker()
    run(b, 0.0, "fffff")
    run(b, 11.0, "sssss" + "ssss")  # the five failures left the 10 s window
    run(b, 11.0, "f")  # 1 / 10
    assert b.state == CLOSED
    run(b, 12.0, "ffff")  # 5 / 14
    assert b.state == CLOSED
    run(b, 12.5, "ff")  # 7 / 16
    assert b.state == CLOSED
    run(b, 13.0, "f")  # 8 / 17 ... still under half
    run(b, 13.0, "f")  # 9 / 18: half
    assert b.state == OPEN


def test_opens_on_consecutive_failures() -> None:
    b, _ = breaker(consecutive_failures=3, min_requests=1000)
    run(b, 0.0, "ffsff")  # a success breaks the run
    assert b.state == CLOSED
    run(b, 0.0, "f")
    assert b.state == OPEN and b.opened_at == 0.0


def test_half_open_after_open_s_admits_probes_and_closes_when_all_succeed() -> None:
    b, transitions = breaker(consecutive_failures=1)
    run(b, 0.0, "f")
    assert not b.admits(29.9) and b.retry_in(20.0) == 10.0
    assert b.admits(30.0) and b.state == HALF_OPEN
    b.begin()
    b.begin()
    assert not b.admits(30.0)  # two probes in flight: no third
    b.succeeded(31.0)
    assert b.state == HALF_OPEN and b.probes_ok == 1  # one success is not enough to close ...
    assert b.admits(31.0)  # ... and its slot is free for another probe
    b.succeeded(31.0)
    assert b.state == CLOSED and b.admits(31.0)
    assert transitions == {("gpt", "open"): 1, ("gpt", "half_open"): 1, ("gpt", "closed"): 1}


def test_a_released_probe_frees_its_slot() -> None:
    b, _ = breaker(consecutive_failures=1, half_open_probes=1)
    run(b, 0.0, "f")
    assert b.admits(30.0)
    b.begin()
    assert not b.admits(30.0)
    b.released()
    assert b.admits(30.0) and b.state == HALF_OPEN


def test_a_failed_probe_opens_it_again_for_another_open_s() -> None:
    b, transitions = breaker(consecutive_failures=1)
    run(b, 0.0, "f")
    assert b.admits(30.0)
    b.begin()
    b.begin()
    b.succeeded(30.5)
    b.failed(31.0)
    assert b.state == OPEN and b.opened_at == 31.0
    assert not b.admits(60.0) and b.admits(61.0)
    assert transitions[("gpt", "open")] == 2 and transitions[("gpt", "half_open")] == 2


def test_closing_starts_a_fresh_window() -> None:
    b, _ = breaker(min_requests=4)
    run(b, 0.0, "ssff")  # 2 / 4: open
    assert b.state == OPEN
    assert b.admits(30.0)
    run(b, 30.0, "ss")
    assert b.state == CLOSED
    run(b, 31.0, "f")  # 1 / 1 in the fresh window, under min_requests
    assert b.state == CLOSED


def test_verdicts_of_requests_begun_before_it_opened_are_ignored() -> None:
    b, _ = breaker(consecutive_failures=2)
    for _ in range(4):
        b.begin()
    b.failed(0.0)
    b.failed(0.0)
    assert b.state == OPEN
    b.succeeded(1.0)
    b.failed(1.0)
    assert b.state == OPEN and b.opened_at == 0.0


def test_health_checks_shorten_or_lengthen_the_wait() -> None:
    b, _ = breaker(consecutive_failures=1)
    run(b, 0.0, "f")
    b.probe_failed(10.0)  # still down: another open_s from now
    assert not b.admits(35.0) and b.admits(40.0)
    b2, _ = breaker(consecutive_failures=1)
    run(b2, 0.0, "f")
    b2.probe_passed(5.0)  # up again: probes go through now, not at 30 s
    assert b2.state == HALF_OPEN and b2.admits(5.0)
    b2.probe_failed(6.0)
    assert b2.state == OPEN and b2.opened_at == 6.0
