"""The mock upstream's Anthropic and Gemini answer builders: deterministic, and valid by the SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from anthropic.types import message_count_tokens_params as count_params
from anthropic.types import message_create_params as create_params
from pydantic import TypeAdapter

from sluice.mock import anthropic, gemini
from sluice.mock.openai import REPLY

WORDS = REPLY.split(" ")
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "ratio": {"type": "number"},
        "metric": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": ["null", "string"]},
        "optional": {"type": "string"},
    },
    "required": ["city", "days", "ratio", "metric", "tags", "where", "unit", "note"],
}
EXPECTED_INPUT = {"city": "mock", "days": 1, "ratio": 1, "metric": True, "tags": [], "where": {"lat": 1},
                  "unit": "celsius", "note": "mock"}
TOOLS = [
    {"name": "get_weather", "description": "The weather.", "input_schema": SCHEMA},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}},
]


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def claude(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    request = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": list(messages), **extra}
    anthropic.validate(request)
    return request


def answer(request: dict[str, Any], number: int = 1) -> Message:
    return Message.model_validate(orjson.loads(anthropic.message(request, number)))


def events(request: dict[str, Any], number: int = 1) -> list[dict[str, Any]]:
    """The stream's events, each checked: "event: <type>" names the type its data carries."""
    parsed = []
    for raw in anthropic.message_events(request, number):
        assert raw.endswith(b"\n\n") and raw.count(b"\n") == 3
        head, data = raw.decode().rstrip("\n").split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert head == f"event: {payload['type']}"
        parsed.append(payload)
    return parsed


