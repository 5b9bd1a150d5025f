"""Anthropic Messages API wire format for the mock upstream: messages, SSE streams, token counts, errors.

Answers are deterministic functions of the request and a sequence number (the ids):

- the reply is REPLY, cut to ``max_tokens`` words (stop_reason "max_tokens") or just before the
  earliest of ``stop_sequences`` found in it (stop_reason "stop_sequence"); one word is one
  output token;
- with custom ``tools``, a last user turn without a ``tool_result`` is answered with tool use when
  ``tool_choice`` is {"type": "any"} or {"type": "tool", "name": ...} (tool_use blocks only, as
  the real API answers a forced choice), or when its text says "use a tool" or "call <tool name>"
  (TOOL_TEXT, then the tool_use blocks); "parallel" in the text asks for two calls unless
  ``disable_parallel_tool_use``; a tool's input holds its schema's required properties
  (``sample_input``); a last user turn with a ``tool_result`` is answered with REPLY;
- input tokens are ``prompt_tokens`` of every string in system, messages and tools, except that
  an image (or any base64 source) counts IMAGE_TOKENS.

``validate`` rejects, with the real API's message style, what the real API rejects cheaply:
missing or mistyped fields, empty messages, roles other than user/assistant, unpaired
tool_use/tool_result blocks, unknown top-level fields (unless a beta is asked for).
``cut_reply`` is shared with the Gemini format; tool choice and input come from ``mock.tools``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import orjson

from .openai import REPLY, prompt_tokens
from .tools import choose_tools, sample_input

__all__ = [
    "IMAGE_TOKENS",
    "TOOL_TEXT",
    "check_headers",
    "count_tokens",
    "cut_reply",
    "error_body",
    "error_event",
    "input_tokens",
    "message",
    "message_events",
    "validate",
]

TOOL_TEXT = "I will use a tool for that."
IMAGE_TOKENS = 85

# Top-level fields of POST /v1/messages and /v1/messages/count_tokens (anthropic SDK's params, plus
# the sampling parameters older models take); anything else is "Extra inputs are not permitted".
_COMMON = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control",
                     "output_config", "speed", "user_profile_id", "workspace_id", "mcp_servers"})
_CREATE_FIELDS = _COMMON | {"max_tokens", "stream", "stop_sequences", "metadata", "temperature", "top_p",
                            "top_k", "service_tier", "container", "inference_geo", "diagnostics"}
_COUNT_FIELDS = _COMMON
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


# -- shared with the Gemini format ------------------------------------------------------------------

def cut_reply(limit: int | None, stops: Any) -> tuple[str, str, str | None]:
    """REPLY as the model ends it: (text, "end" | "max" | "stop", the stop sequence met or None).

    Before the earliest stop sequence found in REPLY; cut to ``limit`` words when that is fewer.
    """
    text, sequence = REPLY, None
    hits = [(REPLY.find(s), s) for s in stops if isinstance(s, str) and s and s in REPLY] \
        if isinstance(stops, list) else []
    if hits:
        position, sequence = min(hits)
        text = REPLY[:position]
    words = text.split()
    if isinstance(limit, int) and 0 < limit < len(words):
        return " ".join(words[:limit]), "max", None
    return text, ("stop" if sequence is not None else "end"), sequence


# -- requests ---------------------------------------------------------------------------------------

def check_headers(api_key: str | None, authorization: str | None, version: str | None) -> tuple[int, str] | None:
    """(status, message) when the headers the real API requires are missing, else None.

    The key comes in ``x-api-key`` or, as the anthropic SDK 2.x sends it, ``Authorization: Bearer``.
    """
    bearer = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else ""
    if not api_key and not bearer:
        return 401, "x-api-key header is required"
    if not version:
        return 400, "anthropic-version: header is required"
    return None


def validate(request: Any, *, count: bool = False, beta: bool = False) -> None:
    """Raises ValueError with the real API's kind of message for a body it would reject."""
    if not isinstance(request, dict):
        raise ValueError("Input should be a valid dictionary")
    if not beta:
        allowed = _COUNT_FIELDS if count else _CREATE_FIELDS
        for key in request:
            if key not in allowed:
                raise ValueError(f"{key}: Extra inputs are not permitted")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise ValueError("model: Field required")
    if not count:
        limit = request.get("max_tokens")
        if limit is None:
            raise ValueError("max_tokens: Field required")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise ValueError("max_tokens: Input should be a valid integer")
        if limit < 1:
            raise ValueError("max_tokens: Input should be greater than or equal to 1")
        stops = request.get("stop_sequences")
        if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
            raise ValueError("stop_sequences: Input should be a valid list of strings")
        if "stream" in request and not isinstance(request["stream"], bool):
            raise ValueError("stream: Input should be a valid boolean")
        temperature = request.get("temperature")
        if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
            raise ValueError("temperature: Input should be less than or equal to 1")
    _validate_messages(request.get("messages"))
    _validate_tools(request.get("tools"), request.get("tool_choice"))


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise ValueError("messages: Field required")
    if not isinstance(messages, list):
        raise ValueError("messages: Input should be a valid list")
    if not messages:
        raise ValueError("messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids the next message must answer
    for i, item in enumerate(messages):
        if not isinstance(item, dict):
            raise ValueError(f"messages.{i}: Input should be a valid dictionary")
        if item.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        blocks = _blocks(item.get("content"), f"messages.{i}.content")
        if not blocks and not (i == len(messages) - 1 and item["role"] == "assistant"):
            raise ValueError(f"messages.{i}: all messages must have non-empty content except for the "
                             "optional final assistant message")
        for j, block in enumerate(blocks):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise ValueError(f"messages.{i}.content.{j}.type: Field required")
            if block["type"] == "text" and not (isinstance(block.get("text"), str) and block["text"]):
                raise ValueError("messages: text content blocks must be non-empty")
            if block["type"] in ("image", "document") and not isinstance(block.get("source"), dict):
                raise ValueError(f"messages.{i}.content.{j}.{block['type']}.source: Field required")
        results = {b.get("tool_use_id") for b in blocks if b["type"] == "tool_result"}
        if pending and not pending <= results:
            raise ValueError(f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                             f"immediately after: {', '.join(sorted(pending - results))}. Each `tool_use` "
                             "block must have a corresponding `tool_result` block in the next message.")
        if results - pending:
            raise ValueError(f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: "
                             f"{', '.join(sorted(str(r) for r in results - pending))}. Each `tool_result` "
                             "block must have a corresponding `tool_use` block in the previous message.")
        pending = {str(b.get("id")) for b in blocks if b["type"] == "tool_use"}


def _blocks(content: Any, where: str) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        raise ValueError(f"{where}: Field required")
    if not isinstance(content, list):
        raise ValueError(f"{where}: Input should be a valid list")
    return content


def _validate_tools(tools: Any, choice: Any) -> None:
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise ValueError("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
                raise ValueError(f"tools.{i}.name: Field required")
            if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
                raise ValueError(f"tools.{i}.custom.input_schema: Field required")
            names.append(tool["name"])
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise ValueError("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', "
                         "'tool', 'none'")
    if choice["type"] in ("any", "tool") and not names:
        raise ValueError("tool_choice: tool_choice may only be specified while providing tools")
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise ValueError(f"tool_choice.name: tool '{choice.get('name')}' not found in the provided tools")


def input_tokens(request: dict[str, Any]) -> int:
    return _tokens(request.get("system")) + _tokens(request.get("messages")) + _tokens(request.get("tools"))


def _tokens(value: Any) -> int:
    return prompt_tokens(value, lambda item: item.get("type") in ("image", "base64"), IMAGE_TOKENS)


def count_tokens(request: dict[str, Any]) -> bytes:
    return orjson.dumps({"input_tokens": input_tokens(request)})


# -- answers ----------------------------------------------------------------------------------------

class _Answer(NamedTuple):
    blocks: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


_STOP_REASONS = {"end": "end_turn", "max": "max_tokens", "stop": "stop_sequence"}


def _answer(request: dict[str, Any], number: int) -> _Answer:
    last = request["messages"][-1]
    blocks = _blocks(last.get("content"), "")
    tools = [t for t in request.get("tools") or [] if isinstance(t.get("input_schema"), dict)]
    choice = request.get("tool_choice") or {"type": "auto"}
    if tools and last["role"] == "user" and choice["type"] != "none" \
            and not any(b.get("type") == "tool_result" for b in blocks):
        text = " ".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
        forced = choice["type"] in ("any", "tool")
        calls = choose_tools([t["name"] for t in tools], text, forced=forced,
                             only=[choice["name"]] if choice["type"] == "tool" else None,
                             parallel=choice.get("disable_parallel_tool_use") is not True)
        if calls:
            schemas = {t["name"]: t["input_schema"] for t in tools}
            return _tool_answer(request["max_tokens"], "" if forced else TOOL_TEXT, calls, schemas, number)
    text, why, sequence = cut_reply(request["max_tokens"], request.get("stop_sequences"))
    content = [{"type": "text", "text": text}] if text else []
    return _Answer(content, _STOP_REASONS[why], sequence, max(1, len(text.split())))


def _tool_answer(limit: int, text: str, calls: list[str], schemas: dict[str, Any], number: int) -> _Answer:
    uses = [{"type": "tool_use", "id": f"toolu_mock_{number}_{i + 1}", "name": name,
             "input": sample_input(schemas[name])} for i, name in enumerate(calls)]
    words = text.split()
    tokens = len(words) + sum(prompt_tokens(u["name"]) + prompt_tokens(json.dumps(u["input"])) for u in uses)
    if limit < tokens:  # the budget ends before the calls are complete
        cut = " ".join(words[:limit])
        return _Answer([{"type": "text", "text": cut}] if cut else [], "max_tokens", None, limit)
    return _Answer(([{"type": "text", "text": text}] if text else []) + uses, "tool_use", None, tokens)


def _usage(input_count: int, output_count: int) -> dict[str, int]:
    return {"input_tokens": input_count, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "output_tokens": output_count}


def _message(request: dict[str, Any], number: int, content: list[dict[str, Any]], stop_reason: str | None,
             stop_sequence: str | None, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": f"msg_mock_{number}", "type": "message", "role": "assistant", "model": request["model"],
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}


def message(request: dict[str, Any], number: int) -> bytes:
    """The answer to a validated request, as the JSON ``message`` object."""
    answer = _answer(request, number)
    return orjson.dumps(_message(request, number, answer.blocks, answer.stop_reason, answer.stop_sequence,
                                 _usage(input_tokens(request), answer.output_tokens)))


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def _text_pieces(text: str) -> Iterator[str]:
    """Word by word, each word after the first with the space before it."""
    for position, word in enumerate(text.split(" ")):
        piece = word if position == 0 else " " + word
        if piece:
            yield piece


def _json_pieces(value: dict[str, Any]) -> list[str]:
    """The JSON of a tool input in about three pieces, as input_json_delta events carry it."""
    text = json.dumps(value)
    size = max(1, -(-len(text) // 3))
    return [text[i:i + size] for i in range(0, len(text), size)]


def message_events(request: dict[str, Any], number: int) -> Iterator[bytes]:
    """The SSE events of a streamed answer: message_start, ping, the blocks, message_delta, message_stop."""
    answer = _answer(request, number)
    start = _message(request, number, [], None, None, _usage(input_tokens(request), 1))
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    for index, block in enumerate(answer.blocks):
        if block["type"] == "text":
            yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            deltas: Iterator[dict[str, str]] = ({"type": "text_delta", "text": piece}
                                                for piece in _text_pieces(block["text"]))
        else:
            yield _event("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            deltas = ({"type": "input_json_delta", "partial_json": piece}
                      for piece in itertools.chain([""], _json_pieces(block["input"])))
        for delta in deltas:
            yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
    yield _event("message_delta", {"delta": {"stop_reason": answer.stop_reason,
                                             "stop_sequence": answer.stop_sequence},
                                   "usage": {"output_tokens": answer.output_tokens}})
    yield _event("message_stop", {})


def error_body(status: int, message: str) -> bytes:
    """Anthropic's error object; its type follows the status (529: overloaded_error)."""
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def error_event(status: int, message: str) -> bytes:
    """An error in the middle of a stream, as the API sends one (an overloaded_error mid-answer): ``event: error``."""
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"
