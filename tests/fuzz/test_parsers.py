"""The gateway's own parsers: SSE (upstream streams), multipart (batch uploads), request headers.

Properties:
- ``SSEParser``: any bytes, cut anywhere, give the same events as the whole, or ``SSEError``; what
  ``sse_event`` writes parses back to itself.
- ``boundary_of`` / ``read_form`` / ``check_batch_upload``: any Content-Type and body give the parts,
  or ``InvalidRequest`` (a 400; ``Forbidden`` for a batch line naming a model the key may not use);
  a form written by a client reads back field for field.
- Credentials (``presented_credential``, ``presented_key``), ``traceparent`` (``parse_traceparent``),
  the caller's address (``ClientIp`` over X-Forwarded-For) and IP rules (``IpRules``,
  ``parse_networks``): any header values give a value or the documented refusal (Unauthorized,
  None, ValueError for a bad CIDR in the config), never another exception.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sluice.auth.credential import presented_credential, presented_key
from sluice.auth.iprules import ClientIp, IpRules, parse_networks
from sluice.errors import Forbidden, InvalidRequest, Unauthorized
from sluice.providers.translate.sse import SSEError, SSEEvent, SSEParser, sse_event
from sluice.server.multipart import boundary_of, read_form
from sluice.server.passthrough import check_batch_upload
from sluice.traceparent import parse_traceparent
from tests.fuzz._fuzz import FUZZ, corpus, cut

# ------------------------------------------------------------------------------------------ SSE


def parse(pieces: list[bytes]) -> list[SSEEvent] | None:
    """The events of ``pieces`` fed in turn; None when the parser refused the stream."""
    parser = SSEParser()
    out: list[SSEEvent] = []
    try:
        for piece in pieces:
            out += parser.feed(piece)
    except SSEError:
        return None
    return out


@pytest.mark.parametrize("stream", corpus("sse"))
def test_sse_corpus(stream: bytes) -> None:
    whole = parse([stream])
    for size in (1, 2, 3, 7):
        assert parse([stream[i:i + size] for i in range(0, len(stream), size)]) == whole


@FUZZ
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"data:", b"data: x", b"event: e", b":c", b"\n", b"\r", b"\r\n", b"\xff", b"\xc3", b"\xa9", b"id: 1", b" "]),
    max_size=30).map(b"".join), points=st.lists(st.integers(0, 400), max_size=8))
@example(data=b"data: a\r", points=[8])
@example(data=b"data: \xc3\xa9\n\n", points=[7])
def test_sse_any_bytes_any_cut(data: bytes, points: list[int]) -> None:
    assert parse(cut(data, points)) == parse([data])


@FUZZ
@given(data=st.text(max_size=40).filter(lambda t: "\r" not in t),
       event=st.none() | st.text(min_size=1, max_size=10).filter(lambda t: not set(t) & {"\r", "\n"}))
def test_sse_event_parses_back(data: str, event: str | None) -> None:
    events = parse([sse_event(data.encode(), event)])
    assert events == [SSEEvent(event or "message", data)] or (not data and events == [] and event is None)


# ------------------------------------------------------------------------------------------ multipart

class _Principal:
    """A model-limited key (the only kind whose uploads are read): may use gpt-*."""

    @staticmethod
    def may_use(model: str) -> bool:
        return model.startswith("gpt-")


def read(content_type: str, body: bytes) -> None:
    try:
        parts = read_form(body, boundary_of(content_type))
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.code == "invalid_multipart"
    else:
        assert all(isinstance(p.name, str) and isinstance(bytes(p.data), bytes) for p in parts)
    try:
        check_batch_upload(_Principal(), content_type, body)  # type: ignore[arg-type]
    except (InvalidRequest, Forbidden) as exc:
        assert exc.status in (400, 403)


@pytest.mark.parametrize("body", corpus("multipart"))
def test_multipart_corpus(body: bytes) -> None:
    head, _, rest = body.partition(b"\n")  # each file: its Content-Type on the first line, then the body
    read(head.decode("latin-1"), rest)


@FUZZ
@given(content_type=st.text(max_size=80) | st.builds(
    lambda b, extra: f"multipart/form-data; boundary={b}{extra}", st.text(max_size=75),
    st.sampled_from(["", ";", "; boundary=x", '; charset="a\\"b"', "; BOUNDARY=y"])))
@example(content_type='multipart/form-data; boundary="a b"')
@example(content_type="multipart/form-data; boundary=" + "x" * 71)
def test_boundary_of_any_content_type(content_type: str) -> None:
    try:
        boundary = boundary_of(content_type)
    except InvalidRequest as exc:
        assert exc.status == 400
    else:
        assert 1 <= len(boundary) <= 70


BOUNDARY = "----sluicefuzz7MA4YWxk"


@FUZZ
@given(body=st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"--" + BOUNDARY.encode(), b"\r\n", b"--", b"Content-Disposition: form-data; name=\"file\"",
     b"; filename=\"b.jsonl\"", b"Content-Type: application/json", b"\r\n\r\n", b"batch", b"purpose",
     b'{"body": {"model": "gpt-4o"}}\n', b'{"body": {"model": "claude"}}\n', b"\n", b"name=\"purpose\"",
     b"Content-Transfer-Encoding: base64", b" ", b"\xff"]), max_size=25).map(b"".join))
def test_read_form_any_body(body: bytes) -> None:
    read(f"multipart/form-data; boundary={BOUNDARY}", body)


@FUZZ
@given(fields=st.lists(st.tuples(st.text(st.characters(codec="ascii", exclude_characters='"\\\r\n'), min_size=1,
                                         max_size=10),
                                 st.none() | st.text(st.characters(codec="ascii", exclude_characters='"\\\r\n'),
                                                     max_size=10),
                                 st.binary(max_size=40)), max_size=5))
def test_a_form_reads_back(fields: list[tuple[str, str | None, bytes]]) -> None:
    body = b"".join(
        b"--%s\r\nContent-Disposition: form-data; name=\"%s\"%s\r\n\r\n%s\r\n"
        % (BOUNDARY.encode(), name.encode(), b'; filename="%s"' % f.encode() if f is not None else b"", data)
        for name, f, data in fields) + b"--%s--\r\n" % BOUNDARY.encode()
    if any(b"\r\n--" + BOUNDARY.encode() in data + b"\r\n" for _, _, data in fields):
        return  # a value holding the delimiter is not a value a client could send
    parts = read_form(body, boundary_of(f"multipart/form-data; boundary={BOUNDARY}"))
    assert [(p.name, p.filename, bytes(p.data)) for p in parts] == fields


# ------------------------------------------------------------------------------------------ headers

class Headers:
    """An Exchange's header side: each name's lines, in order, and the peer address."""

    def __init__(self, headers: dict[str, list[str]], client: str = "127.0.0.1:5000") -> None:
        self._headers = headers
        self.client = client

    def header(self, name: str) -> str | None:
        lines = self._headers.get(name)
        return lines[0] if lines else None

    def header_all(self, name: str) -> list[str]:
        return self._headers.get(name, [])


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60)  # what a server decodes
CREDENTIAL = st.one_of(HEADER_TEXT, st.builds(lambda s, sp, t: f"{s}{sp}{t}",
                                               st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "", "Token"]),
                                               st.sampled_from(["", " ", "  ", "\t"]), HEADER_TEXT))


def check_headers(headers: dict[str, list[str]], client: str) -> None:
    ex = Headers(headers, client)
    try:
        key = presented_credential(ex)  # type: ignore[arg-type]
    except Unauthorized as exc:
        assert exc.status == 401 and exc.code
    else:
        assert key and key == key.strip()
    lenient = presented_key(ex)  # type: ignore[arg-type]
    assert lenient is None or isinstance(lenient, str)
    parsed = parse_traceparent(ex.header("traceparent"))
    assert parsed is None or (len(parsed[0]) == 32 and len(parsed[1]) == 16 and isinstance(parsed[2], bool))
    for trusted in ([], ["127.0.0.0/8", "::1/128"], ["0.0.0.0/0", "::/0"]):
        ip = ClientIp(trusted)(ex)  # type: ignore[arg-type]
        assert isinstance(ip, str)
        rules = IpRules(parse_networks(["10.0.0.0/8", "2001:db8::/32"]), parse_networks(["10.1.0.0/16"]))
        assert isinstance(rules.allows(ip), bool)


@pytest.mark.parametrize("raw", corpus("headers"))
def test_headers_corpus(raw: bytes) -> None:
    """Each file: `name: value` lines (a name may come again), the peer address on a `client:` line."""
    headers: dict[str, list[str]] = {}
    client = "127.0.0.1:5000"
    for line in raw.decode("latin-1").split("\n"):
        name, colon, value = line.partition(":")
        if not colon:
            continue
        if name == "client":
            client = value.strip()
        else:
            headers.setdefault(name.lower(), []).append(value.strip(" "))
    check_headers(headers, client)


@FUZZ
@given(authorization=st.none() | CREDENTIAL, api_key=st.none() | HEADER_TEXT,
       traceparent=st.none() | HEADER_TEXT | st.from_regex(
           r"\A[0-9a-fA-F]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-fx]{2}\Z"),
       forwarded=st.lists(st.lists(st.one_of(st.ip_addresses().map(str), HEADER_TEXT), max_size=3).map(", ".join),
                          max_size=3),
       client=st.one_of(st.ip_addresses(v=4).map(lambda a: f"{a}:1"), st.ip_addresses(v=6).map(lambda a: f"[{a}]:1"),
                        HEADER_TEXT))
@example(authorization="Bearer", api_key=None, traceparent="00-" + "0" * 32 + "-" + "1" * 16 + "-01", forwarded=[],
         client="unix")
def test_any_headers(authorization: str | None, api_key: str | None, traceparent: str | None, forwarded: list[str],
                     client: str) -> None:
    headers: dict[str, list[str]] = {"x-forwarded-for": forwarded}
    for name, value in (("authorization", authorization), ("x-api-key", api_key), ("traceparent", traceparent)):
        if value is not None:
            headers[name] = [value]
    check_headers(headers, client)


@FUZZ
@given(trace=st.from_regex(r"\A[0-9a-f]{32}\Z"), span=st.from_regex(r"\A[0-9a-f]{16}\Z"), flags=st.integers(0, 255))
def test_a_valid_traceparent_reads_back(trace: str, span: str, flags: int) -> None:
    parsed = parse_traceparent(f"00-{trace}-{span}-{flags:02x}")
    if set(trace) == {"0"} or set(span) == {"0"}:
        assert parsed is None
    else:
        assert parsed == (trace, span, bool(flags & 1))


@FUZZ
@given(cidrs=st.lists(st.text(max_size=20) | st.ip_addresses().map(str) | st.builds(
    lambda a, n: f"{a}/{n}", st.ip_addresses().map(str), st.integers(-1, 130)), max_size=3))
def test_parse_networks_any_text(cidrs: list[str]) -> None:
    try:
        networks: Any = parse_networks(cidrs)
    except ValueError:
        return
    assert len(networks) == len(cidrs)
