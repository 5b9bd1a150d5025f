"""Header injection and passthrough path traversal (issue 15): what a caller sends never becomes a header
line or a path of its choosing, neither upstream nor in the gateway's answer.

A CR, LF or NUL in a request header value is refused by the HTTP layer (400) before the gateway runs; a
model name carrying CRLF is a name like any other (unknown: 404 in JSON, escaped); the passthrough refuses a
path with dot segments however they are spelled (``%2e``, ``%252e``, ``..%2f``, backslashes): 404
unknown_url, nothing forwarded.  An upstream's odd header value is relayed as a value or dropped, never a 500.
Raw sockets (http.client will not send these), over RSGI and ASGI, against an upstream that records heads.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Proc
from tests.security.capture import (
    CHAT,
    Capture,
    answer_body,
    answer_head,
    capture,  # noqa: F401  (fixture)
    exchange,
    gateway,  # noqa: F401  (fixture)
    request,
    statuses,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", [b"x-request-id", b"traceparent", b"x-sluice-timeout", b"openai-organization",
                                  b"x-api-key"])
@pytest.mark.parametrize("value", [b"a\x00b", b"a\rx-evil: 1", b"a\r\n x-evil: 1"], ids=["nul", "cr", "fold"])
def test_control_characters_in_header_values_are_refused(gateway: Proc, capture: Capture, name: bytes,  # noqa: F811
                                                          value: bytes) -> None:
    before = len(capture.heads)
    received = exchange(gateway, request("POST", b"/v1/chat/completions", name + b": " + value + b"\r\n", CHAT))
    assert statuses(received)[:1] == [400], received[:300]
    assert len(capture.heads) == before  # nothing reached the upstream
    assert not any(line.lower().startswith(b"x-evil") for line in answer_head(received))


@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/responses"])
def test_a_model_name_with_crlf_stays_a_name(gateway: Proc, capture: Capture, path: bytes) -> None:  # noqa: F811
    body = json.dumps({"model": "gpt-4o-mini\r\nx-evil: 1", "messages": [{"role": "user", "content": "hi"}],
                       "input": "hi"}).encode()
    before = len(capture.heads)
    received = exchange(gateway, request("POST", path, b"", body))
    status = statuses(received)[0]
    # Chat: an unknown model (404); the passthrough forwards the name inside the JSON body, as sent.
    assert (status == 404) if path == b"/v1/chat/completions" else (status == 200), received[:500]
    assert not any(line.lower().startswith(b"x-evil") for line in answer_head(received))
    for head in capture.heads[before:]:  # forwarded (the passthrough) or not: never a header line of its own
        assert not any(line.lower().startswith(b"x-evil") for line in head.split(b"\r\n")), head


def test_the_served_models_header_is_the_configured_name(gateway: Proc, capture: Capture) -> None:  # noqa: F811
    received = exchange(gateway, request("POST", b"/v1/chat/completions", b"x-request-id: req-1\r\n", CHAT))
    assert statuses(received) == [200], received[:500]
    head = answer_head(received)
    assert b"x-sluice-model: gpt-4o-mini" in head and b"x-request-id: req-1" in head, head


@pytest.mark.parametrize("odd", [b"x-odd: a\x00b\r\n", b"x-odd: \x7f\x01\r\n", b"x-odd: " + b"a" * 8000 + b"\r\n"],
                         ids=["nul", "controls", "long"])
def test_an_upstreams_odd_header_value_is_no_500(gateway: Proc, capture: Capture, odd: bytes) -> None:  # noqa: F811
    capture.extra_head = odd
    try:
        received = exchange(gateway, request("POST", b"/v1/chat/completions", b"", CHAT))
    finally:
        capture.extra_head = b""
    status = statuses(received)[0]
    assert status in (200, 502), received[:500]  # relayed as a value (or dropped), or a clear bad gateway
    assert not any(line.startswith(b"x-odd") and b"\r" in line for line in answer_head(received))


TRAVERSALS = [
    b"/v1/files/../../admin/keys",
    b"/v1/files/..%2f..%2fadmin%2fkeys",
    b"/v1/files/%2e%2e/%2e%2e/admin/keys",
    b"/v1/files/%2E%2E%2F%2E%2E%2Fadmin",
    b"/v1/files/%252e%252e/%252e%252e/admin",  # decoded once by the gateway, once more by a careless upstream
    b"/v1/files/..\\..\\admin",
    b"/v1/files/..%5c..%5cadmin",
    b"/v1/files/%252e%252e%5cadmin",
    b"/v1/./files",
    b"/v1/files/.",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_passthrough_paths_cannot_leave_their_family(gateway: Proc, capture: Capture, target: bytes) -> None:  # noqa: F811
    before = len(capture.heads)
    received = exchange(gateway, request("GET", target))
    assert statuses(received) == [404], received[:500]
    assert json.loads(answer_body(received))["error"]["code"] == "unknown_url"
    assert len(capture.heads) == before


@pytest.mark.parametrize(("target", "forwarded"), [
    (b"/v1/files/file-abc", b"/v1/files/file-abc"),
    (b"/v1/files/a%20b", b"/v1/files/a%20b"),
    (b"/v1/files/a%2fb", b"/v1/files/a/b"),  # one decoding, as every route sees it; no dot segment: served
    (b"/v1/files/..a", b"/v1/files/..a"),
])
def test_ordinary_passthrough_paths_are_forwarded_as_sent(gateway: Proc, capture: Capture, target: bytes,  # noqa: F811
                                                          forwarded: bytes) -> None:
    before = len(capture.heads)
    received = exchange(gateway, request("GET", target))
    assert statuses(received) == [200], received[:500]
    assert capture.targets()[before:] == [forwarded]
