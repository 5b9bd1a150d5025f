"""Requests, answers and errors between OpenAI chat completions and the Anthropic Messages API.

Pure functions on decoded JSON, no I/O:

    chat_to_messages       OpenAI chat request   -> Anthropic Messages request  (the anthropic provider kind)
    messages_to_chat       Anthropic request     -> OpenAI chat request         (the /v1/messages ingress)
    message_to_completion  Anthropic message     -> OpenAI chat.completion
    completion_to_message  OpenAI chat.completion -> Anthropic message
    error_to_openai, error_to_anthropic, token_counts

The stream translators live in ``anthropic_stream``, and ``UnsupportedContent``
(shared by every translator) in ``errors``; both are re-exported here.

A request that cannot be said in the other format raises ``UnsupportedContent``
naming the field (a 400 for the caller): n > 1, audio, files and documents,
logprobs, the deprecated ``functions``, custom tools, Anthropic server tools.
What is dropped instead, because it only tunes the answer or has no place:

- OpenAI penalties, seed, logit_bias, message ``name``s, reasoning_effort; Anthropic
  top_k, thinking, cache_control (on the way to OpenAI; on the way to Anthropic a
  content part's ``cache_control`` is kept, so callers can mark cache breakpoints).
- Anthropic thinking and redacted_thinking blocks: chat completions has no field
  for them, and an OpenAI-format upstream could not verify their signatures.
- A tool_result's ``is_error`` flag: OpenAI tool messages have none.
- OpenAI function tools' ``strict``: Anthropic's strict tool use only exists on
  some models, and SDKs set the flag by default; the schema itself is kept.

OpenAI system and developer messages are hoisted, in order, into Anthropic's
top-level ``system``, which every model accepts, wherever they stood.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .anthropic_stream import (
    FINISH_TO_STOP,
    STOP_TO_FINISH,
    ChatToMessagesStream,
    MessagesToChatStream,
    NativeMessagesStream,
    anthropic_counts,
    anthropic_usage,
    openai_counts,
    openai_usage,
)
from .errors import UnsupportedContent

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "ChatToMessagesStream",
    "MessagesToChatStream",
    "NativeMessagesStream",
    "UnsupportedContent",
    "chat_to_messages",
    "completion_to_message",
    "error_to_anthropic",
    "error_to_openai",
    "message_to_completion",
    "messages_to_chat",
    "token_counts",
]

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI lets it default to the model's limit
IMAGE_TYPES = ("image/gif", "image/jpeg", "image/png", "image/webp")  # the media types Anthropic accepts
# Anthropic has no JSON mode for free-form objects (its structured outputs need a schema), so
# response_format {"type": "json_object"} becomes this system instruction.
JSON_INSTRUCTION = "Answer with a single valid JSON object and nothing else: no prose, no Markdown code fences."
JSON_SCHEMA_NAME = "response"  # OpenAI's json_schema needs a name; Anthropic's output format has none
_THINKING = ("thinking", "redacted_thinking")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
_STATUS_TO_ANTHROPIC = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}


def _obj(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsupportedContent(field, "must be an object")
    return value


def _list(value: object, field: str) -> list[Any]:
    if not isinstance(value, list):
        raise UnsupportedContent(field, "must be an array")
    return value


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise UnsupportedContent(field, "must be a string")
    return value


def _number(value: object, field: str) -> float | int:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise UnsupportedContent(field, "must be a number")
    return value


# ---------------------------------------------------------------- OpenAI request -> Anthropic request


def chat_to_messages(request: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request (decoded) -> the Anthropic Messages request body for ``model``."""
    _refuse_chat_options(request)
    system, messages = _chat_messages(_list(request.get("messages"), "messages"))
    output_config = _response_format(request.get("response_format"), system)
    body: dict[str, Any] = {"model": model, "max_tokens": _max_tokens(request)}
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 and system[0].keys() == {"type", "text"} else system
    body["messages"] = messages
    body.update(_chat_tools(request))
    body.update(_chat_sampling(request))
    if output_config:
        body["output_config"] = output_config
    if request.get("stream"):
        body["stream"] = True
    return body


