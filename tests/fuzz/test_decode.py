"""Request decoding on every JSON route, and the providers' request translation after it.

Property: bytes into a route's decode stage (``sluice.pipeline.validate.decode`` with the route's type)
give the decoded request or ``InvalidRequest`` (a 400 in the caller's format), never another
exception; a request that decodes then goes to every provider kind (``Provider.prepare``: the
OpenAI, Azure, Anthropic and Gemini kinds, translated where the kind speaks another format), and to
the body rewrites of the endpoints (a renamed model, stream usage asked for), and comes out as an
upstream request with a JSON object body, or ``UnsupportedContent`` (a 400 naming the field, or the
next deployment), never another exception.  /v1/messages requests likewise through ``messages_call``
to an OpenAI-format target.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sluice.config import ProviderConfig
from sluice.errors import InvalidRequest
from sluice.pipeline.validate import (
    ChatRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    ModelRequest,
    decode,
    rename_model,
)
from sluice.providers import Call, build_provider
from sluice.providers.translate.errors import UnsupportedContent
from sluice.server.endpoints import _asking_usage
from sluice.server.messages import messages_call
from sluice.server.routes import MODEL_ENDPOINTS
from tests.fuzz._fuzz import CHAT_REQUEST, FUZZ, JSON, MESSAGES_REQUEST, corpus, dumps

# Every JSON model route and the type its decode stage reads (server/routes.py builds the same).
ROUTES: dict[str, type[ModelRequest]] = {**MODEL_ENDPOINTS, "/v1/messages": MessagesRequest,
                                         "/v1/messages/count_tokens": CountTokensRequest}
PROVIDERS = [build_provider(kind, ProviderConfig(kind=kind, base_url="http://127.0.0.1:9", api_keys=("k",),
                                                 api_version="2024-06-01" if kind == "azure" else None))
             for kind in ("openai", "azure", "anthropic", "gemini")]
OPENAI_TARGET = SimpleNamespace(provider=PROVIDERS[0], model="upstream-model")
# Bodies that crash after the decode stage (its checks are pipeline/validate.py's, another engineer's):
# xfail(strict) until fixed, so that the fix is noticed.  file -> (the routes it crashes on, why).
# (Numbers beyond a double's range, in float_in_unchecked_field.json, huge_int.json and huge_float.json,
# were here: the JSON check before decoding refuses them now.)
KNOWN_CRASHES: dict[str, tuple[set[str], str]] = {}


def test_the_routes_are_every_json_model_route() -> None:
    assert set(ROUTES) == {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                           "/v1/messages/count_tokens"}
    assert {**MODEL_ENDPOINTS, "/v1/messages": MessagesRequest,
                      "/v1/messages/count_tokens": CountTokensRequest} == ROUTES


def _json_object(body: bytes) -> dict[str, Any]:
    parsed = orjson.loads(body)
    assert isinstance(parsed, dict)
    return parsed


def through_the_gateway(kind: type[ModelRequest], body: bytes) -> None:
    """The body through the decode stage and on to every provider kind; fails on any exception not documented."""
    try:
        request = decode(body, kind)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
        return
    assert isinstance(request, kind) and request.model
    if kind is MessagesRequest:
        try:
            call, _ = messages_call(request, body, OPENAI_TARGET, "req-fuzz", None)  # type: ignore[arg-type]
        except UnsupportedContent as exc:
            assert exc.field
            return
        chat = _json_object(call.body)
        assert chat["model"] == "upstream-model"
        return
    if kind is CountTokensRequest:
        assert _json_object(rename_model(body, "upstream-model"))["model"] == "upstream-model"
        return
    endpoint = next(path for path, k in MODEL_ENDPOINTS.items() if k is kind)
    assert _json_object(rename_model(body, "upstream-model"))["model"] == "upstream-model"
    if kind is ChatRequest:
        assert isinstance(request, ChatRequest)
        asked = _json_object(_asking_usage(body, None, request.stream_options is not msgspec.UNSET))
        assert asked["stream_options"]["include_usage"] is True
    for provider in PROVIDERS:
        call = Call(endpoint, "POST", body, bool(request.stream), "req-fuzz", "upstream-model")
        if kind is not ChatRequest and provider.translates(call):
            continue  # the translating kinds serve chat only (routing refuses the rest before: capabilities)
        try:
            upstream = provider.prepare(call)
        except UnsupportedContent as exc:
            assert exc.field
            continue
        assert upstream.body is not None
        _json_object(upstream.body)


@pytest.mark.parametrize("kind", list(ROUTES.values()), ids=list(ROUTES))
@pytest.mark.parametrize("body", corpus("decode"))
def test_corpus(kind: type[ModelRequest], body: bytes, request: pytest.FixtureRequest) -> None:
    name, route = request.node.callspec.id.split("-", 1)
    routes, reason = KNOWN_CRASHES.get(name, (set(), ""))
    if route in routes:
        request.applymarker(pytest.mark.xfail(strict=True, raises=orjson.JSONDecodeError, reason=reason))
    through_the_gateway(kind, body)


@pytest.mark.parametrize("kind", list(ROUTES.values()), ids=list(ROUTES))
@FUZZ
@given(body=st.binary(max_size=300))
@example(body=b"")
@example(body=b"\xff\xfe{}")
@example(body=b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}\x00')
def test_arbitrary_bytes(kind: type[ModelRequest], body: bytes) -> None:
    through_the_gateway(kind, body)


@pytest.mark.parametrize("kind", list(ROUTES.values()), ids=list(ROUTES))
@FUZZ
@given(value=JSON)
@example(value=[])
@example(value={"model": ""})
@example(value={"model": "m", "messages": [], "max_tokens": -1})
def test_any_json(kind: type[ModelRequest], value: Any) -> None:
    through_the_gateway(kind, dumps(value))


@pytest.mark.parametrize("kind", [ChatRequest, CompletionRequest, EmbeddingRequest],
                         ids=["chat", "completions", "embeddings"])
@FUZZ
@given(request=CHAT_REQUEST)
@example(request={"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
    "url": "data:image/png;base64,"}}]}]})
@example(request={"model": "m", "messages": [{"role": "assistant", "content": None, "tool_calls": [
    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]})
@example(request={"model": "m", "messages": [{"role": "tool", "content": [{"type": "text", "text": "x"}]}]})
def test_openai_shaped_requests(kind: type[ModelRequest], request: dict[str, Any]) -> None:
    through_the_gateway(kind, dumps(request))


@pytest.mark.parametrize("kind", [MessagesRequest, CountTokensRequest], ids=["messages", "count_tokens"])
@FUZZ
@given(request=MESSAGES_REQUEST)
@example(request={"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_result",
                                                                          "tool_use_id": "t", "content": 5}]}]})
@example(request={"model": "m", "messages": [{"role": "user", "content": "hi"}], "system": [{"type": "image"}]})
def test_anthropic_shaped_requests(kind: type[ModelRequest], request: dict[str, Any]) -> None:
    through_the_gateway(kind, dumps(request))
