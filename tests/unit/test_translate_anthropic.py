"""OpenAI chat <-> Anthropic Messages translation: golden files, real-SDK shape checks, hypothesis properties.

Golden files: ``tests/golden/anthropic/<direction>/<case>.in.<ext>`` is an input,
``<case>.out.<ext>`` the expected output, reviewed by hand: they are the spec.

    chat_to_messages, messages_to_chat,          .json in/out (model "claude-sonnet-4-5",
    message_to_completion, completion_to_message  created 1700000000); a refused request's
                                                  expected output is {"unsupported": {field, reason}}
    error_to_openai, error_to_anthropic          in: {"status", "body"} (a string body is sent
                                                  as is, anything else as JSON); out: the JSON
    stream_messages_to_chat[_no_usage]           .sse in/out: the translated bytes (feed, then
    stream_chat_to_messages                      close), then one SSE comment line with the
                                                  translator's usage and error

Every stream case is fed in one piece and byte by byte, which must give the same bytes.
To rewrite the expected files from the current code (then read the diff: it is the spec):

    SLUICE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_translate_anthropic.py
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic.lib.streaming._messages import accumulate_event  # the SDK's own stream accumulator
from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
)
from anthropic.types.shared import ErrorResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from sluice.providers.translate.anthropic import (
    ChatToMessagesStream,
    MessagesToChatStream,
    UnsupportedContent,
    chat_to_messages,
    completion_to_message,
    error_to_anthropic,
    error_to_openai,
    message_to_completion,
    messages_to_chat,
    token_counts,
)
from sluice.providers.translate.anthropic_stream import FINISH_TO_STOP, STOP_TO_FINISH
from sluice.providers.translate.sse import SSEParser

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "anthropic"
UPDATE = os.environ.get("SLUICE_UPDATE_GOLDEN") == "1"
MODEL = "claude-sonnet-4-5"
CREATED = 1700000000
Stream = tuple[bytes, dict[str, Any]]  # a generated stream's bytes, and what its translation must hold
ANTHROPIC_EVENTS: dict[str, Any] = {
    "message_start": RawMessageStartEvent, "content_block_start": RawContentBlockStartEvent,
    "content_block_delta": RawContentBlockDeltaEvent, "content_block_stop": RawContentBlockStopEvent,
    "message_delta": RawMessageDeltaEvent, "message_stop": RawMessageStopEvent,
}


# ---------------------------------------------------------------- parsing and checking outputs


def sse_events(data: bytes) -> list[tuple[str, str]]:
    parser = SSEParser()
    events = parser.feed(data)
    assert not parser.pending, "the output ends mid-event"
    return [(event.event, event.data) for event in events]


def check_openai_stream(out: bytes) -> ChatCompletion | None:
    """Every chunk as the openai SDK reads it, accumulated by the SDK; the final completion if one finished."""
    state = ChatCompletionStreamState()
    seen = False
    for _, data in sse_events(out):
        if data == "[DONE]":
            continue
        payload = orjson.loads(data)
        if "error" in payload:
            assert set(payload["error"]) == {"message", "type", "param", "code"}
            continue
        list(state.handle_chunk(ChatCompletionChunk.model_validate(payload)))
        seen = True
    if not seen or state.current_completion_snapshot.choices[0].finish_reason is None:
        return None
    # The snapshot, not get_final_completion(): that one refuses finish_reason "length".
    return ChatCompletion.model_validate(state.current_completion_snapshot.model_dump())


def check_anthropic_stream(out: bytes) -> Message | None:
    """Every event as the anthropic SDK reads it, accumulated by the SDK; the final message if one ended."""
    snapshot, buffers, stopped = None, {}, False
    for name, data in sse_events(out):
        payload = orjson.loads(data)
        assert payload["type"] == name
        if name == "error":
            assert set(payload) == {"type", "error"} and set(payload["error"]) == {"type", "message"}
            continue
        event = ANTHROPIC_EVENTS[name].model_validate(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
        stopped = name == "message_stop"
    return Message.model_validate(snapshot.model_dump()) if stopped and snapshot is not None else None


def run_stream(make: Callable[[], Any], data: bytes, pieces: list[bytes] | None = None) -> tuple[bytes, Any]:
    translator = make()
    out = b"".join(translator.feed(piece) for piece in (pieces if pieces is not None else [data]))
    return out + translator.close(), translator


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(data)])]


# ---------------------------------------------------------------- golden cases


def _refused(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except UnsupportedContent as exc:
        return {"unsupported": {"field": exc.field, "reason": exc.reason}}


def _error_body(case: dict[str, Any]) -> bytes:
    return case["body"].encode() if isinstance(case["body"], str) else orjson.dumps(case["body"])


def _stream(make: Callable[[], Any], check: Callable[[bytes], Any]) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        whole, translator = run_stream(make, data)
        by_byte, _ = run_stream(make, data, [data[i:i + 1] for i in range(len(data))])
        assert by_byte == whole, "fed byte by byte, the stream translates differently"
        check(whole)
        usage = list(translator.usage)
        return whole + f": usage={usage} error={json.dumps(translator.error)}\n".encode()
    return run


def _validated(model: Any, call: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    def run(case: dict[str, Any]) -> Any:
        out = _refused(lambda: call(case))
        if "unsupported" not in out:
            model.model_validate(out)
        return out
    return run


def _anthropic_error(case: dict[str, Any]) -> Any:
    out = orjson.loads(error_to_anthropic(case["status"], _error_body(case)))
    if out["error"]["type"] != "request_too_large":  # documented by Anthropic for 413, absent from the SDK's union
        ErrorResponse.model_validate(out)
    return out


def _openai_error(case: dict[str, Any]) -> Any:
    out = orjson.loads(error_to_openai(case["status"], _error_body(case)))
    assert set(out["error"]) == {"message", "type", "param", "code"}
    return out


JSON_DIRECTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "chat_to_messages": lambda case: _refused(lambda: chat_to_messages(case, MODEL)),
    "messages_to_chat": lambda case: _refused(lambda: messages_to_chat(case)),
    "message_to_completion": _validated(ChatCompletion, lambda case: message_to_completion(case, MODEL, CREATED)),
    "completion_to_message": _validated(Message, lambda case: completion_to_message(case, MODEL)),
    "error_to_openai": _openai_error,
    "error_to_anthropic": _anthropic_error,
}
STREAM_DIRECTIONS: dict[str, Callable[[bytes], bytes]] = {
    "stream_messages_to_chat": _stream(lambda: MessagesToChatStream(MODEL, CREATED, True), check_openai_stream),
    "stream_messages_to_chat_no_usage": _stream(lambda: MessagesToChatStream(MODEL, CREATED, False),
                                                check_openai_stream),
    "stream_chat_to_messages": _stream(lambda: ChatToMessagesStream(MODEL), check_anthropic_stream),
}
CASES = sorted(path for path in GOLDEN.glob("*/*.in.*"))


def test_every_direction_has_golden_cases() -> None:
    directions = {path.parent.name for path in CASES}
    assert directions == set(JSON_DIRECTIONS) | set(STREAM_DIRECTIONS)


@pytest.mark.parametrize("source", CASES, ids=lambda path: f"{path.parent.name}/{path.name.split('.')[0]}")
def test_golden(source: Path) -> None:
    direction = source.parent.name
    expected = source.with_name(source.name.replace(".in.", ".out."))
    if direction in STREAM_DIRECTIONS:
        got = STREAM_DIRECTIONS[direction](source.read_bytes())
        if UPDATE:
            expected.write_bytes(got)
        assert got == expected.read_bytes()
        return
    result = JSON_DIRECTIONS[direction](orjson.loads(source.read_bytes()))
    if UPDATE:
        expected.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    assert result == orjson.loads(expected.read_bytes())


# ---------------------------------------------------------------- small unit checks


def test_token_counts_reads_every_shape() -> None:
    anthropic = {"input_tokens": 10, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 20,
                 "output_tokens": 5}
    assert token_counts(anthropic) == (330, 5)
    assert token_counts({"type": "message", "usage": anthropic}) == (330, 5)
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}
    assert token_counts(start) == (7, 1)
    assert token_counts({"type": "message_delta", "usage": {"output_tokens": 9}}) == (-1, 9)
    assert token_counts({"usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}) == (12, 3)
    assert token_counts({}) == (-1, -1)


def test_usage_maps_back_and_forth() -> None:
    anthropic = {"input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 300,
                 "output_tokens": 5}
    message = {"id": "msg_1", "content": [], "stop_reason": "end_turn", "usage": anthropic}
    usage = message_to_completion(message, MODEL, CREATED)["usage"]
    assert usage == {"prompt_tokens": 330, "completion_tokens": 5, "total_tokens": 335,
                     "prompt_tokens_details": {"cached_tokens": 300, "cache_write_tokens": 20}}
    assert completion_to_message({"id": "x", "choices": [], "usage": usage}, MODEL)["usage"] == anthropic


def test_stop_reasons_map_both_ways() -> None:
    for finish, stop in FINISH_TO_STOP.items():
        assert STOP_TO_FINISH[stop] == (finish if finish != "function_call" else "tool_calls")


def test_unsupported_content_is_the_shared_error() -> None:
    from sluice.providers.translate.errors import UnsupportedContent as Shared

    assert UnsupportedContent is Shared  # app.py catches this one class for every translator
    with pytest.raises(ValueError, match=r"^messages\[0\]\.content\[0\]\.type: "):
        chat_to_messages({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, MODEL)


def test_a_stream_ignores_bytes_after_its_end_and_closes_once() -> None:
    stream = MessagesToChatStream(MODEL, CREATED, True)
    assert stream.feed(b"event: ping\ndata: {}") == b""
    first = stream.close()
    assert first.startswith(b"data: {\"error\"") and first.endswith(b"\n\n") and stream.error == "upstream_stream_cut"
    assert stream.close() == b"" and stream.feed(b"data: {}\n\n") == b""
    reverse = ChatToMessagesStream(MODEL)
    assert reverse.feed(b"data: [DONE]\n\n").endswith(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
    assert reverse.close() == b"" and reverse.error is None


# ---------------------------------------------------------------- property: requests survive the round trip

TEXT = st.text(max_size=12)
NAMES = st.from_regex(r"[a-z][a-z_]{0,9}", fullmatch=True)
CALL_IDS = st.from_regex(r"call_[A-Za-z0-9]{1,8}", fullmatch=True)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT
           | st.floats(allow_nan=False, allow_infinity=False))


def _json_containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)


JSON_VALUES = st.recursive(SCALARS, _json_containers, max_leaves=8)
ARGUMENTS = st.dictionaries(TEXT, JSON_VALUES, max_size=4)
IMAGE_URLS = st.one_of(
    st.builds(lambda media, data: f"data:{media};base64,{base64.b64encode(data).decode()}",
              st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]), st.binary(max_size=12)),
    st.builds(lambda path: f"https://example.com/{path}.png", NAMES),
)


def _text_content(draw: st.DrawFn) -> str | list[dict[str, Any]]:
    if draw(st.booleans()):
        return draw(TEXT)
    return [{"type": "text", "text": text} for text in draw(st.lists(TEXT, max_size=3))]


@st.composite
def chat_messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "user", "assistant", "assistant", "tool"]))
    if role in ("system", "developer"):
        return {"role": role, "content": _text_content(draw)}
    if role == "tool":
        return {"role": "tool", "tool_call_id": draw(CALL_IDS), "content": _text_content(draw)}
    if role == "user":
        if draw(st.booleans()):
            return {"role": "user", "content": draw(TEXT)}
        parts = draw(st.lists(st.one_of(
            TEXT.map(lambda text: {"type": "text", "text": text}),
            IMAGE_URLS.map(lambda url: {"type": "image_url", "image_url": {"url": url}})), max_size=4))
        return {"role": "user", "content": parts}
    message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | TEXT)}
    calls = draw(st.lists(st.tuples(CALL_IDS, NAMES, ARGUMENTS), max_size=3))
    if calls:
        message["tool_calls"] = [{"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(arguments)}}
                                 for call_id, name, arguments in calls]
    return message


def _texts(content: Any) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [part["text"] for part in content if part["type"] == "text"]


def facts(request: dict[str, Any]) -> dict[str, list[Any]]:
    """What must survive: system texts, each role's texts, images, tool calls, tool results (each in order)."""
    found: dict[str, list[Any]] = {"system": [], "texts": [], "images": [], "calls": [], "results": []}
    for message in request["messages"]:
        role, content = message["role"], message.get("content")
        if role in ("system", "developer"):
            found["system"] += [text for text in _texts(content) if text]
        elif role == "tool":
            found["results"].append((message["tool_call_id"], "".join(_texts(content))))
        else:
            found["texts"] += [(role, text) for text in _texts(content) if text]
            if isinstance(content, list):
                found["images"] += [part["image_url"]["url"] for part in content if part["type"] == "image_url"]
            found["calls"] += [(call["id"], call["function"]["name"], json.loads(call["function"]["arguments"]))
                               for call in message.get("tool_calls") or ()]
    return found


