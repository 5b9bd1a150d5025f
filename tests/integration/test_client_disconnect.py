"""A caller that leaves, mid-stream or before the first byte, cancels its upstream call and is accounted once.

The upstream here is a raw server that records what became of each request it was sent: a stream whose
connection the gateway closed ("stream-closed") or that it read to its end ("stream-finished"); a request
it holds without answering until the gateway closes it ("held-closed") or it answers after HOLD_S
("held-answered").  Every wait is a poll with a deadline: the order of events is what is asserted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SSE_HEAD, Proc, RawServer, call, read_request, start_gateway, wait_until

pytestmark = pytest.mark.integration

MID_STREAM = 50  # cancels per interface
EARLY = 10
HOLD_S = 60.0  # far beyond every deadline below: a held request is answered only if nothing cancelled it
EVENT_GAP_S = 0.5  # the slow stream's pause between events
DEADLINE_S = 15.0


def _chunk(text: str) -> bytes:
    body = {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1, "model": "raw",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Upstream:
    """The raw upstream and what it saw, by the x-request-id the gateway forwarded."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}
        self.server = RawServer(self._handle)
        self.url = self.server.url

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        request_id = next((line.split(b":", 1)[1].strip().decode() for line in request.split(b"\r\n")
                           if line.lower().startswith(b"x-request-id:")), "?")
        self.received[request_id] = time.monotonic()
        if b'"raw-held"' in request:
            if await self._closed_within(reader, HOLD_S):
                self.outcomes[request_id] = "held-closed"
                return
            body = b'{"id":"x","object":"chat.completion","choices":[]}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
            self.outcomes[request_id] = "held-answered"
            return
        writer.write(SSE_HEAD)
        for i in range(120):
            event = _chunk(f"w{i} ")
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            if await self._closed_within(reader, EVENT_GAP_S):
                self.outcomes[request_id] = "stream-closed"
                return
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self.outcomes[request_id] = "stream-finished"

    @staticmethod
    async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
        """Whether the gateway closed the connection within ``seconds`` (it sends nothing more otherwise)."""
        try:
            return await asyncio.wait_for(reader.read(1), seconds) == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.server.stop()


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            upstream: Upstream) -> Iterator[tuple[Proc, Path]]:
    tmp = tmp_path_factory.mktemp(f"disconnect-{request.param}")
    log = tmp / "access.jsonl"
    config = f"""
server: {{workers: 1}}
upstream: {{read_timeout_s: {HOLD_S * 2}}}
observability: {{access_log: true, access_log_path: "{log}"}}
providers: {{raw: {{kind: openai, base_url: "{upstream.url}"}}}}
models:
  slow-stream: {{targets: [{{provider: raw, model: raw-slow-stream}}]}}
  held: {{targets: [{{provider: raw, model: raw-held}}]}}
"""
    proc = start_gateway(tmp, config, "--interface", request.param, "--workers", "1")
    yield proc, log
    proc.stop()


def _request(path: str, model: str, request_id: str) -> bytes:
    body: dict[str, Any] = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if path == "/v1/messages":
        body["max_tokens"] = 100
    data = json.dumps(body).encode()
    return (b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\nx-request-id: %s\r\n"
            b"content-length: %d\r\n\r\n%s" % (path.encode(), request_id.encode(), len(data), data))


