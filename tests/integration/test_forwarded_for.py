"""X-Forwarded-For that came on several lines: the address a trusted proxy appended counts, not the caller's own.

A proxy may append a line of its own (HAProxy's ``option forwardfor``) rather than extend the one the
caller sent; the caller's line comes first and says whatever the caller likes.  Raw HTTP, since
http.client sends one line per header name; over RSGI (``sluice serve``) and ASGI (``--interface asgi``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import Proc, start_gateway

pytestmark = pytest.mark.integration

KEY = "sk-forwarded-0123456789abcdef"
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
DENIED = "203.0.113.9"  # in auth.ip_deny
ALLOWED = "198.51.100.7"


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mock_upstream: Proc) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp(f"forwarded-{request.param}")
    proc = start_gateway(tmp, f"""
store: {{sqlite_path: {json.dumps(str(tmp / "store.db"))}}}
auth:
  enabled: true
  static_keys: [{{name: caller, key: {KEY}, roles: [user]}}]
  ip_deny: ["203.0.113.0/24"]
ratelimit:
  trusted_proxies: ["127.0.0.1/32"]
  policies:
    - {{name: per-ip, scope: ip, rate: 100, period_s: 600}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
""", "--interface", request.param)
    yield proc
    proc.stop()


def post(gateway: Proc, *forwarded: str) -> tuple[int, dict[str, str], bytes]:
    """A chat request from 127.0.0.1 (a trusted proxy) with one X-Forwarded-For line per ``forwarded``."""
    lines = [b"POST /v1/chat/completions HTTP/1.1", b"host: gateway", f"authorization: Bearer {KEY}".encode(),
             b"content-type: application/json", f"content-length: {len(CHAT)}".encode(), b"connection: close"]
    lines += [f"x-forwarded-for: {value}".encode() for value in forwarded]
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + CHAT)
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_the_line_the_proxy_appended_names_the_caller(gateway: Proc) -> None:
    # The caller forges an allowed address; the proxy's own line says where it came from: denied.
    status, _, body = post(gateway, ALLOWED, DENIED)
    assert status == 403, body[:500]
    error = json.loads(body)["error"]
    assert error["code"] == "ip_not_allowed" and DENIED in error["message"]
    # The other way round: a forged denied address does not get an honest caller refused.
    assert post(gateway, DENIED, ALLOWED)[0] == 200
    # Lines are joined in order, then walked from the right as one list would be.
    assert post(gateway, f"{DENIED}, 192.0.2.1", ALLOWED)[0] == 200
    assert post(gateway, ALLOWED, f"192.0.2.1, {DENIED}")[0] == 403


def test_ip_scoped_limits_count_the_appended_address(gateway: Proc) -> None:
    def remaining(*forwarded: str) -> int:
        status, headers, body = post(gateway, *forwarded)
        assert status == 200, body[:500]
        return int(headers["x-ratelimit-remaining-requests"])

    first = remaining("192.0.2.50")
    # Forged first lines that change with each request do not make new buckets: 192.0.2.50's is counted.
    assert [remaining(f"192.0.2.{n}", "192.0.2.50") for n in (60, 61)] == [first - 1, first - 2]
    assert remaining("192.0.2.51") == 99  # a bucket of its own
