"""Streams between the Anthropic Messages API and OpenAI chat completions, incrementally.

Two small state machines.  Each is fed the upstream's SSE bytes split anywhere
and returns, at once, the translation of every event those bytes complete:
nothing waits for the end of the stream, nothing is held but a partial event.

    MessagesToChatStream   Anthropic events   -> OpenAI chat.completion.chunk events, then [DONE]
    ChatToMessagesStream   OpenAI chunks      -> Anthropic message_start ... message_stop events

A stream that ends early, carries an upstream ``error`` event or cannot be read
ends with one well-formed error event in the caller's format, and ``error``
names what happened (``close()`` writes that event at upstream EOF).

The stop-reason and usage mappings are shared with ``anthropic.py`` (plain
answers) and live here so that module imports this one, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson

from .sse import SSEError, SSEEvent, SSEParser, sse_event

__all__ = ["ChatToMessagesStream", "MessagesToChatStream"]

# Anthropic stop_reason -> OpenAI finish_reason.  pause_turn (a server tool paused) has no OpenAI
# counterpart: the turn did end.  Running out of context is "length" for an OpenAI client.
STOP_TO_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# OpenAI finish_reason -> Anthropic stop_reason.  "stop" cannot tell a stop sequence from a natural end.
FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# The error types an Anthropic client knows; anything else reaches it as api_error.
ANTHROPIC_ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
    "request_too_large", "rate_limit_error", "timeout_error", "api_error", "overloaded_error",
})

CUT = "upstream_stream_cut"
MALFORMED = "upstream_stream_malformed"
_DONE = b"data: [DONE]\n\n"


def _count(value: object) -> int:
    """A token count, 0 when absent or not an integer (counts are never worth failing a stream for)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage.

    Anthropic counts cached input apart from ``input_tokens``; OpenAI's
    ``prompt_tokens`` is every input token, with the cache reads repeated in
    ``cached_tokens`` (and the cache writes in ``cache_write_tokens``, when any).
    """
    read = _count(usage.get("cache_read_input_tokens"))
    written = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + read + written
    completion = _count(usage.get("output_tokens"))
    details: dict[str, int] = {"cached_tokens": read}
    if written:
        details["cache_write_tokens"] = written
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": details}


def anthropic_usage(usage: Mapping[str, Any]) -> dict[str, int]:
    """OpenAI usage -> Anthropic usage, the inverse of ``openai_usage``."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    read = _count(details.get("cached_tokens"))
    written = _count(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(_count(usage.get("prompt_tokens")) - read - written, 0),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": _count(usage.get("completion_tokens")),
    }


