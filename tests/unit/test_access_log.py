"""The access log: bounded queues that never wait on their sink, the fields of a line, redacted debug bodies."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile

import pytest

from sluice.context import RequestContext
from sluice.observability.access_log import AccessLog
from tests.conftest import async_wait_until


def record(i: int, status: int = 200, answer: bytes | None = None, **fields) -> RequestContext:  # type: ignore[no-untyped-def]
    ctx = RequestContext(f"r{i}", 0.0)
    ctx.at, ctx.method, ctx.status = 1.0 + i, "POST", status
    ctx.path = ctx.route = "/v1/chat/completions"
    ctx.total_s, ctx.overhead_s, ctx.model, ctx.provider, ctx.upstream_status = 0.002, 0.0005, "m", "p", status
    ctx.answer = answer
    for name, value in fields.items():
        setattr(ctx, name, value)
    return ctx


def read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1 << 20):
        data += chunk
    return data


def test_a_full_queue_drops_records_instead_of_waiting() -> None:
    reader, writer = os.pipe()
    sink = os.fdopen(writer, "wb")

    async def run() -> AccessLog:
        log = AccessLog(sink, queue_size=10, flush_interval_s=60)
        for i in range(100):
            log.record(record(i))  # no flush runs in between: the queue holds 10
        assert log.dropped == 90
        log.close()
        return log

    log = asyncio.run(run())
    sink.close()
    lines = [json.loads(line) for line in read_all(reader).splitlines()]
    os.close(reader)
    assert [entry["request_id"] for entry in lines] == [f"r{i}" for i in range(10)]
    assert log.written == 10


def test_a_sink_nobody_reads_never_blocks_and_drops_what_it_cannot_hold() -> None:
    reader, writer = os.pipe()  # a pipe holds 64 KiB; nobody reads it while requests are logged
    total = 30_000
    sink = os.fdopen(writer, "wb")

    async def run() -> AccessLog:
        log = AccessLog(sink, flush_interval_s=60, log_bodies=True)
        body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 300 + b'"}]}'
        for i in range(total):
            log.record(record(i, request_body=body))  # returns at once, or the test hangs
            if i % 1000 == 999:
                log.flush()  # the sink is full: what it does not take waits, then is dropped
        assert log.dropped > 0 and log.written < 1000
        drained = asyncio.get_running_loop().run_in_executor(None, read_all, reader)
        log.close(timeout=10)  # writes what is buffered as the reader drains the pipe
        sink.close()
        data = await drained
        lines = [json.loads(line) for line in data.splitlines()]  # whole lines only, none cut
        assert len(lines) == log.written
        return log

    log = asyncio.run(run())
    os.close(reader)
    assert log.written + log.dropped == total
    assert log.written > 4 * 1024 * 1024 // 1000  # the 4 MiB buffer was written out at the end


def run_log(records: list, **options) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    with tempfile.TemporaryFile() as sink:

        async def run() -> None:
            log = AccessLog(sink, flush_interval_s=0.01, **options)
            for item in records:
                log.record(item)
            log.close()

        asyncio.run(run())
        sink.seek(0)
        return [json.loads(line) for line in sink.read().splitlines()]


def test_line_fields() -> None:
    (entry,) = run_log([record(1, tokens_in=7, tokens_out=3, ttfb_s=0.0015, error="upstream_5xx")])
    assert entry["time"] == "1970-01-01T00:00:02.000Z"
    assert (entry["duration_ms"], entry["overhead_ms"], entry["ttfb_ms"]) == (2.0, 0.5, 1.5)
    assert (entry["tokens_in"], entry["tokens_out"], entry["retries"], entry["error"]) == (7, 3, 0, "upstream_5xx")
    assert (entry["request_id"], entry["status"], entry["model"], entry["provider"]) == ("r1", 200, "m", "p")
    assert (entry["method"], entry["path"], entry["route"]) == ("POST", "/v1/chat/completions", "/v1/chat/completions")
    assert entry["ttft_ms"] is None and entry["trace_id"] is None  # not a stream, no trace
    assert (entry["key_prefix"], entry["user"], entry["cache"]) == (None, None, None)  # no auth or cache yet
    (later,) = run_log([record(2, key_prefix="sk-ab12", user="u-7", retries=2, cache="hit")])
    assert (later["key_prefix"], later["user"], later["retries"], later["cache"]) == ("sk-ab12", "u-7", 2, "hit")
    assert "request_body" not in entry and "response_body" not in entry  # bodies only with log_bodies


@pytest.mark.parametrize(("traceparent", "trace_id"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),  # all-zero trace id is invalid
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case is invalid
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", None),
    ('00-4bf92f3577b34da6a3ce929d0e0e47"6-00f067aa0ba902b7-01', None),  # never echoed into the log
    ("garbage", None),
])
def test_trace_id_from_the_callers_traceparent(traceparent: str, trace_id: str | None) -> None:
    (entry,) = run_log([record(1, traceparent=traceparent)])
    assert entry.get("trace_id") == trace_id


def test_bodies_only_when_asked_and_redacted() -> None:
    request = (b'{"model":"m","api_key":"abc123","messages":[{"role":"user","content":'
               b'"mail jane.doe@example.com, card 4111 1111 1111 1111, key sk-proj-abcdefghijk, '
               b'call +1 415-555-0134, from 10.1.2.3"}]}')
    answer = b'{"choices":[{"message":{"content":"Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"}}]}'
    (plain,) = run_log([record(1, answer=answer, request_body=request)])
    assert "request_body" not in plain and "response_body" not in plain
    (entry,) = run_log([record(1, answer=answer, request_body=request)], log_bodies=True)
    body = entry["request_body"]
    for secret in ("abc123", "jane.doe", "4111", "sk-proj", "555-0134", "10.1.2.3"):
        assert secret not in body
    assert '"api_key":"[secret]"' in body and "[email]" in body and "[card]" in body and "[phone]" in body
    assert "eyJ" not in entry["response_body"] and "[secret]" in entry["response_body"]


def test_long_bodies_are_clipped() -> None:
    (entry,) = run_log([record(1, request_body=b"x" * 100_000)], log_bodies=True)
    assert entry["request_body"].endswith("[clipped]") and len(entry["request_body"]) < 4200


def test_sampling_never_drops_errors() -> None:
    entries = run_log([record(i, status=200 if i % 2 else 500) for i in range(20)], sample_success=0.0)
    assert [entry["status"] for entry in entries] == [500] * 10


@pytest.mark.parametrize("log_bodies", [False, True])
def test_a_line_that_cannot_be_encoded_is_counted_and_the_others_written(log_bodies: bool, caplog) -> None:
    async def run() -> tuple[list[str], AccessLog]:
        with tempfile.TemporaryFile() as sink:
            log = AccessLog(sink, flush_interval_s=60, log_bodies=log_bodies)
            log.record(record(1, model=type("Name", (str,), {})("a str subclass")))  # msgspec refuses it
            log.record(record(2))
            assert log.dropped == 1
            log.flush()  # says so in the application log
            log.close()
            sink.seek(0)
            return [json.loads(line)["request_id"] for line in sink.read().splitlines()], log

    ids, log = asyncio.run(run())
    assert ids == ["r2"] and (log.written, log.dropped) == (1, 1)
    assert any("could not be" in message for message in caplog.messages)


def test_lines_wait_while_the_sink_is_full_and_go_out_when_it_drains() -> None:
    reader, writer = os.pipe()
    sink = os.fdopen(writer, "wb")

    async def run() -> AccessLog:
        log = AccessLog(sink, flush_interval_s=0.01)
        for i in range(400):  # ~300 bytes each: more than the pipe's 64 KiB once a few flushes ran
            log.record(record(i, path="/v1/chat/completions" + "x" * 120))
            if i % 50 == 49:
                await asyncio.sleep(0.02)  # pacing: bursts with room between them for the 10 ms flush timer
        drained = asyncio.get_running_loop().run_in_executor(None, read_all, reader)
        # written by the loop as the reader drains, not by close()
        await async_wait_until(lambda: log.written == 400, "all 400 lines written as the sink drained")
        log.close()
        sink.close()
        lines = (await drained).splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(400)]
        return log

    log = asyncio.run(run())
    os.close(reader)
    assert (log.written, log.dropped) == (400, 0)
