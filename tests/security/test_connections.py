"""Connections are timed out and capped; HTTP/1.1 without Host and CONNECT are refused (issue 15, findings 3, 9).

The probe that found it: connections that sent nothing were held for 100 s and more, one whose declared
body never came for 240 s, so that file descriptors could be run out; HTTP/1.1 without Host was served; after
answering CONNECT the connection stayed open.  Here the gateway has small timeouts (``server:`` settings,
docs/server.md) and each probe waits for the gateway to close the connection, bounded far beyond them: a
connection still open then fails the test.  Raw sockets, on RSGI and ASGI.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, start_gateway

pytestmark = pytest.mark.integration

BOUND_S = 15.0  # far beyond the gateway's 1 s timeouts: a connection still open after it was never closed
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


def config(mock_url: str, server: str) -> str:
    return f"""
server: {{{server}}}
passthrough: {{provider: mock}}
providers: {{mock: {{kind: openai, base_url: "{mock_url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
"""


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            mock_upstream: Proc) -> Iterator[Proc]:
    # A body may take 1 s, plus 1 s per MB of it.
    proc = start_gateway(tmp_path_factory.mktemp("connections"), config(
        mock_upstream.url, "header_read_timeout_s: 1, body_read_timeout_s: 1, body_min_rate_bytes_s: 1000000"),
        "--interface", request.param)
    yield proc
    proc.stop()
    log = proc.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def until_closed(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection (the test fails if it does not in BOUND_S)."""
    sock.settimeout(BOUND_S)
    received = b""
    try:
        while piece := sock.recv(65536):
            received += piece
    except TimeoutError:
        pytest.fail(f"the gateway kept the connection open for {BOUND_S} s; it sent {received[:300]!r}")
    except ConnectionResetError:
        pass
    return received


def connect(gateway: Proc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND_S)


def parse(answer: bytes) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_connection_that_sends_nothing_is_closed(gateway: Proc) -> None:
    with connect(gateway) as sock:
        assert until_closed(sock) == b""


def test_a_request_head_that_never_ends_is_closed(gateway: Proc) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n")
        until_closed(sock)


def test_an_idle_kept_alive_connection_is_closed(gateway: Proc) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: gateway\r\n\r\n")  # keep-alive: the gateway keeps it
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/files"])
def test_a_body_that_stops_coming_is_answered_408(gateway: Proc, path: str) -> None:
    """Content-Length 100,000 (1.1 s allowed at this gateway's rate), 20 bytes sent, then nothing."""
    kind = "application/json" if path.endswith("completions") else "multipart/form-data; boundary=b"
    with connect(gateway) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: gateway\r\ncontent-type: {kind}\r\n"
                     "content-length: 100000\r\n\r\n".encode() + b'{"model": "gpt-4o-mi')
        status, headers, error = parse(until_closed(sock))
    assert status == 408
    assert error["error"]["code"] == "request_timeout"
    assert headers["connection"] == "close"


def test_a_chunked_body_that_stops_coming_is_answered_408(gateway: Proc) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n5\r\n{\"mod\r\n")
        status, _, error = parse(until_closed(sock))
    assert status == 408 and error["error"]["code"] == "request_timeout"


def test_a_body_that_keeps_its_pace_is_served(gateway: Proc) -> None:
    """Sent in pieces over longer than body_read_timeout_s, but each well within its allowance."""
    with connect(gateway) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % len(BODY))
        for i in range(0, len(BODY), 20):
            sock.sendall(BODY[i:i + 20])
            time.sleep(0.05)  # pacing: a slow client, each piece well within its allowance
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


@pytest.mark.parametrize(("path", "anthropic"), [("/v1/chat/completions", False), ("/v1/messages", True)])
def test_http11_without_host_is_400(gateway: Proc, path: str, anthropic: bool) -> None:
    with connect(gateway) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(BODY)}\r\n\r\n".encode() + BODY)
        status, headers, error = parse(until_closed(sock))  # and the connection is closed
    assert status == 400
    assert headers["content-type"] == "application/json"
    if anthropic:
        assert error == {"type": "error", "error": {"type": "invalid_request_error",
                                                    "message": "An HTTP/1.1 request must have a Host header."}}
    else:
        assert error["error"]["code"] == "missing_host"


def test_http10_without_host_is_served(gateway: Proc) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"GET /health/live HTTP/1.0\r\n\r\n")
        assert until_closed(sock).startswith(b"HTTP/1.0 200 ")


def test_connect_is_refused_and_the_connection_closed(gateway: Proc) -> None:
    with connect(gateway) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        status, headers, error = parse(until_closed(sock))
    assert status == 405 and headers["connection"] == "close"
    assert error["error"]["code"] == "method_not_allowed"


def test_connections_over_max_connections_wait(tmp_path: Path, mock_upstream: Proc) -> None:
    """max_connections 2 on one worker: with two connections held, a third is not served (it waits in the
    listen backlog) until one of them closes; then it is."""
    gateway = start_gateway(tmp_path, config(mock_upstream.url, "max_connections: 2, header_read_timeout_s: 60"))
    held: list[socket.socket] = []
    try:
        held += [connect(gateway) for _ in range(2)]
        for sock in held:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: gateway\r\n\r\n")  # served: the connections are Granian's
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with connect(gateway) as third:
            third.sendall(b"GET /health/live HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n")
            third.settimeout(1.0)
            with pytest.raises(TimeoutError):
                third.recv(65536)  # not served while the two are held
            held.pop().close()
            assert until_closed(third).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
        gateway.stop()


@pytest.mark.parametrize(("setting", "problem"), [
    ("http: h3", "server.http"),
    ("header_read_timeout_s: 0", "server.header_read_timeout_s"),
    ("body_min_rate_bytes_s: -1", "server.body_min_rate_bytes_s"),
    ("max_connections: 0", "server.max_connections"),
])
def test_bad_connection_settings_are_config_errors(tmp_path: Path, setting: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(config("http://127.0.0.1:9", setting))
    result = subprocess.run([sys.executable, "-m", "sluice", "check-config", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and problem in result.stderr, result.stderr
