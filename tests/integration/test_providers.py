"""Every model of examples/providers.yaml answers the openai SDK and the anthropic SDK, whatever its kind.

One mock upstream serves the OpenAI, Anthropic and Gemini wire formats; the
gateway translates between them.  Plain, streaming, tool calls and image input.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from sluice.mock.openai import REPLY
from tests.conftest import ROOT, Proc, call, start_gateway, wait_until

pytestmark = pytest.mark.integration

MODELS = ["gpt-4o-mini", "claude-haiku", "gemini-flash"]
TRANSLATED = ["claude-haiku", "gemini-flash"]
KEY = "sk-sluice-demo"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a4a8a7d10000000049454e44ae426082")).decode()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Proc) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("providers")
    config = (ROOT / "examples" / "providers.yaml").read_text()
    proc = start_gateway(tmp, config, env={"SLUICE_UPSTREAM": mock_upstream.url})
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def oai(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def claude(gateway: Proc) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=KEY, max_retries=0)


def seen(mock_upstream: Proc, request_id: str) -> dict:  # type: ignore[type-arg]
    for request in call(mock_upstream.url, "GET", "/_mock/requests").json():
        if request["headers"].get("x-request-id") == request_id:
            return request  # type: ignore[no-any-return]
    raise AssertionError(f"the mock never saw {request_id}")


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_plain(oai: openai.OpenAI, model: str) -> None:
    answer = oai.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}])
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert answer.usage.completion_tokens == len(REPLY.split())


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_stream(oai: openai.OpenAI, model: str) -> None:
    chunks = list(oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == len(REPLY.split())


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_max_tokens(oai: openai.OpenAI, model: str) -> None:
    answer = oai.chat.completions.create(model=model, max_tokens=3, messages=[{"role": "user", "content": "Hi."}])
    assert answer.choices[0].message.content == " ".join(REPLY.split()[:3])
    assert answer.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_tool_calls_and_results(oai: openai.OpenAI, model: str) -> None:
    messages: list = [{"role": "user", "content": "What is the weather in Paris? use a tool"}]  # type: ignore[type-arg]
    answer = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.function.name == "get_weather"
    assert "city" in json.loads(tool_call.function.arguments)
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temperature": 21}'}]
    final = oai.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == REPLY


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_streamed_tool_calls(oai: openai.OpenAI, model: str) -> None:
    chunks = list(oai.chat.completions.create(model=model, tools=[WEATHER], stream=True, messages=[
        {"role": "user", "content": "Weather in Paris and Rome, in parallel please: use a tool"}]))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.id or ""
            entry["name"] += (delta.function.name or "") if delta.function else ""
            entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
    assert len(calls) == 2  # parallel tool calls, each complete
    for entry in calls.values():
        assert entry["id"] and entry["name"] == "get_weather" and "city" in json.loads(entry["arguments"])


@pytest.mark.parametrize("model", TRANSLATED)
def test_openai_sdk_image_input(oai: openai.OpenAI, model: str) -> None:
    text = {"type": "text", "text": "What is in this picture?"}
    images = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
              {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    plain = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": [text]}])
    answer = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": [text, *images]}])
    assert answer.choices[0].message.content == REPLY
    # the mock counts each image it received as a provider does (85 or 258 tokens): both arrived as images
    assert plain.usage is not None and answer.usage is not None
    assert answer.usage.prompt_tokens >= plain.usage.prompt_tokens + 2 * 85


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_plain(claude: anthropic.Anthropic, model: str) -> None:
    message = claude.messages.create(model=model, max_tokens=256, system="Be brief.",
                                     messages=[{"role": "user", "content": "Say hello."}])
    assert message.type == "message" and message.role == "assistant"
    assert "".join(block.text for block in message.content if block.type == "text") == REPLY
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == len(REPLY.split()) and message.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_stream(claude: anthropic.Anthropic, model: str) -> None:
    with claude.messages.stream(model=model, max_tokens=256,
                                messages=[{"role": "user", "content": "Say hello."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == len(REPLY.split())


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_tool_use(claude: anthropic.Anthropic, model: str) -> None:
    tool = {"name": "get_weather", "description": "The weather in a city.",
            "input_schema": WEATHER["function"]["parameters"]}  # type: ignore[index]
    messages: list = [{"role": "user", "content": "What is the weather in Paris? use a tool"}]  # type: ignore[type-arg]
    message = claude.messages.create(model=model, max_tokens=256, tools=[tool], messages=messages)  # type: ignore[list-item]
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and "city" in use.input  # type: ignore[operator]
    messages += [{"role": "assistant", "content": [b.model_dump() for b in message.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C"}]}]
    final = claude.messages.create(model=model, max_tokens=256, tools=[tool], messages=messages)  # type: ignore[list-item]
    assert "".join(b.text for b in final.content if b.type == "text") == REPLY


@pytest.mark.parametrize("model", MODELS)
def test_anthropic_sdk_streamed_tool_use(claude: anthropic.Anthropic, model: str) -> None:
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}  # type: ignore[index]
    with claude.messages.stream(model=model, max_tokens=256, tools=[tool],  # type: ignore[list-item]
                                messages=[{"role": "user", "content": "Paris? use a tool"}]) as stream:
        final = stream.get_final_message()
    (use,) = [block for block in final.content if block.type == "tool_use"]
    assert use.name == "get_weather" and "city" in use.input  # type: ignore[operator]
    assert final.stop_reason == "tool_use"


def test_anthropic_errors_come_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="claude-haiku", max_tokens=10, messages=[])


def test_count_tokens_on_an_anthropic_target(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="claude-haiku", messages=[{"role": "user", "content": "Hello."}])
    assert counted.input_tokens > 0
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.count_tokens(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello."}])


def test_unsupported_content_is_a_400_naming_field_and_target(gateway: Proc) -> None:
    content = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    for model, kind in (("claude-haiku", "anthropic"), ("gemini-flash", "gemini")):
        reply = call(gateway.url, "POST", "/v1/chat/completions",
                     {"model": model, "messages": [{"role": "user", "content": content}]})
        assert reply.status == 400
        error = reply.json()["error"]
        assert error["code"] == "unsupported_content" and error["param"].startswith("messages[0].content[0]")
        assert kind in error["message"]


def test_upstream_keys_and_headers(gateway: Proc, mock_upstream: Proc) -> None:
    for model, header, key in (("claude-haiku", "x-api-key", "sk-ant-mock"),
                               ("gemini-flash", "x-goog-api-key", "mock-gemini-key")):
        request_id = f"keys-{model}"
        reply = call(gateway.url, "POST", "/v1/chat/completions",
                     {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                     {"x-request-id": request_id, "authorization": f"Bearer {KEY}"})
        assert reply.status == 200
        headers = seen(mock_upstream, request_id)["headers"]
        assert headers[header] == key and headers.get("authorization") is None  # the caller's key never goes on


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, raw_upstream, mock_upstream: Proc) -> Iterator[Proc]:  # type: ignore[no-untyped-def]
    """Anthropic and Gemini targets whose upstreams answer what their format cannot parse, or break streams."""
    tmp = tmp_path_factory.mktemp("broken-providers")
    proc = start_gateway(tmp, f"""
