"""Usage the gateway asked for behind the caller's back is taken out of the relayed stream, whole or in pieces."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice._native import token_counts
from sluice.pipeline.validate import ChatRequest
from sluice.server.endpoints import _asking_usage
from sluice.server.relay import Relayed, hide_usage, relay_stream

HEAD = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":'
USAGE = b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}'


def _chunk(choices: bytes, *, usage: bool, tail: bytes = b"") -> bytes:
    return b"data: " + HEAD + choices + (b',"usage":null' if usage else b"") + tail + b"}\n\n"


def _stream(usage: bool, tail: bytes = b"") -> bytes:
    """A chat stream as OpenAI sends it (compact JSON), with or without include_usage."""
    deltas = [b'{"role":"assistant","content":""}', b'{"content":"Hello"}', b'{"content":" \\"usage\\": null"}',
              b'{"content":"usage"}', b"{}"]
    events = [_chunk(b'[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]'
                     % (delta, b'"stop"' if delta == b"{}" else b"null"), usage=usage, tail=tail)
              for delta in deltas]
    if usage:
        events.append(b"data: " + HEAD + b"[]," + USAGE + tail + b"}\n\n")
    return b"".join(events) + b"data: [DONE]\n\n"


RECORDED = _stream(usage=True)
EXPECTED = _stream(usage=False)


class _Exchange:
    client = ""  # no socket: the stream's Backlog (server/backlog.py) finds none and stays out of the way

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.ended = False

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        pass

    async def write(self, chunk: bytes) -> None:
        assert chunk, "empty writes are not sent"
        self.written.append(chunk)

    async def end_stream(self) -> None:
        self.ended = True

    def on_disconnect(self, callback: Callable[[], object]) -> Callable[[], object]:
        return lambda: None


class _Response:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def next_chunk(self) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def abort(self) -> None:
        pass

    def release(self) -> None:
        pass


def _relay(pieces: list[bytes], hiding: bool = True) -> tuple[bytes, Relayed]:
    ex = _Exchange()
    relayed = asyncio.run(relay_stream(ex, _Response(pieces), [], hiding))  # type: ignore[arg-type]
    assert ex.ended
    return b"".join(ex.written), relayed


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def test_the_caller_gets_the_stream_it_asked_for_and_the_gateway_the_usage() -> None:
    whole, relayed = _relay([RECORDED])
    assert whole == EXPECTED
    assert relayed.usage is not None and token_counts(relayed.usage) == (9, 3)
    assert relayed.error is None


def test_whole_byte_by_byte_and_event_by_event_agree() -> None:
    whole, usage = _relay([RECORDED])
    one_by_one, usage_bytes = _relay([RECORDED[i:i + 1] for i in range(len(RECORDED))])
    events = [event + b"\n\n" for event in RECORDED.split(b"\n\n") if event]
    by_event, usage_events = _relay(events)
    assert whole == one_by_one == by_event == EXPECTED
    assert usage.usage == usage_bytes.usage == usage_events.usage


def test_splits_inside_usage_null_and_inside_the_usage_chunk() -> None:
    first_null = RECORDED.index(b',"usage":null')
    final = RECORDED.index(b'"choices":[],"usage"')
    for cuts in ([first_null + 3], [first_null + 1, first_null + 9], [final + 5], [final + 14, final + 30],
                 [first_null + 4, final + 20, len(RECORDED) - 3]):
        out, relayed = _relay(_pieces(RECORDED, cuts))
        assert out == EXPECTED, cuts
        assert relayed.usage is not None and token_counts(relayed.usage) == (9, 3)


@given(st.lists(st.integers(min_value=1, max_value=len(RECORDED) - 1), max_size=40))
def test_any_split_gives_the_same_stream(cuts: list[int]) -> None:
    out, relayed = _relay(_pieces(RECORDED, cuts))
    assert out == EXPECTED
    assert relayed.usage is not None and token_counts(relayed.usage) == (9, 3)


def test_without_hiding_the_stream_is_relayed_as_it_is() -> None:
    out, relayed = _relay([RECORDED[i:i + 7] for i in range(0, len(RECORDED), 7)], hiding=False)
    assert out == RECORDED
    assert relayed.usage is not None and token_counts(relayed.usage) == (9, 3)


def test_fields_after_usage_are_kept() -> None:
    """OpenAI now sends an "obfuscation" key after "usage"."""
    tail = b',"obfuscation":"x1y"'
    recorded, expected = _stream(usage=True, tail=tail), _stream(usage=False, tail=tail)
    out, relayed = _relay([recorded])
    assert out == expected
    assert relayed.usage is not None and token_counts(relayed.usage) == (9, 3)


@pytest.mark.parametrize(("events", "caller", "usage"), [
    # spaces after the separators (Python's json.dumps)
    (b'data: {"id": "c", "choices": [{"index": 0}], "usage": null}\n\n',
     b'data: {"id": "c", "choices": [{"index": 0}]}\n\n', None),
    (b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n', b"", b"x"),
    # usage first
    (b'data: {"usage":null,"id":"c","choices":[{"index":0}]}\n\n', b'data: {"id":"c","choices":[{"index":0}]}\n\n',
     None),
    # CRLF events, the usage chunk between others
    (b'data: {"choices":[{}],"usage":null}\r\n\r\ndata: {"choices":[],"usage":{"prompt_tokens":1}}\r\n\r\n'
     b"data: [DONE]\r\n\r\n", b'data: {"choices":[{}]}\r\n\r\ndata: [DONE]\r\n\r\n', b"x"),
    # Azure's content-filter chunk has empty choices and no usage: it stays
    (b'data: {"choices":[],"prompt_filter_results":[],"usage":null}\n\n',
     b'data: {"choices":[],"prompt_filter_results":[]}\n\n', None),
    # "usage" as a value is text, not a key
    (b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n', b'data: {"choices":[{"delta":{"content":"usage"}}]}\n\n',
     None),
])
def test_hide_usage_spellings(events: bytes, caller: bytes, usage: bytes | None) -> None:
    out, held = hide_usage(events)
    assert out == caller
    assert (held is None) == (usage is None)
    if held is not None:
        assert b'"choices"' in held and held in events


@pytest.mark.parametrize(("body", "model", "sent"), [
    (b'{"model":"m","stream":true,"messages":[]}', None, b'{"model":"m","stream":true,"messages":[],'
                                                        b'"stream_options":{"include_usage":true}}'),
    (b'{"model": "m", "stream": true}\n', None,
     b'{"model": "m", "stream": true,"stream_options":{"include_usage":true}}'),
    (b'{"model":"m","stream":true,"stream_options":{"include_usage":false,"x":1}}', None,
     b'{"model":"m","stream":true,"stream_options":{"include_usage":true,"x":1}}'),
    (b'{"model":"m","stream":true,"stream_options":null}', "t", b'{"model":"t","stream":true,'
                                                                b'"stream_options":{"include_usage":true}}'),
    # The key spelt with an escape is the key: merged, not appended a second time.
    (b'{"model":"m","stream":true,"stream\\u005foptions":null}', None,
     b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'),
])
def test_the_upstream_body_asks_for_usage(body: bytes, model: str | None, sent: bytes) -> None:
    has_options = msgspec.json.decode(body, type=ChatRequest).stream_options is not msgspec.UNSET
    assert _asking_usage(body, model, has_options) == sent
    assert orjson.loads(sent)["stream_options"]["include_usage"] is True