def check_anthropic_request(body: dict[str, Any]) -> None:
    """What the Messages API insists on: alternating roles, no empty text, tool results first in a turn."""
    roles = [message["role"] for message in body["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    for message in body["messages"]:
        blocks = message["content"]
        if isinstance(blocks, str):
            assert blocks
            continue
        assert all(block["text"] for block in blocks if block["type"] == "text")
        kinds = [block["type"] == "tool_result" for block in blocks]
        assert kinds == sorted(kinds, reverse=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chat_messages(), min_size=1, max_size=8))
def test_requests_survive_the_round_trip(messages: list[dict[str, Any]]) -> None:
    request = {"model": "gpt-4o", "messages": messages}
    body = chat_to_messages(request, MODEL)
    check_anthropic_request(body)
    back = messages_to_chat(orjson.loads(orjson.dumps(body)))
    assert facts(back) == facts(request)


# ---------------------------------------------------------------- property: Anthropic streams -> OpenAI


def _pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=4))
    return [text[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(text)])]


def _anthropic_event(payload: dict[str, Any], crlf: bool) -> bytes:
    event = f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"
    return (event.replace("\n", "\r\n") if crlf else event).encode()


@st.composite
def anthropic_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    crlf = draw(st.booleans())
    usage = {key: draw(st.integers(0, 10**6)) for key in
             ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")}
    stop = draw(st.sampled_from(sorted(STOP_TO_FINISH)))
    events: list[dict[str, Any]] = [{"type": "message_start", "message": {
        "id": "msg_x", "type": "message", "role": "assistant", "model": "claude", "content": [],
        "stop_reason": None, "usage": {**usage, "output_tokens": 1}}}, {"type": "ping"}]
    expected: dict[str, Any] = {"text": "", "calls": [], "usage": usage, "finish": STOP_TO_FINISH[stop]}
    for index, kind in enumerate(draw(st.lists(st.sampled_from(["text", "tool_use", "thinking"]), max_size=5))):
        events.extend(_anthropic_block(draw, index, kind, expected))
    events += [{"type": "message_delta", "delta": {"stop_reason": stop},
                "usage": {"output_tokens": usage["output_tokens"]}}, {"type": "message_stop"}]
    return b"".join(_anthropic_event(event, crlf) for event in events), expected


def _anthropic_block(draw: st.DrawFn, index: int, kind: str, expected: dict[str, Any]) -> list[dict[str, Any]]:
    if kind == "tool_use":
        call_id, name, arguments = f"toolu_{index}", draw(NAMES), draw(ARGUMENTS)
        expected["calls"].append((call_id, name, arguments))
        start = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _pieces(draw, json.dumps(arguments))]
    elif kind == "text":
        text = draw(st.text(max_size=30))
        expected["text"] += text
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(draw, text)]
    else:
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": draw(TEXT)}, {"type": "signature_delta", "signature": "s"}]
    return [{"type": "content_block_start", "index": index, "content_block": start},
            *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
            {"type": "content_block_stop", "index": index}]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_streams(), st.data())