def _poll(condition: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    return wait_until(condition, what, timeout=deadline_s)


def _log_lines(log: Path, prefix: str) -> list[dict[str, Any]]:
    lines = log.read_text().split("\n")[:-1] if log.exists() else []  # whole lines only (the writer may be mid-batch)
    return [entry for entry in map(json.loads, lines) if entry["request_id"].startswith(prefix)]


def _metrics(gateway: Proc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = call(gateway.url, "GET", "/metrics")
    assert reply.status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(reply.body.decode()) for sample in family.samples}


def _sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def _accounted(gateway: Proc, route: str, before: dict[tuple[str, tuple[tuple[str, str], ...]], float],
               count: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The metrics once ``count`` more requests on ``route`` are counted and none is in flight, else None."""
    now = _metrics(gateway)
    done = (_sum(now, "sluice_requests_total", route=route) - _sum(before, "sluice_requests_total", route=route)
            >= count)
    return now if done and _sum(now, "sluice_requests_in_flight") == 0 else None


@pytest.mark.parametrize(("path", "count"), [("/v1/chat/completions", MID_STREAM), ("/v1/messages", 10)],
                         ids=["relayed", "translated"])
def test_callers_leaving_mid_stream_cancel_the_upstream_and_are_accounted_once(
        gateway: tuple[Proc, Path], upstream: Upstream, path: str, count: int) -> None:
    proc, log = gateway
    prefix = f"mid-{proc.port}-{path.rsplit('/', 1)[1]}-"
    before = _metrics(proc)
    socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=DEADLINE_S) for _ in range(count)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(_request(path, "slow-stream", f"{prefix}{i}"))
        for sock in socks:  # each caller has its first event: its stream is under way upstream
            data = b""
            while b"data:" not in data:
                piece = sock.recv(65536)
                assert piece, "the gateway closed the stream before its first event"
                data += piece
    finally:
        for sock in socks:
            sock.close()  # the stop button, while the gateway waits for the upstream's next event
    ids = {f"{prefix}{i}" for i in range(count)}

    _poll(lambda: {upstream.outcomes.get(i) for i in ids} == {"stream-closed"},
          "every upstream stream closed by the gateway")
    lines = _poll(lambda: (found := _log_lines(log, prefix)) and len(found) >= count and found,
                  f"{count} access-log lines")
    samples = _poll(lambda: _accounted(proc, "/v1/chat/completions" if path.endswith("completions") else path,
                                       before, count), "the requests counted, none in flight")

    assert len(lines) == count and {line["request_id"] for line in lines} == ids  # once each
    assert {line["error"] for line in lines} == {"client_disconnected"}
    assert {line["status"] for line in lines} == {200}
    route = lines[0]["route"]
    assert (_sum(samples, "sluice_errors_total", route=route, **{"class": "client_disconnected"})
            - _sum(before, "sluice_errors_total", route=route, **{"class": "client_disconnected"})) == count
    assert (_sum(samples, "sluice_requests_total", route=route)
            - _sum(before, "sluice_requests_total", route=route)) == count
    assert _sum(samples, "sluice_requests_in_flight") == 0
    assert not any(upstream.outcomes.get(i) == "stream-finished" for i in ids)


def test_callers_leaving_before_the_first_byte_are_logged_while_the_upstream_still_holds_them(
        gateway: tuple[Proc, Path], upstream: Upstream) -> None:
    """The upstream would answer only after HOLD_S: the log line must come from the caller's leaving, and the
    upstream must see its request cancelled (its connection closed) rather than answer it."""
    proc, log = gateway
    prefix = f"early-{proc.port}-"
    ids = {f"{prefix}{i}" for i in range(EARLY)}
    before = _metrics(proc)
    socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=DEADLINE_S) for _ in range(EARLY)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(_request("/v1/chat/completions", "held", f"{prefix}{i}"))
        _poll(lambda: ids <= set(upstream.received), "every request held by the upstream")
    finally:
        for sock in socks:
            sock.close()

    lines = _poll(lambda: (found := _log_lines(log, prefix)) and len(found) >= EARLY and found,
                  f"{EARLY} access-log lines while the upstream still holds the requests")
    assert not any(upstream.outcomes.get(i) == "held-answered" for i in ids)  # logged before any answer
    _poll(lambda: {upstream.outcomes.get(i) for i in ids} == {"held-closed"},
          "every held upstream request cancelled by the gateway")
    samples = _poll(lambda: _accounted(proc, "/v1/chat/completions", before, EARLY),
                    "the requests counted, none in flight")

    assert len(lines) == EARLY and {line["request_id"] for line in lines} == ids
    assert {line["error"] for line in lines} == {"client_disconnected"}
    assert {line["status"] for line in lines} == {0}  # no answer was begun
    assert (_sum(samples, "sluice_errors_total", route="/v1/chat/completions", **{"class": "client_disconnected"})
            - _sum(before, "sluice_errors_total", route="/v1/chat/completions",
                   **{"class": "client_disconnected"})) == EARLY
    assert _sum(samples, "sluice_requests_in_flight") == 0