def anthropic_counts(usage: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) of Anthropic usage, cached input included; -1 for a count never given."""
    prompt = completion = -1
    if isinstance(usage.get("input_tokens"), int):
        prompt = sum(_count(usage.get(key)) for key in
                     ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
    if isinstance(usage.get("output_tokens"), int):
        completion = _count(usage["output_tokens"])
    return prompt, completion


def openai_counts(usage: Mapping[str, Any]) -> tuple[int, int]:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else -1), (completion if isinstance(completion, int) else -1)


def openai_error_event(message: str, kind: str, code: str) -> bytes:
    """The error event the relay also ends a failed OpenAI stream with."""
    return sse_event(orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}))


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _loads(data: str) -> dict[str, Any] | None:
    """An event's JSON object, None when it is not one."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class MessagesToChatStream:
    """Anthropic SSE stream bytes -> OpenAI chat.completion.chunk SSE bytes, incrementally.

    message_start gives the role chunk; each text block's deltas become content
    deltas; each tool_use block becomes one tool call (OpenAI index = its rank
    among the tool_use blocks) whose arguments are the input_json deltas, passed
    on as they come.  Thinking blocks and other block types are skipped: chat
    completions has nowhere to put them.  message_delta gives the one
    finish_reason chunk, message_stop the usage chunk (if asked) and [DONE].
    """

    __slots__ = ("_created", "_done", "_finished", "_head", "_id", "_include_usage", "_model", "_parser",
                 "_tools", "_usage", "error", "usage")

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self._parser = SSEParser()
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        # Every chunk starts with the same bytes up to the delta: built once at message_start, so a
        # text delta costs one small orjson.dumps of the text, not of a whole nested chunk.
        self._head = b""
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._usage: dict[str, int] = {}  # the latest value of each Anthropic usage count
        self.usage = (-1, -1)  # (prompt, completion) tokens reported so far, -1 for a count not seen yet
        self._finished = False  # the finish_reason chunk was written
        self._done = False  # message_stop or an error ended the stream: later bytes are ignored
        self.error: str | None = None

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            return self._fail(MALFORMED, f"The upstream stream is not valid SSE: {exc}")
        out = [self._event(event) for event in events if not self._done]
        return b"".join(out)

    def close(self) -> bytes:
        """At upstream EOF: b"" after message_stop (or an error already written), else an error event."""
        if self._done:
            return b""
        return self._fail(CUT, "The upstream stream ended before message_stop.")

    def _event(self, event: SSEEvent) -> bytes:
        if self._done:  # an error earlier in the same feed
            return b""
        payload = _loads(event.data)
        if payload is None:
            return self._fail(MALFORMED, f"An upstream {event.event} event is not a JSON object.")
        kind = payload.get("type")
        kind = kind if isinstance(kind, str) else event.event
        handler = self._HANDLERS.get(kind)
        if handler is None:  # ping, and event types newer than this code: nothing for the client
            return b""
        if not self._head and kind not in ("message_start", "error"):
            return self._fail(MALFORMED, f"The upstream sent {kind} before message_start.")
        try:
            return handler(self, payload)
        except (KeyError, TypeError, AttributeError):
            return self._fail(MALFORMED, f"An upstream {kind} event lacks a field or has one of the wrong type.")

    def _fail(self, code: str, message: str, kind: str = "upstream_error") -> bytes:
        self.error = code
        self._done = True
        return openai_error_event(message, kind, code)

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return sse_event(self._head + delta + b',"finish_reason":' + finish + b"}]}")

    def _text(self, text: str) -> bytes:
        return self._chunk(b'{"content":' + orjson.dumps(text) + b"}") if text else b""

    def _merge_usage(self, usage: object) -> None:
        # message_start carries the input counts, message_delta cumulative output (and, lately, input) counts.
        if isinstance(usage, dict):
            self._usage.update((k, v) for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool))
            self.usage = anthropic_counts(self._usage)

    def _finish(self, reason: str) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        return self._chunk(b"{}", orjson.dumps(reason))

    def _on_message_start(self, event: dict[str, Any]) -> bytes:
        message = event["message"]
        self._id = "chatcmpl-" + message["id"]
        self._head = b"".join((b'{"id":', orjson.dumps(self._id), b',"object":"chat.completion.chunk","created":',
                               orjson.dumps(self._created), b',"model":', orjson.dumps(self._model),
                               b',"choices":[{"index":0,"delta":'))
        self._merge_usage(message.get("usage"))
        return self._chunk(b'{"role":"assistant","content":""}')

    def _on_block_start(self, event: dict[str, Any]) -> bytes:
        block = event["content_block"]
        if block["type"] == "text":
            return self._text(block.get("text") or "")
        if block["type"] != "tool_use":
            return b""
        index = self._tools[event["index"]] = len(self._tools)
        # Anthropic starts a tool_use block with input {} and streams the input as JSON deltas; a
        # non-empty input here (a proxy that sends it whole) is the complete arguments.
        arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        call = {"index": index, "id": block["id"], "type": "function",
                "function": {"name": block["name"], "arguments": arguments}}
        return self._chunk(orjson.dumps({"tool_calls": [call]}))

    def _on_block_delta(self, event: dict[str, Any]) -> bytes:
        delta = event["delta"]
        if delta["type"] == "text_delta":
            return self._text(delta["text"])
        if delta["type"] != "input_json_delta":  # thinking, signature and citations deltas
            return b""
        index = self._tools.get(event["index"])
        if index is None or not delta["partial_json"]:
            return b""
        call = {"index": index, "function": {"arguments": delta["partial_json"]}}
        return self._chunk(orjson.dumps({"tool_calls": [call]}))

    def _on_message_delta(self, event: dict[str, Any]) -> bytes:
        self._merge_usage(event.get("usage"))
        return self._finish(STOP_TO_FINISH.get(event["delta"].get("stop_reason"), "stop"))

    def _on_message_stop(self, event: dict[str, Any]) -> bytes:
        out = self._finish("stop")  # a message_delta always comes first; if not, the turn simply ended
        if self._include_usage:
            final = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                     "model": self._model, "choices": [], "usage": openai_usage(self._usage)}
            out += sse_event(orjson.dumps(final))
        self._done = True
        return out + _DONE

    def _on_error(self, event: dict[str, Any]) -> bytes:
        error = event.get("error")
        error = error if isinstance(error, dict) else {}
        kind, message = error.get("type"), error.get("message")
        kind = kind if isinstance(kind, str) else "api_error"
        message = message if isinstance(message, str) else "The upstream reported an error."
        return self._fail(kind, message, kind)

    def _ignore(self, event: dict[str, Any]) -> bytes:
        return b""

    _HANDLERS: ClassVar[dict[str, Callable[[MessagesToChatStream, dict[str, Any]], bytes]]] = {
        "message_start": _on_message_start,
        "content_block_start": _on_block_start,
        "content_block_delta": _on_block_delta,
        "content_block_stop": _ignore,
        "message_delta": _on_message_delta,
        "message_stop": _on_message_stop,
        "error": _on_error,
    }