def test_anthropic_streams_translate_whole_however_split(stream: Stream, data: st.DataObject) -> None:
    source, expected = stream
    cuts = data.draw(st.lists(st.integers(0, len(source)), max_size=12))
    out, translator = run_stream(lambda: MessagesToChatStream(MODEL, CREATED, True), source, split_at(source, cuts))
    assert out == run_stream(lambda: MessagesToChatStream(MODEL, CREATED, True), source)[0]
    assert translator.error is None
    events = [data for _, data in sse_events(out)]
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]"
    chunks = [orjson.loads(data) for data in events[:-1]]
    finishes = [choice["finish_reason"] for chunk in chunks for choice in chunk["choices"] if choice["finish_reason"]]
    assert finishes == [expected["finish"]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == expected["text"]
    calls: dict[int, list[Any]] = {}
    for chunk in chunks:
        for call in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            entry = calls.setdefault(call["index"], [call.get("id"), call["function"].get("name"), ""])
            entry[2] += call["function"]["arguments"]
    assert [(i, n, json.loads(a)) for i, n, a in (calls[k] for k in sorted(calls))] == expected["calls"]
    usage = expected["usage"]
    prompt = usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == prompt
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == usage["cache_read_input_tokens"]
    assert translator.usage == (prompt, usage["output_tokens"])
    completion = check_openai_stream(out)
    assert completion is not None and completion.choices[0].finish_reason == expected["finish"]


# ---------------------------------------------------------------- property: OpenAI streams -> Anthropic


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "gpt",
            "choices": choices, "usage": usage}


