"""OpenAI chat <-> Gemini translation: golden files, hypothesis properties, stream edge cases.

Golden files are the spec, checked by hand.  They live in tests/golden/gemini/<kind>/, the input as
NAME.json or NAME.sse and the expected output beside it as NAME.expected.json or NAME.expected.sse:

    requests/   OpenAI chat request -> generateContent body; {"unsupported": "field: reason"} when refused
    responses/  GenerateContentResponse -> chat.completion
    streams/    streamGenerateContent?alt=sse bytes -> OpenAI SSE bytes (fed whole and byte by byte);
                a first line ``: options {...}`` (an SSE comment, ignored by the parser) sets the
                GeminiToChatStream arguments, include_usage defaulting to true
    errors/     {"status", "body"} (a string body is sent as its UTF-8 bytes, any other as JSON) -> OpenAI error

To rewrite every expected file from the current code (then read the diff: it is a change of spec):

    SLUICE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/unit/test_translate_gemini.py
"""

from __future__ import annotations

import base64
import itertools
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from sluice.providers.translate.errors import UnsupportedContent
from sluice.providers.translate.gemini import (
    GeminiToChatStream,
    chat_to_gemini,
    error_to_openai,
    gemini_to_completion,
    token_counts,
)
from sluice.providers.translate.sse import SSEParser

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "gemini"
UPDATE = os.environ.get("SLUICE_UPDATE_GOLDEN") == "1"
MODEL = "gemini-2.0-flash"
CREATED = 1_700_000_000
COMPLETION_ID = "chatcmpl-gemini-test"


# --- golden files ----------------------------------------------------------------------------------------------------


def _inputs(kind: str, suffix: str) -> list[Path]:
    return sorted(p for p in (GOLDEN / kind).glob(f"*{suffix}") if not p.name.endswith(f".expected{suffix}"))


def _expected_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.expected{path.suffix}")


def _check_json(path: Path, actual: Any) -> None:
    expected = _expected_path(path)
    if UPDATE:
        expected.write_bytes(orjson.dumps(actual, option=orjson.OPT_INDENT_2) + b"\n")
    assert expected.exists(), f"{expected.name} is missing: run with SLUICE_UPDATE_GOLDEN=1 and check it by hand"
    assert actual == orjson.loads(expected.read_bytes())


def _check_bytes(path: Path, actual: bytes) -> None:
    expected = _expected_path(path)
    if UPDATE:
        expected.write_bytes(actual)
    assert expected.exists(), f"{expected.name} is missing: run with SLUICE_UPDATE_GOLDEN=1 and check it by hand"
    assert actual == expected.read_bytes()


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


REQUESTS = _inputs("requests", ".json")
RESPONSES = _inputs("responses", ".json")
STREAMS = _inputs("streams", ".sse")
ERRORS = _inputs("errors", ".json")


def test_golden_files_exist() -> None:
    assert len(REQUESTS) >= 10 and len(RESPONSES) >= 5 and len(STREAMS) >= 5 and len(ERRORS) >= 5


@pytest.mark.parametrize("path", REQUESTS, ids=_ids(REQUESTS))
def test_request_golden(path: Path) -> None:
    request = orjson.loads(path.read_bytes())
    try:
        actual: Any = chat_to_gemini(request)
    except UnsupportedContent as exc:
        actual = {"unsupported": str(exc)}
    assert path.stem.startswith("unsupported_") == ("unsupported" in actual)
    _check_json(path, actual)


@pytest.mark.parametrize("path", RESPONSES, ids=_ids(RESPONSES))
def test_response_golden(path: Path) -> None:
    actual = gemini_to_completion(orjson.loads(path.read_bytes()), MODEL, CREATED, COMPLETION_ID)
    ChatCompletion.model_validate(actual)
    _check_json(path, actual)


@pytest.mark.parametrize("path", ERRORS, ids=_ids(ERRORS))
def test_error_golden(path: Path) -> None:
    case = orjson.loads(path.read_bytes())
    body = case["body"]
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    actual = orjson.loads(error_to_openai(case["status"], raw))
    assert set(actual["error"]) == {"message", "type", "param", "code"}
    _check_json(path, actual)


def _stream_options(data: bytes) -> dict[str, Any]:
    first = data.split(b"\n", 1)[0]
    options: dict[str, Any] = {"include_usage": True}
    if first.startswith(b": options "):
        options.update(orjson.loads(first.removeprefix(b": options ")))
    return options


def _translate_stream(data: bytes, pieces: list[bytes], include_usage: bool = True) -> tuple[bytes, GeminiToChatStream]:
    stream = GeminiToChatStream(MODEL, CREATED, COMPLETION_ID, include_usage)
    out = b"".join(stream.feed(piece) for piece in pieces) + stream.close()
    return out, stream