providers:
  raw-anthropic: {{kind: anthropic, base_url: "{raw_upstream.url}", api_keys: [k]}}
  raw-gemini: {{kind: gemini, base_url: "{raw_upstream.url}", api_keys: [k]}}
  raw-openai: {{kind: openai, base_url: "{raw_upstream.url}", api_keys: [k]}}
  mock-anthropic: {{kind: anthropic, base_url: "{mock_upstream.url}", api_keys: [k]}}
  mock-gemini: {{kind: gemini, base_url: "{mock_upstream.url}", api_keys: [k]}}
models:
  anthropic-html: {{targets: [{{provider: raw-anthropic, model: raw-html}}]}}
  anthropic-wrong: {{targets: [{{provider: raw-anthropic, model: raw-wrong-json}}]}}
  gemini-html: {{targets: [{{provider: raw-gemini, model: raw-html}}]}}
  openai-wrong: {{targets: [{{provider: raw-openai, model: raw-wrong-json}}]}}
  gemini-wrong: {{targets: [{{provider: raw-gemini, model: raw-wrong-json}}]}}
  anthropic-500: {{targets: [{{provider: mock-anthropic, model: mock-status-529}}]}}
  gemini-429: {{targets: [{{provider: mock-gemini, model: mock-status-429}}]}}
  anthropic-cut: {{targets: [{{provider: mock-anthropic, model: mock-cut-stream}}]}}
  gemini-cut: {{targets: [{{provider: mock-gemini, model: mock-cut-stream}}]}}
