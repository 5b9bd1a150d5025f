"""The mock upstream's Anthropic, Gemini and Azure OpenAI faces, driven by the official SDKs and raw HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from sluice.mock.anthropic import TOOL_TEXT
from sluice.mock.openai import REPLY
from tests.conftest import Proc, Reply, call, start_mock

pytestmark = pytest.mark.integration

WORDS = REPLY.split(" ")
WEATHER = {"name": "get_weather", "description": "The weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                            "required": ["city", "days"]}}
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01", "content-type": "application/json"}
GEMINI_HEADERS = {"x-goog-api-key": "goog-test", "content-type": "application/json"}


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("mock"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def claude(mock: Proc) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0) as client:
        yield client


def last_seen(mock: Proc) -> dict[str, Any]:
    seen: dict[str, Any] = call(mock.url, "GET", "/_mock/requests").json()[-1]
    return seen


# -- Anthropic --------------------------------------------------------------------------------------

def test_anthropic_sdk_message(mock: Proc, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="claude-sonnet-4-6", max_tokens=1024,
                                           messages=[{"role": "user", "content": "Hello there!"}])
    assert message.type == "message" and message.role == "assistant" and message.model == "claude-sonnet-4-6"
    assert message.id.startswith("msg_mock_")
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == len("Hello there!") // 4 + 1 and message.usage.output_tokens == len(WORDS)
    seen = last_seen(mock)
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["authorization"] == "Bearer x"  # the SDK 2.x sends the key so, not as x-api-key
    assert seen["headers"]["anthropic-version"]
    raw = call(mock.url, "POST", "/v1/messages", {"model": "m", "max_tokens": 1, "messages": [{"role": "user",
                                                                                             "content": "hi"}]},
               ANTHROPIC_HEADERS)
    assert raw.status == 200
    assert last_seen(mock)["headers"]["x-api-key"] == "sk-ant-test"
    assert last_seen(mock)["headers"]["anthropic-version"] == "2023-06-01"


def test_anthropic_sdk_limits(mock: Proc, claude: anthropic.Anthropic) -> None:
    client = claude
    cut = client.messages.create(model="claude-haiku-4-5", max_tokens=2,
                                 messages=[{"role": "user", "content": "hi"}])
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == " ".join(WORDS[:2])  # type: ignore[union-attr]
    stopped = client.messages.create(model="claude-haiku-4-5", max_tokens=100, stop_sequences=["mock"],
                                     messages=[{"role": "user", "content": "hi"}])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "mock"
    assert stopped.content[0].text == REPLY[: REPLY.index("mock")]  # type: ignore[union-attr]


def test_anthropic_sdk_tool_use_then_tool_result(mock: Proc, claude: anthropic.Anthropic) -> None:
    client = claude
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris? Please use a tool."}]
    first = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    assert first.content[0].text == TOOL_TEXT  # type: ignore[union-attr]
    use = first.content[1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.id.startswith("toolu_mock_")
    assert use.input == {"city": "mock", "days": 1}
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]}]
    second = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn" and second.content[0].text == REPLY  # type: ignore[union-attr]
    forced = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, tools=[WEATHER],
                                    tool_choice={"type": "tool", "name": "get_weather"},
                                    messages=[{"role": "user", "content": "Paris and Rome, in parallel"}])
    assert [b.type for b in forced.content] == ["tool_use", "tool_use"]


def test_anthropic_sdk_stream(mock: Proc, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=1024,
                                      messages=[{"role": "user", "content": "Hello there!"}]) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == [WORDS[0], *(" " + w for w in WORDS[1:])]
    assert final.content[0].text == REPLY and final.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert final.usage.output_tokens == len(WORDS) and final.usage.input_tokens == len("Hello there!") // 4 + 1


def test_anthropic_sdk_stream_tool_use(mock: Proc, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=1024, tools=[WEATHER],
                                      tool_choice={"type": "any"},
                                      messages=[{"role": "user", "content": "weather?"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds and kinds[-1] == "message_stop"
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.input) for b in final.content] == [("tool_use", {"city": "mock", "days": 1})]  # type: ignore[union-attr]


def test_anthropic_raw_stream_event_sequence(mock: Proc) -> None:
    body = {"model": "m", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    reply = call(mock.url, "POST", "/v1/messages", body, ANTHROPIC_HEADERS)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = [chunk.split("\n") for chunk in reply.body.decode().split("\n\n") if chunk]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert all(json.loads(lines[1].removeprefix("data: "))["type"] == name for lines, name in zip(events, names,
                                                                                                  strict=True))


def test_anthropic_count_tokens(mock: Proc, claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="claude-sonnet-4-6",
                                                 messages=[{"role": "user", "content": "Hello there!"}])
    assert counted.input_tokens == len("Hello there!") // 4 + 1
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" * 50}}
    with_image = claude.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}])
    assert with_image.input_tokens == 1 + 85 + 1 + 1


def anthropic_error(reply: Reply, status: int, kind: str) -> str:
    assert reply.status == status
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(("headers", "body", "status", "kind", "message"), [
    ({"anthropic-version": "2023-06-01"}, {}, 401, "authentication_error", "x-api-key header is required"),
    ({"x-api-key": "k"}, {}, 400, "invalid_request_error", "anthropic-version: header is required"),
    (ANTHROPIC_HEADERS, {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     400, "invalid_request_error", "messages.0.role: Input should be 'user' or 'assistant'"),
    (ANTHROPIC_HEADERS, {"model": "m", "messages": [{"role": "user", "content": "x"}]},
     400, "invalid_request_error", "max_tokens: Field required"),
    (ANTHROPIC_HEADERS, {"model": "m", "max_tokens": 5, "messages": []},
     400, "invalid_request_error", "messages: at least one message is required"),
    (ANTHROPIC_HEADERS, {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
     400, "invalid_request_error", "model: Field required"),
    (ANTHROPIC_HEADERS, {"model": "mock-status-429", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
     429, "rate_limit_error", "The mock upstream answers 429 for this model."),
])
def test_anthropic_raw_errors(mock: Proc, headers: dict[str, str], body: dict[str, Any], status: int, kind: str,
                              message: str) -> None:
    reply = call(mock.url, "POST", "/v1/messages", body, headers)
    assert anthropic_error(reply, status, kind) == message
    assert reply.headers["request-id"].startswith("req_mock_")


def test_anthropic_sdk_errors_and_faults(mock: Proc, claude: anthropic.Anthropic) -> None:
    client = claude
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client.messages.create(model="mock-status-529", max_tokens=5, messages=user)  # type: ignore[arg-type]
    assert overloaded.value.status_code == 529
    assert overloaded.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="mock-status-500", max_tokens=5, messages=user)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError, match="Extra inputs are not permitted"):
        client.messages.create(model="m", max_tokens=5, messages=user, extra_body={"n": 2})  # type: ignore[arg-type]
    with anthropic.Anthropic(base_url=mock.url, api_key="x", max_retries=0, timeout=0.3) as slow, \
            pytest.raises(anthropic.APITimeoutError):
        slow.messages.create(model="mock-slow-2000", max_tokens=5, messages=user)  # type: ignore[arg-type]


def test_anthropic_cut_stream(mock: Proc) -> None:
    # The stream stops halfway through its fifth event (the second text delta), never reaching message_stop.
    body = {"model": "mock-cut-stream", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    reply = call(mock.url, "POST", "/v1/messages", body, ANTHROPIC_HEADERS)
    assert reply.status == 200
    events = reply.body.split(b"\n\n")
    assert [e.split(b"\n")[0] for e in events[:4]] == [b"event: message_start", b"event: ping",
                                                       b"event: content_block_start", b"event: content_block_delta"]
    assert len(events) == 5 and events[-1].startswith(b"event: content_block_delta")
    assert b"message_stop" not in reply.body


def test_anthropic_beta_header_is_recorded(mock: Proc) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "betas_field": 1}
    reply = call(mock.url, "POST", "/v1/messages?beta=true", body, {**ANTHROPIC_HEADERS, "anthropic-beta": "x-1"})
    assert reply.status == 200  # a beta may bring fields the mock does not know
    seen = last_seen(mock)
    assert seen["headers"]["anthropic-beta"] == "x-1" and seen["query"] == "beta=true"


# -- Gemini -----------------------------------------------------------------------------------------

def contents(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "parts": [{"text": text}]}]


def gemini(mock: Proc, path: str, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return call(mock.url, "POST", path, body, GEMINI_HEADERS if headers is None else headers)


def test_gemini_generate_content(mock: Proc) -> None:
    reply = gemini(mock, "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": contents("Hello there!")})
    assert reply.status == 200
    body = reply.json()
    assert body["candidates"] == [{"content": {"role": "model", "parts": [{"text": REPLY}]}, "finishReason": "STOP",
                                   "index": 0}]
    assert body["usageMetadata"] == {"promptTokenCount": 4, "candidatesTokenCount": len(WORDS),
                                     "totalTokenCount": 4 + len(WORDS)}
    assert body["modelVersion"] == "gemini-2.5-flash" and body["responseId"].startswith("mock-")
    assert last_seen(mock)["headers"]["x-goog-api-key"] == "goog-test"
    by_query = call(mock.url, "POST", "/v1beta/models/gemini-2.5-flash:generateContent?key=q-key",
                    {"contents": contents("hi"), "generationConfig": {"maxOutputTokens": 3}},
                    {"content-type": "application/json"})
    assert by_query.status == 200 and by_query.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert last_seen(mock)["query"] == "key=q-key"
    counted = gemini(mock, "/v1beta/models/gemini-2.5-flash:countTokens", {"contents": contents("Hello there!")})
    assert counted.json() == {"totalTokens": 4}


def sse_chunks(reply: Reply) -> list[dict[str, Any]]:
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = reply.body.split(b"\r\n\r\n")
    assert events[-1] == b""
    return [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]


def test_gemini_stream(mock: Proc) -> None:
    chunks = sse_chunks(gemini(mock, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                               {"contents": contents("hi")}))
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == REPLY
    assert len(chunks) == len(WORDS)
    assert [c["candidates"][0].get("finishReason") for c in chunks][-2:] == [None, "STOP"]
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == len(WORDS)
    array = gemini(mock, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", {"contents": contents("hi")})
    assert array.status == 200 and array.headers["content-type"] == "application/json"
    assert len(array.json()) == len(WORDS)


def test_gemini_function_calls(mock: Proc) -> None:
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters": {
        "type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]
    forced = gemini(mock, "/v1beta/models/gemini-2.5-flash:generateContent",
                    {"contents": contents("weather?"), "tools": tools,
                     "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}).json()
    assert forced["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "get_weather", "args": {"city": "mock"}}}]
    parallel = gemini(mock, "/v1beta/models/gemini-2.5-flash:generateContent",
                      {"contents": contents("call get_weather for two cities in parallel"), "tools": tools}).json()
    assert len(parallel["candidates"][0]["content"]["parts"]) == 2
    history = [*contents("call get_weather"),
               {"role": "model", "parts": forced["candidates"][0]["content"]["parts"]},
               {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "blue"}}}]}]
    answered = gemini(mock, "/v1beta/models/gemini-2.5-flash:generateContent", {"contents": history, "tools": tools})
    assert answered.json()["candidates"][0]["content"]["parts"] == [{"text": REPLY}]
    streamed = sse_chunks(gemini(mock, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                                 {"contents": contents("use a tool"), "tools": tools}))
    assert [c["candidates"][0]["content"]["parts"] for c in streamed] == [forced["candidates"][0]["content"]["parts"]]


@pytest.mark.parametrize(("path", "headers", "body", "status", "name", "message"), [
    ("/v1beta/models/g:generateContent", {}, {"contents": contents("x")}, 403, "PERMISSION_DENIED",
     "Method doesn't allow unregistered callers"),
    ("/v1beta/models/g:generateContent", GEMINI_HEADERS, {"contents": []}, 400, "INVALID_ARGUMENT",
     "contents is not specified"),
    ("/v1beta/models/g:generateContent", GEMINI_HEADERS,
     {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, 400, "INVALID_ARGUMENT",
     "Please use a valid role: user, model."),
    ("/v1beta/models/g:generateContent", GEMINI_HEADERS, b"{not json", 400, "INVALID_ARGUMENT", "Invalid JSON payload"),
    ("/v1beta/models/mock-status-503:generateContent", GEMINI_HEADERS, {"contents": contents("x")}, 503,
     "UNAVAILABLE", "The mock upstream answers 503 for this model."),
    ("/v1beta/models/g:embedSomething", GEMINI_HEADERS, {"contents": contents("x")}, 404, "NOT_FOUND", "was not found"),
])
def test_gemini_errors(mock: Proc, path: str, headers: dict[str, str], body: Any, status: int, name: str,
                       message: str) -> None:
    reply = gemini(mock, path, body, headers)
    assert reply.status == status
    error = reply.json()["error"]
    assert set(error) == {"code", "message", "status"}
    assert error["code"] == status and error["status"] == name and message in error["message"]


def test_gemini_cut_stream(mock: Proc) -> None:
    reply = gemini(mock, "/v1beta/models/mock-cut-stream:streamGenerateContent?alt=sse", {"contents": contents("hi")})
    assert reply.status == 200
    events = reply.body.split(b"\r\n\r\n")
    assert len(events) == 3 and events[-1].startswith(b"data: {")  # two whole events, then half of one
    with pytest.raises(json.JSONDecodeError):
        json.loads(events[-1].removeprefix(b"data: "))


# -- Azure OpenAI -----------------------------------------------------------------------------------

def test_azure_with_the_openai_sdk(mock: Proc) -> None:
    with openai.AzureOpenAI(azure_endpoint=mock.url, api_key="azure-key", api_version="2024-10-21",
                            max_retries=0) as client:
        azure_calls(mock, client)


def azure_calls(mock: Proc, client: openai.AzureOpenAI) -> None:
    answer = client.chat.completions.create(model="my-gpt4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "my-gpt4o" and answer.choices[0].message.content == REPLY
    seen = last_seen(mock)
    assert seen["path"] == "/openai/deployments/my-gpt4o/chat/completions"
    assert seen["query"] == "api-version=2024-10-21" and seen["headers"]["api-key"] == "azure-key"
    streamed = client.chat.completions.create(model="my-gpt4o", messages=[{"role": "user", "content": "hi"}],
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == REPLY
    vectors = client.embeddings.create(model="my-embedder", input=["a", "b"], dimensions=8)
    assert vectors.model == "my-embedder" and [len(d.embedding) for d in vectors.data] == [8, 8]
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="mock-status-429", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(("path", "headers", "status", "message"), [
    ("/openai/deployments/d/chat/completions?api-version=2024-10-21", {}, 401, "Access denied"),
    ("/openai/deployments/d/chat/completions", {"api-key": "k"}, 404, "Resource not found"),
    ("/openai/deployments/d/nothing?api-version=2024-10-21", {"api-key": "k"}, 404, "Resource not found"),
    ("/openai/deployments/mock-status-500/completions?api-version=2024-10-21", {"api-key": "k"}, 500,
     "The mock upstream answers 500 for this model."),
])
def test_azure_errors(mock: Proc, path: str, headers: dict[str, str], status: int, message: str) -> None:
    reply = call(mock.url, "POST", path, {"messages": [{"role": "user", "content": "hi"}]}, headers)
    assert reply.status == status
    error = reply.json()["error"]
    assert error["code"] == str(status) and message in error["message"]


def test_azure_completions(mock: Proc) -> None:
    reply = call(mock.url, "POST", "/openai/deployments/my-instruct/completions?api-version=2024-10-21",
                 {"prompt": "Say hi", "max_tokens": 2}, {"api-key": "k", "content-type": "application/json"})
    assert reply.status == 200
    body = reply.json()
    assert body["model"] == "my-instruct" and body["choices"][0]["text"] == " ".join(WORDS[:2])


# -- faults from the options, in each format's shape ------------------------------------------------

def test_random_errors_take_each_format_shape(tmp_path: Path) -> None:
    proc = start_mock(tmp_path, "--error-rate", "1", "--error-status", "529")
    try:
        user = [{"role": "user", "content": "hi"}]
        claude_reply = call(proc.url, "POST", "/v1/messages", {"model": "m", "max_tokens": 5, "messages": user},
                            ANTHROPIC_HEADERS)
        assert anthropic_error(claude_reply, 529, "overloaded_error")
        gemini_reply = gemini(proc, "/v1beta/models/g:generateContent", {"contents": contents("x")})
        assert gemini_reply.status == 529 and gemini_reply.json()["error"]["code"] == 529
        openai_reply = call(proc.url, "POST", "/v1/chat/completions", {"model": "m", "messages": user})
        assert openai_reply.status == 529 and openai_reply.json()["error"]["type"] == "server_error"
    finally:
        proc.stop()