def _events(out: bytes) -> list[str]:
    parser = SSEParser()
    events = parser.feed(out)
    assert not parser.pending, "the output ends inside an event"
    return [event.data for event in events]


def _validate_stream(out: bytes) -> list[dict[str, Any]]:
    """The chunks of an OpenAI stream, each validated; the stream ends with [DONE] or one error event."""
    events = _events(out)
    done = events.count("[DONE]")
    chunks = [orjson.loads(data) for data in events if data != "[DONE]"]
    errors = [chunk for chunk in chunks if "error" in chunk]
    assert (done, len(errors)) in ((1, 0), (0, 1))
    assert events[-1] == "[DONE]" or "error" in orjson.loads(events[-1])
    for chunk in chunks:
        if "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)
    return [chunk for chunk in chunks if "error" not in chunk]


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
def test_stream_golden(path: Path) -> None:
    data = path.read_bytes()
    include_usage = _stream_options(data)["include_usage"]
    whole, _ = _translate_stream(data, [data], include_usage)
    byte_by_byte, _ = _translate_stream(data, [data[i:i + 1] for i in range(len(data))], include_usage)
    assert byte_by_byte == whole
    _validate_stream(whole)
    _check_bytes(path, whole)


# --- requests: details the golden files do not pin -----------------------------------------------------------------