class ChatToMessagesStream:
    """OpenAI chat.completion.chunk SSE bytes -> Anthropic SSE events, incrementally.

    The first chunk opens the message (input tokens are 0 there: OpenAI reports
    usage at the end, and the final message_delta carries it).  A run of content
    deltas is one text block; each tool call (by OpenAI index, or a new id on a
    reused index, which some compatible servers send) is one tool_use block whose
    input is streamed as input_json deltas.  The message ends (message_delta with
    stop_reason and usage, then message_stop) at [DONE], or as soon as both a
    finish_reason and the usage chunk have arrived.
    """

    __slots__ = ("_block", "_blocks", "_done", "_id", "_model", "_open", "_parser", "_started", "_stop",
                 "_tools", "_usage", "error", "usage")

    def __init__(self, model: str) -> None:
        self._parser = SSEParser()
        self._model = model
        self._id = ""
        self._started = False  # message_start was written
        self._open = ""  # the kind of the open content block: "text", "tool_use", or "" when none is open
        self._block = -1  # the index of the last block started
        self._blocks = 0  # how many blocks were started
        self._tools: dict[int, tuple[int, str]] = {}  # OpenAI tool call index -> (block index, call id)
        self._stop: str | None = None  # the Anthropic stop_reason, once a finish_reason came
        self._usage: dict[str, Any] | None = None  # the OpenAI usage, once it came
        self.usage = (-1, -1)  # (prompt, completion) tokens reported so far, -1 for a count not seen yet
        self._done = False
        self.error: str | None = None

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return b""
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            return self._fail(MALFORMED, f"The upstream stream is not valid SSE: {exc}")
        return b"".join([self._event(event) for event in events])

    def close(self) -> bytes:
        """At upstream EOF: b"" once the message ended, else an Anthropic error event."""
        if self._done:
            return b""
        return self._fail(CUT, "The upstream stream ended before [DONE].")

    def _event(self, event: SSEEvent) -> bytes:
        if self._done:
            return b""
        if event.data.strip() == "[DONE]":
            return self._end()
        payload = _loads(event.data)
        if payload is None:
            return self._fail(MALFORMED, "An upstream chunk is not a JSON object.")
        if "error" in payload:
            return self._upstream_error(payload["error"])
        try:
            return self._chunk(payload)
        except (KeyError, TypeError, AttributeError):
            return self._fail(MALFORMED, "An upstream chunk lacks a field or has one of the wrong type.")

    def _fail(self, code: str, message: str, kind: str = "api_error") -> bytes:
        self.error = code
        self._done = True
        return self._emit("error", anthropic_error(kind, message))

    def _upstream_error(self, error: object) -> bytes:
        error = error if isinstance(error, dict) else {"message": str(error)}
        kind, message = error.get("type"), error.get("message")
        code = error.get("code") or kind or "upstream_error"
        message = message if isinstance(message, str) else "The upstream reported an error."
        # isinstance first: an upstream's type may be any JSON (a list is unhashable), never an exception here
        known = kind if isinstance(kind, str) and kind in ANTHROPIC_ERROR_TYPES else "api_error"
        return self._fail(str(code), message, known)

    @staticmethod
    def _emit(name: str, payload: dict[str, Any]) -> bytes:
        return sse_event(orjson.dumps(payload), name)

    def _chunk(self, chunk: dict[str, Any]) -> bytes:
        out = [] if self._started else [self._start(chunk)]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
            self.usage = openai_counts(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:  # n > 1 is refused at the request: other choices are not ours
                continue
            out.append(self._delta(choice.get("delta") or {}))
            if choice.get("finish_reason"):
                self._stop = FINISH_TO_STOP.get(choice["finish_reason"], "end_turn")
                out.append(self._close_block())
        if self._stop and self._usage is not None:
            out.append(self._end())  # nothing can follow but [DONE]: end the message now
        return b"".join(out)

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        chunk_id = str(chunk.get("id") or "")
        self._id = chunk_id if chunk_id.startswith("msg_") else "msg_" + chunk_id
        usage = chunk.get("usage")
        counts = anthropic_usage(usage) if isinstance(usage, dict) else {"input_tokens": 0, "output_tokens": 0}
        message: dict[str, Any] = {"id": self._id, "type": "message", "role": "assistant", "model": self._model,
                                   "content": [], "stop_reason": None, "stop_sequence": None, "usage": counts}
        return self._emit("message_start", {"type": "message_start", "message": message})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        out = [self._text(delta[key]) for key in ("content", "refusal") if isinstance(delta.get(key), str)]
        out.extend(self._tool_call(call) for call in delta.get("tool_calls") or ())
        return b"".join(out)

    def _text(self, text: str) -> bytes:
        if not text:
            return b""
        out = b"" if self._open == "text" else self._close_block() + self._open_block({"type": "text", "text": ""})
        payload = {"type": "content_block_delta", "index": self._block, "delta": {"type": "text_delta", "text": text}}
        return out + self._emit("content_block_delta", payload)

    def _tool_call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        function = call.get("function") or {}
        known = self._tools.get(index)
        out = b""
        if known is None or (call.get("id") and call["id"] != known[1]):
            call_id = call.get("id") or f"toolu_{self._id.removeprefix('msg_')}_{index}"
            block: dict[str, Any] = {"type": "tool_use", "id": call_id, "name": function.get("name") or "", "input": {}}
            out = self._close_block() + self._open_block(block)
            known = self._tools[index] = (self._block, call_id)
        arguments = function.get("arguments")
        if not arguments:
            return out
        # OpenAI sends one call's arguments before the next call starts; were a server to interleave
        # them, the deltas still name their own block, which is how the Anthropic SDK accumulates.
        payload = {"type": "content_block_delta", "index": known[0],
                   "delta": {"type": "input_json_delta", "partial_json": arguments}}
        return out + self._emit("content_block_delta", payload)

    def _open_block(self, block: dict[str, Any]) -> bytes:
        self._block = self._blocks
        self._blocks += 1
        self._open = block["type"]
        return self._emit("content_block_start",
                          {"type": "content_block_start", "index": self._block, "content_block": block})

    def _close_block(self) -> bytes:
        if not self._open:
            return b""
        self._open = ""
        return self._emit("content_block_stop", {"type": "content_block_stop", "index": self._block})

    def _end(self) -> bytes:
        out = b"" if self._started else self._start({})
        out += self._close_block()
        usage: dict[str, int] = anthropic_usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        delta = {"type": "message_delta", "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": None},
                 "usage": usage}
        self._done = True
        return out + self._emit("message_delta", delta) + self._emit("message_stop", {"type": "message_stop"})


