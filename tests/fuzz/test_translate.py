"""Provider translation both ways, streams included: OpenAI <-> Anthropic <-> Gemini.

Properties:
- Answers (``Provider.answer``, the /v1/messages egress, the error translators, the token counters) turn
  any upstream body into JSON in the caller's format, or raise only what their caller catches
  (``Sender._translated``: InvalidAnswer, UnsupportedContent, TypeError, AttributeError, KeyError, all
  a 502); error translators and token counters never raise.
- Stream translators fed any bytes, cut anywhere, write well-formed SSE whose events are JSON objects
  (or OpenAI's ``[DONE]``); ``feed`` raises at most ValueError (the relay then ends the stream) and
  ``close`` never raises.
- Round trips keep the text: an OpenAI stream through ChatToMessagesStream then MessagesToChatStream,
  an Anthropic stream through MessagesToChatStream, a Gemini stream through GeminiToChatStream, an
  Anthropic request through messages_to_chat then chat_to_messages, whatever the chunking.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sluice.config import ProviderConfig
from sluice.providers import Call, InvalidAnswer, build_provider
from sluice.providers.translate import anthropic as ta
from sluice.providers.translate import gemini as tg
from sluice.providers.translate.errors import UnsupportedContent
from sluice.providers.translate.sse import SSEParser, sse_event
from sluice.server.messages import Egress
from tests.fuzz._fuzz import FUZZ, JSON, TEXT, WORDS, corpus, cut, maybe, obj

# What Sender._translated turns into a 502 (server/forward.py): the answer's fault, not the gateway's.
ANSWER_ERRORS = (InvalidAnswer, UnsupportedContent, TypeError, AttributeError, KeyError)
CHAT = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
ANTHROPIC = build_provider("anthropic", ProviderConfig(kind="anthropic", base_url="http://127.0.0.1:9"))
GEMINI = build_provider("gemini", ProviderConfig(kind="gemini", base_url="http://127.0.0.1:9"))


def translators() -> dict[str, Any]:
    """A fresh translator of each kind (the Anthropic caller's chain included), by name."""
    return {
        "anthropic_to_openai": ta.MessagesToChatStream("m", 0, True),
        "openai_to_anthropic": ta.ChatToMessagesStream("m"),
        "anthropic_native": ta.NativeMessagesStream(),
        "gemini_to_openai": tg.GeminiToChatStream("m", 0, "chatcmpl-1", True),
    }


def run(translator: Any, pieces: list[bytes]) -> bytes:
    """The relay's use of a translator (server/relay.py): feed each piece, close at the end or after a ValueError."""
    out = []
    for piece in pieces:
        if not piece:
            continue
        try:
            out.append(translator.feed(piece))
        except ValueError:
            break
    out.append(translator.close())
    assert isinstance(translator.usage, tuple) and len(translator.usage) == 2
    return b"".join(out)


def events(stream: bytes, *, native: bool = False) -> list[tuple[str, Any]]:
    """The stream's events as (event name, data parsed); every one must be JSON or [DONE], but for the native
    Anthropic relay, which passes the upstream's events on as they are (whole, but not parsed)."""
    parser = SSEParser()
    parsed = parser.feed(stream)
    assert not parser.pending, stream[-200:]
    out = []
    for event in parsed:
        if event.data == "[DONE]":
            out.append((event.event, "[DONE]"))
            continue
        if native:
            out.append((event.event, event.data))
            continue
        data = json.loads(event.data)
        assert isinstance(data, dict), event
        out.append((event.event, data))
    return out


def openai_text(stream: bytes) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for _, e in events(stream)
                   if isinstance(e, dict) and e.get("choices"))


def anthropic_text(stream: bytes) -> str:
    return "".join(e["delta"].get("text", "") for name, e in events(stream)
                   if name == "content_block_delta" and e["delta"].get("type") == "text_delta")


# ------------------------------------------------------------------------------------------ streams

def anthropic_stream(texts: list[str], stop: str = "end_turn") -> bytes:
    out = [sse_event(orjson.dumps({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
        "usage": {"input_tokens": 3, "output_tokens": 1}}}), "message_start"),
        sse_event(b'{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}',
                  "content_block_start"), b": ping\n\n"]
    out += [sse_event(orjson.dumps({"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": t}}), "content_block_delta")
            for t in texts]
    out += [sse_event(b'{"type": "content_block_stop", "index": 0}', "content_block_stop"),
            sse_event(orjson.dumps({"type": "message_delta", "delta": {"stop_reason": stop},
                                    "usage": {"output_tokens": 5}}), "message_delta"),
            sse_event(b'{"type": "message_stop"}', "message_stop")]
    return b"".join(out)