def test_unsupported_content_names_the_field() -> None:
    request = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                            {"role": "user", "content": [{"type": "text", "text": "c"},
                                                         {"type": "input_audio", "input_audio": {}}]}]}
    with pytest.raises(UnsupportedContent) as info:
        chat_to_gemini(request)
    assert info.value.field == "messages[2].content[1].type"
    assert str(info.value) == f"messages[2].content[1].type: {info.value.reason}"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("request_part", "field"), [
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/a.png"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "f", "arguments": "[1, 2]"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [], "tools": [{"type": "custom", "custom": {"name": "g"}}]}, "tools[0].type"),
    ({"messages": [], "tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
    ({"messages": [], "response_format": {"type": "grammar"}}, "response_format.type"),
])
def test_unsupported_fields(request_part: dict[str, Any], field: str) -> None:
    with pytest.raises(UnsupportedContent) as info:
        chat_to_gemini(request_part)
    assert info.value.field == field


def test_schema_cleaning_keeps_property_names_and_never_touches_the_input() -> None:
    parameters = {"type": "object", "additionalProperties": False,
                  "properties": {"strict": {"type": "boolean", "additionalProperties": False}}}
    original = orjson.dumps(parameters)
    body = chat_to_gemini({"messages": [], "tools": [{"type": "function", "function": {
        "name": "f", "parameters": parameters, "strict": True}}]})
    assert body["tools"][0]["functionDeclarations"][0] == {
        "name": "f", "parameters": {"type": "object", "properties": {"strict": {"type": "boolean"}}}}
    assert orjson.dumps(parameters) == original


# --- responses, usage and errors -------------------------------------------------------------------------------------


def test_token_counts() -> None:
    assert token_counts({}) == (-1, -1)
    assert token_counts({"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3}}) == (7, 3)
    assert token_counts({"usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 3,
                                           "thoughtsTokenCount": 5}}) == (7, 8)
    # Gemini's JSON leaves out zero counts: a blocked prompt has no candidatesTokenCount.
    assert token_counts({"usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}}) == (12, 0)
    assert token_counts({"usage_metadata": {"prompt_token_count": 2, "candidates_token_count": 1}}) == (2, 1)


def test_tool_call_ids_are_deterministic() -> None:
    response = {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"b": 1, "a": [2]}}}]},
                                "finishReason": "STOP"}]}
    first = gemini_to_completion(response, MODEL, CREATED, "chatcmpl-1")
    assert first == gemini_to_completion(response, MODEL, CREATED, "chatcmpl-1")
    call = first["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "call_chatcmpl-1_0"
    assert call["function"]["arguments"] == '{"b":1,"a":[2]}'


def test_error_body_is_clipped() -> None:
    body = b"x" * 5000
    message = orjson.loads(error_to_openai(502, body))["error"]["message"]
    assert "not a Gemini error" in message
    assert message.endswith("x" * 200 + "…") and "x" * 201 not in message


# --- streams: edge cases --------------------------------------------------------------------------------------------


def _gemini_event(payload: dict[str, Any], newline: bytes = b"\n") -> bytes:
    return b"data: " + orjson.dumps(payload) + newline + newline


TEXT_EVENT = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}, "index": 0}]}
FINISH_EVENT = {"candidates": [{"content": {"role": "model", "parts": [{"text": "!"}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}}


def test_stream_emits_each_event_as_soon_as_it_is_complete() -> None:
    stream = GeminiToChatStream(MODEL, CREATED, COMPLETION_ID, include_usage=False)
    event = _gemini_event(TEXT_EVENT)
    assert stream.feed(event[:-1]) == b""
    out = stream.feed(event[-1:])
    assert [orjson.loads(d)["choices"][0]["delta"] for d in _events(out)] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}]
    finish = stream.feed(_gemini_event(FINISH_EVENT))
    assert [orjson.loads(d)["choices"][0]["finish_reason"] for d in _events(finish)] == [None, "stop"]
    assert stream.close() == b"data: [DONE]\n\n"
    assert stream.usage == (3, 2) and stream.error is None
    assert stream.close() == b"" and stream.feed(b"data: {}\n\n") == b""


def test_stream_cut_before_finish_is_an_error_not_done() -> None:
    stream = GeminiToChatStream(MODEL, CREATED, COMPLETION_ID, include_usage=True)
    stream.feed(_gemini_event(TEXT_EVENT))
    tail = stream.close()
    assert b"[DONE]" not in tail
    (event,) = _events(tail)
    assert orjson.loads(event)["error"]["code"] == "upstream_stream_error"
    assert stream.error == "upstream_stream_error"


def test_empty_stream_is_an_error() -> None:
    stream = GeminiToChatStream(MODEL, CREATED, COMPLETION_ID, include_usage=False)
    assert stream.feed(b"") == b""
    assert b"error" in stream.close() and stream.error == "upstream_stream_error"


def test_stream_error_event_ends_the_stream() -> None:
    stream = GeminiToChatStream(MODEL, CREATED, COMPLETION_ID, include_usage=False)
    error = {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}
    out = stream.feed(_gemini_event(TEXT_EVENT) + _gemini_event(error) + _gemini_event(FINISH_EVENT))
    last = orjson.loads(_events(out)[-1])
    assert last["error"] == {"message": "Resource has been exhausted", "type": "rate_limit_error", "param": None,
                             "code": "resource_exhausted"}
    assert stream.error == "resource_exhausted"
    assert stream.feed(_gemini_event(FINISH_EVENT)) == b"" and stream.close() == b""


def test_stream_invalid_utf8_is_one_error_event() -> None:
    stream = GeminiToChatStream(MODEL, CREATED, COMPLETION_ID, include_usage=False)
    out = stream.feed(b'data: {"candidates": "\xff"}\n\n')
    (event,) = _events(out)
    assert orjson.loads(event)["error"]["code"] == "upstream_stream_error"


# --- properties -----------------------------------------------------------------------------------------------------

TEXTS = st.text(max_size=12)
NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,9}", fullmatch=True)
JSON_SCALARS = st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=5), st.booleans(), st.none())
ARGS = st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=3)
IMAGES = st.one_of(
    st.binary(min_size=1, max_size=12).map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode()),
    st.from_regex(r"https://example\.com/[a-z]{1,8}\.(png|jpg|gif)", fullmatch=True),
)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str], list[tuple[Any, ...]]]:
    """OpenAI messages, the system texts they hold and every other item (text, image, call, result) in order."""
    messages: list[dict[str, Any]] = []
    system: list[str] = []
    items: list[tuple[Any, ...]] = []
    calls: list[tuple[str, str]] = []  # (id, name) of the tool calls so far
    for _ in range(draw(st.integers(1, 8))):
        role = draw(st.sampled_from(["system", "user", "user", "assistant", "tool"]))
        if role == "tool" and not calls:
            role = "user"
        if role == "system":
            text = draw(TEXTS)
            messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": text})
            system += [text] if text else []
        elif role == "user":
            parts = draw(st.lists(st.one_of(TEXTS.map(lambda t: ("text", t)), IMAGES.map(lambda u: ("image", u))),
                                  min_size=1, max_size=3))
            messages.append({"role": "user", "content": [
                {"type": "text", "text": v} if k == "text" else {"type": "image_url", "image_url": {"url": v}}
                for k, v in parts]})
            items += [(k, v) for k, v in parts if v]
        elif role == "assistant":
            text = draw(st.one_of(st.none(), TEXTS))
            tool_calls = []
            for name, args in draw(st.lists(st.tuples(NAMES, ARGS), max_size=3)):
                call_id = f"call_{len(calls)}"
                calls.append((call_id, name))
                tool_calls.append({"id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": orjson.dumps(args).decode()}})
            message: dict[str, Any] = {"role": "assistant", "content": text}
            messages.append({**message, "tool_calls": tool_calls} if tool_calls else message)
            items += [("text", text)] if text else []
            items += [("call", c["function"]["name"], orjson.loads(c["function"]["arguments"])) for c in tool_calls]
        else:
            call_id, name = draw(st.sampled_from(calls))
            content = draw(st.one_of(TEXTS, ARGS.map(lambda a: orjson.dumps(a).decode())))
            messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
            items.append(("result", name, _tool_response(content)))
    return messages, system, items


