"""Callers that stop reading a large stream (issue 15): on the default interface (RSGI) the relay stops at a
bound of its own and cuts the stalled stream, logged and counted as ``client_stalled`` (server/backlog.py).

Before it, Granian's RSGI queued each stream whole in the worker (its ``send_bytes`` never waits), the
relay read the upstream to its end and the stream was logged 200 with no error, whether the caller read it
or not.  The issue's figure (1,000 readers) is bench/slow_readers.py's; this is 40 readers.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from sluice.server import backlog
from tests.conftest import call, start_gateway, start_mock, wait_until

pytestmark = pytest.mark.integration

READERS = 40
STREAM_BYTES = 4_000_000
BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY.encode()))


def _stalled_reader(port: int) -> socket.socket:
    """Reads the head and the first event, then no more (the socket stays open)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    sock.sendall(REQUEST)
    seen = b""
    while b"data:" not in seen:
        piece = sock.recv(4096)
        assert piece, seen
        seen += piece
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_stalled_readers_are_cut_and_counted(tmp_path: Path) -> None:
    mock = start_mock(tmp_path, "--interface", "asgi", "--stream-bytes", str(STREAM_BYTES))
    log = tmp_path / "access.log"
    config = f"""
providers:
  mock: {{kind: openai, base_url: "{mock.url}"}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
observability: {{access_log_path: "{log}"}}
"""
    gateway = start_gateway(tmp_path, config, "--workers", "1")  # the default interface
    socks: list[socket.socket] = []
    try:
        worker = int(subprocess.run(["pgrep", "-P", str(gateway.process.pid)], capture_output=True, text=True,
                                    check=True).stdout.split()[-1])
        _stalled_reader(gateway.port).close()  # warm-up: the pool, the imports
        before = _rss_kib(worker)
        socks = [_stalled_reader(gateway.port) for _ in range(READERS)]
        # Each stalled stream is cut once it has waited STALL_S with nothing acknowledged: a line each.
        wait_until(lambda: len(_lines(log)) >= READERS + 1, "a line for each stalled stream",
                   timeout=backlog.STALL_S + 40, interval=0.2)
        grown = _rss_kib(worker) - before
        lines = _lines(log)[1:]  # (the warm-up's line first: client_disconnected)
        assert len(lines) == READERS
        assert {(line["status"], line["error"]) for line in lines} == {(200, "client_stalled")}
        # What a stalled caller held in the worker: bounded per stream (QUIET + CAP + one upstream chunk, and
        # the upstream connection's read buffer while it waited), not the 4 MB stream.
        assert grown < READERS * 1024, f"{grown} KiB for {READERS} readers"
        # The caller's connection was shut down: it gets a cut body, far from the whole stream, then the end.
        received = 0
        socks[0].settimeout(10)
        while piece := socks[0].recv(1 << 20):
            received += len(piece)
        assert received < STREAM_BYTES // 2

        def stalled_count() -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in call(gateway.url, path="/metrics").body.decode()
                       .splitlines() if line.startswith("sluice_errors_total{") and 'class="client_stalled"' in line
                       and 'route="/v1/chat/completions"' in line)

        # (the worker's metrics snapshot is written every second)
        wait_until(lambda: stalled_count() >= READERS, "the stalled streams counted", interval=0.2)
        assert stalled_count() == READERS
    finally:
        for sock in socks:
            sock.close()
        gateway.stop()
        mock.stop()
