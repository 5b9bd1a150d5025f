"""An upstream that records every request head it gets (for what reached the provider, and where), and a
gateway in front of it over RSGI and ASGI; raw-socket helpers for probes http.client will not send."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, RawServer, read_request, start_gateway
from tests.security.test_connections import until_closed

BOUND_S = 10.0  # connecting and sending; until_closed bounds the answer
KEY = "sk-capture-admin-0123456789abcdef"
AUTH = b"authorization: Bearer " + KEY.encode() + b"\r\n"
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
COMPLETION = json.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


class Capture(RawServer):
    """Answers every request 200 with a chat completion (plus ``extra_head`` lines), keeping its head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.extra_head = b""
        super().__init__(self._serve)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            self.heads.append(request.split(b"\r\n\r\n", 1)[0])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s"
                         % (self.extra_head, len(COMPLETION), COMPLETION))
            await writer.drain()

    def targets(self) -> list[bytes]:
        return [head.split(b" ", 2)[1] for head in self.heads]

    def hosts(self) -> list[bytes]:
        return [line.split(b":", 1)[1].strip() for head in self.heads for line in head.split(b"\r\n")[1:]
                if line.lower().startswith(b"host:")]


def config(upstream_url: str) -> str:
    return f"""
server: {{grace_period_s: 1}}
auth:
  enabled: true
  static_keys: [{{name: admin, key: "{KEY}", roles: [admin]}}]
passthrough: {{provider: cap}}
providers: {{cap: {{kind: openai, base_url: "{upstream_url}", api_keys: [sk-upstream]}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: cap, model: gpt-4o-mini}}]}}}}
"""


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    server = Capture()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def gateway(request: pytest.FixtureRequest, capture: Capture,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp: Path = tmp_path_factory.mktemp("capture-gw")
    proc = start_gateway(tmp, config(capture.url), "--interface", request.param)
    yield proc
    proc.stop()
    log = proc.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def exchange(gw: Proc, data: bytes) -> bytes:
    """Sends ``data`` on one connection and returns all the gateway sends until it closes (bounded)."""
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as sock:
        sock.sendall(data)
        return until_closed(sock)  # a reset fails the test too: never a dropped connection


def request(method: str, target: bytes, headers: bytes = b"", body: bytes = b"", *, host: bytes = b"gw") -> bytes:
    """One HTTP/1.1 request with ``connection: close``; ``headers`` are whole lines ending in CRLF."""
    length = b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body) if body else b""
    return (b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s%sconnection: close\r\n\r\n%s"
            % (method.encode(), target, host, AUTH, headers, length, body))


def statuses(received: bytes) -> list[int]:
    """Every answer's status, in order (a pipelined answer starts right after the previous body)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def answer_head(received: bytes) -> list[bytes]:
    return received.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def answer_body(received: bytes) -> bytes:
    return received.split(b"\r\n\r\n", 1)[1]
