"""Local rate limits (LocalLimiter): the compiled module and its pure twin, same cases, same answers."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sluice._native as native
from sluice._native import _pure_limits

try:
    from sluice._native import _limits
except ImportError:  # not built here
    _limits = None

NOT_BUILT = pytest.mark.skipif(_limits is None, reason="extension not built")
TWINS = [pytest.param(_pure_limits, id="pure"), pytest.param(_limits, id="compiled", marks=NOT_BUILT)]


def test_compiled_is_active_when_required() -> None:
    if os.environ.get("SLUICE_REQUIRE_COMPILED") == "1":
        assert _limits is not None, "the _limits extension did not build or import"
        assert native.LocalLimiter is _limits.LocalLimiter


def bucket(impl: Any, limit: float = 10.0, period: float = 10.0, burst: float = 10.0, **kw: Any) -> Any:
    return impl.LocalLimiter("token_bucket", limit, period, burst, **kw)


def window(impl: Any, limit: float = 100.0, period: float = 60.0, **kw: Any) -> Any:
    return impl.LocalLimiter("sliding_window", limit, period, 1.0, **kw)


# -- token bucket ----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", TWINS)
def test_bucket_starts_full_and_refills_at_rate(impl: Any) -> None:
    lim = bucket(impl, limit=20, period=10, burst=5)  # 2 units a second, up to 5
    assert (lim.algorithm, lim.limit, lim.period, lim.burst) == ("token_bucket", 20.0, 10.0, 5.0)
    assert lim.remaining("k", 100.0) == 5.0 and lim.reset_after("k", 100.0) == 0.0
    assert lim.check("k", 5, 100.0) == 0.0
    assert len(lim) == 0  # reading an unknown key stores nothing: it is full
    lim.consume("k", 5, 100.0)
    assert len(lim) == 1
    assert lim.remaining("k", 100.0) == 0.0
    assert lim.remaining("k", 101.0) == 2.0
    assert lim.remaining("k", 101.5) == 3.0
    assert lim.remaining("k", 200.0) == 5.0  # never above burst


@pytest.mark.parametrize("impl", TWINS)
def test_check_does_not_consume(impl: Any) -> None:
    lim = bucket(impl)
    lim.consume("k", 2, 0.0)
    for _ in range(10):
        assert lim.check("k", 8, 0.0) == 0.0
    assert lim.remaining("k", 0.0) == 8.0
    lim.consume("k", 8, 0.0)
    assert lim.check("k", 1, 0.0) == 1.0


@pytest.mark.parametrize("impl", TWINS)
def test_bucket_retry_after(impl: Any) -> None:
    lim = bucket(impl)  # 1 unit a second, up to 10
    lim.consume("k", 10, 0.0)
    assert lim.check("k", 3, 0.0) == 3.0
    assert lim.check("k", 3, 1.0) == 2.0
    assert lim.check("k", 3, 3.0) == 0.0
    assert lim.check("k", 10, 3.0) == 7.0
    assert lim.check("k", 11, 3.0) == math.inf  # more than the capacity never fits
    assert lim.check("fresh", 10, 3.0) == 0.0 and lim.check("fresh", 10.5, 3.0) == math.inf
    assert lim.check("k", 0, 3.0) == 0.0


@pytest.mark.parametrize("impl", TWINS)
def test_bucket_adjust_and_debt(impl: Any) -> None:
    lim = bucket(impl)
    lim.consume("k", 8, 0.0)
    lim.adjust("k", 5, 0.0)  # gives back
    assert lim.remaining("k", 0.0) == 7.0
    lim.adjust("k", 100, 0.0)
    assert lim.remaining("k", 0.0) == 10.0 and lim.reset_after("k", 0.0) == 0.0  # capped at capacity
    lim.adjust("k", -4, 0.0)  # takes more
    assert lim.remaining("k", 0.0) == 6.0
    lim.adjust("k", -25, 0.0)  # 6 - 25 = -19: debt, floored at -burst
    assert lim.remaining("k", 0.0) == 0.0
    assert lim.reset_after("k", 0.0) == 20.0
    assert lim.check("k", 1, 0.0) == 11.0
    lim.consume("k", 5, 0.0)  # consume regardless: still floored
    assert lim.reset_after("k", 0.0) == 20.0
    lim.adjust("unknown", 3, 0.0)  # full already: nothing to give back, nothing stored
    assert len(lim) == 1
    lim.adjust("unknown", -3, 0.0)
    assert len(lim) == 2 and lim.remaining("unknown", 0.0) == 7.0


@pytest.mark.parametrize("impl", TWINS)
def test_bucket_remaining_and_reset_after(impl: Any) -> None:
    lim = bucket(impl, limit=20, period=10, burst=10)  # 2 a second
    lim.consume("k", 4, 0.0)
    assert (lim.remaining("k", 0.0), lim.reset_after("k", 0.0)) == (6.0, 2.0)
    assert (lim.remaining("k", 1.0), lim.reset_after("k", 1.0)) == (8.0, 1.0)
    assert (lim.remaining("k", 2.0), lim.reset_after("k", 2.0)) == (10.0, 0.0)


# -- sliding window --------------------------------------------------------------------------

@pytest.mark.parametrize("impl", TWINS)
def test_window_weighting_worked_by_hand(impl: Any) -> None:
    lim = window(impl)  # 100 per 60 s; window 0 is [0, 60), window 1 is [60, 120)
    assert (lim.algorithm, lim.limit, lim.period) == ("sliding_window", 100.0, 60.0)
    lim.consume("k", 80, 30.0)
    assert lim.remaining("k", 30.0) == 20.0
    assert lim.check("k", 21, 30.0) > 0 and lim.check("k", 20, 30.0) == 0.0
    # t = 75: a quarter into window 1, so three quarters of window 0 still count: 80 * 0.75 = 60
    assert lim.remaining("k", 75.0) == 40.0
    lim.consume("k", 30, 75.0)
    assert lim.remaining("k", 75.0) == 10.0  # 60 + 30
    # 20 more fit once 80 * (1 - f) <= 100 - 30 - 20, f = 1 - 50/80 = 0.375: t = 82.5
    assert lim.check("k", 20, 75.0) == 7.5
    assert lim.check("k", 20, 82.4) > 0 and lim.check("k", 20, 82.5) == 0.0
    assert lim.check("k", 101, 75.0) == math.inf
    # full once window 1's 30 no longer count: at the start of window 3
    assert lim.reset_after("k", 75.0) == 105.0
    assert lim.remaining("k", 179.0) < 100.0 and lim.remaining("k", 180.0) == 100.0
    assert lim.reset_after("k", 180.0) == 0.0


@pytest.mark.parametrize("impl", TWINS)
def test_window_retry_after_next_window(impl: Any) -> None:
    lim = window(impl, limit=10, period=10)
    lim.consume("k", 10, 5.0)  # window 0 full
    # nothing fits in window 0 (its own count is at the limit): in window 1, 10 * (1 - f) + 5 <= 10 at f = 0.5
    assert lim.check("k", 5, 5.0) == 10.0
    assert lim.check("k", 5, 14.9) > 0 and lim.check("k", 5, 15.0) == 0.0
    assert lim.check("k", 10, 5.0) == 15.0  # the whole limit: once window 0 no longer counts, at t = 20


@pytest.mark.parametrize("impl", TWINS)
def test_window_adjust(impl: Any) -> None:
    lim = window(impl)
    lim.consume("k", 50, 30.0)
    lim.adjust("k", 20, 30.0)
    assert lim.remaining("k", 30.0) == 70.0
    # t = 90: half into window 1; window 0 counted 30 and weighs half
    assert lim.remaining("k", 90.0) == 85.0
    lim.adjust("k", 10, 90.0)  # window 1 has nothing to give back: it comes off window 0's count
    assert lim.remaining("k", 90.0) == 90.0
    lim.adjust("k", 100, 90.0)  # never below zero
    assert lim.remaining("k", 90.0) == 100.0 and lim.reset_after("k", 90.0) == 0.0
    lim.adjust("k", -150, 90.0)  # takes more, without a bound
    assert lim.remaining("k", 90.0) == 0.0
    wait = lim.check("k", 1, 90.0)  # in window 2, 150 * (1 - g) + 1 <= 100: g = 1 - 99/150
    assert wait == pytest.approx((0.5 + 1 - 99 / 150) * 60)
    assert lim.check("k", 1, 90.0 + wait * (1 - 1e-9)) > 0 and lim.check("k", 1, 90.0 + wait * (1 + 1e-9)) == 0.0


# -- keys ------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", TWINS)
def test_sweep_forgets_full_keys(impl: Any) -> None:
    lim = bucket(impl)
    lim.consume("a", 1, 0.0)
    lim.consume("b", 10, 0.0)
    assert len(lim) == 2 and lim.sweep(0.5) == 0
    assert lim.sweep(1.0) == 1 and len(lim) == 1  # "a" is full again
    assert lim.sweep(5.0) == 0
    assert lim.sweep(10.0) == 1 and len(lim) == 0
    win = window(impl)
    win.consume("a", 1, 10.0)
    assert win.sweep(70.0) == 0  # window 0 still counts a little
    assert win.sweep(119.0) == 0 and win.sweep(120.0) == 1 and len(win) == 0


@pytest.mark.parametrize("impl", TWINS)
def test_max_keys_sweeps_then_evicts_least_recently_used(impl: Any) -> None:
    lim = bucket(impl, max_keys=2)
    lim.consume("a", 5, 0.0)
    lim.consume("b", 5, 0.0)
    assert lim.check("a", 1, 0.0) == 0.0  # "a" is used again: "b" is now the least recently used
    lim.consume("c", 5, 0.0)  # nothing is full: "b" goes, and comes back full
    assert len(lim) == 2
    assert (lim.remaining("a", 0.0), lim.remaining("b", 0.0), lim.remaining("c", 0.0)) == (5.0, 10.0, 5.0)
    lim.consume("d", 1, 5.0)  # "a" and "c" are full again: the sweep forgets both
    assert len(lim) == 1 and lim.remaining("d", 5.0) == 9.0


@pytest.mark.parametrize("impl", TWINS)
def test_busy_table_does_not_sweep_for_every_new_key(impl: Any) -> None:
    lim = bucket(impl, max_keys=32)  # a sweep that frees fewer than 32 // 16 = 2 keys skips the next 2 - freed
    for i in range(32):
        lim.consume(f"k{i}", 10, 0.0)
    lim.consume("new1", 10, 0.0)  # sweeps (frees nothing), evicts k0
    lim.adjust("k5", 10, 0.0)  # full again
    lim.consume("new2", 10, 0.0)  # no sweep: evicts k1 (k5 stays)
    lim.consume("new3", 10, 0.0)  # no sweep: evicts k2
    lim.consume("new4", 10, 0.0)  # sweeps: frees k5
    assert len(lim) == 32
    assert [lim.remaining(f"k{i}", 0.0) for i in range(4)] == [10.0, 10.0, 10.0, 0.0]
    assert lim.sweep(0.0) == 0


# -- arguments and time ----------------------------------------------------------------------

@pytest.mark.parametrize("impl", TWINS)
@pytest.mark.parametrize("args", [
    ("leaky_bucket", 1, 1, 1), ("", 1, 1, 1), ("token_bucket", 0, 1, 1), ("token_bucket", -1, 1, 1),
    ("token_bucket", 1, 0, 1), ("token_bucket", 1, 1, 0), ("sliding_window", 1, 1, 0),
    ("token_bucket", math.nan, 1, 1), ("token_bucket", math.inf, 1, 1), ("token_bucket", 1, math.inf, 1),
    ("token_bucket", 1e300, 1e-300, 1), ("token_bucket", 1, 1, 1, 0), ("token_bucket", 1, 1, 1, 2**31),
])
def test_bad_arguments(impl: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        impl.LocalLimiter(*args)


@pytest.mark.parametrize("impl", TWINS)
@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_bad_calls(impl: Any, algorithm: str) -> None:
    lim = impl.LocalLimiter(algorithm, 10, 10, 10)
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            lim.check("k", bad, 0.0)
        with pytest.raises(ValueError):
            lim.consume("k", bad, 0.0)
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError):
            lim.adjust("k", bad, 0.0)
    with pytest.raises(ValueError):
        lim.consume("k", math.inf, 0.0)
    assert lim.check("k", math.inf, 0.0) == math.inf
    assert len(lim) == 0
    with pytest.raises(TypeError):
        impl.LocalLimiter(algorithm, 10, 10, 10, 1.5)
    with pytest.raises(AttributeError):
        lim.limit = 5.0


@pytest.mark.parametrize("impl", TWINS)
def test_time_going_backwards_counts_as_none(impl: Any) -> None:
    lim = bucket(impl)
    lim.consume("k", 5, 10.0)
    assert lim.remaining("k", 5.0) == 5.0  # no refill, and nothing taken back either
    lim.consume("k", 1, 5.0)
    assert lim.remaining("k", 10.0) == 4.0 and lim.remaining("k", 11.0) == 5.0
    win = window(impl, limit=10, period=10)
    win.consume("k", 4, 15.0)  # window 1
    win.consume("k", 3, 5.0)  # earlier: counted as at t = 15
    assert win.remaining("k", 5.0) == 3.0 and win.remaining("k", 15.0) == 3.0
    assert win.remaining("k", 25.0) == 6.5  # window 2, half in: 7 * 0.5


# -- properties ------------------------------------------------------------------------------

_ARRIVALS = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 12),
                               st.floats(0, 3, allow_nan=False) | st.just(0.0)), max_size=60)
_POLICY = st.tuples(st.integers(1, 10), st.sampled_from([0.5, 1.0, 3.0, 10.0]), st.integers(1, 10))


def _admit(lim: Any, arrivals: list[tuple[str, int, float]], capacity: float) -> dict[str, list[tuple[float, int]]]:
    """Admits each arrival iff check() says 0, consuming it then; checks the retry-after on the way."""
    admitted: dict[str, list[tuple[float, int]]] = defaultdict(list)
    now = 1000.0
    for key, cost, dt in arrivals:
        now += dt
        before = lim.remaining(key, now)
        wait = lim.check(key, cost, now)
        assert wait >= 0.0
        if wait == 0.0:
            assert cost <= before + 1e-9 * (1 + cost)  # the estimate (or the tokens) plus the cost fit the limit
            lim.consume(key, cost, now)
            admitted[key].append((now, cost))
            continue
        if cost > capacity:
            assert wait == math.inf
            continue
        assert wait < math.inf
        assert lim.check(key, cost, now + wait * (1 + 1e-9) + 1e-9) == 0.0  # waiting that long is enough
        if wait > 1e-6:
            assert lim.check(key, cost, now + wait * 0.999) > 0.0  # and not much more than needed
    return admitted


@pytest.mark.parametrize("impl", TWINS)
@settings(deadline=None)
@given(policy=_POLICY, arrivals=_ARRIVALS)
def test_bucket_never_admits_more_than_burst_plus_refill(impl: Any, policy: tuple[int, float, int],
                                                         arrivals: list[tuple[str, int, float]]) -> None:
    """Over any span [t_i, t_j] of admissions of one key: admitted <= burst + rate * (t_j - t_i)."""
    limit, period, burst = policy
    rate = limit / period
    lim = bucket(impl, limit, period, burst)
    for taken in _admit(lim, arrivals, burst).values():
        for i in range(len(taken)):
            total = 0
            for j in range(i, len(taken)):
                total += taken[j][1]
                assert total <= burst + rate * (taken[j][0] - taken[i][0]) + 1e-9 * (1 + total)


@pytest.mark.parametrize("impl", TWINS)
@settings(deadline=None)
@given(policy=_POLICY, arrivals=_ARRIVALS)
def test_window_never_admits_more_than_limit(impl: Any, policy: tuple[int, float, int],
                                             arrivals: list[tuple[str, int, float]]) -> None:
    """Per key: each admission had estimate + cost <= limit (in _admit); whole-unit costs admitted within
    one aligned window [w * period, (w + 1) * period) sum to <= limit, so any two adjacent ones to <= 2 * limit."""
    limit, period, _ = policy
    lim = window(impl, limit, period)
    for taken in _admit(lim, arrivals, limit).values():
        per_window: dict[int, int] = defaultdict(int)
        for at, cost in taken:
            per_window[math.floor(at / period)] += cost
        assert all(total <= limit for total in per_window.values())
        assert all(total + per_window.get(w + 1, 0) <= 2 * limit for w, total in per_window.items())


_OPS = st.lists(st.tuples(
    st.sampled_from(["check", "consume", "adjust", "remaining", "reset_after", "sweep"]),
    st.integers(0, 40).map(str),
    st.floats(-30, 30, allow_nan=False, allow_infinity=False),
    st.floats(-0.5, 5, allow_nan=False, allow_infinity=False),  # dt: now and then time goes backwards
), max_size=80)


@NOT_BUILT
@settings(deadline=None)
@given(algorithm=st.sampled_from(["token_bucket", "sliding_window"]),
       policy=st.tuples(st.floats(0.1, 1000), st.floats(0.01, 100), st.floats(0.1, 1000)),
       max_keys=st.sampled_from([1, 3, 32, 1000]), start=st.floats(0, 1e7), ops=_OPS)
def test_twins_agree(algorithm: str, policy: tuple[float, float, float], max_keys: int, start: float,
                     ops: list[tuple[str, str, float, float]]) -> None:
    compiled = _limits.LocalLimiter(algorithm, *policy, max_keys)
    pure = _pure_limits.LocalLimiter(algorithm, *policy, max_keys)
    now = start
    for op, key, amount, dt in ops:
        now += dt
        if op == "sweep":
            answers = compiled.sweep(now), pure.sweep(now)
        elif op in ("check", "consume"):
            answers = getattr(compiled, op)(key, abs(amount), now), getattr(pure, op)(key, abs(amount), now)
        elif op == "adjust":
            answers = compiled.adjust(key, amount, now), pure.adjust(key, amount, now)
        else:
            answers = getattr(compiled, op)(key, now), getattr(pure, op)(key, now)
        assert answers[0] == answers[1], (op, key, amount, now)
        assert len(compiled) == len(pure) <= max_keys
        assert compiled.remaining(key, now) == pure.remaining(key, now)
        assert compiled.reset_after(key, now) == pure.reset_after(key, now)
        if compiled.reset_after(key, now) == 0.0:
            capacity = policy[2] if algorithm == "token_bucket" else policy[0]
            assert compiled.remaining(key, now) == capacity
