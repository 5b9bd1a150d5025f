"""OpenAI wire format for the mock upstream: chat, completions, embeddings, models, SSE streams.

Answers are deterministic functions of the request, so tests can predict them:
the reply text is REPLY (cut to max_tokens words, then finish_reason "length"),
one word is one completion token, a prompt token is four characters.  With
``tools``, a chat answers tool calls (``mock.tools``: forced by ``tool_choice``,
or asked for by "use a tool" / "call <name>"; "parallel" makes two), and a
last turn of tool results is answered with REPLY.  ``stream_bytes`` (the mock's option) pads a streamed
chat with content events of PAD_TEXT until it is at least that long (large streams, e.g. for slow readers).
"""

from __future__ import annotations

import base64
import itertools
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import xxhash

from .tools import choose_tools, sample_input

__all__ = [
    "REPLY",
    "chat_chunks",
    "chat_completion",
    "completion",
    "completion_chunks",
    "embeddings",
    "error_body",
    "error_event",
    "model_card",
    "prompt_tokens",
    "tool_calls",
]

REPLY = "Hello! This is the sluice mock upstream answering your request."
_WORDS = REPLY.split(" ")
# The content of each padding event (stream_bytes): ~4 KB events, so that a multi-MB stream is a thousand
# events, not the tens of thousands a token stream that long would be (the mock's and the gateway's CPU).
PAD_TEXT = " padding" * 500
_ids = itertools.count(1)
DEFAULT_DIMENSIONS = 1536


def prompt_tokens(value: Any, is_image: Callable[[dict[str, Any]], bool] | None = None,
                  image_tokens: int = 0) -> int:
    """A stable token estimate: one per four characters of every string in the prompt.

    With ``is_image``, an object it recognises counts ``image_tokens`` instead, as providers bill images.
    """
    if isinstance(value, str):
        return max(1, len(value) // 4)
    if isinstance(value, list):
        return sum(prompt_tokens(item, is_image, image_tokens) for item in value)
    if isinstance(value, dict):
        if is_image is not None and is_image(value):
            return image_tokens
        return sum(prompt_tokens(item, is_image, image_tokens) for item in value.values())
    return 0


def _reply_words(request: dict[str, Any]) -> tuple[list[str], str]:
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    if isinstance(limit, int) and 0 < limit < len(_WORDS):
        return _WORDS[:limit], "length"
    return _WORDS, "stop"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _choices_count(request: dict[str, Any]) -> int:
    n = request.get("n")
    return n if isinstance(n, int) and 1 <= n <= 16 else 1


def tool_calls(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool calls a chat request is answered with; [] for a text answer."""
    tools = [t["function"] for t in request.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name")]
    messages = request.get("messages") or []
    choice = request.get("tool_choice", "auto")
    if not tools or not messages or messages[-1].get("role") != "user" or choice == "none":
        return []
    content = messages[-1].get("content")
    text = content if isinstance(content, str) else " ".join(
        part.get("text", "") for part in content or [] if isinstance(part, dict) and part.get("type") == "text")
    named = isinstance(choice, dict) and isinstance(choice.get("function"), dict)
    calls = choose_tools([t["name"] for t in tools], text, forced=choice == "required" or named,
                         only=[choice["function"].get("name")] if named else None,
                         parallel=request.get("parallel_tool_calls") is not False)
    schemas = {t["name"]: t.get("parameters") for t in tools}
    number = next(_ids)
    return [{"id": f"call_mock_{number}_{i + 1}", "type": "function",
             "function": {"name": name, "arguments": orjson.dumps(sample_input(schemas[name])).decode()}}
            for i, name in enumerate(calls)]


def _tool_tokens(calls: list[dict[str, Any]]) -> int:
    return sum(prompt_tokens(c["function"]["name"]) + prompt_tokens(c["function"]["arguments"]) for c in calls)


def chat_completion(request: dict[str, Any]) -> bytes:
    calls = tool_calls(request)
    if calls:
        return orjson.dumps({
            "id": f"chatcmpl-mock{next(_ids)}", "object": "chat.completion", "created": int(time.time()),
            "model": request["model"], "system_fingerprint": "fp_sluice_mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "refusal": None,
                                                 "tool_calls": calls},
                         "logprobs": None, "finish_reason": "tool_calls"}],
            "usage": _usage(prompt_tokens(request.get("messages", [])), _tool_tokens(calls)),
        })
    words, finish = _reply_words(request)
    n = _choices_count(request)
    prompt = prompt_tokens(request.get("messages", []))
    return orjson.dumps({
        "id": f"chatcmpl-mock{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "system_fingerprint": "fp_sluice_mock",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": " ".join(words), "refusal": None},
             "logprobs": None, "finish_reason": finish}
            for i in range(n)
        ],
        "usage": _usage(prompt, len(words) * n),
    })


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def chat_chunks(request: dict[str, Any], stream_bytes: int = 0) -> Iterator[bytes]:
    """The SSE events of a streamed chat completion, [DONE] included; at least ``stream_bytes`` of them (content
    events of PAD_TEXT after the reply's words)."""
    words, finish = _reply_words(request)
    n = _choices_count(request)
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    base = {"id": f"chatcmpl-mock{next(_ids)}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": request["model"], "system_fingerprint": "fp_sluice_mock"}
    extra = {"usage": None} if include_usage else {}

    def chunk(choices: list[dict[str, Any]]) -> bytes:
        return _event({**base, "choices": choices, **extra})

    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None} for i in range(n)])
    calls = tool_calls(request)
    if calls:
        yield from _tool_call_chunks(calls, chunk)
        if include_usage:
            yield _event({**base, "choices": [],
                          "usage": _usage(prompt_tokens(request.get("messages", [])), _tool_tokens(calls))})
        yield DONE
        return
    sent = 0
    for position, word in enumerate(words):
        text = word if position == 0 else " " + word
        event = chunk([{"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
                       for i in range(n)])
        sent += len(event)
        yield event
    if sent < stream_bytes:
        padding = chunk([{"index": i, "delta": {"content": PAD_TEXT}, "logprobs": None, "finish_reason": None}
                         for i in range(n)])
        for _ in range(-(-(stream_bytes - sent) // len(padding))):
            yield padding
    yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": finish} for i in range(n)])
    if include_usage:
        prompt = prompt_tokens(request.get("messages", []))
        yield _event({**base, "choices": [], "usage": _usage(prompt, len(words) * n)})
    yield DONE


def _tool_call_chunks(calls: list[dict[str, Any]], chunk: Any) -> Iterator[bytes]:
    """Each call opens with its id and name, then its arguments in two pieces, as OpenAI streams them."""
    for index, call in enumerate(calls):
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        yield chunk([{"index": 0, "delta": {"tool_calls": [head]}, "logprobs": None, "finish_reason": None}])
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            yield chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}])