def _refuse_chat_options(request: dict[str, Any]) -> None:
    """Options whose absence would change the shape of what the caller gets back."""
    if request.get("n") not in (None, 1):
        raise UnsupportedContent("n", "Anthropic returns one choice per request")
    for field in ("logprobs", "top_logprobs"):
        if request.get(field):
            raise UnsupportedContent(field, "Anthropic does not return log probabilities")
    if request.get("audio") or "audio" in (request.get("modalities") or ()):
        raise UnsupportedContent("modalities", "Anthropic does not produce audio")
    for field in ("functions", "function_call"):
        if request.get(field):
            raise UnsupportedContent(field, "the deprecated functions API is not translated: use tools")


def _max_tokens(request: dict[str, Any]) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = request.get(field)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise UnsupportedContent(field, "must be an integer")
            return value
    return DEFAULT_MAX_TOKENS


def _chat_messages(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system text blocks, Anthropic messages) of OpenAI ``messages``."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        message = _obj(message, field)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), field + ".content"))
            continue
        convert = _CHAT_ROLES.get(role) if isinstance(role, str) else None
        if convert is None:
            raise UnsupportedContent(field + ".role", f"{role!r} messages are not translated")
        blocks = convert(message, field)
        _append_turn(turns, "assistant" if role == "assistant" else "user", blocks)
    return system, [_finish_turn(turn) for turn in turns]


def _append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Anthropic wants user and assistant turns to alternate: consecutive same-role messages merge."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _finish_turn(turn: dict[str, Any]) -> dict[str, Any]:
    blocks: list[dict[str, Any]] = turn["content"]
    if turn["role"] == "user":
        # Anthropic wants a user turn's tool_result blocks before anything else (stable: order kept within).
        blocks.sort(key=lambda block: block["type"] != "tool_result")
    if len(blocks) == 1 and blocks[0].keys() == {"type", "text"}:
        return {"role": turn["role"], "content": blocks[0]["text"]}  # the short form, as callers write it
    return turn


def _text(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}] if text else []  # Anthropic refuses empty text blocks


