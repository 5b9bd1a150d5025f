"""Health probes answer from the gateway itself, cheaply, without touching an upstream."""

from __future__ import annotations

import pytest

from tests.conftest import call

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
    assert checks == {"config": "ok (13 models)"}


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
