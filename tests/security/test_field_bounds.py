"""Numbers beyond any sane bound and fields of the wrong type: refused with a 400 naming the field, before
they reach a provider or the rate limits (issue 15, finding 9)."""

from __future__ import annotations

import pytest

from tests.conftest import Proc
from tests.security.conftest import CHAT, HI, MESSAGE, post, refused, upstream_requests

pytestmark = pytest.mark.integration

CHAT_PATH, COMPLETIONS, MESSAGES = "/v1/chat/completions", "/v1/completions", "/v1/messages"
PROMPT = {"model": "gpt-4o-mini", "prompt": "hi"}


@pytest.mark.parametrize(("path", "body", "param", "code"), [
    # Token budgets: 2^31-1 at most (no model comes near; a 32-bit parser upstream would wrap 2^32+1 to 1).
    (CHAT_PATH, {**CHAT, "max_tokens": 2**63}, "max_tokens", "invalid_value"),
    (CHAT_PATH, {**CHAT, "max_tokens": 2**31}, "max_tokens", "invalid_value"),
    (CHAT_PATH, {**CHAT, "max_tokens": 10**40}, "max_tokens", "invalid_value"),
    (CHAT_PATH, {**CHAT, "max_completion_tokens": 2**63}, "max_completion_tokens", "invalid_value"),
    (CHAT_PATH, {**CHAT, "max_tokens": 0}, "max_tokens", "invalid_value"),
    (CHAT_PATH, {**CHAT, "max_tokens": 1.5}, "max_tokens", "invalid_type"),
    (COMPLETIONS, {**PROMPT, "max_tokens": 2**63}, "max_tokens", "invalid_value"),
    # n: 1..128 (OpenAI's bound), streamed or not.
    (CHAT_PATH, {**CHAT, "n": 10**6, "stream": True}, "n", "invalid_value"),
    (CHAT_PATH, {**CHAT, "n": 129}, "n", "invalid_value"),
    (CHAT_PATH, {**CHAT, "n": 0}, "n", "invalid_value"),
    (CHAT_PATH, {**CHAT, "n": "2"}, "n", "invalid_type"),
    (COMPLETIONS, {**PROMPT, "n": 10**6, "stream": True}, "n", "invalid_value"),
    # stop: a string or up to 4 strings.
    (CHAT_PATH, {**CHAT, "stop": 5}, "stop", "invalid_type"),
    (CHAT_PATH, {**CHAT, "stop": {"a": 1}}, "stop", "invalid_type"),
    (CHAT_PATH, {**CHAT, "stop": ["a", 1]}, "stop[1]", "invalid_type"),
    (CHAT_PATH, {**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    (COMPLETIONS, {**PROMPT, "stop": [None]}, "stop[0]", "invalid_type"),
    # user: a string.
    (CHAT_PATH, {**CHAT, "user": 42}, "user", "invalid_type"),
    (CHAT_PATH, {**CHAT, "user": {"id": "u"}}, "user", "invalid_type"),
    (COMPLETIONS, {**PROMPT, "user": ["u"]}, "user", "invalid_type"),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi", "user": 1}, "user", "invalid_type"),
    # logit_bias: token ids (digits) to a number in -100..100.
    (CHAT_PATH, {**CHAT, "logit_bias": [1, 2]}, "logit_bias", "invalid_type"),
    (CHAT_PATH, {**CHAT, "logit_bias": {"hello": 5}}, "logit_bias", "invalid_value"),
    (CHAT_PATH, {**CHAT, "logit_bias": {"50256": 101}}, "logit_bias", "invalid_value"),
    (CHAT_PATH, {**CHAT, "logit_bias": {"50256": -1e9}}, "logit_bias", "invalid_value"),
    (CHAT_PATH, {**CHAT, "logit_bias": {"50256": "ban"}}, "logit_bias", "invalid_type"),
    (COMPLETIONS, {**PROMPT, "logit_bias": {"1": 200}}, "logit_bias", "invalid_value"),
    # metadata: up to 16 pairs of strings, keys up to 64 characters, values up to 512.
    (CHAT_PATH, {**CHAT, "metadata": "x"}, "metadata", "invalid_type"),
    (CHAT_PATH, {**CHAT, "metadata": {"a": 1}}, "metadata", "invalid_type"),
    (CHAT_PATH, {**CHAT, "metadata": {"a": {"b": "c"}}}, "metadata", "invalid_type"),
    (CHAT_PATH, {**CHAT, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
    (CHAT_PATH, {**CHAT, "metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
    (CHAT_PATH, {**CHAT, "metadata": {"k": "v" * 513}}, "metadata", "invalid_value"),
])
def test_out_of_bounds_and_wrong_types_name_the_field(gw: Proc, mock: Proc, path: str, body: dict, param: str,
                                                      code: str) -> None:
    before = upstream_requests(mock)
    message = refused(post(gw, path, body), path, code=code, param=param)
    assert param.split("[")[0] in message
    assert upstream_requests(mock) == before


@pytest.mark.parametrize(("body", "field"), [
    ({**MESSAGE, "max_tokens": 2**63}, "max_tokens"),
    ({**MESSAGE, "max_tokens": "16"}, "max_tokens"),
    ({**MESSAGE, "stop_sequences": "END"}, "stop_sequences"),
    ({**MESSAGE, "stop_sequences": [1]}, "stop_sequences"),
    ({**MESSAGE, "metadata": "x"}, "metadata"),
    ({**MESSAGE, "metadata": {"user_id": 7}}, "metadata.user_id"),
])
def test_anthropic_fields_are_checked_in_anthropic_format(gw: Proc, body: dict, field: str) -> None:
    assert field in refused(post(gw, MESSAGES, body), MESSAGES)


@pytest.mark.parametrize(("path", "body"), [
    (CHAT_PATH, {**CHAT, "max_tokens": 2**31 - 1, "max_completion_tokens": 1}),
    (CHAT_PATH, {**CHAT, "n": 128}),
    (CHAT_PATH, {**CHAT, "stop": "END"}),
    (CHAT_PATH, {**CHAT, "stop": ["a", "b", "c", "d"]}),
    (CHAT_PATH, {**CHAT, "stop": None, "user": None, "logit_bias": None, "metadata": None, "n": None}),
    (CHAT_PATH, {**CHAT, "user": "user-1234", "logit_bias": {"50256": -100, "1": 100, "2": 0.5}}),
    (CHAT_PATH, {**CHAT, "metadata": {f"k{i}": "v" * 512 for i in range(16)}}),
    (COMPLETIONS, {**PROMPT, "stop": ["\n"], "n": 2, "logit_bias": {"1": 1}, "user": "u"}),
    (MESSAGES, {**MESSAGE, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}}),
])
def test_sane_values_are_served(gw: Proc, path: str, body: dict) -> None:
    reply = post(gw, path, body)
    assert reply.status == 200, reply.body[:300]


def test_several_choices_stream_as_openai_streams_them(gw: Proc) -> None:
    """n > 1 with stream is OpenAI's own feature (each chunk's choices carry their index): relayed, not refused."""
    reply = post(gw, CHAT_PATH, {**CHAT, "n": 2, "stream": True})
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    assert reply.body.rstrip().endswith(b"data: [DONE]")


def test_several_choices_to_a_provider_without_them_is_a_400(gw: Proc) -> None:
    reply = post(gw, CHAT_PATH, {"model": "claude-mini", "messages": HI, "n": 2, "stream": True})
    refused(reply, CHAT_PATH, param="n")
