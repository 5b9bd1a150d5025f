"""examples/resilience.yaml as a user runs it: with upstream A answering 503 to everything, 200 sequential
requests of the openai SDK all succeed; with A and B both failing, they all succeed through the fallback
claude-haiku (an anthropic-kind target), and x-sluice-model says so."""

from __future__ import annotations

from collections import Counter

import openai
import pytest

from tests.conftest import ROOT, call, start_gateway, start_mock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_resilience_example_end_to_end(tmp_path) -> None:
    a = start_mock(tmp_path, "--error-rate", "1.0", "--error-status", "503")
    b = start_mock(tmp_path)
    c = start_mock(tmp_path)
    env = {"SLUICE_UPSTREAM_A": a.url, "SLUICE_UPSTREAM_B": b.url, "SLUICE_UPSTREAM_C": c.url}
    gateway = start_gateway(tmp_path, (ROOT / "examples" / "resilience.yaml").read_text(), env=env)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo", max_retries=0)
    try:
        first = [client.chat.completions.with_raw_response.create(**CHAT) for _ in range(200)]
        assert call(b.url, "PUT", "/_mock/faults", {"error_rate": 1.0, "error_status": 503},
                    {"content-type": "application/json"}).status == 200
        second = [client.chat.completions.with_raw_response.create(**CHAT) for _ in range(200)]
        upstream_a = call(a.url, "GET", "/_mock/stats").json()["requests"]
    finally:
        gateway.stop()
        for mock in (a, b, c):
            mock.stop()
    assert all(r.status_code == 200 and r.parse().choices[0].message.content for r in first)
    assert Counter(r.headers["x-sluice-model"] for r in first) == {"gpt-4o-mini": 200}
    assert upstream_a < 20  # A's breaker opened after 5 failures in a row; probes every 5 s since
    assert all(r.status_code == 200 and r.parse().choices[0].message.content for r in second)
    assert Counter(r.headers["x-sluice-model"] for r in second) == {"claude-haiku": 200}
    assert {r.headers["x-sluice-provider"] for r in second} == {"anthropic-c"}
