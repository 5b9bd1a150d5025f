"""Duplicate keys, deep nesting, bytes that are not UTF-8 and numbers beyond a double's range, on every route
that reads a JSON body.

The gateway forwards the caller's bytes: a body it reads one way must not reach a provider that could read
it another (issue 15, findings 5 and 6a).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Proc
from tests.security.conftest import CHAT, HI, JSON_ROUTES, MINI, post, refused, served_or_refused, upstream_requests

pytestmark = pytest.mark.integration


def nested(depth: int) -> bytes:
    """A JSON value of ``depth`` levels of arrays."""
    return b"[" * depth + b"]" * depth


def with_field(body: dict[str, object], name: str, raw: bytes) -> bytes:
    """``body`` with one more field whose JSON text is ``raw``, as sent."""
    return json.dumps(body).encode()[:-1] + b', "' + name.encode() + b'": ' + raw + b"}"


# -- duplicate keys -----------------------------------------------------------------------------------------

def test_a_second_model_cannot_slip_past_a_model_limited_key(gw: Proc, mock: Proc) -> None:
    """Finding 5: the key may use gpt-4o-mini; the gateway checked the last model, a provider may read the
    first. Refused before anything goes upstream, whichever order the two come in."""
    before = upstream_requests(mock)
    for first, second in (("gpt-4o", "gpt-4o-mini"), ("gpt-4o-mini", "gpt-4o")):
        body = (b'{"model": "%s", "model": "%s", "messages": [{"role": "user", "content": "hi"}]}'
                % (first.encode(), second.encode()))
        message = refused(post(gw, "/v1/chat/completions", body, MINI), "/v1/chat/completions",
                          code="duplicate_key", param="model")
        assert "'model'" in message
    assert upstream_requests(mock) == before


@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_duplicate_keys_are_refused_on_every_json_route(gw: Proc, mock: Proc, path: str) -> None:
    before = upstream_requests(mock)
    body = json.dumps(JSON_ROUTES[path]).encode()
    twice = b'{"model": "gpt-4o", ' + body[1:]  # the route's own model after another one
    message = refused(post(gw, path, twice, MINI), path, code="duplicate_key", param="model")
    assert "model" in message
    assert upstream_requests(mock) == before


@pytest.mark.parametrize(("body", "param"), [
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "role": "system", "content": "hi"}]}',
     "messages[0].role"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [{"type": "text", "text": "a", '
     b'"text": "b"}]}]}', "messages[0].content[0].text"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": false, '
     b'"stream": true}', "stream"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
     b'"function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {}, "a": {}}}}}]}',
     "tools[0].function.parameters.properties.a"),
    # The same key written two ways is one key: JSON escapes are decoded before keys are compared.
    (b'{"model": "gpt-4o", "mo\\u0064el": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}',
     "model"),
    (b'{"model": "gpt-4o-mini", "x_vendor": {"k": 1, "\\u006b": 2}, "messages": [{"role": "user", '
     b'"content": "hi"}]}', "x_vendor.k"),
])
def test_duplicate_keys_at_any_level_name_the_key(gw: Proc, body: bytes, param: str) -> None:
    refused(post(gw, "/v1/chat/completions", body, MINI), "/v1/chat/completions", code="duplicate_key", param=param)


def test_anthropic_callers_get_anthropic_errors(gw: Proc) -> None:
    body = (b'{"model": "claude-mini", "max_tokens": 5, "max_tokens": 6, '
            b'"messages": [{"role": "user", "content": "hi"}]}')
    assert "max_tokens" in refused(post(gw, "/v1/messages", body), "/v1/messages")


def test_the_same_key_in_different_objects_is_fine(gw: Proc) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "user", "content": "c"}], "metadata": {"role": "x"}}
    assert post(gw, "/v1/chat/completions", body, MINI).status == 200


def test_a_batch_file_line_with_the_model_twice_is_refused(gw: Proc, mock: Proc) -> None:
    """The passthrough reads each batch line's body.model for a limited key: the same ambiguity."""
    line = (b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o", '
            b'"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n')
    form = (b"--b\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            b"--b\r\ncontent-disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\n"
            b"content-type: application/jsonl\r\n\r\n" + line + b"\r\n--b--\r\n")
    before = upstream_requests(mock)
    reply = post(gw, "/v1/files", form, {**MINI, "content-type": "multipart/form-data; boundary=b"})
    message = refused(reply, "/v1/files", code="duplicate_key", param="file")
    assert "Line 1" in message
    assert upstream_requests(mock) == before