@st.composite
def openai_streams(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    finish = draw(st.sampled_from(sorted(FINISH_TO_STOP)))
    usage = {"prompt_tokens": draw(st.integers(0, 10**6)), "completion_tokens": draw(st.integers(0, 10**6))}
    cached = draw(st.integers(0, usage["prompt_tokens"]))
    usage |= {"total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
              "prompt_tokens_details": {"cached_tokens": cached}}
    chunks = [_chunk({"role": "assistant", "content": ""})]
    expected: dict[str, Any] = {"text": "", "calls": [], "usage": usage, "stop": FINISH_TO_STOP[finish]}
    text = draw(st.text(max_size=40))
    expected["text"] = text
    chunks += [_chunk({"content": piece}) for piece in _pieces(draw, text)]
    for index, (name, arguments) in enumerate(draw(st.lists(st.tuples(NAMES, ARGUMENTS), max_size=3))):
        call_id = f"call_{index}"
        expected["calls"].append((call_id, name, arguments))
        pieces = _pieces(draw, json.dumps(arguments))
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": pieces[0]}}
        chunks.append(_chunk({"tool_calls": [first]}))
        chunks += [_chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]}) for p in pieces[1:]]
    chunks += [_chunk({}, finish), _chunk(usage=usage)]
    lines = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks]
    if draw(st.booleans()):
        lines.append(b"data: [DONE]\n\n")  # optional: a finish_reason and usage already end the message
    return b"".join(lines), expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(openai_streams(), st.data())
