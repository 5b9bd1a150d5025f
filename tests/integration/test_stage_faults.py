"""A refusal or a failure at each stage of the default model pipeline leaks nothing: the in-flight gauge comes
back to 0, every request is counted and logged once, no token reservation is kept by a request that generated
nothing, and no upstream connection stays taken — on plain and streamed requests, over RSGI and ASGI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, call, start_gateway, start_mock, wait_until
from tests.integration.test_metrics import scrape, value

KEY = "sk-test-main-0123456789abcdef"
LIMITED = "sk-test-limited-0123456789ab"  # gpt-4o-mini only
# Tokens refill at 1e6 per 1e12 s: nothing measurable during the test, so the bucket's level is exact.
CONFIG = """
observability: {{metrics: true, access_log: true, access_log_path: "{log}"}}
auth:
  enabled: true
  static_keys:
    - {{name: main, key: {key}, roles: [user]}}
    - {{name: limited, key: {limited}, roles: [user], models: [gpt-4o-mini]}}
ratelimit:
  policies:
    - {{name: tokens, scope: key, unit: tokens, rate: 1000000, period_s: 1000000000000, burst: 1000000}}
    - {{name: one-gpt-4o, scope: model, rate: 1, period_s: 1000000000000, burst: 1, match: {{models: [gpt-4o]}}}}
resilience: {{retries: 0}}
providers:
  mock: {{kind: openai, base_url: "{upstream}"}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  gpt-4o: {{targets: [{{provider: mock, model: gpt-4o}}]}}
  broken: {{targets: [{{provider: mock, model: mock-status-503}}]}}
  unreachable: {{targets: [{{provider: dead, model: gpt-4o-mini}}]}}
"""
DEAD = """
  dead: {{kind: openai, base_url: "http://127.0.0.1:{port}"}}
"""


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    mock = start_mock(tmp_path_factory.mktemp("stage-faults"))
    yield mock
    mock.stop()


@pytest.fixture(params=["rsgi", "asgi"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path, upstream: Proc) -> Iterator[tuple[Proc, Path]]:
    from tests.conftest import free_port

    log = tmp_path / "access.log"
    config = CONFIG.format(log=log, key=KEY, limited=LIMITED, upstream=upstream.url)
    config = config.replace("  mock: {kind", DEAD.format(port=free_port()).strip("\n") + "\n  mock: {kind", 1)
    proc = start_gateway(tmp_path, config, "--interface", request.param)
    yield proc, log
    proc.stop()


def chat(model: str, *, stream: bool = False, max_tokens: int = 50) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                       "max_tokens": max_tokens}).encode()


def remaining_tokens(url: str) -> tuple[int, int]:
    """A good request's x-ratelimit-remaining-tokens (its own reservation taken) and the tokens it used."""
    reply = call(url, "POST", "/v1/chat/completions", chat("gpt-4o-mini"),
                 {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert reply.status == 200, reply.body
    return int(reply.headers["x-ratelimit-remaining-tokens"]), reply.json()["usage"]["total_tokens"]


@pytest.mark.timeout(120)
def test_a_failure_at_each_stage_leaks_nothing(gateway: tuple[Proc, Path]) -> None:
    proc, log = gateway
    url = proc.url
    auth = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    before, used = remaining_tokens(url)
    faults = {  # stage -> (request, status)
        "auth": (("/v1/chat/completions", chat("gpt-4o-mini"), {"authorization": "Bearer sk-nobody-0123456789ab"}),
                 401),
        "decode": (("/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [', auth), 400),
        "model_access": (("/v1/chat/completions", chat("gpt-4o"), {**auth, "authorization": f"Bearer {LIMITED}"}),
                         403),
        "routing": (("/v1/chat/completions", chat("no-such-model"), auth), 404),
        # the same refusals of streamed requests: nothing was streamed yet, the answer is a plain error
        "auth, streamed": (("/v1/chat/completions", chat("gpt-4o-mini", stream=True),
                            {"authorization": "Bearer sk-nobody-0123456789ab"}), 401),
        "model_access, streamed": (("/v1/chat/completions", chat("gpt-4o", stream=True),
                                    {**auth, "authorization": f"Bearer {LIMITED}"}), 403),
        "routing, streamed": (("/v1/chat/completions", chat("no-such-model", stream=True), auth), 404),
        "upstream status": (("/v1/chat/completions", chat("broken"), auth), 503),
        "upstream status, streamed": (("/v1/chat/completions", chat("broken", stream=True), auth), 503),
        "upstream unreachable": (("/v1/chat/completions", chat("unreachable"), auth), 502),
        "upstream unreachable, streamed": (("/v1/chat/completions", chat("unreachable", stream=True), auth), 502),
        "messages, upstream status": (("/v1/messages", json.dumps({
            "model": "broken", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}).encode(), auth),
            503),
        "count_tokens, no anthropic target": (("/v1/messages/count_tokens", json.dumps({
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode(), auth), 400),
    }
    for stage, ((path, body, headers), status) in faults.items():
        reply = call(url, "POST", path, body, headers)
        assert reply.status == status, (stage, reply.status, reply.body)
    # The rate limits' own refusal: the first gpt-4o request takes the model's one request, the second is refused.
    first = call(url, "POST", "/v1/chat/completions", chat("gpt-4o"), auth)
    refused = call(url, "POST", "/v1/chat/completions", chat("gpt-4o"), auth)
    refused_stream = call(url, "POST", "/v1/chat/completions", chat("gpt-4o", stream=True), auth)
    assert (first.status, refused.status, refused_stream.status) == (200, 429, 429), refused.body
    used_by_gpt_4o = first.json()["usage"]["total_tokens"]

    after, _ = remaining_tokens(url)
    # Only what the good requests generated is gone from the bucket: every refused or failed request gave its
    # reservation back (or never took one).
    assert before - after == used + used_by_gpt_4o

    samples = scrape(url)
    assert value(samples, "sluice_requests_in_flight") == 0
    assert value(samples, "sluice_upstream_connections", state="active") == 0
    requests = len(faults) + 5  # the faults, the three gpt-4o requests, the two token probes
    total = sum(v for (name, _), v in samples.items() if name == "sluice_requests_total")
    assert total == requests  # each counted once (the scrape is counted after its answer)
    lines = _lines(log, requests)
    expected = [status for _, status in faults.values()] + [200, 429, 429, 200, 200]
    assert sorted(line["status"] for line in lines) == sorted(expected)


def _lines(log: Path, count: int) -> list[dict[str, object]]:
    """The access log's lines once ``count`` are written (the log is flushed every 50 ms)."""

    def written() -> list[dict]:
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        lines = [line for line in lines if line.get("path") != "/metrics"]
        return lines if len(lines) >= count else []

    lines = wait_until(written, f"{count} access-log lines")
    assert len(lines) == count, lines
    return lines
