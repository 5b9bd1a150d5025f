"""The security suite's gateway: auth on (an admin key, a key limited to gpt-4o-mini), OpenAI and Anthropic
targets on a mock upstream of its own, the passthrough and the admin API; once over RSGI, once over ASGI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, Reply, call, start_gateway, start_mock

ADMIN_KEY = "sk-security-admin-0123456789abcdef"
MINI_KEY = "sk-security-mini-0123456789abcdefgh"  # may use gpt-4o-mini only
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MINI = {"authorization": f"Bearer {MINI_KEY}"}
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": HI}
MESSAGE = {"model": "claude-mini", "max_tokens": 16, "messages": HI}

# Every route that reads a JSON body, and a good body for it.
JSON_ROUTES: dict[str, dict[str, object]] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/messages": MESSAGE,
    "/v1/messages/count_tokens": {"model": "claude-mini", "messages": HI},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},  # the passthrough
}


def config(mock_url: str, db: Path) -> str:
    return f"""
server: {{grace_period_s: 2, max_body_bytes: 1048576}}
store: {{sqlite_path: "{db}"}}
auth:
  enabled: true
  static_keys:
    - {{name: admin, key: "{ADMIN_KEY}", roles: [admin]}}
    - {{name: mini, key: "{MINI_KEY}", roles: [user], models: [gpt-4o-mini]}}
passthrough: {{provider: mock}}
providers:
  mock: {{kind: openai, base_url: "{mock_url}", api_keys: [sk-upstream]}}
  ant: {{kind: anthropic, base_url: "{mock_url}", api_keys: [sk-ant-upstream]}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  gpt-4o: {{targets: [{{provider: mock, model: gpt-4o}}]}}
  text-embedding-3-small: {{targets: [{{provider: mock, model: text-embedding-3-small}}]}}
  claude-mini: {{targets: [{{provider: ant, model: claude-3-5-haiku-latest}}]}}
"""


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("security-mock"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def gw(request: pytest.FixtureRequest, mock: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("security-gw")
    proc = start_gateway(tmp, config(mock.url, tmp / "store.db"), "--interface", request.param)
    yield proc
    proc.stop()


def post(gw: Proc, path: str, body: bytes | dict, headers: dict[str, str] | None = None) -> Reply:
    return call(gw.url, "POST", path, body, {"content-type": "application/json", **(headers or ADMIN)})


def upstream_requests(mock: Proc) -> int:
    """How many requests the mock upstream has served (its /_mock/stats)."""
    return int(call(mock.url, "GET", "/_mock/stats").json()["requests"])


def refused(reply: Reply, path: str, status: int = 400, *, code: str | None = None,
            param: str | None = None) -> str:
    """The refusal in the route's wire format (Anthropic's on /v1/messages*, else OpenAI's); its message."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
        assert body["error"]["message"]
        if status == 400:
            assert body["error"]["type"] == "invalid_request_error", body
        return str(body["error"]["message"])
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"]
    if status == 400:
        assert error["type"] == "invalid_request_error", error
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


def served_or_refused(reply: Reply, path: str) -> None:
    """A clear answer: served (2xx) or refused with a 4xx in the route's format; never a 5xx."""
    if 200 <= reply.status < 300:
        return
    assert 400 <= reply.status < 500, (reply.status, reply.body[:500])
    refused(reply, path, reply.status)