def openai_stream(texts: list[str]) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return sse_event(orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}))

    return b"".join([chunk({"role": "assistant", "content": ""}), *(chunk({"content": t}) for t in texts),
                     chunk({}, "stop"),
                     sse_event(orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                                             "usage": {"prompt_tokens": 3, "completion_tokens": 2}})),
                     b"data: [DONE]\n\n"])


def gemini_stream(texts: list[str]) -> bytes:
    out = [sse_event(orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": t}]},
                                                   "index": 0}]})) for t in texts]
    out.append(sse_event(orjson.dumps({"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]},
                                                       "finishReason": "STOP", "index": 0}],
                                       "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2}})))
    return b"".join(out)


COUNT = st.integers(-1, 10**12)
RAW = st.tuples(st.just("raw"), st.sampled_from(["[DONE]", "", "{", "null", "[]", "\"x\""]))
ANTHROPIC_EVENT = st.tuples(
    st.sampled_from(["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop", "error", "ping", ""]),
    obj(type=st.sampled_from(["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop", "error", "x"]),
        index=st.integers(-1, 3), message=obj(id=TEXT, model=TEXT, usage=obj(input_tokens=COUNT, output_tokens=COUNT)),
        content_block=obj(type=WORDS, id=TEXT, name=TEXT, text=TEXT),
        delta=obj(type=st.sampled_from(["text_delta", "input_json_delta", "thinking_delta"]), text=TEXT,
                  partial_json=TEXT, stop_reason=WORDS),
        usage=obj(input_tokens=COUNT, output_tokens=COUNT), error=obj(type=WORDS, message=TEXT))) | RAW
OPENAI_EVENT = st.tuples(st.just(""), obj(
    id=TEXT, choices=st.lists(obj(index=st.integers(-1, 3), finish_reason=WORDS, delta=obj(
        role=WORDS, content=TEXT, refusal=TEXT, tool_calls=st.lists(obj(
            index=st.integers(-1, 3), id=TEXT, type=WORDS, function=obj(name=TEXT, arguments=TEXT)), max_size=2))),
        max_size=2),
    usage=obj(prompt_tokens=COUNT, completion_tokens=COUNT), error=obj(message=TEXT, type=WORDS))) | RAW
GEMINI_EVENT = st.tuples(st.just(""), obj(
    candidates=st.lists(obj(content=obj(role=WORDS, parts=st.lists(obj(
        text=TEXT, functionCall=obj(name=TEXT, args=JSON), thought=st.booleans()), max_size=2)),
        finishReason=st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "x"]), index=st.integers(-1, 2)), max_size=2),
    usageMetadata=obj(promptTokenCount=COUNT, candidatesTokenCount=COUNT), promptFeedback=obj(blockReason=WORDS),
    error=obj(code=st.integers(), message=TEXT, status=WORDS))) | RAW
_MESSAGE_START = anthropic_stream([]).split(b"\n\n")[0] + b"\n\n"
STARTS = {"anthropic_to_openai": _MESSAGE_START, "anthropic_native": _MESSAGE_START,
          "openai_to_anthropic": openai_stream([]).split(b"\n\n")[0] + b"\n\n",
          "gemini_to_openai": gemini_stream(["x"]).split(b"\n\n")[0] + b"\n\n"}
EVENTS = {"anthropic_to_openai": ANTHROPIC_EVENT, "openai_to_anthropic": OPENAI_EVENT,
          "anthropic_native": ANTHROPIC_EVENT, "gemini_to_openai": GEMINI_EVENT}


def sse_of(items: list[tuple[str, Any]]) -> bytes:
    out = []
    for name, data in items:
        payload = data.encode() if isinstance(data, str) else json.dumps(data).encode()
        out.append(sse_event(payload, None if name in ("raw", "") else name))
    return b"".join(out)


