"""Health probes answer from the gateway itself, cheaply, without touching an upstream."""

from __future__ import annotations

import pytest

from tests.conftest import call, start_gateway

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("path", "status"), [
    ("/health/live", "live"), ("/health/startup", "started"), ("/health/ready", "ready"),
])
def test_probes(gateway, path: str, status: str) -> None:
    reply = call(gateway.url, "GET", path)
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    assert reply.json()["status"] == status


def test_ready_reports_the_loaded_config(gateway) -> None:
    checks = call(gateway.url, "GET", "/health/ready").json()["checks"]
    assert checks == {"config": {"ok": True, "models": 13, "targets": 13}}


def test_probes_never_reach_the_upstream(gateway, mock_upstream) -> None:
    marker = f"before-probes-{gateway.port}"
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert call(gateway.url, "POST", "/v1/chat/completions", chat, {"x-request-id": marker}).status == 200
    for path in ("/health/live", "/health/ready", "/health/startup") * 5:
        assert call(gateway.url, "GET", path).status == 200
    last = call(mock_upstream.url, "GET", "/_mock/requests").json()[-1]
    assert last["headers"]["x-request-id"] == marker  # nothing reached the mock after the chat


def test_probes_reject_other_methods(gateway) -> None:
    reply = call(gateway.url, "POST", "/health/ready", b"{}")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET"


TOKEN = "details-token-0123456789"


def test_details_need_the_token_and_report_the_worker(tmp_path, mock_upstream) -> None:
    gateway = start_gateway(tmp_path, f"""
observability: {{health_details_token: "{TOKEN}"}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
""")
    try:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert call(gateway.url, "POST", "/v1/chat/completions", chat).status == 200
        anonymous = call(gateway.url, "GET", "/health/details")
        wrong = call(gateway.url, "GET", "/health/details", headers={"authorization": "Bearer nope"})
        basic = call(gateway.url, "GET", "/health/details", headers={"authorization": f"Basic {TOKEN}"})
        reply = call(gateway.url, "GET", "/health/details", headers={"authorization": f"Bearer {TOKEN}"})
    finally:
        gateway.stop()
    for refused in (anonymous, wrong, basic):
        assert refused.status == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.json()["error"]["code"] == "invalid_token"
        assert TOKEN not in refused.body.decode()
    assert reply.status == 200
    details = reply.json()
    assert details["status"] == "ok" and details["pid"] > 0 and details["uptime_s"] >= 0
    assert 0 <= details["event_loop_lag_ms"] < 10_000
    assert details["process"]["rss_bytes"] > 10 * 2**20 and details["process"]["open_fds"] > 0
    assert details["worker"]["upstream_idle"] == 1 and details["worker"]["upstream_active"] == 0
    assert details["checks"]["config"] == {"ok": True, "models": 1, "targets": 1}


def test_details_are_hidden_without_a_token(gateway) -> None:
    reply = call(gateway.url, "GET", "/health/details", headers={"authorization": "Bearer anything-at-all-123"})
    assert reply.status == 404