def _cache_control(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: object, field: str) -> list[dict[str, Any]]:
    """System, assistant or tool content: a string, or text (and refusal) parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return _text(content)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(_list(content, field)):
        part = _obj(part, f"{field}[{j}]")
        kind = part.get("type")
        if kind not in ("text", "refusal"):
            raise UnsupportedContent(f"{field}[{j}].type", f"{kind!r} content is not translated here")
        blocks.extend(_cache_control(block, part) for block in _text(_str(part.get(kind), f"{field}[{j}].{kind}")))
    return blocks


def _user_blocks(message: dict[str, Any], field: str) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return _text(content)
    blocks = []
    for j, part in enumerate(_list(content, field + ".content")):
        blocks.extend(_user_part(_obj(part, f"{field}.content[{j}]"), f"{field}.content[{j}]"))
    return blocks


def _user_part(part: dict[str, Any], field: str) -> list[dict[str, Any]]:
    kind = part.get("type")
    if kind == "text":
        blocks = _text(_str(part.get("text"), field + ".text"))
    elif kind == "image_url":
        blocks = [{"type": "image", "source": _image_source(part.get("image_url"), field + ".image_url")}]
    else:
        raise UnsupportedContent(field + ".type", f"{kind!r} content has no Anthropic equivalent")
    return [_cache_control(block, part) for block in blocks]


def _image_source(image: object, field: str) -> dict[str, Any]:
    """A data: URL becomes a base64 source, an http(s) URL a url source (Anthropic fetches it)."""
    url = image.get("url") if isinstance(image, dict) else image  # some clients send the bare URL
    url = _str(url, field + ".url")
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    if not url.startswith("data:"):
        raise UnsupportedContent(field + ".url", "must be a data: or http(s) URL")
    header, comma, data = url[5:].partition(",")
    params = header.split(";")
    if not comma or params[-1] != "base64":
        raise UnsupportedContent(field + ".url", "a data: URL must be base64-encoded")
    if params[0] not in IMAGE_TYPES:
        raise UnsupportedContent(field + ".url", f"media type {params[0]!r}: Anthropic takes {', '.join(IMAGE_TYPES)}")
    return {"type": "base64", "media_type": params[0], "data": data}


def _assistant_blocks(message: dict[str, Any], field: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), field + ".content")
    for k, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(_obj(call, f"{field}.tool_calls[{k}]"), f"{field}.tool_calls[{k}]"))
    return blocks


def _tool_use(call: dict[str, Any], field: str) -> dict[str, Any]:
    if call.get("type", "function") != "function":
        raise UnsupportedContent(field + ".type", f"{call.get('type')!r} tool calls have no Anthropic equivalent")
    function = _obj(call.get("function"), field + ".function")
    return {"type": "tool_use", "id": _str(call.get("id"), field + ".id"),
            "name": _str(function.get("name"), field + ".function.name"),
            "input": _arguments(function.get("arguments"), field + ".function.arguments")}


def _arguments(arguments: object, field: str) -> dict[str, Any]:
    """OpenAI's arguments are a JSON string; Anthropic's input is the object itself."""
    if arguments is None or arguments == "":  # a call without arguments, as some models write it
        return {}
    try:
        value = orjson.loads(_str(arguments, field))
    except orjson.JSONDecodeError:
        raise UnsupportedContent(field, "is not valid JSON (Anthropic tool input is a JSON object)") from None
    if not isinstance(value, dict):
        raise UnsupportedContent(field, "is not a JSON object (Anthropic tool input is a JSON object)")
    return value


def _tool_blocks(message: dict[str, Any], field: str) -> list[dict[str, Any]]:
    result: dict[str, Any] = {"type": "tool_result",
                              "tool_use_id": _str(message.get("tool_call_id"), field + ".tool_call_id")}
    content = message.get("content")
    result["content"] = content if isinstance(content, str) else _text_blocks(content, field + ".content")
    return [result]


_CHAT_ROLES: dict[str, Callable[[dict[str, Any], str], list[dict[str, Any]]]] = {
    "user": _user_blocks,
    "assistant": _assistant_blocks,
    "tool": _tool_blocks,
}


def _response_format(response_format: object, system: list[dict[str, Any]]) -> dict[str, Any] | None:
    """JSON mode: json_object adds a system instruction; json_schema maps to Anthropic's structured
    outputs (output_config.format), which is exact where a model supports it, and an upstream 400
    where it does not, rather than a guess."""
    if response_format is None:
        return None
    response_format = _obj(response_format, "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        system.append({"type": "text", "text": JSON_INSTRUCTION})
        return None
    if kind == "json_schema":
        spec = _obj(response_format.get("json_schema"), "response_format.json_schema")
        schema = _obj(spec.get("schema"), "response_format.json_schema.schema")
        return {"format": {"type": "json_schema", "schema": schema}}
    raise UnsupportedContent("response_format.type", f"{kind!r} has no Anthropic equivalent")


def _chat_tools(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = request.get("tools")
    if tools:
        out["tools"] = [_tool_to_anthropic(_obj(tool, f"tools[{i}]"), f"tools[{i}]")
                        for i, tool in enumerate(_list(tools, "tools"))]
    choice = _tool_choice_to_anthropic(request.get("tool_choice"))
    if tools and request.get("parallel_tool_calls") is False and (choice is None or choice["type"] != "none"):
        choice = choice or {"type": "auto"}
        choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool_to_anthropic(tool: dict[str, Any], field: str) -> dict[str, Any]:
    if tool.get("type", "function") != "function":
        raise UnsupportedContent(field + ".type", f"{tool.get('type')!r} tools have no Anthropic equivalent")
    function = _obj(tool.get("function"), field + ".function")
    out: dict[str, Any] = {"name": _str(function.get("name"), field + ".function.name")}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or _EMPTY_SCHEMA  # Anthropic requires a schema
    return out


def _tool_choice_to_anthropic(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        return {"type": "any" if choice == "required" else choice}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = _obj(choice.get("function"), "tool_choice.function").get("name")
        return {"type": "tool", "name": _str(name, "tool_choice.function.name")}
    raise UnsupportedContent("tool_choice", "only auto, none, required and a named function translate")


def _chat_sampling(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    stop = request.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else _list(stop, "stop")
    temperature = request.get("temperature")
    if temperature is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1 (it refuses more).  Clipping keeps every value
        # that means the same on both; rescaling would change the meaning of the common 0..1 ones.
        out["temperature"] = min(max(_number(temperature, "temperature"), 0), 1)
    if request.get("top_p") is not None:
        out["top_p"] = _number(request["top_p"], "top_p")
    user = request.get("user") or request.get("safety_identifier")  # safety_identifier: user's successor
    if user:
        out["metadata"] = {"user_id": _str(user, "user")}
    return out


# ---------------------------------------------------------------- Anthropic request -> OpenAI request


def messages_to_chat(request: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request (decoded) -> an OpenAI chat request; the model name is kept."""
    messages = _system_to_chat(request.get("system"), "system")
    for i, message in enumerate(_list(request.get("messages"), "messages")):
        messages.extend(_message_to_chat(_obj(message, f"messages[{i}]"), f"messages[{i}]"))
    chat: dict[str, Any] = {"model": request.get("model"), "messages": messages}
    if request.get("max_tokens") is not None:
        # max_completion_tokens: the current name; OpenAI's reasoning models refuse max_tokens.
        chat["max_completion_tokens"] = request["max_tokens"]
    chat.update(_anthropic_tools(request))
    chat.update(_anthropic_sampling(request))
    if request.get("stream"):
        # Anthropic clients always get usage, in message_delta: ask the upstream for it.
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _system_to_chat(system: object, field: str) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    parts = []
    for j, block in enumerate(_list(system, field)):
        block = _obj(block, f"{field}[{j}]")
        if block.get("type") != "text":
            raise UnsupportedContent(f"{field}[{j}].type", "a system prompt holds text blocks only")
        parts.append({"type": "text", "text": _str(block.get("text"), f"{field}[{j}].text")})
    return [{"role": "system", "content": _short_text(parts)}] if parts else []