def _actual_items(contents: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    items: list[tuple[Any, ...]] = []
    for turn in contents:
        for part in turn["parts"]:
            if "text" in part:
                items.append(("text", part["text"]))
            elif "inlineData" in part:
                inline = part["inlineData"]
                items.append(("image", f"data:{inline['mimeType']};base64,{inline['data']}"))
            elif "fileData" in part:
                items.append(("image", part["fileData"]["fileUri"]))
            elif "functionCall" in part:
                items.append(("call", part["functionCall"]["name"], part["functionCall"]["args"]))
            else:
                items.append(("result", part["functionResponse"]["name"], part["functionResponse"]["response"]))
    return items


@PROPERTY_SETTINGS
@given(conversations())
def test_requests_lose_nothing(case: tuple[list[dict[str, Any]], list[str], list[tuple[Any, ...]]]) -> None:
    messages, system, items = case
    body = chat_to_gemini({"model": "m", "messages": messages})
    assert [p["text"] for p in body.get("systemInstruction", {}).get("parts", [])] == system
    contents = body["contents"]
    assert _actual_items(contents) == items
    roles = [turn["role"] for turn in contents]
    assert all(a != b for a, b in itertools.pairwise(roles)), "Gemini wants alternating roles"
    assert all(turn["parts"] and turn["role"] in ("user", "model") for turn in contents)


def _tool_response(content: str) -> dict[str, Any]:
    """What Gemini must get for a tool's output: the object it encodes, else the text wrapped."""
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"content": content}


FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "OTHER": "stop"}
PARTS = st.one_of(
    TEXTS.map(lambda t: {"text": t}),
    TEXTS.map(lambda t: {"text": t, "thought": True}),
    st.tuples(NAMES, ARGS).map(lambda c: {"functionCall": {"name": c[0], "args": c[1]}}),
)
USAGE = st.fixed_dictionaries(
    {"promptTokenCount": st.integers(0, 10**6), "candidatesTokenCount": st.integers(0, 10**6)},
    optional={"thoughtsTokenCount": st.integers(0, 1000)},
)


@st.composite
def gemini_streams(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[str, Any]], str, dict[str, int]]:
    """A Gemini SSE stream and what it says: its text, function calls, finish reason and last usage."""
    events: list[dict[str, Any]] = []
    text: list[str] = []
    calls: list[tuple[str, Any]] = []
    usage: dict[str, int] = {}
    count = draw(st.integers(1, 6))
    reason = draw(st.sampled_from(sorted(FINISH)))
    for i in range(count):
        parts = draw(st.lists(PARTS, max_size=4))
        text += [p["text"] for p in parts if "text" in p and not p.get("thought")]
        calls += [(p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p]
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if i == count - 1:
            candidate["finishReason"] = reason
        event: dict[str, Any] = {"candidates": [candidate], "responseId": "resp-prop"}
        if i == count - 1 or draw(st.booleans()):
            usage = draw(USAGE)
            event["usageMetadata"] = usage
        events.append(event)
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    raw = b"".join(_gemini_event(event, newline) for event in events)
    finish = "tool_calls" if calls else FINISH[reason]
    return raw, "".join(text), calls, finish, usage


@PROPERTY_SETTINGS
@given(gemini_streams(), st.lists(st.integers(0, 10_000), max_size=12))
def test_streams_split_anywhere_say_everything_once(
    case: tuple[bytes, str, list[tuple[str, Any]], str, dict[str, int]], cuts: list[int]
) -> None:
    raw, text, calls, finish, usage = case
    offsets = sorted({0, len(raw), *(c % (len(raw) + 1) for c in cuts)})
    pieces = [raw[a:b] for a, b in itertools.pairwise(offsets)]
    out, stream = _translate_stream(raw, pieces)
    assert out == _translate_stream(raw, [raw])[0]
    chunks = _validate_stream(out)
    assert _events(out).count("[DONE]") == 1 and stream.error is None
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == text
    got_calls = [(t["function"]["name"], orjson.loads(t["function"]["arguments"]))
                 for d in deltas for t in d.get("tool_calls", [])]
    assert got_calls == calls
    ids = [t["id"] for d in deltas for t in d.get("tool_calls", [])]
    assert ids == [f"call_resp-prop_{n}" for n in range(len(calls))]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == [finish]
    completion = usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == usage["promptTokenCount"]
    assert chunks[-1]["usage"]["completion_tokens"] == completion
    assert stream.usage == (usage["promptTokenCount"], completion)
