"""The official openai SDK, unchanged, against sluice in front of the mock upstream."""

from __future__ import annotations

import asyncio
import base64
import itertools
import struct
from collections.abc import Iterator

import openai
import pytest

from sluice.mock.openai import REPLY
from tests.conftest import call

pytestmark = pytest.mark.integration

WORDS = REPLY.split(" ")


_OPENED: list[openai.OpenAI] = []


def client(gateway, **kwargs) -> openai.OpenAI:
    """An SDK client, closed after the test (an unclosed one leaves its pooled sockets to the garbage collector)."""
    made = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo", max_retries=0, **kwargs)
    _OPENED.append(made)
    return made


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPENED:
        _OPENED.pop().close()


def test_chat_completion(gateway) -> None:
    answer = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there!"}]
    )
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "gpt-4o-mini"
    assert answer.usage is not None and answer.usage.completion_tokens == len(WORDS)
    assert answer.usage.prompt_tokens == len("Hello there!") // 4 + len("user") // 4


def test_chat_max_tokens_and_n(gateway) -> None:
    answer = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=2
    )
    assert [c.message.content for c in answer.choices] == [" ".join(WORDS[:3])] * 2
    assert {c.finish_reason for c in answer.choices} == {"length"}


def test_chat_streaming_with_usage(gateway) -> None:
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == REPLY
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == len(WORDS)


def test_chat_streaming_without_usage(gateway) -> None:
    chunks = list(client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
    ))
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY


def test_async_chat_and_stream(gateway) -> None:
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo",
                                      max_retries=0) as aclient:
            plain = await aclient.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            stream = await aclient.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content or "", streamed

    plain, streamed = asyncio.run(run())
    assert plain == REPLY
    assert streamed == REPLY


def test_concurrent_async_requests(gateway) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo",
                                      max_retries=0) as aclient:
            answers = await asyncio.gather(*[
                aclient.chat.completions.create(model="gpt-4o-mini",
                                                messages=[{"role": "user", "content": f"q{i}"}])
                for i in range(50)
            ])
            return [a.choices[0].message.content or "" for a in answers]

    assert asyncio.run(run()) == [REPLY] * 50


def test_completions_plain_and_stream(gateway) -> None:
    api = client(gateway)
    plain = api.completions.create(model="gpt-4o-mini", prompt="Say hi")
    assert plain.choices[0].text == REPLY
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model="gpt-4o-mini", prompt="Say hi", stream=True) if c.choices)
    assert streamed == REPLY


def test_embeddings_float_and_base64(gateway) -> None:
    api = client(gateway)
    result = api.embeddings.create(model="text-embedding-3-small", input=["one", "two"], dimensions=8)
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in result.data)
    assert result.data[0].embedding != result.data[1].embedding
    # The SDK asks for base64 by default; ask explicitly through the raw API to see the wire form.
    raw = call(gateway.url, "POST", "/v1/embeddings", {
        "model": "text-embedding-3-small", "input": "one", "dimensions": 8, "encoding_format": "base64"})
    vector = struct.unpack("<8f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert vector == pytest.approx(result.data[0].embedding, abs=1e-6)


def test_models_list_and_retrieve(gateway) -> None:
    api = client(gateway)
    names = {m.id for m in api.models.list()}
    assert {"gpt-4o-mini", "text-embedding-3-small", "alias-mini"} <= names
    assert api.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError) as info:
        api.models.retrieve("no-such-model")
    assert info.value.body["code"] == "model_not_found"


def test_model_renamed_for_the_target(gateway) -> None:
    answer = client(gateway).chat.completions.create(
        model="alias-mini", messages=[{"role": "user", "content": "hi"}], temperature=0.5,
    )
    assert answer.model == "gpt-4o"  # the mock echoes the model it was asked for


def test_upstream_errors_reach_the_sdk_with_their_status(gateway) -> None:
    api = client(gateway)
    with pytest.raises(openai.InternalServerError) as info:
        api.chat.completions.create(model="broken-500", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 500
    with pytest.raises(openai.RateLimitError):
        api.chat.completions.create(model="broken-429", messages=[{"role": "user", "content": "hi"}])


def test_request_id_forwarded_and_credentials_replaced(gateway, mock_upstream) -> None:
    request_id = f"trace-me-{gateway.port}"
    response = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": request_id},
    )
    assert response.headers["x-request-id"] == request_id
    seen = call(mock_upstream.url, "GET", "/_mock/requests").json()
    mine = [r for r in seen if r["headers"]["x-request-id"] == request_id]
    assert len(mine) == 1
    # The caller's key never reaches the provider: the provider's pool key does.
    assert mine[0]["headers"]["authorization"] in ("Bearer sk-upstream-1", "Bearer sk-upstream-2")
    assert mine[0]["headers"]["x-extra"] == "from-config"


def test_provider_keys_rotate(gateway, mock_upstream) -> None:
    api = client(gateway)
    ids = [f"rotation-{i}-{gateway.port}" for i in range(4)]
    for rid in ids:
        api.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                    extra_headers={"x-request-id": rid})
    seen = {r["headers"]["x-request-id"]: r["headers"]["authorization"]
            for r in call(mock_upstream.url, "GET", "/_mock/requests").json()}
    keys = [seen[rid] for rid in ids]
    assert set(keys) == {"Bearer sk-upstream-1", "Bearer sk-upstream-2"}
    assert all(a != b for a, b in itertools.pairwise(keys))
