"""The access log's queues: bounded, never waiting on their sink; usage parsed off the request path."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import pytest

from sluice.observability.access_log import AccessLog
from sluice.observability.usage import token_usage


class BlockedSink(io.RawIOBase):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(10)
        self.data += data
        return len(data)


def record(i: int, status: int = 200, answer: bytes | None = None):  # type: ignore[no-untyped-def]
    return (1.0 + i, f"r{i}", "POST", "/v1/chat/completions", status, 0.002, 0.0005, "m", "p", status, answer)


def test_records_are_dropped_not_waited_for_when_the_sink_blocks() -> None:
    async def run() -> tuple[AccessLog, BlockedSink]:
        sink = BlockedSink()
        log = AccessLog(sink, queue_size=10, flush_interval_s=0.01)
        log.record(record(0))
        await asyncio.sleep(0.05)  # the flush hands it to the writer thread...
        assert await asyncio.to_thread(sink.entered.wait, 5)  # ...which is now stuck in write()
        for i in range(1, 101):
            log.record(record(i))  # returns at once: the test would hang here otherwise
        assert log.dropped == 90  # 10 queued, the rest counted
        sink.release.set()
        log.close()
        return log, sink

    log, sink = asyncio.run(run())
    lines = [json.loads(line) for line in sink.data.splitlines()]
    assert [entry["request_id"] for entry in lines] == [f"r{i}" for i in range(11)]
    assert log.written == 11


def run_log(records: list, **options) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    sink = io.BytesIO()

    async def run() -> None:
        log = AccessLog(sink, flush_interval_s=0.01, **options)
        for item in records:
            log.record(item)
        log.close()

    asyncio.run(run())
    return [json.loads(line) for line in sink.getvalue().splitlines()]


def test_line_fields_and_usage() -> None:
    (entry,) = run_log([record(1, answer=b'{"usage": {"prompt_tokens": 7, "completion_tokens": 3}}')])
    assert entry["time"] == "1970-01-01T00:00:02.000Z"
    assert (entry["duration_ms"], entry["overhead_ms"], entry["tokens_in"], entry["tokens_out"]) == (2.0, 0.5, 7, 3)
    assert (entry["request_id"], entry["status"], entry["model"], entry["provider"]) == ("r1", 200, "m", "p")


def test_sampling_never_drops_errors() -> None:
    entries = run_log([record(i, status=200 if i % 2 else 500) for i in range(20)], sample_success=0.0)
    assert [entry["status"] for entry in entries] == [500] * 10


@pytest.mark.parametrize(("answer", "usage"), [
    (b'{"usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 1}}}', (1, None)),
    (b'data: {"choices": [], "usage": {"completion_tokens": 2}}\n\n', (None, 2)),
    (b'{"usage": {"prompt_tokens": 4, "x": {"y": 1}}, "later": 1}', (4, None)),
    (b'{"usage": null, "x": {"prompt_tokens": 9}}', None),
    (b'{"usage": {"prompt_tokens": 1', (1, None)),
    (b'{"usage": {"prompt_tokens": "many"}}', None),
    (b'{"usage": {}}', None),
    (b"not json at all", None),
])
def test_usage(answer: bytes, usage: tuple[int | None, int | None] | None) -> None:
    found = token_usage(answer)
    assert (None if found is None else (found.prompt_tokens, found.completion_tokens)) == usage