class NativeMessagesStream:
    """An Anthropic stream relayed to an Anthropic caller: the same events, whole, with their usage noted.

    Nothing is translated; events are re-framed one by one so that a cut or
    malformed upstream stream ends with a well-formed ``error`` event, never
    half of one, and the usage of message_start / message_delta reaches the
    gateway's metrics.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._stopped = False  # message_stop (or an error event) was relayed
        self.usage = (-1, -1)
        self.error: str | None = None

    def feed(self, data: bytes) -> bytes:
        if self.error is not None:
            return b""
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            return self._fail(MALFORMED, f"The upstream stream is not valid SSE: {exc}")
        out = []
        for event in events:
            payload = _loads(event.data)
            if payload is not None and event.event in ("message_start", "message_delta"):
                prompt, completion = anthropic_counts(_usage_of(payload))
                self.usage = (prompt if prompt >= 0 else self.usage[0],
                              completion if completion >= 0 else self.usage[1])
            if event.event == "error":
                self.error = "upstream_error"
            self._stopped = self._stopped or event.event in ("message_stop", "error")
            out.append(sse_event(event.data.encode(), event.event))
        return b"".join(out)

    def close(self) -> bytes:
        if self._stopped or self.error is not None:
            return b""
        return self._fail(CUT, "The upstream stream ended before message_stop.")

    def _fail(self, code: str, message: str) -> bytes:
        self.error = code
        return sse_event(orjson.dumps(anthropic_error("api_error", message)), "error")


def _usage_of(payload: dict[str, Any]) -> Mapping[str, Any]:
    message = payload.get("message")
    usage = (message if isinstance(message, dict) else payload).get("usage")
    return usage if isinstance(usage, dict) else {}
