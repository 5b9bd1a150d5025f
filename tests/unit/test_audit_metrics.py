"""The audit log's counters in the metrics exposition: records written and drops by reason, from a known
sequence of events on a fixed clock (so the coalescing windows and the per-address bound are exact)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sluice.auth.audit import AuditLog
from sluice.observability.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_audit_counters_in_the_exposition(tmp_path: Path) -> None:
    async def body() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        audit = AuditLog(None, queue_size=20, max_groups_per_ip=10, clock=lambda: 1000.0)
        for reason in range(12):  # 12 reasons from one address in one window: 10 records, 2 dropped
            audit.record("auth.failure", actor="anonymous", client_ip="10.0.0.1", details={"reason": f"r{reason}"})
        for _ in range(5):  # the same failure again: coalesced into the first record, nothing dropped
            audit.record("auth.failure", actor="anonymous", client_ip="10.0.0.1", details={"reason": "r0"})
        for n in range(12):  # the queue holds 20 (10 open windows + 10 of these): 2 dropped as queue_full
            audit.record("key.create", actor="cli:root", target=f"key_{n}")
        assert await audit.flush(timeout_s=10)
        await audit.aclose()
        metrics = Metrics(tmp_path / "metrics", ["gpt-4o-mini"])
        metrics.worker_state = audit.stats
        return samples(metrics)

    got = asyncio.run(body())
    assert got[("sluice_audit_records_total", ())] == 20
    assert got[("sluice_audit_dropped_total", (("reason", "client_ip_flood"),))] == 2
    assert got[("sluice_audit_dropped_total", (("reason", "queue_full"),))] == 2
    assert got[("sluice_audit_dropped_total", (("reason", "write_failed"),))] == 0


def test_no_audit_counters_without_an_audit_log(tmp_path: Path) -> None:
    metrics = Metrics(tmp_path / "metrics", ["gpt-4o-mini"])
    metrics.worker_state = dict
    assert not [key for key in samples(metrics) if key[0].startswith("sluice_audit_")]
