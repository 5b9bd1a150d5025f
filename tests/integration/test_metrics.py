"""/metrics sums every worker: N requests show up as exactly N, whichever worker answers the scrape."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import call, start_gateway, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = call(url, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def settled(url: str, done: Callable[[dict[Any, float]], bool], what: str) -> None:
    """Waits until a scrape shows every request made so far (each worker snapshots within its flush interval).

    ``done`` asks for "at least" the counts made, so an exact assertion afterwards still catches a miscount.
    """
    wait_until(lambda: done(scrape(url)), what)


def finished(url: str, route: str | None = "/v1/chat/completions") -> float:
    """Requests on ``route`` (None: any but the scrapes) the gateway has finished, by a scrape (one worker: its own
    count, flushed to answer).  The metrics stage's response step runs after every other stage's (rate limits and
    quotas settled)."""
    return sum(v for (name, labels), v in scrape(url).items() if name == "sluice_requests_total"
               and (("route", route) in labels if route else ("route", "/metrics") not in labels))


def test_two_workers_count_exactly(tmp_path, mock_upstream) -> None:
    config = f"""
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  broken: {{targets: [{{provider: mock, model: mock-status-503}}]}}
"""
    gateway = start_gateway(tmp_path, config, "--workers", "2")
    try:
        for _ in range(30):
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT).status == 200
        for _ in range(7):
            assert call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "broken"}).status == 503
        for _ in range(5):
            assert call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "nope"}).status == 404
        for _ in range(4):
            assert call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "stream": True}).status == 200
        assert call(gateway.url, "GET", "/v1/missing").status == 404
        # Both workers' snapshots summed: each answers some scrapes on new connections (and writes its snapshot
        # then), but which one accepts is the kernel's choice, so poll rather than count on six scrapes.  A
        # worker that served nothing yet joins on its first scrape: until then the sums may differ.
        settled(gateway.url, lambda s: value(s, "sluice_workers_reporting") == 2
                and value(s, "sluice_request_duration_seconds_count", route="/v1/chat/completions") >= 46,
                "both workers' snapshots with every request")
        scrapes = [scrape(gateway.url) for _ in range(6)]
    finally:
        gateway.stop()
    first = scrapes[0]

    def counted(samples):  # type: ignore[no-untyped-def]
        """Request metrics: scrapes themselves and the workers' own gauges (memory, fds, pool) aside."""
        return {k: v for k, v in samples.items() if "/metrics" not in str(k) and "_process_" not in k[0]
                and "upstream_connections" not in k[0]}

    for later in scrapes[1:]:  # whichever worker answered, the same sums
        assert counted(later) == counted(first)
    route = "/v1/chat/completions"
    ok = value(first, "sluice_requests_total", route=route, model="gpt-4o-mini", provider="mock", status="200")
    assert ok == 34  # 30 plain + 4 streams
    assert value(first, "sluice_requests_total", route=route, model="broken", provider="mock", status="503") == 7
    assert value(first, "sluice_requests_total", route=route, model="unknown", provider="none", status="404") == 5
    assert value(first, "sluice_requests_total", route="other", model="none", provider="none", status="404") == 1
    assert value(first, "sluice_request_duration_seconds_count", route=route) == 46
    assert value(first, "sluice_request_duration_seconds_bucket", route=route, le="+Inf") == 46
    assert value(first, "sluice_gateway_overhead_seconds_count", route=route) == 46
    assert value(first, "sluice_upstream_duration_seconds_count", provider="mock", model="gpt-4o-mini") == 34
    assert value(first, "sluice_upstream_duration_seconds_count", provider="mock", model="broken") == 7
    assert value(first, "sluice_errors_total", route=route, **{"class": "upstream_5xx"}) == 7
    assert value(first, "sluice_errors_total", route=route, **{"class": "model_not_found"}) == 5
    assert value(first, "sluice_errors_total", route="other", **{"class": "unknown_url"}) == 1
    assert value(first, "sluice_time_to_first_token_seconds_count", provider="mock", model="gpt-4o-mini") == 4
    # the GenAI names: the same data, provider as its kind
    gen_ai = {"gen_ai_provider_name": "openai", "gen_ai_request_model": "gpt-4o-mini"}
    assert value(first, "gen_ai_server_time_to_first_token_seconds_count", **gen_ai) == 4
    assert value(first, "gen_ai_client_operation_duration_seconds_count", **gen_ai) == 34
    assert value(first, "gen_ai_client_token_usage_count", gen_ai_token_type="output", **gen_ai) == 34
    assert value(first, "gen_ai_client_token_usage_sum", gen_ai_token_type="output", **gen_ai) == 340
    # worker state: pooled connections back to idle, memory and descriptors of live workers, nothing dropped
    assert value(first, "sluice_upstream_connections", state="active") == 0
    # At least one pooled connection kept: which worker accepts each new connection is the kernel's choice, and
    # one of the two may have served no upstream request at all (it then pools none): >= 2 failed that way.
    assert value(first, "sluice_upstream_connections", state="idle") >= 1
    assert value(first, "sluice_process_resident_memory_bytes") > 10 * 2**20
    assert 0 < value(first, "sluice_process_open_fds") < value(first, "sluice_process_max_fds")
    assert value(first, "sluice_access_log_dropped_total") == 0
    # the mock answers 10 completion tokens per request; the 4 streams too, as the gateway asked
    # for their usage (and hid it from the callers, who did not)
    assert value(first, "sluice_tokens_output_total", model="gpt-4o-mini") == 340
    assert value(first, "sluice_tokens_input_total", model="gpt-4o-mini") > 0
    assert value(first, "sluice_requests_in_flight") == 0  # nothing left in flight; scrapes do not count
    assert value(first, "sluice_workers_reporting") == 2  # both workers served requests and were summed


def test_metrics_can_be_turned_off(tmp_path, mock_upstream) -> None:
    config = f"""
observability: {{metrics: false}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
"""
    gateway = start_gateway(tmp_path, config)
    try:
        assert call(gateway.url, "GET", "/metrics").status == 404
    finally:
        gateway.stop()


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def test_counters_survive_a_worker_crash(tmp_path, mock_upstream) -> None:
    config = f"""
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
"""
    gateway = start_gateway(tmp_path, config, "--workers", "2")
    labels = {"route": "/v1/chat/completions", "model": "gpt-4o-mini", "provider": "mock", "status": "200"}
    try:
        for _ in range(20):
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT).status == 200
        settled(gateway.url, lambda s: value(s, "sluice_requests_total", **labels) >= 20, "the first 20 requests")
        before = value(scrape(gateway.url), "sluice_requests_total", **labels)
        workers = children(gateway.process.pid)
        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: len(set(children(gateway.process.pid)) - {workers[0]}) == 2, "Granian respawning it")
        for _ in range(5):
            assert call(gateway.url, "POST", "/v1/chat/completions", CHAT).status == 200
        settled(gateway.url, lambda s: value(s, "sluice_requests_total", **labels) >= 25, "the next 5 requests")
        after = [value(scrape(gateway.url), "sluice_requests_total", **labels) for _ in range(4)]
    finally:
        gateway.stop()
    assert before == 20
    assert after == [25] * 4  # the dead worker's requests still count: nothing went backwards