""")
    yield proc
    proc.stop()


@pytest.mark.parametrize("model", ["anthropic-html", "anthropic-wrong", "gemini-html", "gemini-wrong"])
def test_an_answer_that_cannot_be_parsed_is_a_502_with_status_and_body(broken: Proc, model: str) -> None:
    reply = call(broken.url, "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user",
                                                                                           "content": "hi"}]})
    assert reply.status == 502
    error = reply.json()["error"]
    assert error["code"] == "upstream_invalid_answer" and "status 200" in error["message"]
    assert ("Bad gateway at the provider" in error["message"]) or ("unexpected" in error["message"])


@pytest.mark.parametrize(("model", "status", "kind"), [("anthropic-500", 529, "overloaded_error"),
                                                       ("gemini-429", 429, "rate_limit_error")])
def test_provider_errors_reach_openai_callers_in_openai_shape(broken: Proc, model: str, status: int,
                                                               kind: str) -> None:
    reply = call(broken.url, "POST", "/v1/chat/completions", {"model": model, "messages": [{"role": "user",
                                                                                           "content": "hi"}]})
    assert reply.status == status
    error = reply.json()["error"]
    assert error["message"] and error["type"] in (kind, "rate_limit_error", "overloaded_error", "server_error")


@pytest.mark.parametrize("model", ["anthropic-cut", "gemini-cut"])
def test_a_cut_provider_stream_ends_with_a_well_formed_error_event(broken: Proc, model: str) -> None:
    reply = call(broken.url, "POST", "/v1/chat/completions",
                 {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status == 200
    events = reply.body.decode().split("\n\n")
    assert events[-1] == ""  # the body ends at an event boundary: never half a line
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1] if e.startswith("data: {")]
    assert all(e.startswith(("data: ", ":")) for e in events[:-1])
    assert payloads[-1]["error"]["code"] in ("upstream_stream_error", "upstream_stream_cut")
    assert b"[DONE]" not in reply.body


def test_native_anthropic_streams_keep_their_usage_and_end_cleanly(broken: Proc, gateway: Proc) -> None:
    from tests.integration.test_metrics import scrape, value

    before = value(scrape(gateway.url), "sluice_tokens_output_total", model="claude-haiku")
    request = {"model": "claude-haiku", "max_tokens": 100, "stream": True,
               "messages": [{"role": "user", "content": "Say hello."}]}
    headers = {"anthropic-version": "2023-06-01", "x-api-key": KEY}
    reply = call(gateway.url, "POST", "/v1/messages", request, headers)
    assert reply.status == 200 and reply.body.endswith(b'data: {"type":"message_stop"}\n\n')
    # the worker's snapshot is at most a second old
    wait_until(lambda: value(scrape(gateway.url), "sluice_tokens_output_total", model="claude-haiku")
               >= before + len(REPLY.split()), "the stream's output tokens counted")
    cut = call(broken.url, "POST", "/v1/messages", {**request, "model": "anthropic-cut"}, headers)
    assert cut.status == 200
    assert cut.body.endswith(b"\n\n") and b"event: error\n" in cut.body.rsplit(b"\n\n", 2)[-2]


def test_an_openai_answer_anthropic_callers_cannot_be_given_is_a_502_in_their_shape(broken: Proc) -> None:
    reply = call(broken.url, "POST", "/v1/messages", {"model": "openai-wrong", "max_tokens": 10,
                                                      "messages": [{"role": "user", "content": "hi"}]},
                 {"anthropic-version": "2023-06-01", "x-api-key": KEY})
    assert reply.status == 502
    assert reply.json()["type"] == "error" and reply.headers["content-type"] == "application/json"