@pytest.mark.parametrize("name", list(translators()))
@pytest.mark.parametrize("stream", corpus("streams"))
def test_stream_corpus(name: str, stream: bytes) -> None:
    for points in ([], [1, 7, 50, 51], list(range(0, len(stream), 3))):
        out = run(translators()[name], cut(stream, points))
        events(out, native=name == "anthropic_native")


@pytest.mark.parametrize("name", list(translators()))
@FUZZ
@given(data=st.data(), points=st.lists(st.integers(0, 10**4), max_size=6), tail=st.binary(max_size=8))
def test_streams_of_events(name: str, data: st.DataObject, points: list[int], tail: bytes) -> None:
    items = data.draw(st.lists(EVENTS[name], max_size=6))
    start = data.draw(st.sampled_from([b"", STARTS[name]]))  # often a valid start, to get past the first check
    events(run(translators()[name], cut(start + sse_of(items) + tail, points)), native=name == "anthropic_native")


@pytest.mark.parametrize("name", list(translators()))
@FUZZ
@given(data=st.binary(max_size=200), points=st.lists(st.integers(0, 400), max_size=6))
@example(data=b"data: \xff\n\n", points=[])
@example(data=b"\r", points=[])
def test_streams_of_bytes(name: str, data: bytes, points: list[int]) -> None:
    events(run(translators()[name], cut(data, points)), native=name == "anthropic_native")


@FUZZ
@given(texts=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5),
       points=st.lists(st.integers(0, 2000), max_size=8))
@example(texts=["\r\n", "data: x\n\n", "\u2028é😀"], points=[1, 2, 3])
def test_text_survives_every_stream_translation(texts: list[str], points: list[int]) -> None:
    text = "".join(texts)
    assert openai_text(run(translators()["anthropic_to_openai"], cut(anthropic_stream(texts), points))) == text
    assert openai_text(run(translators()["gemini_to_openai"], cut(gemini_stream(texts), points))) == text
    as_anthropic = run(translators()["openai_to_anthropic"], cut(openai_stream(texts), points))
    assert anthropic_text(as_anthropic) == text
    native = run(translators()["anthropic_native"], cut(as_anthropic, points))
    assert anthropic_text(native) == text
    # and back: OpenAI -> Anthropic -> OpenAI
    assert openai_text(run(translators()["anthropic_to_openai"], cut(as_anthropic, points))) == text


# ------------------------------------------------------------------------------------------ answers

MESSAGE = obj(id=TEXT, type=st.just("message"), role=WORDS, model=TEXT, stop_reason=WORDS,
              content=st.lists(obj(type=WORDS, text=TEXT, id=TEXT, name=TEXT, input=JSON, thinking=TEXT), max_size=3),
              usage=obj(input_tokens=st.integers(-1, 10**6), output_tokens=st.integers(-1, 10**6),
                        cache_read_input_tokens=st.integers(-1, 9)))
COMPLETION = obj(id=TEXT, object=TEXT, model=TEXT, created=st.integers(),
                 choices=st.lists(obj(index=st.integers(-1, 2), finish_reason=WORDS, message=obj(
                     role=WORDS, content=TEXT, refusal=TEXT, tool_calls=st.lists(obj(
                         id=TEXT, type=WORDS, function=obj(name=TEXT, arguments=TEXT)), max_size=2))), max_size=2),
                 usage=obj(prompt_tokens=st.integers(-1, 9), completion_tokens=st.integers(-1, 9)))
