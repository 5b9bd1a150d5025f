"""The audit log's queue: never blocks, drops with a counter, coalesces failure floods, flushes on aclose."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluice.auth.audit import AuditLog
from sluice.store import SqliteStore, StoreUnavailable


def run(body: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await body()

    asyncio.run(bounded())


class FakeStore:
    """append_audit only: keeps what it is given; may hang until released, or fail the first ``fail`` calls."""

    def __init__(self, *, hang: bool = False, fail: int = 0) -> None:
        self.records: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        if not hang:
            self.release.set()
        self.fail = fail
        self.calls = 0

    async def append_audit(self, actor: str, action: str, target: str | None = None, client_ip: str | None = None,
                           details: dict[str, Any] | None = None, at: float | None = None) -> None:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("down")
        json.dumps(details, allow_nan=False)  # as the real store: a record it cannot encode raises
        self.records.append({"actor": actor, "action": action, "target": target, "client_ip": client_ip,
                             "details": details, "at": at})

    async def aclose(self) -> None:
        pass


def test_record_never_waits_and_drops_with_a_counter() -> None:
    async def body() -> None:
        store = FakeStore(hang=True)
        audit = AuditLog(store, queue_size=100)  # type: ignore[arg-type]
        audit.record("key.create", actor="a", target="k0")
        await asyncio.sleep(0.01)  # the writer takes it and hangs in the store
        assert store.calls == 1
        started = time.perf_counter()
        for i in range(10_000):
            audit.record("key.update", actor="a", target=f"k{i}")
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5, f"10k records took {elapsed:.3f}s"  # no waiting: about a microsecond each
        assert audit.pending == 101  # the queue's 100 and the one in the store's hands
        assert audit.dropped == 10_000 - 100
        store.release.set()
        assert await audit.flush()
        assert audit.written == 101 and audit.pending == 0
        assert [r["target"] for r in store.records] == ["k0", *(f"k{i}" for i in range(100))]
        await audit.aclose()

    run(body)


def test_flush_waits_for_the_record_the_writer_holds() -> None:
    async def body() -> None:
        store = FakeStore(hang=True)
        audit = AuditLog(store)  # type: ignore[arg-type]
        audit.record("user.create", actor="a", target="u")
        await asyncio.sleep(0.01)  # out of the queue, in the store's hands
        assert not await audit.flush(timeout_s=0.1)
        store.release.set()
        assert await audit.flush(timeout_s=1.0) and [r["target"] for r in store.records] == ["u"]
        await audit.aclose()

    run(body)


def test_coalesces_identical_failures_into_one_record_with_a_count() -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store, coalesce_s=1.0)  # type: ignore[arg-type]
        for _ in range(500):
            audit.record("auth.failure", actor="sk-sl-ab12…", client_ip="10.0.0.1", details={"reason": "revoked"})
        for _ in range(3):
            audit.record("auth.failure", actor="sk-sl-ab12…", client_ip="10.0.0.1", details={"reason": "expired"})
        for _ in range(2):
            audit.record("auth.failure", actor="sk-sl-ab12…", client_ip="10.0.0.2", details={"reason": "revoked"})
        audit.record("auth.failure", actor="sk-sl-cd34…", client_ip="10.0.0.1", details={"reason": "revoked"})
        assert audit.pending == 3 and audit.coalesced == 503
        await asyncio.sleep(0.05)
        assert store.records == []  # held until its window closes (or a flush)
        assert await audit.flush()
        counts = {(r["actor"], r["client_ip"], r["details"]["reason"]): r["details"]["count"] for r in store.records}
        assert counts == {("sk-sl-ab12…", "10.0.0.1", "revoked"): 501, ("sk-sl-ab12…", "10.0.0.1", "expired"): 3,
                          ("sk-sl-ab12…", "10.0.0.2", "revoked"): 2}
        flood = next(r for r in store.records if r["details"]["count"] == 501)
        assert flood["details"]["last_at"] >= flood["at"]
        assert flood["details"]["actors"] == ["sk-sl-ab12…", "sk-sl-cd34…"]
        await audit.aclose()

    run(body)


def test_random_tokens_make_one_record_and_an_ip_opens_few_groups() -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store, coalesce_s=60.0, max_groups_per_ip=10)  # type: ignore[arg-type]
        for i in range(1000):  # a new made-up token each time: its first characters are the actor
            audit.record("auth.failure", actor=f"tok{i:04d}", client_ip="10.0.0.9", details={"reason": "unknown"})
        for i in range(50):  # varied reasons from one address: at most 10 groups
            audit.record("auth.failure", actor="x", client_ip="10.0.0.9", details={"reason": f"r{i}"})
        audit.record("auth.failure", actor="y", client_ip="10.0.0.8", details={"reason": "r0"})  # another IP
        assert audit.pending == 11 and audit.ip_dropped == 41 and audit.dropped == 41
        assert audit.stats()["audit_ip_dropped"] == 41
        assert await audit.flush()
        flood = next(r for r in store.records if r["details"]["reason"] == "unknown")
        assert flood["details"]["count"] == 1000 and flood["actor"] == "tok0000"
        assert flood["details"]["actors"] == ["tok0000", "tok0001", "tok0002"]
        assert len(store.records) == 11
        await audit.aclose()

    run(body)


def test_a_client_ip_opens_groups_again_in_the_next_window() -> None:
    async def body() -> None:
        now = [1000.0]
        store = FakeStore()
        audit = AuditLog(store, coalesce_s=1.0, max_groups_per_ip=2, clock=lambda: now[0])  # type: ignore[arg-type]
        for i in range(3):
            audit.record("auth.failure", actor="a", client_ip="10.0.0.9", details={"reason": f"r{i}"})
        assert audit.ip_dropped == 1
        now[0] += 1.5
        audit.record("auth.failure", actor="a", client_ip="10.0.0.9", details={"reason": "r2"})
        assert audit.ip_dropped == 1 and audit.pending == 3
        await audit.aclose()

    run(body)


def test_a_window_closes_by_itself_and_the_next_failure_opens_another() -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store, coalesce_s=0.1)  # type: ignore[arg-type]
        for _ in range(5):
            audit.record("auth.failure", actor="x", client_ip="10.0.0.1", details={"reason": "malformed"})
        await asyncio.sleep(0.3)  # no flush: the writer wakes when the window ends
        assert [r["details"]["count"] for r in store.records] == [5]
        audit.record("auth.failure", actor="x", client_ip="10.0.0.1", details={"reason": "malformed"})
        await audit.aclose()
        assert [r["details"]["count"] for r in store.records] == [5, 1]

    run(body)


def test_other_actions_are_never_coalesced_and_keep_their_order() -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store)  # type: ignore[arg-type]
        for i in range(3):
            audit.record("key.revoke", actor="a", target="k", details={"n": i})
        await audit.aclose()
        assert [r["details"] for r in store.records] == [{"n": 0}, {"n": 1}, {"n": 2}]

    run(body)


def test_aclose_flushes_everything_then_refuses() -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store, batch_size=7)  # type: ignore[arg-type]
        for i in range(50):
            audit.record("user.update", actor="a", target=f"u{i}")
        audit.record("auth.failure", actor="a", client_ip="1.2.3.4", details={"reason": "expired"})
        await audit.aclose()
        assert len(store.records) == 51 and audit.pending == 0
        assert [r["target"] for r in store.records[:50]] == [f"u{i}" for i in range(50)]
        audit.record("user.update", actor="a", target="late")
        assert audit.dropped == 1 and len(store.records) == 51

    run(body)


def test_a_store_outage_is_retried_in_order() -> None:
    async def body() -> None:
        store = FakeStore(fail=2)
        audit = AuditLog(store)  # type: ignore[arg-type]
        for i in range(5):
            audit.record("team.update", actor="a", target=f"t{i}")
        assert await audit.flush(timeout_s=5)
        assert [r["target"] for r in store.records] == [f"t{i}" for i in range(5)]
        assert audit.failed == 0
        await audit.aclose()

    run(body)


def test_a_flush_retries_a_recovered_store_at_once_not_after_the_backoff() -> None:
    async def body() -> None:
        store = FakeStore(fail=10**9)
        audit = AuditLog(store)  # type: ignore[arg-type]
        audit.record("key.update", actor="a", target="k")
        await asyncio.sleep(1.0)  # tries at 0, 0.1, 0.3, 0.7 s: the next waits 1.6 s
        tries = store.calls
        store.fail = 0
        started = time.perf_counter()
        assert await audit.flush(timeout_s=1.0)
        assert time.perf_counter() - started < 0.5 and store.calls == tries + 1
        assert [r["target"] for r in store.records] == ["k"]
        await audit.aclose()

    run(body)


def test_aclose_gives_up_on_a_store_that_stays_down_and_counts_the_loss() -> None:
    async def body() -> None:
        store = FakeStore(fail=10**9)
        audit = AuditLog(store, close_timeout_s=0.3)  # type: ignore[arg-type]
        for i in range(4):
            audit.record("key.update", actor="a", target=f"k{i}")
        await audit.aclose()
        assert audit.failed == 4 and store.records == []

    run(body)


def test_a_record_the_store_cannot_take_is_dropped_not_the_writer() -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store)  # type: ignore[arg-type]
        audit.record("key.update", actor="a", target="ok1")
        audit.record("key.update", actor="a", target="bad", details={"x": float("nan")})
        audit.record("key.update", actor="a", target="ok2")
        await audit.aclose()
        assert [r["target"] for r in store.records] == ["ok1", "ok2"]
        assert audit.failed == 1

    run(body)


def test_each_record_is_one_structured_log_line_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        store = FakeStore()
        audit = AuditLog(store)  # type: ignore[arg-type]
        secret = "sk-sl-" + "A" * 43
        audit.record("key.create", actor="cli:alice", target="key_1", client_ip="10.1.1.1",
                     details={"key": secret, "note": f"made from {secret}", "nested": {"token": "eyJhbGciOi"},
                              "roles": ["user"]})
        await audit.aclose()

    with caplog.at_level(logging.INFO, logger="sluice.audit"):
        run(body)
    [line] = [r for r in caplog.records if r.name == "sluice.audit"]
    record = line.audit  # type: ignore[attr-defined]
    assert record["action"] == "key.create" and record["actor"] == "cli:alice" and record["client_ip"] == "10.1.1.1"
    assert record["details"] == {"key": "[redacted]", "note": "made from sk-sl-AAAA…",
                                 "nested": {"token": "[redacted]"}, "roles": ["user"]}
    assert "AAAAAAAA" not in line.getMessage() and "AAAAAAAA" not in json.dumps(record)


def test_chained_in_a_real_store(tmp_path: Path) -> None:
    async def body() -> None:
        store = SqliteStore(str(tmp_path / "audit.db"))
        await store.migrate()
        audit = AuditLog(store, owns_store=True)
        for i in range(20):
            audit.record("role.update", actor="a", target=f"r{i}")
        for _ in range(30):
            audit.record("auth.failure", actor="sk-sl-zz99…", client_ip="::1", details={"reason": "unknown_key"})
        assert await audit.flush()
        records = await store.list_audit(limit=100)
        assert [r.seq for r in records] == list(range(1, 22))
        assert records[-1].details == {"reason": "unknown_key", "count": 30, "last_at": records[-1].details["last_at"]}
        assert await store.verify_audit() == (True, None, 21)
        await audit.aclose()

    run(body)


def test_record_without_a_running_loop_waits_for_the_first_flush() -> None:
    store = FakeStore()
    audit = AuditLog(store)  # type: ignore[arg-type]
    audit.record("config.reload", actor="system")  # no loop yet: only queued

    async def body() -> None:
        await audit.aclose()

    run(body)
    assert [r["action"] for r in store.records] == ["config.reload"]
