"""The audit log's queue: never blocks, drops with a counter, coalesces failure floods, flushes on aclose."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluice.auth.audit import AuditLog
from sluice.store import AuditRecord, SqliteStore, StoreUnavailable
from tests.conftest import async_wait_until


def run(body: Callable[[GatedStore], Awaitable[None]], tmp_path: Path, timeout: float = 20.0, **gate: Any) -> None:
    """Runs ``body`` (bounded) with a GatedStore (``gate``: its options) on a fresh SQLite file in ``tmp_path``."""

    async def bounded() -> None:
        real = SqliteStore(str(tmp_path / "audit.db"))
        await real.migrate()
        store = GatedStore(real, **gate)
        try:
            async with asyncio.timeout(timeout):
                await body(store)
        finally:
            await store.aclose()

    asyncio.run(bounded())


class GatedStore:
    """The real SQLite store behind a gate: ``append_audit`` may hang until ``release`` is set, or fail the next
    ``fail`` calls with StoreUnavailable (a store that is down), before it appends to the real chain.

    A thin wrapper rather than a real outage: the tests need the store down and back on cue, many times over."""

    def __init__(self, real: SqliteStore, *, hang: bool = False, fail: int = 0) -> None:
        self.real = real
        self.release = asyncio.Event()
        if not hang:
            self.release.set()
        self.fail = fail
        self.calls = 0

    async def append_audit(self, actor: str, action: str, target: str | None = None, client_ip: str | None = None,
                           details: dict[str, Any] | None = None, at: float | None = None) -> AuditRecord:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("down")
        return await self.real.append_audit(actor, action, target, client_ip, details, at)

    async def records(self) -> list[AuditRecord]:
        return await self.real.list_audit(limit=1000)  # MAX_PAGE: more than any test writes

    async def targets(self) -> list[str | None]:
        return [r.target for r in await self.records()]

    async def aclose(self) -> None:
        await self.real.aclose()


def test_record_never_waits_and_drops_with_a_counter(tmp_path: Path) -> None:
    # record() is a plain function, not a coroutine: it cannot wait on the store, whatever the store does.
    assert not inspect.iscoroutinefunction(AuditLog.record)

    async def body(store: GatedStore) -> None:
        audit = AuditLog(store, queue_size=100)  # type: ignore[arg-type]
        audit.record("key.create", actor="a", target="k0")
        await async_wait_until(lambda: store.calls == 1, "the writer taking the record into the store")
        for i in range(10_000):
            audit.record("key.update", actor="a", target=f"k{i}")
        assert store.calls == 1  # the store (hanging) was not called again meanwhile
        assert audit.pending == 101  # the queue's 100 and the one in the store's hands
        assert audit.dropped == 10_000 - 100
        store.release.set()
        assert await audit.flush()
        assert audit.written == 101 and audit.pending == 0
        assert await store.targets() == ["k0", *(f"k{i}" for i in range(100))]
        await audit.aclose()

    run(body, tmp_path, hang=True)


def test_flush_waits_for_the_record_the_writer_holds(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store)  # type: ignore[arg-type]
        audit.record("user.create", actor="a", target="u")
        await async_wait_until(lambda: store.calls == 1, "the writer taking the record into the store")
        assert not await audit.flush(timeout_s=0.1)  # the store hangs until released: the flush cannot end
        store.release.set()
        assert await audit.flush(timeout_s=10.0) and await store.targets() == ["u"]
        await audit.aclose()

    run(body, tmp_path, hang=True)


def test_coalesces_identical_failures_into_one_record_with_a_count(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        now = [1000.0]  # frozen: the window stays open however long the test takes
        audit = AuditLog(store, coalesce_s=1.0, clock=lambda: now[0])  # type: ignore[arg-type]
        for _ in range(500):
            audit.record("auth.failure", actor="sk-sl-ab12…", client_ip="10.0.0.1", details={"reason": "revoked"})
        now[0] += 0.25
        for _ in range(3):
            audit.record("auth.failure", actor="sk-sl-ab12…", client_ip="10.0.0.1", details={"reason": "expired"})
        for _ in range(2):
            audit.record("auth.failure", actor="sk-sl-ab12…", client_ip="10.0.0.2", details={"reason": "revoked"})
        audit.record("auth.failure", actor="sk-sl-cd34…", client_ip="10.0.0.1", details={"reason": "revoked"})
        assert audit.pending == 3 and audit.coalesced == 503
        await asyncio.sleep(0.05)  # pacing: time for a wrong write to happen; the frozen clock keeps windows open
        assert store.calls == 0  # held until its window closes (or a flush)
        assert await audit.flush()
        records = await store.records()
        counts = {(r.actor, r.client_ip, r.details["reason"]): r.details["count"] for r in records}
        assert counts == {("sk-sl-ab12…", "10.0.0.1", "revoked"): 501, ("sk-sl-ab12…", "10.0.0.1", "expired"): 3,
                          ("sk-sl-ab12…", "10.0.0.2", "revoked"): 2}
        flood = next(r for r in records if r.details["count"] == 501)
        assert (flood.at, flood.details["last_at"]) == (1000.0, 1000.25)
        assert flood.details["actors"] == ["sk-sl-ab12…", "sk-sl-cd34…"]
        await audit.aclose()

    run(body, tmp_path)


def test_random_tokens_make_one_record_and_an_ip_opens_few_groups(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store, coalesce_s=60.0, max_groups_per_ip=10)  # type: ignore[arg-type]
        for i in range(1000):  # a new made-up token each time: its first characters are the actor
            audit.record("auth.failure", actor=f"tok{i:04d}", client_ip="10.0.0.9", details={"reason": "unknown"})
        for i in range(50):  # varied reasons from one address: at most 10 groups
            audit.record("auth.failure", actor="x", client_ip="10.0.0.9", details={"reason": f"r{i}"})
        audit.record("auth.failure", actor="y", client_ip="10.0.0.8", details={"reason": "r0"})  # another IP
        assert audit.pending == 11 and audit.ip_dropped == 41 and audit.dropped == 41
        assert audit.stats()["audit_ip_dropped"] == 41
        assert await audit.flush()
        records = await store.records()
        flood = next(r for r in records if r.details["reason"] == "unknown")
        assert flood.details["count"] == 1000 and flood.actor == "tok0000"
        assert flood.details["actors"] == ["tok0000", "tok0001", "tok0002"]
        assert len(records) == 11
        await audit.aclose()

    run(body, tmp_path)


def test_a_client_ip_opens_groups_again_in_the_next_window(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        now = [1000.0]
        audit = AuditLog(store, coalesce_s=1.0, max_groups_per_ip=2,  # type: ignore[arg-type]
                         clock=lambda: now[0])
        for i in range(3):
            audit.record("auth.failure", actor="a", client_ip="10.0.0.9", details={"reason": f"r{i}"})
        assert audit.ip_dropped == 1
        now[0] += 1.5
        audit.record("auth.failure", actor="a", client_ip="10.0.0.9", details={"reason": "r2"})
        assert audit.ip_dropped == 1 and audit.pending == 3
        await audit.aclose()

    run(body, tmp_path)


def test_a_window_closes_by_itself_and_the_next_failure_opens_another(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store, coalesce_s=0.1)  # type: ignore[arg-type]
        for _ in range(5):
            audit.record("auth.failure", actor="x", client_ip="10.0.0.1", details={"reason": "malformed"})
        # no flush: the writer wakes when the window ends, and writes the one record
        await async_wait_until(lambda: audit.written == 1, "the record of the closed window written")
        audit.record("auth.failure", actor="x", client_ip="10.0.0.1", details={"reason": "malformed"})
        await audit.aclose()
        assert [r.details["count"] for r in await store.records()] == [5, 1]

    run(body, tmp_path)


def test_other_actions_are_never_coalesced_and_keep_their_order(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store)  # type: ignore[arg-type]
        for i in range(3):
            audit.record("key.revoke", actor="a", target="k", details={"n": i})
        await audit.aclose()
        assert [r.details for r in await store.records()] == [{"n": 0}, {"n": 1}, {"n": 2}]

    run(body, tmp_path)


def test_aclose_flushes_everything_then_refuses(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store, batch_size=7)  # type: ignore[arg-type]
        for i in range(50):
            audit.record("user.update", actor="a", target=f"u{i}")
        audit.record("auth.failure", actor="a", client_ip="1.2.3.4", details={"reason": "expired"})
        await audit.aclose()
        targets = await store.targets()
        assert len(targets) == 51 and audit.pending == 0
        assert targets[:50] == [f"u{i}" for i in range(50)]
        audit.record("user.update", actor="a", target="late")
        assert audit.dropped == 1 and len(await store.records()) == 51

    run(body, tmp_path)


def test_a_store_outage_is_retried_in_order(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store)  # type: ignore[arg-type]
        for i in range(5):
            audit.record("team.update", actor="a", target=f"t{i}")
        assert await audit.flush(timeout_s=10)
        assert await store.targets() == [f"t{i}" for i in range(5)]
        assert audit.failed == 0 and store.calls == 5 + 2
        await audit.aclose()

    run(body, tmp_path, fail=2)


def test_a_flush_retries_a_recovered_store_at_once_not_after_the_backoff(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        # After the first failure the writer would wait an hour: only the flush can make it try again.
        audit = AuditLog(store, backoff_s=(3600.0, 3600.0))  # type: ignore[arg-type]
        audit.record("key.update", actor="a", target="k")
        await async_wait_until(lambda: store.calls == 1 and store.fail == 0, "the first try failing")
        assert await audit.flush(timeout_s=30.0)
        assert store.calls == 2 and await store.targets() == ["k"]
        await audit.aclose()

    run(body, tmp_path, fail=1)


def test_aclose_gives_up_on_a_store_that_stays_down_and_counts_the_loss(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store, close_timeout_s=0.3)  # type: ignore[arg-type]
        for i in range(4):
            audit.record("key.update", actor="a", target=f"k{i}")
        await audit.aclose()
        assert audit.failed == 4 and await store.records() == []

    run(body, tmp_path, fail=10**9)


def test_a_record_the_store_cannot_take_is_dropped_not_the_writer(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store)  # type: ignore[arg-type]
        audit.record("key.update", actor="a", target="ok1")
        audit.record("key.update", actor="a", target="bad", details={"x": float("nan")})  # not JSON
        audit.record("key.update", actor="a", target="ok2")
        await audit.aclose()
        assert await store.targets() == ["ok1", "ok2"]
        assert audit.failed == 1
        assert await store.real.verify_audit() == (True, None, 2)  # the chain has no hole where "bad" was

    run(body, tmp_path)


def test_each_record_is_one_structured_log_line_without_secrets(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-sl-" + "A" * 43

    async def body(store: GatedStore) -> None:
        audit = AuditLog(store)  # type: ignore[arg-type]
        audit.record("key.create", actor="cli:alice", target="key_1", client_ip="10.1.1.1",
                     details={"key": secret, "note": f"made from {secret}", "nested": {"token": "eyJhbGciOi"},
                              "roles": ["user"]})
        await audit.aclose()
        [stored] = await store.records()
        assert "AAAAAAAA" not in json.dumps(stored.details)  # nor in the store

    with caplog.at_level(logging.INFO, logger="sluice.audit"):
        run(body, tmp_path)
    [line] = [r for r in caplog.records if r.name == "sluice.audit"]
    record = line.audit  # type: ignore[attr-defined]
    assert record["action"] == "key.create" and record["actor"] == "cli:alice" and record["client_ip"] == "10.1.1.1"
    assert record["details"] == {"key": "[redacted]", "note": "made from sk-sl-AAAA…",
                                 "nested": {"token": "[redacted]"}, "roles": ["user"]}
    assert "AAAAAAAA" not in line.getMessage() and "AAAAAAAA" not in json.dumps(record)


def test_chained_in_a_real_store(tmp_path: Path) -> None:
    async def body(gated: GatedStore) -> None:
        store = gated.real  # the store itself, without the gate
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

    run(body, tmp_path)


def test_record_without_a_running_loop_waits_for_the_first_flush(tmp_path: Path) -> None:
    async def body(store: GatedStore) -> None:
        audit = AuditLog(store)  # type: ignore[arg-type]
        await asyncio.to_thread(audit.record, "config.reload", actor="system")  # no loop there: only queued
        assert store.calls == 0 and audit.pending == 1
        await audit.aclose()
        assert [r.action for r in await store.records()] == ["config.reload"]

    run(body, tmp_path)
