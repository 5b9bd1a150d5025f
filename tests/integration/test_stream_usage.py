"""Streams whose caller asked for no usage: the gateway asks the upstream for it, counts it and hides it.

Token limits settle on the real usage and metrics count the tokens, while the
caller gets exactly the stream it would have had; with nothing that needs the
tokens, the upstream gets the caller's body byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import orjson
import pytest

from sluice.mock.openai import REPLY
from tests.conftest import Proc, RawServer, call, read_request, start_gateway
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
STREAM = {**CHAT, "stream": True}
# Rate 5000 a 100 hours: the bucket refills less than a token while a test runs.
TOKENS = "{name: tokens, scope: global, unit: tokens, rate: 5000, period_s: 360000}"


def _gateway(tmp: Path, mock_url: str, raw_url: str, *, metrics: bool, limits: bool) -> Proc:
    ratelimit = f"ratelimit: {{default_max_tokens: 1000, policies: [{TOKENS}]}}" if limits else ""
    return start_gateway(tmp, f"""
observability: {{metrics: {str(metrics).lower()}, access_log: false}}
{ratelimit}
providers:
  mock: {{kind: openai, base_url: "{mock_url}"}}
  raw: {{kind: openai, base_url: "{raw_url}"}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  recorded: {{targets: [{{provider: raw, model: recorded}}]}}
  renamed: {{targets: [{{provider: raw, model: recorded-upstream}}]}}
""")


# -- an upstream that records the bodies it gets and answers as OpenAI does, in awkward pieces ---------------

_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
         b"connection: close\r\n\r\n")
_BASE = b'"id":"chatcmpl-rec","object":"chat.completion.chunk","created":1,"model":"recorded","choices":'
RAW_WORDS = ["Hello", " usage", " \\\"usage\\\":null", " world"]


def _openai_stream(include_usage: bool) -> bytes:
    """What OpenAI streams: compact JSON; with include_usage, "usage":null on each chunk and a usage chunk."""
    usage_null = b',"usage":null' if include_usage else b""
    tail = b',"obfuscation":"ab12"'
    deltas = ['{"role":"assistant","content":""}', *(f'{{"content":"{word}"}}' for word in RAW_WORDS), "{}"]
    events = [b'data: {' + _BASE + b'[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]%s%s}\n\n'
              % (delta.encode(), b'"stop"' if delta == "{}" else b"null", usage_null, tail) for delta in deltas]
    if include_usage:
        events.append(b'data: {' + _BASE + b'[],"usage":{"prompt_tokens":7,"completion_tokens":%d,'
                      b'"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0}}%s}\n\n'
                      % (len(RAW_WORDS), 7 + len(RAW_WORDS), tail))
    return b"".join(events) + b"data: [DONE]\n\n"


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[RawServer, list[bytes]]]:
    bodies: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        body = request[request.index(b"\r\n\r\n") + 4:]
        bodies.append(body)
        options = json.loads(body).get("stream_options") or {}
        stream = _openai_stream(options.get("include_usage") is True)
        writer.write(_HEAD)
        for start in range(0, len(stream), 7):  # pieces that cut events, "usage":null and the usage chunk
            piece = stream[start:start + 7]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            if start % 70 == 0:
                await asyncio.sleep(0.001)  # pacing: pieces in separate reads, as a network delivers them
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = RawServer(handler)
    yield server, bodies
    server.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Proc,
          recorder: tuple[RawServer, list[bytes]]) -> Iterator[Proc]:
    """Metrics, access log, tracing and limits off: nobody needs the tokens."""
    proc = _gateway(tmp_path_factory.mktemp("plain"), mock_upstream.url, recorder[0].url, metrics=False, limits=False)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Proc,
             recorder: tuple[RawServer, list[bytes]]) -> Iterator[Proc]:
    """Metrics and a token limit on."""
    proc = _gateway(tmp_path_factory.mktemp("counting"), mock_upstream.url, recorder[0].url, metrics=True,
                    limits=True)
    yield proc
    proc.stop()


def _client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-caller", max_retries=0)


def _normalised(body: bytes) -> bytes:
    """The mock's stream with what differs between two answers (id, created) blanked."""
    body = re.sub(rb'"id":"chatcmpl-mock\d+"', b'"id":""', body)
    return re.sub(rb'"created":\d+', b'"created":0', body)


def _raw_stream(gateway: Proc, request: dict[str, object]) -> bytes:
    reply = call(gateway.url, "POST", "/v1/chat/completions", request)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    return reply.body


# -- the tests ------------------------------------------------------------------------------------------------


def test_a_stream_without_usage_settles_the_token_limit_with_the_real_usage(tmp_path, mock_upstream,
                                                                             recorder) -> None:
    gateway = _gateway(tmp_path, mock_upstream.url, recorder[0].url, metrics=True, limits=True)
    try:
        first = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
        chunks = list(_client(gateway).chat.completions.create(**CHAT, stream=True))  # type: ignore[call-overload]
        last = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
        samples = scrape(gateway.url)
    finally:
        gateway.stop()
    assert first.status == last.status == 200 and chunks
    used = first.json()["usage"]["total_tokens"]  # the stream asks the same, so it uses as much
    reserve = len(json.dumps(CHAT).encode()) // 4 + 1000
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 5000 - reserve
    remaining = int(last.headers["x-ratelimit-remaining-tokens"])
    # settled to its usage: had the stream kept its reservation (~1000) this would be far lower
    assert 5000 - 2 * used - reserve <= remaining <= 5000 - 2 * used - reserve + 1
    words = len(REPLY.split(" "))
    assert value(samples, "sluice_tokens_output_total", model="gpt-4o-mini") == 3 * words


def test_the_caller_sees_the_stream_it_asked_for(plain, counting) -> None:
    texts, chunk_lists = [], []
    for gateway in (plain, counting):
        chunks = list(_client(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], stream=True))
        chunk_lists.append(chunks)
        texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert texts[0] == texts[1] == REPLY
    for chunks in chunk_lists:
        assert all(c.choices and c.usage is None for c in chunks)
        assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    assert len(chunk_lists[0]) == len(chunk_lists[1])
    # byte for byte the same stream, but for the mock's ids and times
    assert _normalised(_raw_stream(counting, STREAM)) == _normalised(_raw_stream(plain, STREAM))
    # an explicit include_usage false is honoured the same way
    refused = {**STREAM, "stream_options": {"include_usage": False}}
    assert _normalised(_raw_stream(counting, refused)) == _normalised(_raw_stream(plain, refused))
    assert b'"usage"' not in _raw_stream(counting, refused)