# -- nesting ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [300, 974, 5000])
@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_deep_nesting_is_refused_on_every_json_route(gw: Proc, mock: Proc, path: str, depth: int) -> None:
    """Finding 6a: ~974 levels gave a 500 (RecursionError); 255-973 went through and failed when a renamed
    body was re-encoded. Now 400 past 128 levels, in the route's format, and nothing goes upstream."""
    before = upstream_requests(mock)
    reply = post(gw, path, with_field(JSON_ROUTES[path], "x_deep", nested(depth)))
    message = refused(reply, path, code="json_too_deep", param="x_deep")
    assert "128" in message
    assert upstream_requests(mock) == before


def test_deep_nesting_in_an_admin_body_is_refused(gw: Proc) -> None:
    body = b'{"name": "deep", "roles": ["user"], "metadata": {"a": ' + nested(2000) + b"}}"
    refused(post(gw, "/admin/keys", body), "/admin/keys", code="json_too_deep", param="metadata")


def test_nesting_up_to_the_limit_is_served(gw: Proc) -> None:
    # The top object is level 1, the field's arrays levels 2..128.
    assert post(gw, "/v1/chat/completions", with_field(CHAT, "x_deep", nested(127))).status == 200
    refused(post(gw, "/v1/chat/completions", with_field(CHAT, "x_deep", nested(128))), "/v1/chat/completions",
            code="json_too_deep")


def test_deep_objects_in_a_renamed_body(gw: Proc) -> None:
    """Objects, not arrays, in a field the gateway skips, on a model it renames (orjson re-encodes the body)."""
    deep = b'{"a": ' * 300 + b"1" + b"}" * 300
    refused(post(gw, "/v1/chat/completions", with_field(CHAT, "x_deep", deep)), "/v1/chat/completions",
            code="json_too_deep")
    shallow = b'{"a": ' * 100 + b"1" + b"}" * 100
    served_or_refused(post(gw, "/v1/chat/completions", with_field({**CHAT, "model": "gpt-4o"}, "x", shallow)),
                      "/v1/chat/completions")


# -- bytes that are not UTF-8 -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\xaf"', b'"\xf4\x90\x80\x80"', b'"\xe2\x82"'])
@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_invalid_utf8_in_a_skipped_field_is_refused(gw: Proc, mock: Proc, path: str, raw: bytes) -> None:
    """msgspec does not read the strings of fields it skips; the provider (or orjson, when the body is
    renamed or translated) would."""
    before = upstream_requests(mock)
    refused(post(gw, path, with_field(JSON_ROUTES[path], "x_vendor", raw)), path, code="invalid_json")
    assert upstream_requests(mock) == before


# -- numbers beyond a double's range ------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"1e400", b"-1e999", b"1" + b"0" * 400, b"[1, {\"a\": 1.8e308}]",
                                 b"1.7976931348623159e308"])
@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_a_number_beyond_a_double_is_refused_on_every_json_route(gw: Proc, mock: Proc, path: str,
                                                                   raw: bytes) -> None:
    """msgspec skips or keeps it in a field it does not type; orjson, which re-reads the body to rename its
    model or translate it, refuses it: a 500. Now 400 in the route's format, nothing upstream."""
    before = upstream_requests(mock)
    message = refused(post(gw, path, with_field(JSON_ROUTES[path], "x_vendor", raw), MINI), path,
                      code="invalid_number", param="x_vendor")
    assert "x_vendor" in message
    assert upstream_requests(mock) == before


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_huge_number_inside_a_message_names_its_field(gw: Proc, path: str) -> None:
    body = JSON_ROUTES[path]
    raw = json.dumps(body).encode().replace(b'"content": "hi"', b'"content": [{"type": "text", "text": "hi", '
                                                                  b'"n": 1e400}]', 1)
    assert b"1e400" in raw
    message = refused(post(gw, path, raw, MINI), path, code="invalid_number", param="messages")
    assert "messages" in message


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_numbers_a_double_holds_are_forwarded(gw: Proc, mock: Proc, path: str) -> None:
    """Beyond 64 bits (orjson reads a float), just below DBL_MAX, too small (zero): the gateway forwards
    those (the Anthropic mock, like Anthropic, then refuses the unknown field itself)."""
    raw = b"[18446744073709551616, 1.7976931348623157e308, 1e-400, -1" + b"0" * 300 + b"]"
    before = upstream_requests(mock)
    reply = post(gw, path, with_field(JSON_ROUTES[path], "x_vendor", raw))
    assert upstream_requests(mock) == before + 1
    served_or_refused(reply, path)
    assert reply.status == 200 or b"x_vendor: Extra inputs" in reply.body, reply.body[:500]


def test_refusals_leave_the_gateway_serving(gw: Proc) -> None:
    for _ in range(3):
        post(gw, "/v1/chat/completions", with_field(CHAT, "x", nested(5000)))
        post(gw, "/v1/chat/completions", b'{"model": "a", "model": "b", "messages": []}')
    assert post(gw, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, MINI).status == 200