def test_openai_streams_translate_whole_however_split(stream: Stream, data: st.DataObject) -> None:
    source, expected = stream
    cuts = data.draw(st.lists(st.integers(0, len(source)), max_size=12))
    out, translator = run_stream(lambda: ChatToMessagesStream(MODEL), source, split_at(source, cuts))
    assert out == run_stream(lambda: ChatToMessagesStream(MODEL), source)[0]
    assert translator.error is None
    events = [(name, orjson.loads(data)) for name, data in sse_events(out)]
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_delta") == 1 and names.count("message_stop") == 1
    delta = events[-2][1]
    usage = expected["usage"]
    cached = usage["prompt_tokens_details"]["cached_tokens"]
    assert delta["delta"]["stop_reason"] == expected["stop"]
    assert delta["usage"]["output_tokens"] == usage["completion_tokens"]
    assert (delta["usage"]["input_tokens"], delta["usage"]["cache_read_input_tokens"]) == (
        usage["prompt_tokens"] - cached, cached)
    assert translator.usage == (usage["prompt_tokens"], usage["completion_tokens"])
    message = check_anthropic_stream(out)
    assert message is not None and message.stop_reason == expected["stop"]
    assert "".join(block.text for block in message.content if block.type == "text") == expected["text"]
    calls = [(block.id, block.name, block.input) for block in message.content if block.type == "tool_use"]
    assert calls == expected["calls"]
    partial = [payload["delta"]["partial_json"] for name, payload in events
               if name == "content_block_delta" and payload["delta"]["type"] == "input_json_delta"]
    assert "".join(partial) == "".join(json.dumps(arguments) for _, _, arguments in expected["calls"])