def completion(request: dict[str, Any]) -> bytes:
    words, finish = _reply_words(request)
    n = _choices_count(request)
    return orjson.dumps({
        "id": f"cmpl-mock{next(_ids)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [{"index": i, "text": " ".join(words), "logprobs": None, "finish_reason": finish}
                    for i in range(n)],
        "usage": _usage(prompt_tokens(request.get("prompt", "")), len(words) * n),
    })


def completion_chunks(request: dict[str, Any]) -> Iterator[bytes]:
    words, finish = _reply_words(request)
    include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    base = {"id": f"cmpl-mock{next(_ids)}", "object": "text_completion", "created": int(time.time()),
            "model": request["model"]}
    for position, word in enumerate(words):
        text = word if position == 0 else " " + word
        yield _event({**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]})
    yield _event({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish}]})
    if include_usage:
        yield _event({**base, "choices": [],
                      "usage": _usage(prompt_tokens(request.get("prompt", "")), len(words))})
    yield DONE


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-free vector: the same text always embeds the same way."""
    seed = xxhash.xxh64_intdigest(text.encode())
    return [((seed * (i + 1) * 0x9E3779B1) % 2001 - 1000) / 1000.0 for i in range(dimensions)]


def embeddings(request: dict[str, Any]) -> bytes:
    """Raises ValueError with a message for an input the real API would reject."""
    items = request.get("input")
    if isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], int)):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ValueError("'input' must be a non-empty string or array")
    dimensions = request.get("dimensions") or DEFAULT_DIMENSIONS
    if not isinstance(dimensions, int) or not 1 <= dimensions <= 3072:
        raise ValueError("'dimensions' must be an integer from 1 to 3072")
    as_base64 = request.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _vector(item if isinstance(item, str) else orjson.dumps(item).decode(), dimensions)
        embedding: Any = (base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
                          if as_base64 else vector)
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = prompt_tokens(items)
    return orjson.dumps({"object": "list", "data": data, "model": request["model"],
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "sluice-mock"}


def error_body(message: str, kind: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def error_event(message: str, kind: str = "server_error") -> bytes:
    """An error in the middle of a chat stream, as OpenAI sends it: a ``data:`` event holding the error object."""
    return b"data: " + error_body(message, kind) + b"\n\n"