def _short_text(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part is written as a string, the short form every OpenAI-compatible server takes."""
    return parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts


def _message_to_chat(message: dict[str, Any], field: str) -> list[dict[str, Any]]:
    role, content = message.get("role"), message.get("content")
    if role == "system":  # a system turn inside the conversation (newer Anthropic API)
        return _system_to_chat(content, field + ".content")
    if role not in ("user", "assistant"):
        raise UnsupportedContent(field + ".role", f"{role!r} messages are not translated")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [_obj(block, f"{field}.content[{j}]") for j, block in enumerate(_list(content, field + ".content"))]
    return _user_to_chat(blocks, field) if role == "user" else [_assistant_to_chat(blocks, field)]


def _user_to_chat(blocks: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """A user turn: each tool_result becomes a tool message, the rest user messages, in order."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where, kind = f"{field}.content[{j}]", block.get("type")
        if kind == "tool_result":
            if parts:
                out.append({"role": "user", "content": _short_text(parts)})
                parts = []
            out.append(_tool_message(block, where))
        elif kind == "text":
            parts.append({"type": "text", "text": _str(block.get("text"), where + ".text")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        elif kind not in _THINKING:
            raise UnsupportedContent(where + ".type", f"{kind!r} content has no OpenAI equivalent")
    if parts:
        out.append({"role": "user", "content": _short_text(parts)})
    return out


def _image_url(source: object, field: str) -> str:
    source = _obj(source, field + ".source")
    if source.get("type") == "base64":
        media = _str(source.get("media_type"), field + ".source.media_type")
        return f"data:{media};base64,{_str(source.get('data'), field + '.source.data')}"
    if source.get("type") == "url":
        return _str(source.get("url"), field + ".source.url")
    raise UnsupportedContent(field + ".source.type", f"{source.get('type')!r} image sources have no OpenAI equivalent")


def _tool_message(block: dict[str, Any], field: str) -> dict[str, Any]:
    content = block.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        content = [_tool_text(_obj(part, f"{field}.content[{k}]"), f"{field}.content[{k}]")
                   for k, part in enumerate(_list(content, field + ".content"))]
    return {"role": "tool", "tool_call_id": _str(block.get("tool_use_id"), field + ".tool_use_id"), "content": content}


def _tool_text(part: dict[str, Any], field: str) -> dict[str, Any]:
    if part.get("type") != "text":
        raise UnsupportedContent(field + ".type", "an OpenAI tool message holds text only")
    return {"type": "text", "text": _str(part.get("text"), field + ".text")}


def _assistant_to_chat(blocks: list[dict[str, Any]], field: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        where, kind = f"{field}.content[{j}]", block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _str(block.get("text"), where + ".text")})
        elif kind == "tool_use":
            calls.append(_tool_call(block, where))
        elif kind not in _THINKING:
            raise UnsupportedContent(where + ".type", f"{kind!r} content has no OpenAI equivalent")
    message: dict[str, Any] = {"role": "assistant", "content": _short_text(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    elif not parts:
        message["content"] = ""  # nothing left (thinking only): an empty turn, not a missing one
    return message


def _tool_call(block: dict[str, Any], field: str) -> dict[str, Any]:
    return {"id": _str(block.get("id"), field + ".id"), "type": "function",
            "function": {"name": _str(block.get("name"), field + ".name"),
                         "arguments": orjson.dumps(block.get("input") or {}).decode()}}


def _anthropic_tools(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = request.get("tools")
    if tools:
        out["tools"] = [_tool_to_chat(_obj(tool, f"tools[{i}]"), f"tools[{i}]")
                        for i, tool in enumerate(_list(tools, "tools"))]
    if request.get("tool_choice") is None:
        return out
    choice = _obj(request["tool_choice"], "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": _str(choice.get("name"), "tool_choice.name")}}
    elif kind in ("auto", "any", "none"):
        out["tool_choice"] = "required" if kind == "any" else kind
    else:
        raise UnsupportedContent("tool_choice.type", f"{kind!r} has no OpenAI equivalent")
    if tools and choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False
    return out


def _tool_to_chat(tool: dict[str, Any], field: str) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise UnsupportedContent(field + ".type", f"the server tool {tool.get('type')!r} has no OpenAI equivalent")
    function: dict[str, Any] = {"name": _str(tool.get("name"), field + ".name")}
    if tool.get("description"):
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or _EMPTY_SCHEMA
    return {"type": "function", "function": function}


def _anthropic_sampling(request: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if request.get("stop_sequences"):
        out["stop"] = _list(request["stop_sequences"], "stop_sequences")
    for field in ("temperature", "top_p"):
        if request.get(field) is not None:
            out[field] = _number(request[field], field)
    metadata = request.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = _str(metadata["user_id"], "metadata.user_id")
    output_config = request.get("output_config")
    output_format = output_config.get("format") if isinstance(output_config, dict) else None
    if output_format:
        schema = _obj(_obj(output_format, "output_config.format").get("schema"), "output_config.format.schema")
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": JSON_SCHEMA_NAME, "schema": schema, "strict": True}}
    return out


# ---------------------------------------------------------------- answers


def message_to_completion(message: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    """An Anthropic message -> an OpenAI chat.completion (text blocks joined, tool_use blocks as tool calls)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.get("content") or ()):
        block = _obj(block, f"content[{j}]")
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(_tool_call(block, f"content[{j}]"))
        # thinking, redacted_thinking and server-tool blocks: an OpenAI message has no field for them
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                             "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    completion: dict[str, Any] = {
        "id": f"chatcmpl-{message.get('id', '')}", "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": reply, "logprobs": None,
                     "finish_reason": STOP_TO_FINISH.get(message.get("stop_reason") or "", "stop")}],
    }
    if isinstance(message.get("usage"), dict):
        completion["usage"] = openai_usage(message["usage"])
    return completion


def completion_to_message(completion: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat.completion (its first choice) -> an Anthropic message.

    A tool call whose arguments are not a JSON object raises UnsupportedContent:
    an Anthropic tool_use input cannot hold it.
    """
    choice = _obj(_list(completion.get("choices") or [{}], "choices")[0], "choices[0]")
    reply = _obj(choice.get("message") or {}, "choices[0].message")
    text, refusal = reply.get("content"), reply.get("refusal")
    if isinstance(text, list):  # some compatible servers answer with text parts
        text = "".join(part.get("text") or "" for part in text if isinstance(part, dict))
    content = _text(text) if isinstance(text, str) else []
    if isinstance(refusal, str):
        content.extend(_text(refusal))
    for k, call in enumerate(reply.get("tool_calls") or ()):
        field = f"choices[0].message.tool_calls[{k}]"
        content.append(_tool_use(_obj(call, field), field))
    stop = "refusal" if refusal else FINISH_TO_STOP.get(choice.get("finish_reason") or "", "end_turn")
    usage = completion.get("usage")
    completion_id = str(completion.get("id", ""))
    return {"id": completion_id if completion_id.startswith("msg_") else "msg_" + completion_id,
            "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": None,
            "usage": anthropic_usage(usage) if isinstance(usage, dict) else {"input_tokens": 0, "output_tokens": 0}}


def token_counts(message_or_usage: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens of an Anthropic message, message_start/message_delta event or usage,
    or of an OpenAI completion or usage; -1 for a count that is absent.  Prompt tokens count cached input."""
    found = message_or_usage
    if isinstance(found.get("message"), dict):  # message_start
        found = found["message"]
    if isinstance(found.get("usage"), dict):
        found = found["usage"]
    if "prompt_tokens" in found or "completion_tokens" in found:
        return openai_counts(found)
    return anthropic_counts(found)


# ---------------------------------------------------------------- errors


def _clip(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return "(empty)"
    return text if len(text) <= 200 else text[:200] + "…"


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def error_to_openai(status: int, body: bytes) -> bytes:
    """An Anthropic error body -> the OpenAI error shape; the Anthropic error type is kept as the type."""
    decoded = _decode(body)
    error = decoded.get("error") if decoded and decoded.get("type") == "error" else None
    if isinstance(error, dict) and isinstance(error.get("type"), str) and isinstance(error.get("message"), str):
        kind, message = error["type"], error["message"]
    else:
        kind = "upstream_error"
        message = f"The upstream answered {status} with a body that is not an Anthropic error: {_clip(body)}"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def error_to_anthropic(status: int, body: bytes) -> bytes:
    """An OpenAI error body -> the Anthropic error shape, its type chosen by the status."""
    kind = _STATUS_TO_ANTHROPIC.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")
    decoded = _decode(body)
    error = decoded.get("error") if decoded else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = error["message"]
    elif isinstance(error, str):  # {"error": "..."}, as some compatible servers write it
        message = error
    else:
        message = f"The upstream answered {status} with a body that is not an OpenAI error: {_clip(body)}"
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
