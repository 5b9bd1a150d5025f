"""Quotas: the calendar, the SQLite store, and the stage over a real SQLite file (clock injected)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sluice.config import RateLimitConfig
from sluice.errors import QuotaExceeded, RateLimited, TokenQuotaExceeded, TokensLimited
from sluice.pipeline.quotas import Quotas, QuotaTaken, QuotaWant, period_bounds
from sluice.pipeline.ratelimit import duration, key_fingerprint
from sluice.state.quota_store import QuotaStore, QuotaStoreUnavailable, SqliteQuotaStore

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
ROUTE = "/v1/chat/completions"
ZONES = ["UTC", "Europe/Paris", "America/New_York", "America/Santiago", "America/Havana", "Australia/Lord_Howe",
         "Asia/Kolkata", "Asia/Tehran", "Pacific/Chatham", "Pacific/Apia", "Europe/Dublin"]


def run(make: Callable[[], Awaitable[T]], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await make()
    return asyncio.run(bounded())


def at(zone: str, *when: int) -> float:
    """The epoch second of a wall-clock time in a zone (the first one if it is ambiguous)."""
    return datetime(*when, tzinfo=ZoneInfo(zone)).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def limits(*quotas: dict[str, Any], timezone: str = "UTC", sync_s: float = 3600.0) -> RateLimitConfig:
    """A config whose background sync never fires by itself in a test (flush() sends), unless sync_s says so."""
    return msgspec.convert({"quotas": list(quotas), "timezone": timezone, "quota_sync_s": sync_s}, RateLimitConfig)


def want(quotas: Quotas, tokens: float = 100.0, key: str = "k1", model: str = "m") -> list[QuotaWant]:
    return quotas.wanted(ROUTE, model, key, None, None, tokens)


def headers_of(taken: QuotaTaken | None, quotas: Quotas) -> dict[str, str]:
    assert taken is not None
    return dict(quotas.headers(taken))


# -- calendar ----------------------------------------------------------------------------------

def local_id(period: str, zone: ZoneInfo, epoch: float) -> str:
    return period_bounds(period, zone, epoch)[0]


@settings(max_examples=400, deadline=None)
@given(zone=st.sampled_from(ZONES), period=st.sampled_from(["day", "month"]),
       now=st.floats(min_value=at("UTC", 1990, 1, 1), max_value=at("UTC", 2100, 1, 1)))
@example(zone="Europe/Paris", period="day", now=at("Europe/Paris", 2026, 3, 29, 12))  # 23 h
@example(zone="America/New_York", period="day", now=at("America/New_York", 2026, 11, 1, 0, 30))  # 25 h
@example(zone="America/Santiago", period="day", now=at("America/Santiago", 2026, 9, 5, 23))  # no midnight
@example(zone="America/Santiago", period="day", now=at("America/Santiago", 2026, 4, 4, 22))  # 23:xx twice
@example(zone="Pacific/Apia", period="day", now=at("Pacific/Apia", 2011, 12, 29, 12))  # Dec 30 skipped
@example(zone="UTC", period="month", now=at("UTC", 2026, 12, 31, 23, 59, 59))
def test_a_period_ends_after_now_within_its_length_and_where_the_next_begins(zone: str, period: str,
                                                                             now: float) -> None:
    tz = ZoneInfo(zone)
    ident, ends = period_bounds(period, tz, now)
    assert ends > now
    assert ends - now <= (25 * 3600 if period == "day" else 32 * 86400)
    assert local_id(period, tz, ends - 1e-3) == ident
    assert local_id(period, tz, ends) != ident
    local = datetime.fromtimestamp(now, tz)
    assert ident == (local.strftime("%Y-%m-%d") if period == "day" else local.strftime("%Y-%m"))


def test_period_ids_and_ends_in_a_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    assert period_bounds("day", paris, at("Europe/Paris", 2026, 11, 23, 23, 59, 59)) == (
        "2026-11-23", at("Europe/Paris", 2026, 11, 24))
    assert period_bounds("day", paris, at("UTC", 2026, 11, 23, 23, 30)) == ("2026-11-24", at("Europe/Paris", 2026,
                                                                                               11, 25))
    assert period_bounds("month", paris, at("Europe/Paris", 2026, 12, 31, 23)) == (
        "2026-12", at("Europe/Paris", 2027, 1, 1))
    spring = at("Europe/Paris", 2026, 3, 29)
    assert period_bounds("day", paris, spring)[1] - spring == 23 * 3600
    fall = at("America/New_York", 2026, 11, 1)
    assert period_bounds("day", ZoneInfo("America/New_York"), fall)[1] - fall == 25 * 3600
    with pytest.raises(ValueError, match="week"):
        period_bounds("week", paris, spring)


# -- the SQLite store --------------------------------------------------------------------------

async def store_contract(store: QuotaStore, ends: float = at("UTC", 2026, 11, 25)) -> None:
    """What every store does: absent is 0, add answers totals, periods and escaped names never collide.

    ``ends``: when the periods end, after the store's "now" (the SQLite store here runs on a fixed clock of
    2026-11-23; a Redis store expires keys on the Redis server's real clock, so its tests pass a time ahead of it).
    """
    assert await store.load([]) == [] and await store.add([]) == []
    assert await store.load([("q", "key:a", "2026-11-23")]) == [0.0]
    assert await store.add([("q", "key:a", "2026-11-23", 2.0, ends), ("q", "key:b", "2026-11-23", 1.5, ends),
                            ("q", "key:a", "2026-11-24", 1.0, ends)]) == [2.0, 1.5, 1.0]
    assert await store.add([("q", "key:a", "2026-11-23", -0.5, ends), ("q", "key:a", "2026-11-23", 0.0, ends),
                            ("q", "key:a", "2026-11-23", 3.25, ends)]) == [1.5, 1.5, 4.75]
    assert await store.load([("q", "key:a", "2026-11-23"), ("q", "key:b", "2026-11-23"),
                             ("q", "key:a", "2026-11-24"), ("other", "key:a", "2026-11-23")]) == [4.75, 1.5, 1.0, 0.0]
    await store.add([("a:b", "c", "2026-11", 1.0, ends), ("a", "b:c", "2026-11", 2.0, ends),
                     ("x}", "{y}", "2026-11", 4.0, ends), ("x", "}{y}", "2026-11", 8.0, ends)])
    assert await store.load([("a:b", "c", "2026-11"), ("a", "b:c", "2026-11"), ("x}", "{y}", "2026-11"),
                             ("x", "}{y}", "2026-11")]) == [1.0, 2.0, 4.0, 8.0]


def test_sqlite_store_contract_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "quotas.db"

    async def scenario() -> None:
        store = SqliteQuotaStore(str(path), clock=Clock(at("UTC", 2026, 11, 23, 12)))
        try:
            await store_contract(store)
        finally:
            await store.aclose()
        again = SqliteQuotaStore(str(path), clock=Clock(at("UTC", 2026, 11, 23, 12)))  # a restart: the file has it
        try:
            assert await again.load([("q", "key:a", "2026-11-23")]) == [4.75]
        finally:
            await again.aclose()
        await again.aclose()  # once is enough
        with pytest.raises(QuotaStoreUnavailable, match="closed"):
            await again.load([("q", "key:a", "2026-11-23")])

    run(scenario)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = [row[1] for row in db.execute("PRAGMA table_info(quota_usage)")]
        assert columns == ["quota", "subject", "period", "used", "expires_at"]
    db.close()


def test_sqlite_store_forgets_rows_a_day_after_their_period(tmp_path: Path) -> None:
    clock = Clock(at("UTC", 2026, 11, 22, 23, 30))
    path = str(tmp_path / "quotas.db")

    async def scenario() -> None:
        store = SqliteQuotaStore(path, clock=clock)
        try:
            await store.add([("q", "key:old", "2026-11-21", 5.0, at("UTC", 2026, 11, 22)),  # ended 23.5 h ago
                             ("q", "key:recent", "2026-11-22", 5.0, at("UTC", 2026, 11, 23))])
            clock.now = at("UTC", 2026, 11, 23, 0, 20)  # old is past its day, but the next cleanup is not yet due
            await store.add([("q", "key:now", "2026-11-23", 1.0, at("UTC", 2026, 11, 24))])
            assert await store.load([("q", "key:old", "2026-11-21")]) == [5.0]
            clock.now = at("UTC", 2026, 11, 23, 0, 30)
            await store.add([("q", "key:now", "2026-11-23", 1.0, at("UTC", 2026, 11, 24))])
            assert await store.load([("q", "key:old", "2026-11-21"), ("q", "key:recent", "2026-11-22"),
                                     ("q", "key:now", "2026-11-23")]) == [0.0, 5.0, 2.0]
        finally:
            await store.aclose()

    run(scenario)


def test_sqlite_store_unavailable_then_back(tmp_path: Path) -> None:
    directory = tmp_path / "not-yet"
    entry = ("q", "key:a", "2026-11-23")

    async def scenario() -> None:
        store = SqliteQuotaStore(str(directory / "quotas.db"), clock=Clock(at("UTC", 2026, 11, 23, 12)))
        try:
            for call in (lambda: store.load([entry]), lambda: store.add([(*entry, 1.0, at("UTC", 2026, 11, 24))])):
                with pytest.raises(QuotaStoreUnavailable) as caught:
                    await call()
                assert isinstance(caught.value.__cause__, sqlite3.Error)
            directory.mkdir()
            assert await store.add([(*entry, 1.0, at("UTC", 2026, 11, 24))]) == [1.0]
            (directory / "quotas.db").unlink()  # the file vanishes under an open connection: still answers
            assert await store.load([entry]) == [1.0]
        finally:
            await store.aclose()

    run(scenario)


def test_sqlite_stores_of_two_processes_share_one_file(tmp_path: Path) -> None:
    path = str(tmp_path / "quotas.db")
    ends = at("UTC", 2026, 11, 24)

    async def scenario() -> None:
        stores = [SqliteQuotaStore(path, clock=Clock(at("UTC", 2026, 11, 23, 12))) for _ in range(4)]
        try:
            totals = await asyncio.gather(*(stores[i % 4].add([("q", "key:a", "p", 1.0, ends)]) for i in range(40)))
            assert sorted(t[0] for t in totals) == [float(n) for n in range(1, 41)]  # one transaction each
        finally:
            for store in stores:
                await store.aclose()

    run(scenario)


# -- the stage ---------------------------------------------------------------------------------

def sqlite(tmp_path: Path, name: str = "quotas.db") -> SqliteQuotaStore:
    # Its clock only decides when old rows go (tested above with a clock of its own): frozen at 0, so
    # the fixed past days these tests run on are never deleted as real time moves on.
    return SqliteQuotaStore(str(tmp_path / name), clock=lambda: 0.0)


def test_which_quotas_apply(tmp_path: Path) -> None:
    config = limits({"name": "per-key", "scope": "key", "limit": 5},
                    {"name": "per-user", "scope": "user", "limit": 5, "unit": "tokens"},
                    {"name": "per-team", "scope": "team", "limit": 5, "period": "month"},
                    {"name": "vip", "scope": "key", "limit": 5, "match": {"keys": ["sk-vip"], "models": ["m"],
                                                                          "routes": [ROUTE]}})
    quotas = Quotas(config, sqlite(tmp_path))
    vip = key_fingerprint("sk-vip")
    assert [(w.quota.name, w.subject, w.cost) for w in quotas.wanted(ROUTE, "m", vip, None, None, 70.0)] == [
        ("per-key", f"key:{vip}", 1.0), ("vip", f"key:{vip}", 1.0)]
    assert [(w.quota.name, w.subject, w.cost) for w in quotas.wanted(ROUTE, "m", "k", "u1", "t1", 70.0)] == [
        ("per-key", "key:k", 1.0), ("per-user", "user:u1", 70.0), ("per-team", "team:t1", 1.0)]
    assert [w.quota.name for w in quotas.wanted("/v1/embeddings", "m", vip, None, None, 1)] == ["per-key"]
    assert [w.quota.name for w in quotas.wanted(ROUTE, "other", vip, None, None, 1)] == ["per-key"]
    assert quotas.wanted(ROUTE, "m", None, None, None, 1) == []  # no key, no user, no team: nothing applies
    run(quotas.aclose)


def test_admits_its_limit_then_answers_429_until_the_day_ends(tmp_path: Path) -> None:
    clock = Clock(at("Europe/Paris", 2026, 11, 23, 18))
    quotas = Quotas(limits({"name": "daily", "scope": "key", "limit": 3}, timezone="Europe/Paris"), sqlite(tmp_path),
                    clock)

    async def scenario() -> None:
        wanted = want(quotas, key="secret-key-id")
        assert quotas.admit_cached(wanted) is None  # never seen by this process: admit loads it
        first = headers_of(await quotas.admit(wanted), quotas)
        assert first == {"x-sluice-quota-limit-requests": "3", "x-sluice-quota-remaining-requests": "2",
                         "x-sluice-quota-reset-requests": "6h0m0s"}
        assert headers_of(quotas.admit_cached(wanted), quotas)["x-sluice-quota-remaining-requests"] == "1"
        clock.now += 0.5
        last = headers_of(quotas.admit_cached(wanted), quotas)
        assert last["x-sluice-quota-remaining-requests"] == "0"
        assert last["x-sluice-quota-reset-requests"] == duration(6 * 3600 - 0.5)
        with pytest.raises(QuotaExceeded):
            quotas.admit_cached(wanted)
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.admit(wanted)
        error = caught.value
        assert isinstance(error, RateLimited) and not isinstance(error, TokensLimited)
        assert (error.status, error.type, error.code) == (429, "requests", "quota_exceeded")
        assert error.message == ("Quota 'daily' reached on requests: limit 3 per day. "
                                 "It resets at 2026-11-24 00:00 Europe/Paris (in 6h0m0s).")
        assert "secret" not in error.message
        assert dict(error.headers) == {"x-sluice-quota-limit-requests": "3", "x-sluice-quota-remaining-requests": "0",
                                       "x-sluice-quota-reset-requests": "6h0m0s", "retry-after": "21600"}
        assert quotas.decision_counts() == {("daily", "admitted"): 3, ("daily", "rejected"): 2}
        await quotas.aclose()

    run(scenario)


def test_admit_raises_for_a_coroutine_caller_too(tmp_path: Path) -> None:
    quotas = Quotas(limits({"name": "once", "scope": "key", "limit": 1, "period": "month"}), sqlite(tmp_path),
                    Clock(at("UTC", 2026, 12, 31, 23, 59, 59)))

    async def scenario() -> None:
        await quotas.admit(want(quotas))
        with pytest.raises(QuotaExceeded) as caught:
            await quotas.admit(want(quotas))
        assert dict(caught.value.headers)["retry-after"] == "1"
        assert "per month" in caught.value.message and "2027-01-01 00:00 UTC" in caught.value.message
        await quotas.aclose()

    run(scenario)


def test_tokens_reserve_then_settle_credit_and_debit(tmp_path: Path) -> None:
    clock = Clock(at("UTC", 2026, 11, 23, 12))
    store = sqlite(tmp_path)
    quotas = Quotas(limits({"name": "tpd", "scope": "key", "limit": 1000, "unit": "tokens"}), store, clock)
    entry = ("tpd", "key:k1", "2026-11-23")

    async def scenario() -> None:
        taken = await quotas.admit(want(quotas, tokens=400))
        assert headers_of(taken, quotas)["x-sluice-quota-remaining-tokens"] == "600"
        quotas.settle(taken, 100)  # credit 300
        other = quotas.admit_cached(want(quotas, tokens=400))
        assert other is not None and headers_of(other, quotas)["x-sluice-quota-remaining-tokens"] == "500"
        quotas.settle(other, 700)  # debit 300
        await quotas.flush()
        assert await store.load([entry]) == [800.0]
        unknown = quotas.admit_cached(want(quotas, tokens=150))
        assert unknown is not None
        quotas.settle(unknown, -1)  # no usage reported: the estimate stands
        with pytest.raises(TokenQuotaExceeded) as caught:
            quotas.admit_cached(want(quotas, tokens=51))
        assert (caught.value.status, caught.value.type, caught.value.code) == (429, "tokens", "quota_exceeded")
        assert isinstance(caught.value, QuotaExceeded) and isinstance(caught.value, TokensLimited)
        assert dict(caught.value.headers)["x-sluice-quota-remaining-tokens"] == "50"
        assert quotas.admit_cached(want(quotas, tokens=50)) is not None
        await quotas.aclose()

    run(scenario)
    assert run(lambda: reopened(tmp_path, [entry])) == [1000.0]


async def reopened(tmp_path: Path, entries: Sequence[tuple[str, str, str]], name: str = "quotas.db") -> list[float]:
    store = sqlite(tmp_path, name)
    try:
        return await store.load(entries)
    finally:
        await store.aclose()


@pytest.mark.parametrize("rejecting", ["requests", "tokens"])
def test_a_rejection_by_one_quota_takes_nothing_from_another(tmp_path: Path, rejecting: str) -> None:
    config = limits({"name": "rpd", "scope": "key", "limit": 1 if rejecting == "requests" else 100},
                    {"name": "tpd", "scope": "key", "limit": 1000, "unit": "tokens"})
    quotas = Quotas(config, sqlite(tmp_path), Clock(at("UTC", 2026, 11, 23, 12)))

    async def scenario() -> None:
        await quotas.admit(want(quotas, tokens=100))
        with pytest.raises(QuotaExceeded) as caught:
            quotas.admit_cached(want(quotas, tokens=100 if rejecting == "requests" else 901))
        assert f"Quota '{'rpd' if rejecting == 'requests' else 'tpd'}'" in caught.value.message
        await quotas.aclose()

    run(scenario)
    assert run(lambda: reopened(tmp_path, [("rpd", "key:k1", "2026-11-23"), ("tpd", "key:k1", "2026-11-23")])) == [
        1.0, 100.0]


@pytest.mark.parametrize("zone", ["Europe/Paris", "America/New_York"])
def test_counters_start_from_zero_at_local_midnight(tmp_path: Path, zone: str) -> None:
    clock = Clock(at(zone, 2026, 11, 23, 23, 59, 59))
    store = sqlite(tmp_path)
    quotas = Quotas(limits({"name": "daily", "scope": "key", "limit": 2}, timezone=zone), store, clock)

    async def scenario() -> None:
        await quotas.admit(want(quotas))
        assert quotas.admit_cached(want(quotas)) is not None
        with pytest.raises(QuotaExceeded) as caught:
            quotas.admit_cached(want(quotas))
        assert dict(caught.value.headers)["retry-after"] == "1"
        clock.now += 2  # 00:00:01 the next day, in the zone
        assert quotas.admit_cached(want(quotas)) is None  # a new period: loaded once, like a new subject
        taken = await quotas.admit(want(quotas))
        assert headers_of(taken, quotas) == {"x-sluice-quota-limit-requests": "2",
                                             "x-sluice-quota-remaining-requests": "1",
                                             "x-sluice-quota-reset-requests": "23h59m59s"}
        await quotas.flush()
        assert await store.load([("daily", "key:k1", "2026-11-23"), ("daily", "key:k1", "2026-11-24")]) == [2.0, 1.0]
        await quotas.aclose()

    run(scenario)


def test_a_dst_day_lasts_25_hours(tmp_path: Path) -> None:
    zone = "America/New_York"
    clock = Clock(at(zone, 2026, 11, 1, 0, 0, 1))
    quotas = Quotas(limits({"name": "daily", "scope": "key", "limit": 1}, timezone=zone), sqlite(tmp_path), clock)

    async def scenario() -> None:
        assert headers_of(await quotas.admit(want(quotas)), quotas)["x-sluice-quota-reset-requests"] == "24h59m59s"
        clock.now += 25 * 3600 - 2  # 23:59:59 the same (long) day
        with pytest.raises(QuotaExceeded) as caught:
            quotas.admit_cached(want(quotas))
        assert dict(caught.value.headers)["retry-after"] == "1"
        clock.now += 2
        await quotas.admit(want(quotas))
        await quotas.aclose()

    run(scenario)


def test_usage_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(at("UTC", 2026, 11, 23, 12))
    config = limits({"name": "daily", "scope": "key", "limit": 3})

    async def first_life() -> None:
        quotas = Quotas(config, sqlite(tmp_path), clock)
        await quotas.admit(want(quotas))
        quotas.admit_cached(want(quotas))
        await quotas.aclose()  # the final flush
        await quotas.aclose()

    async def second_life() -> None:
        quotas = Quotas(config, sqlite(tmp_path), clock)
        assert headers_of(await quotas.admit(want(quotas)), quotas)["x-sluice-quota-remaining-requests"] == "0"
        with pytest.raises(QuotaExceeded):
            quotas.admit_cached(want(quotas))
        await quotas.aclose()

    run(first_life)
    run(second_life)


def test_two_workers_on_one_file_converge_after_syncs(tmp_path: Path) -> None:
    clock = Clock(at("UTC", 2026, 11, 23, 12))
    config = limits({"name": "daily", "scope": "key", "limit": 10})

    async def scenario() -> None:
        a, b = Quotas(config, sqlite(tmp_path), clock), Quotas(config, sqlite(tmp_path), clock)
        await a.admit(want(a))
        for _ in range(3):
            a.admit_cached(want(a))
        await a.flush()
        assert headers_of(await b.admit(want(b)), b)["x-sluice-quota-remaining-requests"] == "5"  # b loads 4
        for _ in range(5):
            b.admit_cached(want(b))
        with pytest.raises(QuotaExceeded):
            b.admit_cached(want(b))
        await b.flush()
        # a has not heard of b yet: it admits from its view (the slack), until its next sync
        assert headers_of(a.admit_cached(want(a)), a)["x-sluice-quota-remaining-requests"] == "5"
        await a.flush()
        with pytest.raises(QuotaExceeded) as caught:
            a.admit_cached(want(a))
        assert dict(caught.value.headers)["x-sluice-quota-remaining-requests"] == "0"
        with pytest.raises(QuotaExceeded):
            b.admit_cached(want(b))
        await b.flush()  # b only rejected since its last sync: its counter is refreshed all the same
        assert b._current[("daily", "key:k1")].used == 11
        await a.aclose()
        await b.aclose()

    run(scenario)
    assert run(lambda: reopened(tmp_path, [("daily", "key:k1", "2026-11-23")])) == [11.0]


def test_the_background_sync_sends_pending_usage(tmp_path: Path) -> None:
    quotas = Quotas(limits({"name": "daily", "scope": "key", "limit": 100}, sync_s=0.01), sqlite(tmp_path),
                    Clock(at("UTC", 2026, 11, 23, 12)))

    async def scenario() -> None:
        await quotas.admit(want(quotas))
        for _ in range(4):
            quotas.admit_cached(want(quotas))
        while await reopened(tmp_path, [("daily", "key:k1", "2026-11-23")]) != [5.0]:
            await asyncio.sleep(0.01)  # pacing: the poll interval (bounded by run()'s timeout)
        await quotas.aclose()

    run(scenario)


class FlakyStore:
    """A real store that fails while ``down`` is set."""

    def __init__(self, inner: QuotaStore) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            try:
                raise sqlite3.OperationalError("unable to open database file")
            except sqlite3.Error as exc:
                raise QuotaStoreUnavailable(f"quota store: {exc}") from exc

    async def load(self, entries: Sequence[tuple[str, str, str]]) -> list[float]:
        self._check()
        return await self.inner.load(entries)

    async def add(self, entries: Sequence[tuple[str, str, str, float, float]]) -> list[float]:
        self._check()
        return await self.inner.add(entries)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_failing_store_fails_open_and_keeps_pending_usage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(at("UTC", 2026, 11, 23, 12))
    store = FlakyStore(sqlite(tmp_path))
    quotas = Quotas(limits({"name": "daily", "scope": "key", "limit": 3}), store, clock)
    entry = ("daily", "key:k1", "2026-11-23")

    async def scenario() -> None:
        await store.inner.add([(*entry, 2.0, clock.now + 86400)])  # another process used 2 already
        store.down = True
        with caplog.at_level(logging.WARNING, logger="sluice.quotas"):
            await quotas.admit(want(quotas))  # the load fails: admitted from 0
            for _ in range(2):
                assert quotas.admit_cached(want(quotas)) is not None
            calls = store.calls
            assert quotas.admit_cached(want(quotas, key="k2")) is not None  # a store known down is not waited for
            assert store.calls == calls
            for _ in range(2):
                await quotas.flush()  # fails: the usage stays pending
            warnings = [r.getMessage() for r in caplog.records]
            assert len(warnings) == 1 and "quota store unavailable while loading" in warnings[0]  # one an episode
            store.down = False
            await quotas.flush()
            assert "answers again" in caplog.records[-1].getMessage()
        assert await store.inner.load([entry, ("daily", "key:k2", "2026-11-23")]) == [5.0, 1.0]  # nothing lost
        with pytest.raises(QuotaExceeded):
            quotas.admit_cached(want(quotas))  # the store's total is the view again
        counts = quotas.decision_counts()
        assert counts[("daily", "admitted")] == 4 and counts[("daily", "rejected")] == 1
        assert counts[("daily", "store_unavailable")] == 4  # the load, the new subject, two syncs
        await quotas.aclose()

    run(scenario)


def test_usage_pending_when_the_store_is_down_is_sent_when_it_is_back(tmp_path: Path) -> None:
    """The store fails under a cached counter: admission goes on in memory, the deltas wait."""
    clock = Clock(at("UTC", 2026, 11, 23, 12))
    store = FlakyStore(sqlite(tmp_path))
    quotas = Quotas(limits({"name": "tpd", "scope": "key", "limit": 1000, "unit": "tokens"}), store, clock)

    async def scenario() -> None:
        taken = await quotas.admit(want(quotas, tokens=300))
        await quotas.flush()
        store.down = True
        quotas.settle(taken, 200)  # credit 100
        assert quotas.admit_cached(want(quotas, tokens=400)) is not None
        await quotas.flush()
        store.down = False
        await quotas.aclose()

    run(scenario)
    assert run(lambda: reopened(tmp_path, [("tpd", "key:k1", "2026-11-23")])) == [600.0]


def test_concurrent_first_requests_share_one_load(tmp_path: Path) -> None:
    store = FlakyStore(sqlite(tmp_path))
    quotas = Quotas(limits({"name": "daily", "scope": "key", "limit": 50}), store, Clock(at("UTC", 2026, 11, 23)))

    async def scenario() -> None:
        await asyncio.gather(*(quotas.admit(want(quotas)) for _ in range(20)))
        assert store.calls == 1  # one load for the twenty first requests
        await quotas.aclose()
        assert await reopened(tmp_path, [("daily", "key:k1", "2026-11-23")]) == [20.0]

    run(scenario)


def test_at_period_end_old_deltas_still_go_to_their_period(tmp_path: Path) -> None:
    clock = Clock(at("UTC", 2026, 11, 23, 23, 59))
    store = sqlite(tmp_path)
    quotas = Quotas(limits({"name": "tpd", "scope": "key", "limit": 1000, "unit": "tokens"}), store, clock)

    async def scenario() -> None:
        taken = await quotas.admit(want(quotas, tokens=100))
        clock.now += 120  # a stream that ran past midnight settles afterwards
        quotas.settle(taken, 250)
        await quotas.admit(want(quotas, tokens=10))
        await quotas.flush()
        assert await store.load([("tpd", "key:k1", "2026-11-23"), ("tpd", "key:k1", "2026-11-24")]) == [250.0, 10.0]
        clock.now += timedelta(days=3).total_seconds()
        await quotas.flush()  # forgets the ended periods' counters
        assert not quotas._current
        assert quotas.admit_cached(want(quotas, tokens=10)) is None
        await quotas.aclose()

    run(scenario)


# -- a flood of distinct subjects: at most quota_max_subjects counters ---------------------------

def bounded(bound: int, *quotas: dict[str, Any]) -> RateLimitConfig:
    return msgspec.convert({"quotas": list(quotas), "quota_sync_s": 3600.0, "quota_max_subjects": bound},
                           RateLimitConfig)


async def ask(quotas: Quotas, key: str) -> bool:
    """One request the way the rate limits ask: from memory when they can, else awaiting the store."""
    try:
        wanted = want(quotas, key=key)
        quotas.admit_cached(wanted) or await quotas.admit(wanted)
    except QuotaExceeded:
        return False
    return True


async def flood(quotas: Quotas, keys: list[str], steady: str, every: int = 10) -> tuple[int, int]:
    """One request per key, ``steady`` asking again every ``every``: (steady's admitted, most counters held)."""
    admitted = most = 0
    for i, key in enumerate(keys):
        assert await ask(quotas, key)
        if i % every == 0:
            admitted += await ask(quotas, steady)
        most = max(most, len(quotas._current))
    return admitted, most


def test_a_flood_of_keys_keeps_the_counters_within_the_bound_and_loses_no_usage(tmp_path: Path) -> None:
    """200 keys against a bound of 50 within one sync interval (every counter has usage unsent: the
    requests wait for early syncs), a key asking 20 times on a limit of 3: exactly 3, nothing lost."""
    clock = Clock(at("UTC", 2026, 11, 23, 12))  # one instant: the oldest counter is the first one made
    quotas = Quotas(bounded(50, {"name": "daily", "scope": "key", "limit": 3}), sqlite(tmp_path), clock)
    keys = [f"flood-{i}" for i in range(200)]

    async def scenario() -> tuple[int, int, dict[tuple[str, ...], int]]:
        steady, most = await flood(quotas, keys, "steady")
        counts = quotas.decision_counts()
        await quotas.aclose()
        return steady, most, counts

    steady, most, counts = run(scenario)
    assert most <= 50
    assert steady == 3
    assert counts[("daily", "evicted")] >= 200 + 1 - 50 and ("daily", "unrecorded") not in counts
    used = run(lambda: reopened(tmp_path, [("daily", f"key:{k}", "2026-11-23") for k in [*keys, "steady"]]))
    assert used == [1.0] * 200 + [3.0]  # every admitted request, once


class CountingStore(FlakyStore):
    """A real store recording the size of each ``add``, failing the ``fail_at``-th one (1-based) if set."""

    def __init__(self, inner: QuotaStore, fail_at: int = 0) -> None:
        super().__init__(inner)
        self.adds: list[int] = []
        self.fail_at = fail_at

    async def add(self, entries: Sequence[tuple[str, str, str, float, float]]) -> list[float]:
        self.adds.append(len(entries))
        self.down = len(self.adds) == self.fail_at
        return await super().add(entries)


def test_a_sync_sends_at_most_a_chunk_per_call_and_a_failed_call_keeps_its_deltas(tmp_path: Path) -> None:
    clock = Clock(at("UTC", 2026, 11, 23, 12))
    store = CountingStore(sqlite(tmp_path), fail_at=3)
    quotas = Quotas(bounded(100, {"name": "daily", "scope": "key", "limit": 9}), store, clock)
    quotas.push_chunk = 7
    keys = [f"k{i}" for i in range(50)]
    entries = [("daily", f"key:{k}", "2026-11-23") for k in keys]

    async def scenario() -> tuple[list[float], list[float]]:
        for key in keys:
            assert await ask(quotas, key)
        await quotas.flush()  # 7 + 7 sent, the third call fails: the rest waits
        after_failure = await store.inner.load(entries)
        await quotas.flush()
        await quotas.aclose()
        return after_failure, await reopened(tmp_path, entries)

    after_failure, used = run(scenario)
    assert store.adds[:3] == [7, 7, 7] and max(store.adds) == 7
    assert sorted(after_failure) == [0.0] * 36 + [1.0] * 14
    assert used == [1.0] * 50  # every request once: none lost, none sent twice
