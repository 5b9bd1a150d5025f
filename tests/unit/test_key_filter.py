"""The known-key filter (sluice.auth.keyfilter), the Authenticator's use of it, the per-address failure limits
(sluice.auth.failures) and the rate-limit Redis's circuit and log gate (sluice.state.redis_limits)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
from pathlib import Path

import pytest

from sluice.auth.failures import FailureLimits
from sluice.auth.keyfilter import MIN_CAPACITY, KeyFilter
from sluice.errors import AuthThrottled
from sluice.state.redis_limits import Circuit, LogGate
from sluice.store import generate_key
from tests.unit.test_auth_keys import Clock, KeyStore, make, refused, run


def digest() -> str:
    return hashlib.sha256(secrets.token_bytes(16)).hexdigest()


def test_the_filter_never_refuses_a_key_it_was_told_of_and_rarely_passes_another() -> None:
    known = KeyFilter(MIN_CAPACITY)
    added = [digest() for _ in range(MIN_CAPACITY)]  # full: the stated rate's worst case
    for key_hash in added:
        known.add(key_hash)
    assert all(key_hash in known for key_hash in added)
    passed = sum(digest() in known for _ in range(20_000))
    assert passed < 20_000 * 0.02  # about 0.8 % at its full size
    assert not known.full
    known.add(digest())
    assert known.full
    assert "not hex" not in known and "" not in known
    assert KeyFilter.sized_for(100_000).capacity == 200_000 and KeyFilter(1).nbytes == MIN_CAPACITY * 10 // 8


def test_a_key_made_after_the_filter_is_admitted_once_the_feed_names_it(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        clock = Clock()
        auth = make(store, clock, revocation_poll_s=0.05)
        auth.start()
        try:
            unknown = generate_key()
            await refused(auth, unknown)
            assert store.reads == 0 and store.hash_reads == 1 and auth.filtered == 1
            secret = generate_key()
            record = await store.add(secret)  # written by another instance: in the feed, not in the filter yet
            principal = await auth.authenticate(secret)  # waited for the feed's next read, then read once
            assert principal.key_id == record.id and store.reads == 1
            # 1,000 made-up keys at once: one wait for the feed, no read of any of them
            await asyncio.gather(*(refused(auth, generate_key()) for _ in range(1000)))
            assert store.reads == 1 and auth.filtered == 1001
        finally:
            await auth.aclose()

    run(body, tmp_path)


def test_a_filter_past_its_size_is_built_again_larger(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        auth = make(store, revocation_poll_s=0.05)
        await refused(auth, generate_key())  # builds it
        assert auth._filter is not None
        # Written straight into the store's change feed, as by other instances (creating as many keys one by one
        # through the store would take seconds)
        with sqlite3.connect(tmp_path / "store.db") as db:
            db.executemany("INSERT INTO changes (kind, ref, op, at) VALUES ('key', ?, 'create', 0)",
                           [(digest(),) for _ in range(auth._filter.capacity + 1)])
        db.close()
        await auth.poll()
        assert auth._filter_task is not None
        await auth._filter_task
        assert store.hash_reads == 2 and not auth._filter.full
        await auth.aclose()

    run(body, tmp_path)


def test_the_feed_down_turns_a_key_the_filter_lacks_into_503_not_401(tmp_path: Path) -> None:
    from sluice.errors import AuthUnavailable

    async def body(store: KeyStore) -> None:
        auth = make(store, revocation_poll_s=0.05)
        auth.start()
        try:
            await refused(auth, generate_key())
            store.down = True
            with pytest.raises(AuthUnavailable):
                await auth.authenticate(generate_key())
        finally:
            store.down = False
            await auth.aclose()

    run(body, tmp_path)


def test_failure_limits_per_address() -> None:
    clock = Clock(1000.0)
    limits = FailureLimits(3, 60.0, clock=clock)
    for _ in range(3):
        limits.check("198.51.100.7")
        limits.failed("198.51.100.7")
    with pytest.raises(AuthThrottled) as caught:
        limits.check("198.51.100.7")
    assert caught.value.status == 429 and caught.value.code == "too_many_auth_failures"
    assert dict(caught.value.headers)["retry-after"] == "20"  # one failure back every 20 s
    with pytest.raises(AuthThrottled):
        limits.failed("198.51.100.7")
    limits.check("198.51.100.8")  # another address is not concerned
    clock.now += 20
    limits.check("198.51.100.7")
    assert limits.stats()["auth_throttled"] == 2 and limits.stats()["auth_failures"] == 3


def test_the_circuit_opens_after_failures_in_a_row_and_probes_one_at_a_time() -> None:
    clock = Clock(0.0)
    circuit = Circuit(3, 1.0, clock=clock)
    for _ in range(2):
        assert circuit.allow()
        circuit.failed()
    assert circuit.allow()
    circuit.succeeded()  # a success in between: the count starts again
    for _ in range(3):
        assert circuit.allow()
        circuit.failed()
    assert circuit.open and not circuit.allow() and circuit.short_circuited == 1
    clock.now += 1.0
    assert circuit.allow()  # the probe
    assert not circuit.allow()  # the others wait for its answer
    circuit.abandoned()  # cancelled: another may probe
    assert circuit.allow()
    circuit.failed()  # the probe failed: open again
    assert not circuit.allow()
    clock.now += 1.0
    assert circuit.allow()
    circuit.succeeded()
    assert not circuit.open and circuit.allow()


def test_the_log_gate_lets_one_line_through_per_interval_and_counts_the_rest() -> None:
    clock = Clock(0.0)
    gate = LogGate(10.0, clock=clock)
    assert gate.due() == 0
    assert [gate.due() for _ in range(5)] == [None] * 5
    clock.now += 10
    assert gate.due() == 5
    assert gate.suffix(5) == " (5 more like this since the last warning)" and gate.suffix(0) == ""
