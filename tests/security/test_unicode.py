"""Unicode edge cases in model names and messages: lone surrogates, NUL, bidirectional overrides, very long
strings. Each is refused with a clear 4xx in the route's format or served; never a 500."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Proc
from tests.security.conftest import CHAT, JSON_ROUTES, MESSAGE, MINI, post, refused, served_or_refused

pytestmark = pytest.mark.integration

CHAT_PATH, MESSAGES = "/v1/chat/completions", "/v1/messages"
ROUTES = list(JSON_ROUTES)


def body_with(path: str, *, model: bytes | None = None, content: bytes | None = None) -> bytes:
    """The route's good body with the model and the text replaced by raw JSON strings (escapes as written)."""
    base = dict(JSON_ROUTES[path])
    text = json.dumps(base).encode()
    if model is not None:
        text = text.replace(json.dumps(base["model"]).encode(), model, 1)
    if content is not None:
        text = text.replace(b'"hi"', content, 1)
    return text


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("raw", [b'"\\ud800"', b'"gpt\\udfff"', b'"\\ud800\\u0041"', b'"\\udc00\\ud800"'])
def test_lone_surrogate_escapes_are_refused(gw: Proc, path: str, raw: bytes) -> None:
    """JSON's grammar allows them; no UTF-8 text can hold them, and the parsers on the path refuse them."""
    refused(post(gw, path, body_with(path, model=raw)), path)
    refused(post(gw, path, body_with(path, content=raw)), path)


@pytest.mark.parametrize("path", ROUTES)
def test_a_surrogate_pair_is_one_character_and_served(gw: Proc, path: str) -> None:
    served_or_refused(post(gw, path, body_with(path, content=b'"smile \\ud83d\\ude00"')), path)
    reply = post(gw, path, body_with(path, content='"smile \U0001F600"'.encode()))
    assert reply.status == 200, reply.body[:300]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("model", [
    "gpt-4o-mini\u0000", "gpt-4o-mini\\u0000", "\u202egpt-4o-mini", "gpt-4o\u202e-inim", "gpt\u2066-4o-mini\u2069",
    "gpt-4o-mini\u200b", "\uff47\uff50\uff54-4o-mini", "gpt-4o-mini" + "\u0301" * 50, "x" * 100_000, "",
])
def test_odd_model_names_are_not_found_or_refused(gw: Proc, path: str, model: str) -> None:
    """No configured model has these names: 400 or 404 (403 for the limited key), and the error's message is
    bounded however long the name. The passthrough sends a model it does not know to its provider as it is
    (tts-1, whisper-1, ...): served there, for a key that may use any model."""
    raw = json.dumps(model).encode() if "\\" not in model else b'"' + model.encode() + b'"'
    for headers in (None, MINI):
        reply = post(gw, path, body_with(path, model=raw), headers)
        if path == "/v1/responses" and headers is None and reply.status == 200:
            continue
        assert reply.status in (400, 403, 404), (reply.status, reply.body[:300])
        message = refused(reply, path, reply.status)
        assert len(message) < 2000


def test_a_nul_in_the_model_is_not_the_model(gw: Proc) -> None:
    """A NUL does not end the name: gpt-4o-mini\\u0000 is not gpt-4o-mini, for routing nor for the key's models."""
    reply = post(gw, CHAT_PATH, body_with(CHAT_PATH, model=b'"gpt-4o\\u0000-mini"'), MINI)
    refused(reply, CHAT_PATH, 403, code="model_not_allowed")


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("content", [
    '"a\\u0000b"', '"\\u202eevil\\u202c text"', '"\u202e\u2066\u2067\u2068\u2069"', '"\\ufeffBOM"', '"\\uffff"',
    '"\U0010ffff"', '"' + "\u00e9" * 20_000 + '"', '"' + "\\n" * 10_000 + '"', '"' + "z" * 500_000 + '"',
])
def test_odd_text_is_served(gw: Proc, path: str, content: str) -> None:
    reply = post(gw, path, body_with(path, content=content.encode()))
    served_or_refused(reply, path)
    assert reply.status == 200, reply.body[:300]


@pytest.mark.parametrize("path", ROUTES)
def test_a_byte_order_mark_before_the_body(gw: Proc, path: str) -> None:
    served_or_refused(post(gw, path, b"\xef\xbb\xbf" + json.dumps(JSON_ROUTES[path]).encode()), path)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("raw", [b"\xc0\xaf", b"\xed\xa0\x80", b"\xff\xfe", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"])
def test_invalid_utf8_in_the_model_or_the_text(gw: Proc, path: str, raw: bytes) -> None:
    refused(post(gw, path, body_with(path, model=b'"gpt' + raw + b'"')), path)
    refused(post(gw, path, body_with(path, content=b'"hi ' + raw + b'"')), path)


def test_very_long_keys_and_many_keys(gw: Proc) -> None:
    many = json.dumps({**CHAT, **{f"x_{i}": i for i in range(20_000)}}).encode()
    assert post(gw, CHAT_PATH, many).status == 200
    long_key = json.dumps({**CHAT, "k" * 200_000: 1}).encode()
    assert post(gw, CHAT_PATH, long_key).status == 200
    twice = json.dumps(CHAT).encode()[:-1] + b', "' + b"k" * 200_000 + b'": 1, "' + b"k" * 200_000 + b'": 2}'
    message = refused(post(gw, CHAT_PATH, twice), CHAT_PATH, code="duplicate_key")
    assert len(message) < 1000


def test_anthropic_text_with_controls_is_served(gw: Proc) -> None:
    body = {**MESSAGE, "system": "\u202e\u0000", "messages": [{"role": "user", "content": "\u0000\u202e\ufeff"}]}
    assert post(gw, MESSAGES, body).status == 200
