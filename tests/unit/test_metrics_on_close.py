"""A worker that stops writes its last metrics snapshot (issue 15, finding 9: a stopped worker lost up to a
second of its counters from /metrics, the requests counted since its last timed snapshot)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from sluice.config import parse_config
from sluice.context import RequestContext
from sluice.server.app import create_gateway

CONFIG = """
providers:
  mock: {kind: openai, base_url: "http://127.0.0.1:9"}
models:
  m: {targets: [{provider: mock, model: m}]}
"""


def test_the_requests_counted_since_the_last_snapshot_are_written_at_close(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_METRICS_DIR", str(tmp_path))

    async def run() -> None:
        gateway = create_gateway(parse_config(CONFIG, {}))
        metrics = gateway.metrics
        assert metrics is not None
        for _ in range(7):  # as the pipeline accounts a finished request: the snapshot is a second away
            ctx = RequestContext("r", 0.0)
            ctx.model, ctx.provider = "m", "mock"
            if metrics.observe_context(ctx, "/v1/chat/completions", 200, 0.01):
                metrics.schedule_flush()
        await gateway.close()  # stopped before the timer: what a SIGTERM'd worker does

    asyncio.run(run())
    snapshot = json.loads((tmp_path / f"{os.getpid()}.json").read_bytes())
    assert sum(row[-1] for row in snapshot["requests"]) == 7
