"""The mock upstream's fault injection, seen from a raw HTTP client in each wire format.

The faults issue 6's chaos tests drive: errors with Retry-After, a hang after the head, a trickle,
invalid JSON, a close mid-stream, a 200 holding an error, a reset; set by flags, at run time
through /_mock/faults, or per request by the model name; counted by /_mock/stats.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from sluice.mock.faults import CUT_AT, FAULTS
from sluice.mock.openai import REPLY
from tests.conftest import Proc, call, start_mock

pytestmark = pytest.mark.integration

FORMATS = ("openai", "anthropic", "gemini", "azure")
USER = [{"role": "user", "content": "hi"}]
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", "content-type": "application/json"}
GEMINI_HEADERS = {"x-goog-api-key": "goog-test", "content-type": "application/json"}
OPENAI_HEADERS = {"authorization": "Bearer sk-test", "content-type": "application/json"}
AZURE_HEADERS = {"api-key": "azure-key", "content-type": "application/json"}


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("mock-faults"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def calm(mock: Proc) -> Iterator[None]:
    """Each test starts from the mock's start options and zeroed counts."""
    assert call(mock.url, "DELETE", "/_mock/faults").status == 200
    assert call(mock.url, "POST", "/_mock/stats/reset").status == 200
    yield


# -- clients ----------------------------------------------------------------------------------------