GEMINI_ANSWER = obj(candidates=st.lists(obj(
    content=obj(role=WORDS, parts=st.lists(obj(text=TEXT, functionCall=obj(name=TEXT, args=JSON),
                                               thought=st.booleans()), max_size=2)),
    finishReason=st.sampled_from(["STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "x"]), index=st.integers(-1, 2)),
    max_size=2), usageMetadata=obj(promptTokenCount=st.integers(-1, 9), candidatesTokenCount=st.integers(-1, 9),
                                   thoughtsTokenCount=st.integers(-1, 9)), promptFeedback=obj(blockReason=WORDS))
STATUS = st.sampled_from([200, 200, 400, 401, 404, 429, 500, 503, 529])


def check_answers(status: int, body: bytes) -> None:
    call = Call("/v1/chat/completions", "POST", CHAT, False, "req-1", "m")
    for provider in (ANTHROPIC, GEMINI):
        try:
            out = provider.answer(call, status, body)
        except ANSWER_ERRORS:
            pass
        else:
            assert isinstance(orjson.loads(out), dict)
    egress_status, egress_body = Egress("claude").answer(status, body)
    assert egress_status >= 200 and isinstance(orjson.loads(egress_body), dict)
    for error in (ta.error_to_openai(status, body), tg.error_to_openai(status, body)):
        assert set(orjson.loads(error)["error"]) >= {"message", "type"}
    assert orjson.loads(ta.error_to_anthropic(status, body))["type"] == "error"
    parsed = None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
    if isinstance(parsed, dict):
        for counts in (ta.token_counts(parsed), tg.token_counts(parsed),
                       ANTHROPIC.token_counts(Call("/v1/messages", "POST", b"{}", False, "r", "m", "anthropic"), body)):
            assert counts is None or all(isinstance(n, int) for n in counts)


@pytest.mark.parametrize("body", corpus("answers"))
def test_answer_corpus(body: bytes) -> None:
    for status in (200, 400, 429, 500, 529):
        check_answers(status, body)


@FUZZ
@given(status=STATUS, answer=st.one_of(MESSAGE, COMPLETION, GEMINI_ANSWER, JSON))
@example(status=200, answer={"type": "message", "content": [{"type": "tool_use", "input": "not an object"}]})
@example(status=200, answer={"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{"}}]}}]})
def test_answers(status: int, answer: Any) -> None:
    check_answers(status, json.dumps(answer).encode())


@FUZZ
@given(status=STATUS, body=st.binary(max_size=100))
def test_answers_of_bytes(status: int, body: bytes) -> None:
    check_answers(status, body)


@FUZZ
@given(texts=st.lists(st.text(max_size=12), min_size=1, max_size=4),
       stop=st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", None]),
       usage=st.fixed_dictionaries({"input_tokens": st.integers(0, 10**9), "output_tokens": st.integers(0, 10**9)}))
def test_anthropic_answer_round_trip_keeps_the_text(texts: list[str], stop: str | None,
                                                    usage: dict[str, int]) -> None:
    """Anthropic message -> chat.completion -> Anthropic message: the text blocks' text is kept, and the usage."""
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "stop_reason": stop,
               "content": [{"type": "text", "text": t} for t in texts], "usage": usage}
    completion = ta.message_to_completion(message, "m", 0)
    back = ta.completion_to_message(completion, "m")
    assert "".join(b["text"] for b in back["content"] if b["type"] == "text") == "".join(texts)
    assert (back["usage"]["input_tokens"], back["usage"]["output_tokens"]) == (usage["input_tokens"],
                                                                               usage["output_tokens"])


# ------------------------------------------------------------------------------------------ requests

@FUZZ
@given(turns=st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=1, max_size=5),
       system=st.text(max_size=20), request=maybe(st.just({})))
def test_anthropic_request_round_trip_keeps_the_text(turns: list[str], system: str, request: Any) -> None:
    """An Anthropic request -> OpenAI chat (the /v1/messages ingress) -> Anthropic (the anthropic kind): the
    turns' text and the system prompt are kept, in order."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]
    original = {"model": "m", "max_tokens": 10, "messages": messages, **({"system": system} if system else {})}
    chat = ta.messages_to_chat(original)
    back = ta.chat_to_messages(chat, "m")
    texts = [m["content"] if isinstance(m["content"], str) else "".join(b["text"] for b in m["content"])
             for m in back["messages"]]
    assert texts == turns
    assert back.get("system", "") == system
    # and to Gemini: every turn's text is in its contents, in order
    contents = tg.chat_to_gemini(chat)["contents"]
    assert ["".join(p["text"] for p in c["parts"]) for c in contents] == turns


@pytest.mark.parametrize("name", list(translators()))
def test_an_error_event_whose_type_is_not_a_string(name: str) -> None:
    """Regression (found by test_streams_of_events): ChatToMessagesStream looked the error's type up in a dict,
    and a list there raised TypeError out of feed(), which the relay does not catch (a broken stream)."""
    for stream in (b'data: {"error": {"type": [], "message": ""}}\n\n',
                   b'event: error\ndata: {"type": "error", "error": {"type": {"x": 1}, "message": ["m"]}}\n\n'):
        out = events(run(translators()[name], [stream]), native=name == "anthropic_native")
        assert out and out[-1][0] in ("error", "message"), out