def test_a_caller_that_asked_for_usage_gets_it_unchanged(plain, counting) -> None:
    asked = {**STREAM, "stream_options": {"include_usage": True}}
    mine = _raw_stream(counting, asked)
    assert _normalised(mine) == _normalised(_raw_stream(plain, asked))
    assert mine.count(b'"usage":null') == len(REPLY.split(" ")) + 2 and b'"choices":[],"usage":{' in mine
    chunks = list(_client(counting).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], stream=True,
        stream_options={"include_usage": True}))
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.completion_tokens == len(REPLY.split(" "))
    assert all(c.usage is None for c in chunks[:-1])


def test_the_upstream_body_is_changed_only_when_someone_needs_the_tokens(tmp_path, mock_upstream, recorder,
                                                                          plain) -> None:
    server, bodies = recorder
    body = b'{"model": "recorded", "stream": true,\n "messages": [{"role": "user", "content": "hi \\u00e9"}]}'
    asked = body[:-1] + b',"stream_options":{"include_usage":true}}'
    headers = {"content-type": "application/json"}
    metrics_only = _gateway(tmp_path, mock_upstream.url, server.url, metrics=True, limits=False)
    limits_only = _gateway(tmp_path, mock_upstream.url, server.url, metrics=False, limits=True)
    try:
        replies, sent = [], []
        for gateway, request in ((plain, body), (metrics_only, body), (limits_only, body), (plain, asked),
                                 (metrics_only, asked)):
            bodies.clear()
            reply = call(gateway.url, "POST", "/v1/chat/completions", request, headers)
            assert reply.status == 200
            replies.append(reply.body)
            sent.append(bodies[0])
        bodies.clear()
        renamed = json.loads(body)
        renamed["model"] = "renamed"
        assert call(metrics_only.url, "POST", "/v1/chat/completions", json.dumps(renamed).encode(),
                    headers).status == 200
        samples = scrape(metrics_only.url)
    finally:
        metrics_only.stop()
        limits_only.stop()
    assert sent[0] == body  # nothing needs the tokens: byte for byte what the caller sent
    assert sent[1] == sent[2] == asked  # only the key added, every other byte kept
    assert sent[3] == sent[4] == asked  # the caller asked already: nothing to add
    assert orjson.loads(bodies[0]) == {**renamed, "model": "recorded-upstream",
                                       "stream_options": {"include_usage": True}}
    # what the caller gets is what it asked for, whoever counts, however the upstream cut its stream
    assert replies[0] == replies[1] == replies[2] == _openai_stream(False)
    assert replies[3] == replies[4] == _openai_stream(True)
    # and the hidden usage was counted: two streams with usage reached the counting gateway, one renamed
    assert value(samples, "sluice_tokens_output_total", model="recorded") == 2 * len(RAW_WORDS)
    assert value(samples, "sluice_tokens_input_total", model="recorded") == 2 * 7
    assert value(samples, "sluice_tokens_output_total", model="renamed") == len(RAW_WORDS)


@pytest.mark.parametrize("options", [b"null", b'{"include_usage": false}'])
def test_stream_options_spelt_with_an_escape_reach_the_upstream_once(counting, recorder, options: bytes) -> None:
    """The key is the decoded request's, however spelt: "stream\\u005foptions" is stream_options, so the
    gateway merges include_usage into it rather than appending a second stream_options key."""
    _, bodies = recorder
    body = (b'{"model": "recorded", "stream": true, "stream\\u005foptions": ' + options
            + b', "messages": [{"role": "user", "content": "hi"}]}')
    bodies.clear()
    reply = call(counting.url, "POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    assert reply.status == 200
    pairs = json.loads(bodies[0], object_pairs_hook=lambda items: items)
    assert [key for key, _ in pairs].count("stream_options") == 1
    assert dict(pairs)["stream_options"] == [("include_usage", True)]
    assert reply.body == _openai_stream(False)  # the usage asked for behind the caller's back stays hidden
