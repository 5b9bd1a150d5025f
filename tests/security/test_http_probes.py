"""The HTTP layer under attack (issue 15's black-box probes, kept held): request smuggling, header and
request-line limits, NUL and CR in headers, pipelining, bodies over the limit.

Raw sockets against conftest's gateway (auth on, max_body_bytes 1 MiB) over RSGI and ASGI.  A message whose
framing is ambiguous (two Content-Lengths, a Transfer-Encoding that is not exactly chunked) is refused 400
and nothing reaches the upstream; Content-Length with Transfer-Encoding: chunked is read by the chunks (RFC
9112 §6.3), forwarded once, and the connection closed after the answer so no bytes the two framings disagree
on can become a second request.  Oversized heads are 431/414, never a 500 or a hang.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Proc
from tests.security.capture import answer_body, exchange, statuses
from tests.security.conftest import ADMIN_KEY, upstream_requests

pytestmark = pytest.mark.integration

AUTH = b"authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n" + AUTH + b"content-type: application/json\r\n"
MODELS = b"GET /v1/models HTTP/1.1\r\nhost: gw\r\n" + AUTH
SMUGGLED = b"GET /admin/keys HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"  # no credential: 401 if read


def error_code(received: bytes) -> str:
    """The OpenAI error's code in an answer (whether its body is framed by length or by chunks)."""
    body = answer_body(received)
    return str(json.JSONDecoder().raw_decode(body[body.index(b'{"error"'):].decode())[0]["error"]["code"])


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


AMBIGUOUS = {
    "two-content-lengths": b"content-length: %d\r\ncontent-length: 5\r\n\r\n%s" % (len(BODY), BODY),
    "two-content-lengths-in-one": b"content-length: %d, 5\r\n\r\n%s" % (len(BODY), BODY),
    "te-not-chunked": b"transfer-encoding: xchunked\r\n\r\n" + chunked(BODY),
    "te-chunked-then-identity": b"transfer-encoding: chunked, identity\r\n\r\n" + chunked(BODY),
    "te-with-a-space-before-the-colon": b"transfer-encoding : chunked\r\n\r\n" + chunked(BODY),
    "content-length-negative": b"content-length: -1\r\n\r\n" + BODY,
    "content-length-plus": b"content-length: +%d\r\n\r\n%s" % (len(BODY), BODY),
    "chunk-size-overflow": b"transfer-encoding: chunked\r\n\r\nffffffffffffffffff1\r\n" + BODY + b"\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", list(AMBIGUOUS))
def test_ambiguous_framing_is_refused_and_nothing_forwarded(gw: Proc, mock: Proc, framing: str) -> None:
    before = upstream_requests(mock)
    received = exchange(gw, CHAT + AMBIGUOUS[framing] + SMUGGLED)
    assert statuses(received) and 400 <= statuses(received)[0] < 500, received[:300]
    assert 401 not in statuses(received)  # the bytes after the body were not read as a request
    assert upstream_requests(mock) == before


def test_content_length_with_chunked_is_read_by_the_chunks_and_the_connection_closed(gw: Proc, mock: Proc) -> None:
    before = upstream_requests(mock)
    # The Content-Length claims 10 bytes more than the chunks: read by it, SMUGGLED would be body.
    received = exchange(gw, CHAT + b"content-length: %d\r\ntransfer-encoding: chunked\r\n\r\n%s%s"
                        % (len(BODY) + 10, chunked(BODY), SMUGGLED))
    assert statuses(received)[0] in (200, 400), received[:300]
    assert len(statuses(received)) == 1, received[:600]  # closed after one answer: SMUGGLED never answered
    assert upstream_requests(mock) - before <= 1


@pytest.mark.parametrize(("head", "status"), [
    (MODELS + b"x-big: " + b"a" * 1_100_000 + b"\r\n\r\n", 431),
    (MODELS + b"".join(b"x-h%d: 1\r\n" % i for i in range(300)) + b"\r\n", 431),
    (b"GET /v1/models?" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: gw\r\n" + AUTH + b"\r\n", 414),
], ids=["one-huge-header", "too-many-headers", "long-request-line"])
def test_oversized_heads_are_refused(gw: Proc, head: bytes, status: int) -> None:
    received = exchange(gw, head)
    assert statuses(received) == [status], received[:300]


@pytest.mark.parametrize("line", [b"x-request-id: a\x00b", b"x-request-id: a\rb", b"x-a\x00b: 1", b"x-a b: 1",
                                  b"authorization: Bearer " + ADMIN_KEY.encode() + b"\x00",
                                  b"x-request-id: a\r\n b", b"x-request-id: a\nx-two: 1"],
                         ids=["nul-value", "cr-value", "nul-name", "space-in-name", "nul-credential", "obs-fold",
                              "bare-lf"])
def test_nul_and_cr_in_headers_are_refused(gw: Proc, mock: Proc, line: bytes) -> None:
    before = upstream_requests(mock)
    received = exchange(gw, CHAT + line + b"\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(BODY), BODY))
    status = statuses(received)[0]
    if line.endswith(b"\nx-two: 1"):  # a bare LF ends a header line (RFC 9112 §2.2 lets a server take it)
        assert status in (200, 400), received[:300]
        return
    assert status == 400, received[:300]
    assert upstream_requests(mock) == before


def test_pipelined_requests_are_answered_in_order(gw: Proc) -> None:
    chat = CHAT + b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
    received = exchange(gw, MODELS + b"\r\n" + chat + b"GET /v1/nothing HTTP/1.1\r\nhost: gw\r\n" + AUTH
                        + b"\r\n" + MODELS + b"connection: close\r\n\r\n")
    assert statuses(received) == [200, 200, 404, 200], received[:2000]


def test_a_request_after_a_body_over_the_limit_is_not_served_as_part_of_it(gw: Proc, mock: Proc) -> None:
    before = upstream_requests(mock)
    big = b"x" * (1_048_576 + 1)
    received = exchange(gw, CHAT + b"content-length: %d\r\n\r\n%s%s" % (len(big), big, SMUGGLED))
    # The connection is closed after the 413, or the body skipped and the next request read as one.
    assert statuses(received) in ([413], [413, 401]), received[:600]
    assert upstream_requests(mock) == before


@pytest.mark.parametrize("framing", ["content-length", "chunked", "chunked-many-small"])
def test_bodies_over_the_limit_are_413_in_json(gw: Proc, mock: Proc, framing: str) -> None:
    before = upstream_requests(mock)
    big = b"x" * (1_048_576 + 10)
    if framing == "content-length":
        data = b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(big), big)
    elif framing == "chunked":
        data = b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n" + chunked(big)
    else:
        piece = b"x" * 4096
        data = (b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                + b"1000\r\n%s\r\n" % piece * 260 + b"0\r\n\r\n")
    received = exchange(gw, CHAT + data)
    assert statuses(received)[0] == 413, received[:300]
    assert error_code(received) == "request_too_large"
    assert upstream_requests(mock) == before
