"""Streams are relayed as they arrive; a client that leaves frees the upstream at once."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import SSE_HEAD, RawServer, read_request, start_gateway, wait_until

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def _request(model: str) -> bytes:
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body))


def _read_until(sock: socket.socket, marker: bytes, limit: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data and time.monotonic() < deadline:
        data += sock.recv(65536)
    return data


def test_events_arrive_before_the_stream_ends(gateway, raw_upstream) -> None:
    """The raw upstream sends one event per 50 ms for 10 s; the first ones arrive long before."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(_request("endless"))
        data = _read_until(sock, b'data: {"n": 2}')  # (waits up to 5 s: the whole stream takes 10)
        assert b'data: {"n": 2}' in data
        assert b'data: {"n": 199}' not in data  # events as they come, not the stream kept until its end


def test_client_disconnect_closes_the_upstream_connection(gateway, raw_upstream) -> None:
    before = len(raw_upstream.events)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(_request("endless"))
        assert b'data: {"n": 1}' in _read_until(sock, b'data: {"n": 1}')
    # Closed well before the 10 s the whole stream takes: only a cancelled stream ends within the poll's 8 s.
    wait_until(lambda: [t for kind, t in raw_upstream.events[before:] if kind == "closed"],
               "the upstream stream cancelled", timeout=8.0)


@pytest.fixture
def firehose(tmp_path) -> Iterator[tuple[RawServer, dict[str, int]]]:
    """An upstream that streams as fast as it can, counting the bytes it managed to send."""
    progress = {"sent": 0}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        event = b"data: " + b"x" * 16000 + b"\n\n"
        frame = b"%x\r\n%s\r\n" % (len(event), event)
        for _ in range(3000):  # 48 MB in all
            writer.write(frame)
            await writer.drain()
            progress["sent"] += len(event)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = RawServer(handler)
    yield server, progress
    server.stop()


def paused(progress: dict[str, int]) -> int:
    """What the upstream has sent, when nothing more went out across a short pause (else 0)."""
    before = progress["sent"]
    time.sleep(0.3)  # pacing: a pause long enough for an unpaused upstream to send more
    return before if progress["sent"] == before else 0


@pytest.mark.parametrize("interface", [
    # Over RSGI Granian 2.8's send_bytes never waits for the client (an unbounded channel, granian
    # src/rsgi/io.rs): the upstream read pauses by sluice's own bound (server/backlog.py, issue 15).
    "rsgi",
    "asgi",
])
def test_slow_client_slows_the_upstream_read(tmp_path, firehose, interface: str) -> None:
    server, progress = firehose
    config = f"""
providers:
  fire: {{kind: openai, base_url: "{server.url}"}}
models:
  firehose: {{targets: [{{provider: fire, model: firehose}}]}}
"""
    gateway = start_gateway(tmp_path, config, "--interface", interface)
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(_request("firehose"))
            assert b"data: xxx" in _read_until(sock, b"data: xxx")
            # The client stops reading: the upstream is paused once the gateway's bound is reached.
            stalled_at = wait_until(lambda: paused(progress), "the upstream paused", interval=0)
            # Bounded buffering: the upstream got at most a few MB ahead of a client that reads nothing, and stays
            # there however long the client waits.
            assert stalled_at < 16_000_000, stalled_at
            time.sleep(0.5)  # pacing: the client goes on reading nothing for a while
            assert progress["sent"] < 16_000_000, progress["sent"]
            received = 0
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                chunk = sock.recv(1 << 20)
                if not chunk or chunk.endswith(b"0\r\n\r\n"):
                    break
                received += len(chunk)
            assert progress["sent"] == 3000 * 16008  # once the client reads again, all of it flows
    finally:
        gateway.stop()