def request(fmt: str, *, model: str | None = None, stream: bool = False) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(path, body, headers) of a chat request in ``fmt`` for ``model`` (Gemini: in the path; Azure: the deployment)."""
    if fmt == "openai":
        return "/v1/chat/completions", {"model": model or "gpt-4o-mini", "messages": USER, "stream": stream}, \
            OPENAI_HEADERS
    if fmt == "anthropic":
        return "/v1/messages", {"model": model or "claude-haiku-4-5", "max_tokens": 50, "messages": USER,
                                "stream": stream}, ANTHROPIC_HEADERS
    if fmt == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{model or 'gemini-2.0-flash'}:{method}", \
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, GEMINI_HEADERS
    return f"/openai/deployments/{model or 'my-gpt'}/chat/completions?api-version=2024-10-21", \
        {"messages": USER, "stream": stream}, AZURE_HEADERS


def separator(fmt: str) -> bytes:
    return b"\r\n\r\n" if fmt == "gemini" else b"\n\n"


class Seen(NamedTuple):
    outcome: str  # "complete", "truncated" (the body ended short), "timeout", "no-answer"
    status: int
    headers: dict[str, str]
    body: bytes


def send(mock: Proc, fmt: str, *, model: str | None = None, stream: bool = False, timeout: float = 10.0) -> Seen:
    """One request on a fresh connection; what the client saw, however the answer ended."""
    path, body, headers = request(fmt, model=model, stream=stream)
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        try:
            response = conn.getresponse()
        except ConnectionError:  # RemoteDisconnected included: no status line at all
            return Seen("no-answer", 0, {}, b"")
        head = {k.lower(): v for k, v in response.getheaders()}
        try:
            return Seen("complete", response.status, head, response.read())
        except http.client.IncompleteRead as exc:
            return Seen("truncated", response.status, head, exc.partial)
        except TimeoutError:
            return Seen("timeout", response.status, head, b"")
    finally:
        conn.close()


def put_faults(mock: Proc, **fields: Any) -> dict[str, Any]:
    reply = call(mock.url, "PUT", "/_mock/faults", fields, {"content-type": "application/json"})
    assert reply.status == 200, reply.body
    options: dict[str, Any] = reply.json()
    return options


def stats(mock: Proc) -> dict[str, int]:
    counts: dict[str, int] = call(mock.url, "GET", "/_mock/stats").json()
    return counts


def error_object(fmt: str, body: bytes) -> dict[str, Any]:
    """The error a format's answer carries, checked against the format's own shape."""
    parsed = json.loads(body)
    if fmt == "gemini" and isinstance(parsed, list):  # a JSON-array stream
        (parsed,) = parsed
    if fmt == "anthropic":
        assert parsed["type"] == "error" and set(parsed["error"]) == {"type", "message"}
    elif fmt == "gemini":
        assert set(parsed["error"]) == {"code", "message", "status"}
    elif fmt == "azure":
        assert set(parsed["error"]) == {"code", "message"}
    else:
        assert set(parsed["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = parsed["error"]
    return error


def sse_data(event: bytes) -> bytes:
    """The data line of one SSE event."""
    (line,) = [line for line in event.splitlines() if line.startswith(b"data: ")]
    return line.removeprefix(b"data: ")


# -- errors and Retry-After -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_error_rate_429_carries_retry_after_in_each_format(mock: Proc, fmt: str) -> None:
    put_faults(mock, error_rate=1.0, error_status=429)
    seen = send(mock, fmt)
    assert seen.status == 429 and seen.outcome == "complete"
    assert seen.headers["retry-after"] == "1" and seen.headers["retry-after-ms"] == "1000"  # the default
    error = error_object(fmt, seen.body)
    expected = {"anthropic": ("type", "rate_limit_error"), "gemini": ("status", "RESOURCE_EXHAUSTED"),
                "azure": ("code", "429"), "openai": ("type", "server_error")}[fmt]
    assert error[expected[0]] == expected[1]


def test_retry_after_option_on_every_injected_error(mock: Proc) -> None:
    put_faults(mock, error_rate=1.0, error_status=503, retry_after=2.5)
    seen = send(mock, "anthropic")
    assert seen.status == 503 and error_object("anthropic", seen.body)["type"] == "api_error"
    assert seen.headers["retry-after"] == "3" and seen.headers["retry-after-ms"] == "2500"
    put_faults(mock, error_rate=0.0)  # the option stays, and the model names' errors carry it too
    seen = send(mock, "openai", model="mock-status-500")
    assert seen.status == 500 and seen.headers["retry-after-ms"] == "2500"


def test_without_the_option_only_429_carries_retry_after(mock: Proc) -> None:
    assert "retry-after" not in send(mock, "openai", model="mock-status-503").headers
    seen = send(mock, "gemini", model="mock-status-429")
    assert seen.status == 429 and seen.headers["retry-after"] == "1"


@pytest.mark.parametrize("fmt", FORMATS)
def test_mock_429_directive(mock: Proc, fmt: str) -> None:
    seen = send(mock, fmt, model="mock-429-7")
    assert seen.status == 429 and seen.headers["retry-after"] == "7" and seen.headers["retry-after-ms"] == "7000"
    assert "retry after 7 s" in error_object(fmt, seen.body)["message"]
    half = send(mock, fmt, model="mock-429-0.5")
    assert half.headers["retry-after"] == "1" and half.headers["retry-after-ms"] == "500"


# -- broken answers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_hang_after_headers(mock: Proc, fmt: str, stream: bool) -> None:
    put_faults(mock, fault="hang-after-headers")
    seen = send(mock, fmt, stream=stream, timeout=0.5)
    assert seen.outcome == "timeout" and seen.status == 200  # the head came, then nothing
    assert seen.headers["content-type"].startswith("text/event-stream" if stream else "application/json")
    assert stats(mock) == {"requests": 1, "errors": 0, "faults": 1}


@pytest.mark.parametrize("fmt", FORMATS)
def test_trickle_arrives_whole_one_byte_at_a_time(mock: Proc, fmt: str) -> None:
    put_faults(mock, fault="trickle", trickle_ms=1)
    status, headers, body, reads = raw_reads(mock, fmt)
    assert status == 200 and int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    text = {"openai": lambda: answer["choices"][0]["message"]["content"],
            "azure": lambda: answer["choices"][0]["message"]["content"],
            "anthropic": lambda: answer["content"][0]["text"],
            "gemini": lambda: answer["candidates"][0]["content"]["parts"][0]["text"]}[fmt]()
    assert text == REPLY
    put_faults(mock, fault=None)
    at_once = raw_reads(mock, fmt)[3]
    assert at_once <= 3 < 8 <= reads  # an untrickled answer comes in a read or two; a trickle in hundreds


def test_trickled_stream_is_complete(mock: Proc) -> None:
    put_faults(mock, fault="trickle", trickle_ms=0.2)
    status, headers, body, reads = raw_reads(mock, "openai", stream=True)
    # The trickle is seen in the mock's fault count, not in the number of reads (at 0.2 ms a byte, a loaded
    # machine's reader may find several hundred bytes waiting at each read: reads >= 8 failed under load).
    assert status == 200 and headers["transfer-encoding"] == "chunked" and reads >= 1
    assert stats(mock)["faults"] == 1
    events = dechunk(body).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    words = [json.loads(sse_data(e))["choices"][0]["delta"].get("content", "") for e in events[:-2]]
    assert "".join(words) == REPLY


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_invalid_json(mock: Proc, fmt: str, stream: bool) -> None:
    put_faults(mock, fault="invalid-json")
    seen = send(mock, fmt, stream=stream)
    assert seen.outcome == "complete" and seen.status == 200
    if not stream:
        assert seen.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            json.loads(seen.body)
        return
    events = seen.body.split(separator(fmt))
    with pytest.raises(json.JSONDecodeError):  # the first event is broken ...
        json.loads(sse_data(events[0]))
    last = sse_data(events[-2])  # ... the rest arrives as usual
    assert last == b"[DONE]" if fmt in ("openai", "azure") else json.loads(last)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_close_mid_stream_is_a_truncated_body(mock: Proc, fmt: str, stream: bool) -> None:
    put_faults(mock, fault="close-mid-stream")
    seen = send(mock, fmt, stream=stream)
    assert seen.outcome == "truncated" and seen.status == 200
    if not stream:  # half of the body its content-length promised
        assert len(seen.body) == int(seen.headers["content-length"]) // 2 > 0
        with pytest.raises(json.JSONDecodeError):
            json.loads(seen.body)
        return
    *whole, rest = seen.body.split(separator(fmt))
    assert len(whole) == CUT_AT and rest  # the first events whole, then half of the next one
    for event in whole:
        json.loads(sse_data(event))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_error_200_in_the_formats_shape(mock: Proc, fmt: str, stream: bool) -> None:
    put_faults(mock, fault="error-200", error_status=529 if fmt == "anthropic" else 503)
    seen = send(mock, fmt, stream=stream)
    assert seen.outcome == "complete" and seen.status == 200
    if stream:
        (event, end) = seen.body.split(separator(fmt))  # the error event, and nothing after it
        assert end == b""
        if fmt == "anthropic":
            assert event.startswith(b"event: error\n")
        body = sse_data(event)
    else:
        body = seen.body
    error = error_object(fmt, body)
    assert "error-200" in error["message"]
    if fmt == "anthropic":
        assert error["type"] == "overloaded_error"
    elif fmt == "gemini":
        assert error["code"] == 503 and error["status"] == "UNAVAILABLE"
    assert stats(mock) == {"requests": 1, "errors": 0, "faults": 1}  # a 200: no error, by its status


def test_error_200_in_a_gemini_json_array_stream(mock: Proc) -> None:
    put_faults(mock, fault="error-200")
    reply = call(mock.url, "POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                 request("gemini")[1], GEMINI_HEADERS)
    assert reply.status == 200 and error_object("gemini", reply.body)["status"] == "INTERNAL"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_reset_sends_no_answer(mock: Proc, fmt: str, stream: bool) -> None:
    put_faults(mock, fault="reset")
    assert send(mock, fmt, stream=stream).outcome == "no-answer"
    assert stats(mock) == {"requests": 1, "errors": 0, "faults": 1}
    put_faults(mock, fault=None)
    assert send(mock, fmt, stream=stream).status == 200  # the mock itself is unharmed


def test_refused_requests_are_not_broken(mock: Proc) -> None:
    put_faults(mock, fault="reset")
    refused = call(mock.url, "POST", "/v1/chat/completions", b"{not json", OPENAI_HEADERS)
    assert refused.status == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    assert call(mock.url, "POST", "/v1/messages", request("anthropic")[1], {}).status == 401


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_directives(mock: Proc, fmt: str) -> None:
    """mock-fault-<kind>, with no fault set: the same faults, on that model only."""
    put_faults(mock, trickle_ms=1)  # (the pace of a trickle, whoever asks for it)
    assert send(mock, fmt, model="mock-fault-reset").outcome == "no-answer"
    assert send(mock, fmt, model="mock-fault-hang-after-headers", timeout=0.5).outcome == "timeout"
    assert send(mock, fmt, model="mock-fault-close-mid-stream", stream=True).outcome == "truncated"
    with pytest.raises(json.JSONDecodeError):
        json.loads(send(mock, fmt, model="mock-fault-invalid-json").body)
    assert "error" in json.loads(send(mock, fmt, model="mock-fault-error-200").body)
    trickled = send(mock, fmt, model="mock-fault-trickle")
    assert trickled.status == 200 and json.loads(trickled.body)
    plain = send(mock, fmt)
    assert plain.status == 200 and "error" not in json.loads(plain.body)
    assert stats(mock) == {"requests": 7, "errors": 0, "faults": 6}


# -- control ----------------------------------------------------------------------------------------

def test_runtime_control_changes_behaviour_without_a_restart(mock: Proc) -> None:
    assert send(mock, "openai").status == 200
    options = put_faults(mock, error_rate=1.0, error_status=503)
    assert options["error_rate"] == 1.0 and options["error_status"] == 503 and options["fault"] is None
    assert call(mock.url, "GET", "/_mock/faults").json() == options
    assert [send(mock, fmt).status for fmt in FORMATS] == [503] * 4
    put_faults(mock, error_rate=0.0, fault="error-200")  # a change keeps the fields it does not name
    seen = send(mock, "openai")
    assert seen.status == 200 and error_object("openai", seen.body)
    assert call(mock.url, "DELETE", "/_mock/faults").json()["fault"] is None  # back to the start options
    assert send(mock, "openai").status == 200
    call(mock.url, "GET", "/_mock/requests")  # control requests are not counted
    assert stats(mock) == {"requests": 7, "errors": 4, "faults": 1}
    assert call(mock.url, "POST", "/_mock/stats/reset").json() == {"requests": 0, "errors": 0, "faults": 0}
    assert stats(mock) == {"requests": 0, "errors": 0, "faults": 0}


@pytest.mark.parametrize(("body", "problem"), [
    ({"error_rate": 1.5}, "<= 1.0 - at `$.error_rate`"),
    ({"fault": "explode"}, "Invalid enum value 'explode'"),
    ({"error_status": 1000}, "<= 599"),
    ({"trickle_ms": -1}, ">= 0.0"),
    ({"latency": 5}, "unknown field `latency`"),
    ([1, 2], "JSON object"),
    (b"{not json", "JSON object"),
])
def test_runtime_control_rejects_bad_options(mock: Proc, body: Any, problem: str) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = call(mock.url, "PUT", "/_mock/faults", data, {"content-type": "application/json"})
    assert reply.status == 400 and problem in reply.json()["error"]["message"]
    assert call(mock.url, "GET", "/_mock/faults").json()["fault"] is None  # nothing changed


def test_control_methods_and_paths(mock: Proc) -> None:
    assert call(mock.url, "POST", "/_mock/faults").status == 405
    assert call(mock.url, "GET", "/_mock/stats/reset").status == 405
    assert call(mock.url, "GET", "/_mock/nothing").status == 404


def test_fault_rate_with_a_seed(mock: Proc) -> None:
    """About fault_rate of the requests are hit; the same seed hits the same ones."""
    runs = []
    for _ in range(2):
        put_faults(mock, fault="error-200", fault_rate=0.3, seed=42)  # a seed restarts the draws
        call(mock.url, "POST", "/_mock/stats/reset")
        runs.append(["error" in json.loads(send(mock, "openai").body) for _ in range(200)])
        assert stats(mock) == {"requests": 200, "errors": 0, "faults": sum(runs[-1])}
    assert 30 <= sum(runs[0]) <= 90  # 60 expected; a wide band
    assert runs[0] == runs[1]


# -- the command ------------------------------------------------------------------------------------

def test_command_line_options(tmp_path: Path) -> None:
    proc = start_mock(tmp_path, "--error-rate", "1", "--error-status", "429", "--retry-after", "2",
                      "--fault", "trickle", "--fault-rate", "0.5", "--trickle-ms", "3", "--seed", "9")
    try:
        assert call(proc.url, "GET", "/_mock/faults").json() == {
            "latency_ms": 0.0, "chunk_ms": 0.0, "error_rate": 1.0, "error_status": 429, "seed": 9, "retry_after": 2.0,
            "fault": "trickle", "fault_rate": 0.5, "trickle_ms": 3.0, "stream_bytes": 0}
        seen = send(proc, "anthropic")
        assert seen.status == 429 and seen.headers["retry-after"] == "2"
        assert error_object("anthropic", seen.body)["type"] == "rate_limit_error"
    finally:
        proc.stop()


@pytest.mark.parametrize(("flags", "problem"), [
    (["--fault-rate", "1.5"], "--fault-rate"),
    (["--retry-after", "-1"], "--retry-after"),
    (["--fault", "explode"], "invalid choice"),
])
def test_command_line_rejects_bad_options(flags: list[str], problem: str) -> None:
    done = subprocess.run([sys.executable, "-m", "sluice", "mock-upstream", "--port", "1", *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and problem in done.stderr


def test_the_fault_kinds_are_the_commands_choices() -> None:
    done = subprocess.run([sys.executable, "-m", "sluice", "mock-upstream", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert all(kind in " ".join(done.stdout.split()).replace("- ", "-") for kind in FAULTS)


# -- raw reads --------------------------------------------------------------------------------------

def raw_reads(mock: Proc, fmt: str, *, stream: bool = False) -> tuple[int, dict[str, str], bytes, int]:
    """(status, headers, body as sent, how many recv() calls it took): a socket, to see the bytes arrive."""
    path, body, headers = request(fmt, stream=stream)
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "connection: close", f"content-length: {len(data)}",
             *(f"{name}: {value}" for name, value in headers.items())]
    received = bytearray()
    reads = 0
    with socket.create_connection(("127.0.0.1", mock.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        while chunk := sock.recv(65536):
            received += chunk
            reads += 1
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = dict(line.lower().split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), fields, rest, reads


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2:]
