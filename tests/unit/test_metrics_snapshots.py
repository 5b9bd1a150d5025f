"""The metrics' snapshot timer: armed by the first request since the last snapshot, re-armed after a failed one."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from sluice.context import RequestContext
from sluice.observability.metrics import Metrics
from tests.conftest import async_wait_until


def finished(model: str = "m") -> RequestContext:
    ctx = RequestContext("r", 0.0)
    ctx.model, ctx.provider, ctx.upstream_s, ctx.overhead_s, ctx.tokens_in, ctx.tokens_out = model, "p", 0.1, 0.0, 3, 4
    return ctx


def observe(metrics: Metrics, count: int) -> int:
    """Observes ``count`` requests as Gateway._account does; how many asked for a snapshot."""
    asked = 0
    for _ in range(count):
        if metrics.observe_context(finished(), "/v1/chat/completions", 200, 0.2):
            metrics.schedule_flush()
            asked += 1
    return asked


def requests_in(path: Path) -> int:
    """The requests the worker's snapshot file counts (-1: no file yet)."""
    if not path.exists():
        return -1
    return sum(row[-1] for row in json.loads(path.read_bytes())["requests"])


async def requests_in_snapshot(path: Path, expected: int) -> int:
    """Polls the worker's snapshot file (against a deadline) until it counts ``expected`` requests."""
    await async_wait_until(lambda: requests_in(path) == expected, f"a snapshot of {expected} requests")
    return requests_in(path)


def test_one_snapshot_timer_while_busy_and_a_failed_snapshot_is_tried_again(tmp_path: Path) -> None:
    async def run() -> None:
        metrics = Metrics(tmp_path, ["m"], flush_interval_s=0.02)
        snapshot = tmp_path / f"{os.getpid()}.json"
        assert observe(metrics, 50) == 1  # one timer for a burst of requests
        assert await requests_in_snapshot(snapshot, 50) == 50
        assert observe(metrics, 5) == 1  # the snapshot was taken: the next request asks again

        def broken() -> dict[str, float]:
            raise OSError("the worker's state could not be read")

        metrics.worker_state = broken  # the next snapshot fails (the loop logs it)
        errors: list[object] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        await async_wait_until(lambda: bool(errors), "the failed snapshot reported to the loop")
        # and the file still holds the snapshot before
        assert sum(row[-1] for row in json.loads(snapshot.read_bytes())["requests"]) == 50
        metrics.worker_state = None
        assert observe(metrics, 1) == 1  # the failed snapshot still re-armed the request's ask
        assert await requests_in_snapshot(snapshot, 56) == 56

    asyncio.run(run())