REQUESTS = {
    "plain": lambda: claude(user("Hello there!")),
    "max_tokens": lambda: claude(user("hi"), max_tokens=3),
    "stop_sequence": lambda: claude(user("hi"), stop_sequences=["mock", "sluice"]),
    "system_and_blocks": lambda: claude(user([{"type": "text", "text": "hi"}]), system="Be brief."),
    "forced_any": lambda: claude(user("weather?"), tools=TOOLS, tool_choice={"type": "any"}),
    "forced_tool": lambda: claude(user("time?"), tools=TOOLS, tool_choice={"type": "tool", "name": "get_time"}),
    "asked": lambda: claude(user("Please use a tool."), tools=TOOLS),
    "parallel": lambda: claude(user("call get_weather and call get_time in parallel"), tools=TOOLS),
    "tool_result": lambda: claude(
        user("call get_time"),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
        user([{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12:00"}]), tools=TOOLS),
    "image": lambda: claude(user([{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                 "data": "iVBORw0KGgo" * 100}},
                                  {"type": "text", "text": "What is this?"}])),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_anthropic_answers_are_deterministic_and_valid(name: str) -> None:
    request = REQUESTS[name]()
    assert anthropic.message(request, 5) == anthropic.message(request, 5)
    assert list(anthropic.message_events(request, 5)) == list(anthropic.message_events(request, 5))
    message = answer(request, 5)
    assert message.id == "msg_mock_5" and message.role == "assistant" and message.model == request["model"]
    assert message.usage.cache_creation_input_tokens == 0 and message.usage.cache_read_input_tokens == 0
    assert message.usage.input_tokens == anthropic.input_tokens(request) > 0


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_anthropic_stream_is_the_real_event_sequence(name: str) -> None:
    request = REQUESTS[name]()
    stream = events(request, 9)
    message = answer(request, 9)
    kinds = [e["type"] for e in stream]
    assert kinds[:2] == ["message_start", "ping"] and kinds[-2:] == ["message_delta", "message_stop"]
    for event in stream:
        if event["type"] != "ping":
            STREAM_EVENT.validate_python(event)
    start = stream[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1 and start["usage"]["input_tokens"] == message.usage.input_tokens
    # Rebuild the content from the block events: it is the non-streamed message's.
    blocks: list[dict[str, Any]] = []
    pending_json = ""
    for event in stream[2:-2]:
        if event["type"] == "content_block_start":
            assert event["index"] == len(blocks)
            blocks.append(dict(event["content_block"]))
            pending_json = ""
        elif event["type"] == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta":
                blocks[-1]["text"] += delta["text"]
            else:
                pending_json += delta["partial_json"]
        else:
            assert event == {"type": "content_block_stop", "index": len(blocks) - 1}
            if blocks[-1]["type"] == "tool_use":
                blocks[-1]["input"] = json.loads(pending_json)
    assert blocks == [b.model_dump(exclude_none=True) for b in message.content]
    delta = stream[-2]
    assert delta["delta"] == {"stop_reason": message.stop_reason, "stop_sequence": message.stop_sequence}
    assert delta["usage"] == {"output_tokens": message.usage.output_tokens}


def test_anthropic_plain_reply_limits_and_stop_sequences() -> None:
    plain = answer(REQUESTS["plain"]())
    assert [b.type for b in plain.content] == ["text"] and plain.content[0].text == REPLY  # type: ignore[union-attr]
    assert plain.stop_reason == "end_turn" and plain.usage.output_tokens == len(WORDS)
    assert plain.usage.input_tokens == 1 + len("Hello there!") // 4  # "user", then the text
    cut = answer(REQUESTS["max_tokens"]())
    assert cut.content[0].text == " ".join(WORDS[:3]) and cut.stop_reason == "max_tokens"  # type: ignore[union-attr]
    stopped = answer(REQUESTS["stop_sequence"]())
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "sluice"
    assert stopped.content[0].text == REPLY[: REPLY.index("sluice")]  # type: ignore[union-attr]
    # The budget ends before the stop sequence is reached: max_tokens wins.
    short = answer(claude(user("hi"), stop_sequences=["mock"], max_tokens=2))
    assert short.stop_reason == "max_tokens" and short.stop_sequence is None


def test_anthropic_tool_use() -> None:
    forced = answer(REQUESTS["forced_any"]())
    assert forced.stop_reason == "tool_use"
    assert [b.type for b in forced.content] == ["tool_use"]  # a forced choice has no text before the call
    call = forced.content[0]
    assert call.type == "tool_use" and call.name == "get_weather" and call.id == "toolu_mock_1_1"
    assert call.input == EXPECTED_INPUT
    named = answer(REQUESTS["forced_tool"]())
    assert [(b.type, getattr(b, "name", None)) for b in named.content] == [("tool_use", "get_time")]
    assert named.content[0].input == {}  # type: ignore[union-attr]  # no required property
    asked = answer(REQUESTS["asked"]())
    assert [b.type for b in asked.content] == ["text", "tool_use"]
    assert asked.content[0].text == anthropic.TOOL_TEXT  # type: ignore[union-attr]
    parallel = answer(REQUESTS["parallel"]())
    calls = [b for b in parallel.content if b.type == "tool_use"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert len({c.id for c in calls}) == 2  # type: ignore[union-attr]
    single = answer(claude(user("call get_weather and call get_time in parallel"), tools=TOOLS,
                           tool_choice={"type": "auto", "disable_parallel_tool_use": True}))
    assert [getattr(b, "name", None) for b in single.content if b.type == "tool_use"] == ["get_weather"]
    after = answer(REQUESTS["tool_result"]())
    assert after.stop_reason == "end_turn" and after.content[0].text == REPLY  # type: ignore[union-attr]
    # Not asked, or told not to: a plain answer.
    assert answer(claude(user("hello"), tools=TOOLS)).stop_reason == "end_turn"
    assert answer(claude(user("use a tool"), tools=TOOLS, tool_choice={"type": "none"})).stop_reason == "end_turn"


def test_sample_input_holds_the_required_properties() -> None:
    assert anthropic.sample_input(SCHEMA) == EXPECTED_INPUT
    assert set(anthropic.sample_input(SCHEMA)) == set(SCHEMA["required"])  # type: ignore[arg-type]
    assert anthropic.sample_input({"type": "object"}) == {}
    assert anthropic.sample_input(None) == {}
    gemini_schema = {"type": "OBJECT", "properties": {"n": {"type": "INTEGER"}, "s": {"type": "STRING"},
                                                     "b": {"type": "BOOLEAN"}}, "required": ["n", "s", "b"]}
    assert anthropic.sample_input(gemini_schema) == {"n": 1, "s": "mock", "b": True}


def test_anthropic_images_and_count_tokens() -> None:
    request = REQUESTS["image"]()
    expected = 1 + anthropic.IMAGE_TOKENS + 1 + len("What is this?") // 4  # role, image, "text", the text
    assert anthropic.input_tokens(request) == expected
    counted = MessageTokensCount.model_validate(orjson.loads(anthropic.count_tokens(
        {"model": "claude-sonnet-4-6", "messages": request["messages"]})))
    assert counted.input_tokens == expected
    with_tools = {"model": "m", "messages": [user("hi")], "tools": TOOLS}
    assert anthropic.input_tokens(with_tools) > anthropic.input_tokens({"model": "m", "messages": [user("hi")]})


def test_anthropic_accepts_every_sdk_parameter() -> None:
    create = set(create_params.MessageCreateParamsBase.__annotations__) | {"stream"}
    assert create <= anthropic._CREATE_FIELDS
    assert set(count_params.MessageCountTokensParams.__annotations__) <= anthropic._COUNT_FIELDS


@pytest.mark.parametrize(("request_body", "message"), [
    ([], "Input should be a valid dictionary"),
    ({"max_tokens": 5, "messages": [user("hi")]}, "model: Field required"),
    ({"model": "m", "messages": [user("hi")]}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": 0, "messages": [user("hi")]}, "max_tokens: Input should be greater than"),
    ({"model": "m", "max_tokens": "5", "messages": [user("hi")]}, "max_tokens: Input should be a valid integer"),
    ({"model": "m", "max_tokens": 5}, "messages: Field required"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages.0.role: Input should be 'user' or 'assistant'"),
    ({"model": "m", "max_tokens": 5, "messages": [user("")]}, "messages.0: all messages must have non-empty"),
    ({"model": "m", "max_tokens": 5, "messages": [user([{"type": "text", "text": ""}])]},
     "text content blocks must be non-empty"),
    ({"model": "m", "max_tokens": 5, "messages": [user("hi")], "n": 2}, "n: Extra inputs are not permitted"),
    ({"model": "m", "max_tokens": 5, "messages": [user("hi")], "temperature": 1.5}, "temperature:"),
    ({"model": "m", "max_tokens": 5, "messages": [user("hi")], "stop_sequences": "x"}, "stop_sequences:"),
    ({"model": "m", "max_tokens": 5, "messages": [user("hi")], "tools": [{"name": "t"}]},
     "tools.0.custom.input_schema: Field required"),
    ({"model": "m", "max_tokens": 5, "messages": [user("hi")], "tool_choice": {"type": "any"}},
     "tool_choice may only be specified while providing tools"),
    ({"model": "m", "max_tokens": 5, "messages": [user("hi")], "tools": TOOLS,
      "tool_choice": {"type": "tool", "name": "nope"}}, "tool 'nope' not found"),
    ({"model": "m", "max_tokens": 5, "messages": [
        user("hi"), {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "x", "input": {}}]},
        user("no result")]}, "`tool_use` ids were found without `tool_result` blocks"),
    ({"model": "m", "max_tokens": 5, "messages": [
        user([{"type": "tool_result", "tool_use_id": "t9", "content": "x"}])]}, "unexpected `tool_use_id`"),
])
def test_anthropic_rejects_what_the_real_api_rejects(request_body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        anthropic.validate(request_body)


def test_anthropic_validation_variants() -> None:
    # count_tokens takes no max_tokens; a beta lifts the check on unknown fields; a final assistant turn may be empty.
    anthropic.validate({"model": "m", "messages": [user("hi")]}, count=True)
    with pytest.raises(ValueError, match="max_tokens: Extra inputs"):
        anthropic.validate({"model": "m", "max_tokens": 5, "messages": [user("hi")]}, count=True)
    anthropic.validate({"model": "m", "max_tokens": 5, "messages": [user("hi")], "betas": ["x"]}, beta=True)
    anthropic.validate({"model": "m", "max_tokens": 5, "messages": [user("hi"), {"role": "assistant", "content": ""}]})
    assert anthropic.check_headers(None, None, "2023-06-01") == (401, "x-api-key header is required")
    assert anthropic.check_headers(None, "Basic abc", "2023-06-01") == (401, "x-api-key header is required")
    assert anthropic.check_headers("k", None, None) == (400, "anthropic-version: header is required")
    assert anthropic.check_headers("k", None, "2023-06-01") is None
    assert anthropic.check_headers(None, "Bearer k", "2023-06-01") is None  # how the SDK 2.x sends the key


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"),
                                              (429, "rate_limit_error"), (500, "api_error"),
                                              (529, "overloaded_error"), (503, "api_error")])
def test_anthropic_error_shape(status: int, kind: str) -> None:
    assert orjson.loads(anthropic.error_body(status, "boom")) == {
        "type": "error", "error": {"type": kind, "message": "boom"}}


# -- Gemini -----------------------------------------------------------------------------------------

DECLARATIONS = [{"functionDeclarations": [
    {"name": "get_weather", "description": "The weather.",
     "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}, "days": {"type": "INTEGER"}},
                    "required": ["city"]}},
    {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {"tz": {"type": "string"}},
                                                  "required": ["tz"]}},
]}]


def contents(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "parts": [{"text": text}]}]


def gen(request: dict[str, Any], number: int = 1) -> dict[str, Any]:
    gemini.validate(request)
    first: bytes = gemini.generate(request, "gemini-2.5-flash", number)
    assert first == gemini.generate(request, "gemini-2.5-flash", number)
    body: dict[str, Any] = orjson.loads(first)
    return body


def chunks(request: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for raw in gemini.sse_events(request, "gemini-2.5-flash", 3):
        assert raw.startswith(b"data: ") and raw.endswith(b"\r\n\r\n")
        found.append(json.loads(raw[len(b"data: "):]))
    array = b"".join(gemini.json_array_pieces(request, "gemini-2.5-flash", 3))
    assert json.loads(array) == found  # the same chunks, as one JSON array
    return found


def test_gemini_plain_answer() -> None:
    body = gen({"contents": contents("Hello there!")}, 4)
    assert body == {
        "candidates": [{"content": {"role": "model", "parts": [{"text": REPLY}]}, "finishReason": "STOP",
                        "index": 0}],
        "usageMetadata": {"promptTokenCount": 1 + len("Hello there!") // 4, "candidatesTokenCount": len(WORDS),
                          "totalTokenCount": 1 + len("Hello there!") // 4 + len(WORDS)},
        "modelVersion": "gemini-2.5-flash", "responseId": "mock-4"}


def test_gemini_limits_candidates_images_and_snake_case() -> None:
    cut = gen({"contents": contents("hi"), "generationConfig": {"maxOutputTokens": 3, "candidateCount": 2}})
    assert [c["finishReason"] for c in cut["candidates"]] == ["MAX_TOKENS"] * 2
    assert cut["candidates"][1]["content"]["parts"] == [{"text": " ".join(WORDS[:3])}]
    assert cut["usageMetadata"]["candidatesTokenCount"] == 6
    snake = gen({"contents": [{"parts": [{"text": "hi"}, {"inline_data": {"mime_type": "image/png", "data": "AA"}},
                                         {"fileData": {"mimeType": "image/png", "fileUri": "gs://x"}}]}],
                 "system_instruction": {"parts": [{"text": "Be brief."}]},
                 "generation_config": {"max_output_tokens": 2, "stop_sequences": ["x"]}})
    assert snake["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert snake["usageMetadata"]["promptTokenCount"] == 1 + 2 * gemini.IMAGE_TOKENS + len("Be brief.") // 4
    stopped = gen({"contents": contents("hi"), "generationConfig": {"stopSequences": ["sluice"]}})
    assert stopped["candidates"][0]["content"]["parts"] == [{"text": REPLY[: REPLY.index("sluice")]}]
    assert stopped["candidates"][0]["finishReason"] == "STOP"


def test_gemini_function_calls() -> None:
    forced = gen({"contents": contents("weather?"), "tools": DECLARATIONS,
                  "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}})
    assert forced["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "mock"}}}]
    assert forced["candidates"][0]["finishReason"] == "STOP"
    allowed = gen({"contents": contents("x"), "tools": DECLARATIONS,
                   "tool_config": {"function_calling_config": {"mode": "any",
                                                               "allowed_function_names": ["get_time"]}}})
    assert allowed["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "get_time",
                                                                              "args": {"tz": "mock"}}}]
    parallel = gen({"contents": contents("call get_time and call get_weather in parallel"), "tools": DECLARATIONS})
    assert [p["functionCall"]["name"] for p in parallel["candidates"][0]["content"]["parts"]] == [
        "get_weather", "get_time"]
    answered = gen({"contents": [*contents("call get_time"),
                                 {"role": "model", "parts": [{"functionCall": {"name": "get_time", "args": {}}}]},
                                 {"role": "user", "parts": [{"functionResponse": {"name": "get_time",
                                                                                  "response": {"t": "12:00"}}}]}],
                    "tools": DECLARATIONS})
    assert answered["candidates"][0]["content"]["parts"] == [{"text": REPLY}]
    none = gen({"contents": contents("use a tool"), "tools": DECLARATIONS,
                "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}})
    assert none["candidates"][0]["content"]["parts"] == [{"text": REPLY}]


def test_gemini_stream_chunks() -> None:
    request = {"contents": contents("hi"), "generationConfig": {"maxOutputTokens": 4}}
    gemini.validate(request)
    found = chunks(request)
    whole = gen(request)
    assert len(found) == 4
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in found) == " ".join(WORDS[:4])
    assert ["finishReason" in c["candidates"][0] for c in found] == [False, False, False, True]
    assert found[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in found] == [1, 2, 3, 4]  # running totals
    assert found[-1]["usageMetadata"] == whole["usageMetadata"]
    assert {c["responseId"] for c in found} == {"mock-3"}
    calls = chunks({"contents": contents("use a tool"), "tools": DECLARATIONS})
    assert len(calls) == 1 and calls[0]["candidates"][0]["finishReason"] == "STOP"
    assert calls[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"


@pytest.mark.parametrize(("request_body", "message"), [
    ({}, "contents is not specified"),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "Please use a valid role: user, model."),
    ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
    ({"contents": [{"role": "user", "parts": [{"foo": 1}]}]}, "required oneof field 'data'"),
    ({"contents": contents("x"), "messages": []}, 'Unknown name "messages"'),
    ({"contents": contents("x"), "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
     "without function_declarations"),
    ({"contents": contents("x"), "generationConfig": {"candidateCount": 9}}, "candidate_count"),
])
def test_gemini_rejects_what_the_real_api_rejects(request_body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        gemini.validate(request_body)


def test_gemini_count_tokens_and_errors() -> None:
    gemini.validate({"contents": contents("Hello there!")}, count=True)
    gemini.validate({"generateContentRequest": {"model": "models/x", "contents": contents("hi")}}, count=True)
    assert orjson.loads(gemini.count_tokens({"contents": contents("Hello there!")})) == {"totalTokens": 4}
    assert orjson.loads(gemini.count_tokens({"generateContentRequest": {"contents": contents("hi")}})) == {
        "totalTokens": 2}
    assert orjson.loads(gemini.error_body(429, "slow down")) == {
        "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
    assert orjson.loads(gemini.error_body(503, "x"))["error"]["status"] == "UNAVAILABLE"


def test_a_padded_chat_stream_is_at_least_stream_bytes_of_well_formed_events() -> None:
    from sluice.mock.openai import PAD_TEXT, chat_chunks

    request = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    plain = list(chat_chunks(request))
    padded = list(chat_chunks(request, 100_000))
    assert len(b"".join(plain)) < 100_000 <= len(b"".join(padded)) < 100_000 + 2 * len(padded[-3])
    assert padded[-1] == b"data: [DONE]\n\n"
    deltas = [json.loads(event[len(b"data: "):])["choices"][0]["delta"] for event in padded[:-1]]
    text = "".join(delta.get("content", "") for delta in deltas)
    assert text.startswith(REPLY) and text[len(REPLY):] == PAD_TEXT * (len(padded) - len(plain))
