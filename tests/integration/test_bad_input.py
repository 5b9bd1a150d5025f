"""Every bad input gets its status and an OpenAI-shaped error, and the gateway keeps serving."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import call

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
GOOD = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(reply, status: int, *, code: str | None = None, param: str | None = None) -> dict:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers.get("x-request-id")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(autouse=True)
def still_serving(gateway):
    """After each bad input, a good request still succeeds."""
    yield
    reply = call(gateway.url, "POST", CHAT, GOOD)
    assert reply.status == 200, reply.body


@pytest.mark.parametrize("body", [b"{", b"not json", b"", b"\xff\xfe", b'{"model": "gpt-4o-mini",}'])
def test_malformed_json(gateway, body: bytes) -> None:
    reply = call(gateway.url, "POST", CHAT, body, {"content-type": "application/json"})
    assert_openai_error(reply, 400, code="invalid_json")


@pytest.mark.parametrize(("body", "param"), [
    ({"model": 42, "messages": GOOD["messages"]}, "model"),
    ({"model": "gpt-4o-mini", "messages": "hi"}, "messages"),
    ({"model": "gpt-4o-mini", "messages": [{"role": 1}]}, "messages[0].role"),
    ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({**GOOD, "stream": "yes"}, "stream"),
    ({**GOOD, "max_tokens": "ten"}, "max_tokens"),
    ({**GOOD, "temperature": "hot"}, "temperature"),
    ({**GOOD, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
])
def test_wrong_field_types_name_the_field(gateway, body: dict, param: str) -> None:
    error = assert_openai_error(call(gateway.url, "POST", CHAT, body), 400, code="invalid_type", param=param)
    assert param in error["message"]


@pytest.mark.parametrize(("path", "body", "param"), [
    (CHAT, {"messages": GOOD["messages"]}, "model"),
    (CHAT, {"model": "gpt-4o-mini"}, "messages"),
    ("/v1/embeddings", {"input": "x"}, "model"),
    ("/v1/completions", {"prompt": "x"}, "model"),
])
def test_missing_required_fields(gateway, path: str, body: dict, param: str) -> None:
    assert_openai_error(call(gateway.url, "POST", path, body), 400, param=param)


def test_body_must_be_an_object(gateway) -> None:
    assert_openai_error(call(gateway.url, "POST", CHAT, b"[1, 2]"), 400, code="invalid_type")


def test_unknown_model(gateway) -> None:
    body = {**GOOD, "model": "gpt-9000"}
    error = assert_openai_error(call(gateway.url, "POST", CHAT, body), 404, code="model_not_found", param="model")
    assert "gpt-9000" in error["message"]


def test_body_over_limit_by_content_length(gateway) -> None:
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * 70000 + b'"}]}'
    assert_openai_error(call(gateway.url, "POST", CHAT, big), 413, code="request_too_large")


def test_body_over_limit_when_chunked(gateway) -> None:
    # One byte over the 64 KiB limit, and nothing after it: the gateway has read all that was sent
    # when it answers, so its close cannot reset the connection under the answer.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     "transfer-encoding: chunked\r\n\r\n".encode())
        for _ in range(8):
            sock.sendall(b"2000\r\n" + b"x" * 8192 + b"\r\n")
        sock.sendall(b"1\r\nx\r\n")
        answer = b""
        while b"request_too_large" not in answer and (data := sock.recv(65536)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"request_too_large" in answer


def test_body_at_limit_is_read(gateway) -> None:
    prefix = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
    suffix = b'"}]}'
    body = prefix + b"x" * (65536 - len(prefix) - len(suffix)) + suffix
    assert len(body) == 65536
    assert call(gateway.url, "POST", CHAT, body).status == 200


def test_invalid_content_length(gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n{}")
        answer = sock.recv(4096)
    # Granian itself may refuse the head (400); either way a 4xx, never a 5xx or a dropped connection.
    assert answer.startswith(b"HTTP/1.1 4"), answer


@pytest.mark.parametrize(("method", "path"), [
    ("GET", CHAT), ("PUT", "/v1/embeddings"), ("DELETE", "/v1/completions"), ("POST", "/v1/models"),
    ("POST", "/v1/models/gpt-4o-mini"),
])
def test_wrong_method(gateway, method: str, path: str) -> None:
    reply = call(gateway.url, method, path, b"{}" if method != "GET" else None)
    assert_openai_error(reply, 405, code="method_not_allowed")
    assert reply.headers["allow"]


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/chat", "/v2/chat/completions", "/v1/models/", "/admin"])
def test_unknown_path(gateway, path: str) -> None:
    assert_openai_error(call(gateway.url, "GET", path), 404, code="unknown_url")


def test_upstream_unreachable_is_502(gateway) -> None:
    error = assert_openai_error(call(gateway.url, "POST", CHAT, {**GOOD, "model": "unreachable"}), 502,
                                code="upstream_unavailable")
    assert "closed" in error["message"]  # names the provider


def test_upstream_timeout_is_504(gateway) -> None:
    reply = call(gateway.url, "POST", CHAT, {**GOOD, "model": "slow"})
    # read_timeout_s is 2: the mock would have answered 200 after 5 s, had the gateway waited for it
    assert_openai_error(reply, 504, code="upstream_timeout")


def test_upstream_hang_is_504(gateway) -> None:
    assert_openai_error(call(gateway.url, "POST", CHAT, {**GOOD, "model": "hang"}), 504)


def test_upstream_malformed_response_is_502(gateway) -> None:
    assert_openai_error(call(gateway.url, "POST", CHAT, {**GOOD, "model": "garbage"}), 502)


def test_upstream_truncated_body_is_502(gateway) -> None:
    assert_openai_error(call(gateway.url, "POST", CHAT, {**GOOD, "model": "truncated"}), 502)


@pytest.mark.parametrize(("model", "status"), [("broken-500", 500), ("broken-429", 429)])
def test_upstream_errors_relayed_with_status_and_body(gateway, model: str, status: int) -> None:
    reply = call(gateway.url, "POST", CHAT, {**GOOD, "model": model})
    error = assert_openai_error(reply, status)
    assert "mock upstream" in error["message"]  # the provider's own body


def test_upstream_error_on_a_streaming_request_is_not_a_stream(gateway) -> None:
    reply = call(gateway.url, "POST", CHAT, {**GOOD, "model": "broken-500", "stream": True})
    assert_openai_error(reply, 500)


def test_stream_cut_by_upstream_ends_with_an_error_event(gateway) -> None:
    reply = call(gateway.url, "POST", CHAT, {**GOOD, "model": "cut-stream", "stream": True})
    assert reply.status == 200
    events = reply.body.split(b"\n\n")
    assert events[-1] == b""
    for event in events[:-1]:
        assert event.startswith(b"data: {")  # whole events only: never half a line
    assert b'"upstream_stream_error"' in events[-2]
    assert len(events) - 1 == 3  # the two complete events the mock sent, then the error


@pytest.mark.parametrize("request_id", ["", "x" * 129, "has space", "tab\there", "caf\u00e9"])
def test_insane_request_ids_are_replaced(gateway, request_id: str) -> None:
    headers = {"x-request-id": request_id.encode("utf-8").decode("latin-1")}
    reply = call(gateway.url, "POST", CHAT, GOOD, headers)
    assert reply.status == 200
    generated = reply.headers["x-request-id"]
    assert generated != request_id and len(generated) == 32


def test_sane_request_id_is_kept(gateway) -> None:
    rid = "A" * 128
    assert call(gateway.url, "POST", CHAT, GOOD, {"x-request-id": rid}).headers["x-request-id"] == rid


def test_upstream_answering_json_to_a_stream_request_is_relayed_as_json(gateway) -> None:
    reply = call(gateway.url, "POST", CHAT, {**GOOD, "model": "json-for-stream", "stream": True})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["object"] == "chat.completion"
