"""The head of a model call's answer through a real gateway (in-process) and a real upstream socket: a plain
answer and a stream say the same of who served them, and with the rate limits on, the provider's x-ratelimit-*
come back renamed on both (before, a stream relayed them under the gateway's own names, next to its own)."""

from __future__ import annotations

import asyncio
import socketserver
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sluice.config import parse_config
from sluice.server.app import Gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ANSWER = (b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
          b'"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}')
EVENTS = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65537)
            if not line:
                return
            length = 0
            while (header := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = self.rfile.read(length)
            stream = b'"stream":true' in body
            payload = EVENTS if stream else ANSWER
            kind = b"text/event-stream" if stream else b"application/json"
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nX-Request-Id: up-7\r\n"
                             b"x-ratelimit-remaining-requests: 41\r\nopenai-processing-ms: 3\r\n"
                             b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def upstream() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Exchange:
    """An in-memory exchange: the caller's request, and what the gateway answered (whole or streamed)."""

    def __init__(self, body: bytes) -> None:
        self.method, self.path, self.query, self.client = "POST", "/v1/chat/completions", "", "127.0.0.1:1"
        self.body = body
        self.started = False
        self.status = 0
        self.head: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self._headers = {"content-type": "application/json", "content-length": str(len(body))}

    def header(self, name: str) -> str | None:
        return self._headers.get(name)

    def header_all(self, name: str) -> list[str]:
        value = self._headers.get(name)
        return [] if value is None else [value]

    async def read_body(self, limit: int) -> bytes:
        return self.body

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.started, self.status, self.head = True, status, headers
        self.chunks.append(body)

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started, self.status, self.head = True, status, headers

    async def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    async def end_stream(self) -> None:
        pass

    def on_disconnect(self, callback: Callable[[], object]) -> Callable[[], object]:
        return lambda: None

    def __getattr__(self, name: str) -> Any:  # the rest of the protocol is not reached here
        raise AttributeError(name)


def answer(upstream: str, limits: bool, stream: bool) -> Exchange:
    config = f"""
providers:
  up: {{kind: openai, base_url: "{upstream}"}}
models:
  m: {{targets: [{{provider: up, model: m-up}}]}}
observability: {{metrics: false, access_log: false}}
"""
    if limits:
        config += "ratelimit: {policies: [{name: per-ip, scope: ip, rate: 1000, period_s: 60, mode: local}]}\n"
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]' + (b',"stream":true}' if stream else b"}")

    async def run() -> Exchange:
        gateway = Gateway(parse_config(config, {}))
        try:
            ex = Exchange(body)
            await asyncio.wait_for(gateway.handle(ex), 20)  # type: ignore[arg-type]
            return ex
        finally:
            await gateway.close()

    return asyncio.run(run())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("limits", [False, True])
def test_who_served_and_the_providers_limits(upstream: str, limits: bool, stream: bool) -> None:
    ex = answer(upstream, limits, stream)
    assert ex.status == 200, ex.chunks
    head = dict(ex.head)
    assert len(head) == len(ex.head), ex.head  # no name twice
    assert ex.head[0][0] == "x-request-id" and ex.head[1][0] == "x-sluice-overhead-ms"
    assert head["x-upstream-request-id"] == "up-7" and head["openai-processing-ms"] == "3"
    assert (head["x-sluice-model"], head["x-sluice-provider"], head["x-sluice-attempts"]) == ("m", "up", "1")
    assert head["content-type"] == ("text/event-stream" if stream else "application/json")
    if limits:  # ours speak for the gateway; the provider's are renamed
        assert head["x-upstream-ratelimit-remaining-requests"] == "41"
        assert head["x-ratelimit-remaining-requests"] != "41"
    else:
        assert head["x-ratelimit-remaining-requests"] == "41"
