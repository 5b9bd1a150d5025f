"""The JSON access log and the overhead header, against real processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import openai
import pytest

from tests.conftest import call, free_port, start_gateway, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
FIELDS = {"time", "request_id", "trace_id", "method", "path", "route", "status", "error", "duration_ms", "overhead_ms",
          "ttfb_ms", "ttft_ms", "model", "provider", "upstream_status", "tokens_in", "tokens_out", "retries",
          "key_prefix", "user", "cache"}


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def config(mock_url: str, extra: str = "") -> str:
    return f"""
observability: {{{extra}}}
providers: {{mock: {{kind: openai, base_url: "{mock_url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  broken: {{targets: [{{provider: mock, model: mock-status-503}}]}}
"""


def read_lines(path: Path, count: int) -> list[dict]:
    """The access log's entries, once it holds ``count`` lines (written off the request path, in order)."""

    def lines() -> list[str]:
        text = path.read_text().splitlines() if path.exists() else []
        return text if len(text) >= count else []

    return [json.loads(line) for line in wait_until(lines, f"{count} access-log lines in {path}")]


def test_one_json_line_per_request_with_its_fields(tmp_path, mock_upstream) -> None:
    log = tmp_path / "access.jsonl"
    gateway = start_gateway(tmp_path, config(mock_upstream.url, f'access_log: true, access_log_path: "{log}"'))
    try:
        api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo", max_retries=0)
        api.chat.completions.with_raw_response.create(**CHAT, extra_headers={"x-request-id": "plain-1"})
        list(api.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True},
                                         extra_headers={"x-request-id": "stream-1", "traceparent": TRACEPARENT}))
        call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "broken"}, {"x-request-id": "bad-1"})
        call(gateway.url, "GET", "/nowhere", headers={"x-request-id": "lost-1"})
        entries = {e["request_id"]: e for e in read_lines(log, 4)}
    finally:
        gateway.stop()
    assert set(entries) == {"plain-1", "stream-1", "bad-1", "lost-1"}
    assert all(set(entry) >= FIELDS for entry in entries.values())
    plain, stream, bad, lost = (entries[k] for k in ("plain-1", "stream-1", "bad-1", "lost-1"))
    assert (plain["status"], plain["model"], plain["provider"], plain["upstream_status"]) == (200, "gpt-4o-mini",
                                                                                                "mock", 200)
    assert plain["tokens_in"] > 0 and plain["tokens_out"] == 10
    assert stream["status"] == 200 and stream["tokens_out"] == 10  # from the stream's usage event
    assert stream["trace_id"] == TRACEPARENT.split("-")[1] and plain["trace_id"] is None  # the caller's, if any
    assert 0 < stream["ttft_ms"] <= stream["duration_ms"] and plain["ttft_ms"] is None
    assert (bad["status"], bad["upstream_status"], bad["error"]) == (503, 503, "upstream_5xx")
    assert (lost["status"], lost["model"], lost["path"], lost["route"]) == (404, None, "/nowhere", "other")
    assert lost["error"] == "unknown_url" and plain["error"] is None
    for entry in entries.values():
        assert 0 <= entry["overhead_ms"] <= entry["ttfb_ms"] <= entry["duration_ms"]
        # no retries, keys, users or cache yet: the fields are there, empty, for parsers to rely on
        assert (entry["retries"], entry["key_prefix"], entry["user"], entry["cache"]) == (0, None, None, None)


def test_sampling_keeps_every_error_and_drops_successes(tmp_path, mock_upstream) -> None:
    log = tmp_path / "access.jsonl"
    options = f'access_log: true, access_log_path: "{log}", sample_success: 0'
    gateway = start_gateway(tmp_path, config(mock_upstream.url, options))
    try:
        for _ in range(5):
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT).status == 200
        assert call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "broken"}).status == 503
        read_lines(log, 1)
    finally:
        gateway.stop()  # writes whatever was still queued
    # No success line: lines are written in the order of the requests, so one for the five successes before the
    # error would be in the file ahead of it; and the shutdown wrote the rest.
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["status"] for e in entries] == [503]


def test_a_blocked_sink_does_not_block_requests(tmp_path, mock_upstream) -> None:
    """stdout is a pipe nobody reads: once it is full the writer thread blocks, requests go on."""
    gateway = start_gateway(tmp_path, config(mock_upstream.url, "access_log: true, access_log_queue: 100"),
                            stdout=subprocess.PIPE)
    try:
        api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo", max_retries=0,
                            timeout=10)
        # ~1,500 lines of ~300 bytes: far past a 64 KiB pipe buffer and the 100-record queue.
        for _ in range(1500):
            assert api.chat.completions.create(**CHAT).choices[0].message.content
        assert call(gateway.url, "GET", "/health/live").status == 200
    finally:
        gateway.stop()
        assert gateway.process.stdout is not None
        gateway.process.stdout.close()


def test_every_response_carries_the_overhead(gateway) -> None:
    replies = [
        call(gateway.url, "POST", "/v1/chat/completions", CHAT),
        call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "stream": True}),
        call(gateway.url, "POST", "/v1/chat/completions", b"{"),
        call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "unreachable"}),
        call(gateway.url, "GET", "/v1/models"),
        call(gateway.url, "GET", "/health/ready"),
        call(gateway.url, "GET", "/nowhere"),
    ]
    for reply in replies:
        overhead = float(reply.headers["x-sluice-overhead-ms"])
        assert 0 <= overhead < 10_000


@pytest.mark.parametrize("interface", ["rsgi", "asgi"])
def test_lines_still_queued_at_shutdown_are_written(tmp_path, mock_upstream, interface: str) -> None:
    log = tmp_path / "access.jsonl"
    options = f'access_log: true, access_log_path: "{log}"'
    gateway = start_gateway(tmp_path, config(mock_upstream.url, options), "--interface", interface)
    try:
        for i in range(20):
            call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-request-id": f"last-{i}"})
    finally:
        gateway.stop()  # SIGTERM right after the last answer: its line may still be queued
    ids = [json.loads(line)["request_id"] for line in log.read_text().splitlines()]
    assert ids == [f"last-{i}" for i in range(20)]


def test_application_logs_can_be_json_lines(tmp_path) -> None:
    gateway = start_gateway(tmp_path, f"""
observability: {{log_format: json, log_level: info}}
providers: {{closed: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}"}}}}
models: {{unreachable: {{targets: [{{provider: closed, model: x}}]}}}}
""")
    try:
        chat = {**CHAT, "model": "unreachable"}
        assert call(gateway.url, "POST", "/v1/chat/completions", chat, {"x-request-id": "json-1"}).status == 502
        wait_until(lambda: "json-1" in gateway.log.read_text(), "the failure's log line")
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
    # The application's log line (the access log, on by default, has its own line for the request).
    (failure,) = [line for line in lines if line.get("request_id") == "json-1" and "level" in line]
    assert (failure["level"], failure["logger"]) == ("warning", "sluice.gateway")
    assert "closed" in failure["message"] and failure["time"].endswith("Z")
