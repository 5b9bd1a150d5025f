"""SSE event splitting, and request decoding that names the bad field."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.errors import InvalidRequest
from sluice.pipeline.validate import ChatRequest, EmbeddingRequest, decode, rename_model
from sluice.server.relay import split_events


@pytest.mark.parametrize(("data", "end"), [
    (b"", 0), (b"data: x", 0), (b"data: x\n\n", 9), (b"data: x\n\ndata: y", 9), (b"data: x\r\n\r\ndata", 11),
    (b"a\n\nb\n\nc", 6), (b"a\n\nb\r\n\r\n", 8),
])
def test_split_events(data: bytes, end: int) -> None:
    assert split_events(data) == end


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=10),
       st.binary(max_size=30).filter(lambda b: b"\n\n" not in b and b"\r\n\r\n" not in b))
def test_split_keeps_whole_events_and_the_rest(events: list[bytes], tail: bytes) -> None:
    whole = b"".join(b"data: " + e + b"\n\n" for e in events)
    if tail.startswith(b"\n") and whole:
        tail = b"x" + tail
    data = whole + tail
    end = split_events(data)
    assert data[:end] == whole or (end > len(whole) and data[:end].endswith(b"\n\n"))


def test_decode_keeps_only_what_the_gateway_needs() -> None:
    request = decode(b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [1], '
                     b'"stream": true, "max_tokens": 5}', ChatRequest)
    assert request.model == "m" and request.stream is True and request.max_tokens == 5


def test_decode_embeddings_input_forms() -> None:
    assert decode(b'{"model": "e", "input": ["a", "b"]}', EmbeddingRequest).input == ["a", "b"]
    assert decode(b'{"model": "e", "input": [[1, 2]]}', EmbeddingRequest).input == [[1, 2]]


@pytest.mark.parametrize(("body", "param"), [
    (b'{"model": "", "messages": [{"role": "user"}]}', "model"),
    (b'{"model": "m", "messages": []}', "messages"),
    (b'{"model": "m", "messages": [{"role": "user"}], "n": 1.5}', "n"),
])
def test_decode_rejects(body: bytes, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode(body, ChatRequest)
    assert info.value.param == param
    assert info.value.status == 400


def test_rename_model_keeps_unknown_fields() -> None:
    body = b'{"model": "alias", "messages": [], "tools": [{"type": "function"}], "x_vendor": {"a": [1, 2.5]}}'
    renamed = orjson.loads(rename_model(body, "real"))
    assert renamed == {**orjson.loads(body), "model": "real"}
