"""OpenAI chat completions <-> Gemini generateContent, both ways, no I/O.

``chat_to_gemini`` turns an OpenAI chat request into a generateContent body (the
model goes in the URL, not the body).  The answer comes back through
``gemini_to_completion`` (generateContent), ``GeminiToChatStream``
(streamGenerateContent?alt=sse, fed bytes as they arrive) or ``error_to_openai``
(an error body); ``token_counts`` reads the usage for metering.

Requests, OpenAI -> Gemini:

    system / developer messages    systemInstruction.parts, all of them in order (Gemini has one)
    user / assistant messages      contents, role "user" / "model"; consecutive same-role turns merged
    image_url parts                inlineData (base64 data URLs) or fileData (http(s) URLs)
    assistant tool_calls           functionCall parts {name, args}
    tool messages                  functionResponse parts {name, response} in a "user" turn
    tools / tool_choice            tools[].functionDeclarations / toolConfig.functionCallingConfig
    stop, max_(completion_)tokens, temperature, top_p, n, seed, response_format
                                   generationConfig
    anything else                  dropped (user, metadata, logit_bias, stream_options, ...)

Gemini emits camelCase; responses are read in camelCase or snake_case (the API
accepts both, proxies and SDK dumps use either).  Content the other side cannot
carry raises ``UnsupportedContent`` naming the field, never a silent loss.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from .errors import UnsupportedContent
from .sse import SSEError, SSEParser, sse_event

__all__ = [
    "GeminiToChatStream",
    "UnsupportedContent",
    "chat_to_gemini",
    "error_to_openai",
    "gemini_to_completion",
    "token_counts",
]

Json = dict[str, Any]

# ---------------------------------------------------------------------------------------------------------------------
# Requests: OpenAI chat -> generateContent
# ---------------------------------------------------------------------------------------------------------------------

# Part types each role may carry; anything else is refused with its path.
_USER_PARTS = frozenset(("text", "image_url"))
_ASSISTANT_PARTS = frozenset(("text", "refusal"))
_TEXT_PARTS = frozenset(("text",))

# Extensions of http(s) image URLs -> mimeType.  A fixed table, not ``mimetypes``: that one reads
# the host's /etc/mime.types, so the same request would translate differently on two machines.
_IMAGE_TYPES = {
    "jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
    "webp": "image/webp", "heic": "image/heic", "heif": "image/heif",
}
_DEFAULT_IMAGE_TYPE = "image/jpeg"

# Gemini's Schema is a subset of OpenAPI 3.0 and rejects the whole request on a key it does not
# know ("Unknown name additionalProperties"), so schemas keep only these keys, at every level:
# additionalProperties, $schema, strict, $defs, const, examples... are dropped.
_SCHEMA_KEYS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "default", "example",
    "properties", "required", "propertyOrdering", "minProperties", "maxProperties",
    "items", "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "anyOf",
))

_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# OpenAI sampling field -> generationConfig field, copied as they are.
_SAMPLING = (("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"), ("seed", "seed"))


def chat_to_gemini(request: dict[str, Any]) -> dict[str, Any]:
    """The generateContent body for an OpenAI chat request (raises UnsupportedContent)."""
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise UnsupportedContent("messages", "must be a list of messages")
    system, contents = _messages(messages)
    body: Json = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    declarations = _function_declarations(request.get("tools"))
    if declarations:
        body["tools"] = [{"functionDeclarations": declarations}]
    calling = _function_calling_config(request.get("tool_choice"))
    if calling:
        body["toolConfig"] = {"functionCallingConfig": calling}
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return body


def _messages(messages: list[Any]) -> tuple[list[Json], list[Json]]:
    """(systemInstruction parts, contents) for the OpenAI messages."""
    system: list[Json] = []
    contents: list[Json] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name: Gemini's functionResponse wants the name
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise UnsupportedContent(path, "must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_content_parts(message.get("content"), path, _TEXT_PARTS))
        elif role == "user":
            _append_turn(contents, "user", _content_parts(message.get("content"), path, _USER_PARTS))
        elif role == "assistant":
            _append_turn(contents, "model", _assistant_parts(message, path, call_names))
        elif role == "tool":
            _append_turn(contents, "user", [_function_response(message, path, call_names)])
        else:
            raise UnsupportedContent(f"{path}.role", f"the role {role!r} has no Gemini equivalent")
    return system, contents


def _append_turn(contents: list[Json], role: str, parts: list[Json]) -> None:
    """Appends a turn, merged into the previous one when it has the same role: Gemini wants user/model
    alternation (tool results and the user's next words, or a run of user messages, become one turn)."""
    if not parts:
        return  # a turn without parts is rejected ("contents.parts must not be empty")
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _content_parts(content: Any, path: str, allowed: frozenset[str]) -> list[Json]:
    """Gemini parts for a message's ``content`` (a string or a list of typed parts)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []  # Gemini rejects empty text parts
    if not isinstance(content, list):
        raise UnsupportedContent(f"{path}.content", "must be a string or a list of parts")
    parts: list[Json] = []
    for j, part in enumerate(content):
        part_path = f"{path}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise UnsupportedContent(f"{part_path}.type", f"{kind!r} parts are not supported by the Gemini translation")
        if kind == "image_url":
            parts.append(_image(part.get("image_url"), part_path))
            continue
        key = "refusal" if kind == "refusal" else "text"  # an assistant's refusal is text it said
        text = part.get(key)
        if not isinstance(text, str):
            raise UnsupportedContent(f"{part_path}.{key}", "must be a string")
        if text:
            parts.append({"text": text})
    return parts


def _image(image_url: Any, path: str) -> Json:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise UnsupportedContent(f"{path}.image_url.url", "must be a string")
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        if not comma or not header.endswith(";base64"):
            raise UnsupportedContent(f"{path}.image_url.url", "only base64 data URLs can be sent inline to Gemini")
        mime = header.split(";", 1)[0] or _DEFAULT_IMAGE_TYPE
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"fileData": {"mimeType": _guess_image_type(url), "fileUri": url}}
    raise UnsupportedContent(f"{path}.image_url.url", "must be a data: URL or an http(s) URL")


def _guess_image_type(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _IMAGE_TYPES.get(extension, _DEFAULT_IMAGE_TYPE)


def _assistant_parts(message: Json, path: str, call_names: dict[str, str]) -> list[Json]:
    parts = _content_parts(message.get("content"), path, _ASSISTANT_PARTS)
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise UnsupportedContent(f"{path}.tool_calls", "must be a list")
    for k, call in enumerate(tool_calls):
        parts.append(_function_call(call, f"{path}.tool_calls[{k}]", call_names))
    return parts


def _function_call(call: Any, path: str, call_names: dict[str, str]) -> Json:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise UnsupportedContent(f"{path}.type", "only function tool calls have a Gemini equivalent")
    function, name = _named_function(call, path)
    args = _arguments(function.get("arguments"), f"{path}.function.arguments")
    call_id = call.get("id")
    if isinstance(call_id, str):
        call_names[call_id] = name
    return {"functionCall": {"name": name, "args": args}}


def _named_function(holder: Json, path: str) -> tuple[Json, str]:
    """``holder["function"]`` and its name: tools, tool calls and tool_choice all nest them so."""
    function = holder.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str) or not name:
        raise UnsupportedContent(f"{path}.function.name", "must be a non-empty string")
    return function, name


def _arguments(arguments: Any, path: str) -> Json:
    """OpenAI's JSON-string arguments as the object Gemini's ``args`` is."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}  # a call of a function without parameters
    if not isinstance(arguments, str):
        raise UnsupportedContent(path, "must be a JSON string")
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        raise UnsupportedContent(path, "is not valid JSON") from None
    if not isinstance(value, dict):
        raise UnsupportedContent(path, "must encode a JSON object: Gemini's args is one")
    return value


def _function_response(message: Json, path: str, call_names: dict[str, str]) -> Json:
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise UnsupportedContent(f"{path}.tool_call_id", f"no earlier assistant tool call has the id {call_id!r}")
    text = "".join(part["text"] for part in _content_parts(message.get("content"), path, _TEXT_PARTS))
    return {"functionResponse": {"name": name, "response": _tool_output(text)}}


def _tool_output(text: str) -> Json:
    """Gemini's ``response`` must be an object: a JSON object result as it is, anything else wrapped."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"content": text}


def _function_declarations(tools: Any) -> list[Json]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise UnsupportedContent("tools", "must be a list")
    return [_function_declaration(tool, f"tools[{k}]") for k, tool in enumerate(tools)]


def _function_declaration(tool: Any, path: str) -> Json:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise UnsupportedContent(f"{path}.type", "only function tools have a Gemini equivalent")
    function, name = _named_function(tool, path)
    declaration: Json = {"name": name}
    description = function.get("description")
    if description:
        declaration["description"] = description
    parameters = function.get("parameters")
    if isinstance(parameters, dict):
        schema = _clean_schema(parameters, f"{path}.function.parameters")
        # Gemini rejects an OBJECT schema without properties ("should be non-empty for OBJECT type"):
        # a function without parameters is declared without ``parameters``.
        if isinstance(schema, dict) and schema.get("properties"):
            schema.setdefault("type", "object")
            declaration["parameters"] = schema
    return declaration


def _clean_schema(schema: Any, path: str) -> Any:
    """A JSON schema reduced to what Gemini's Schema accepts (see _SCHEMA_KEYS), recursively."""
    if isinstance(schema, list):
        return [_clean_schema(item, f"{path}[{i}]") for i, item in enumerate(schema)]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        # Dropping a reference would silently change the meaning of the schema.
        raise UnsupportedContent(f"{path}.$ref", "Gemini schemas cannot reference definitions: inline them")
    cleaned: Json = {}
    for key, value in schema.items():
        target = "anyOf" if key == "oneOf" else key  # Gemini has no oneOf; anyOf is its closest (looser) match
        if target not in _SCHEMA_KEYS or target in cleaned:
            continue
        if target == "properties" and isinstance(value, dict):
            cleaned[target] = {name: _clean_schema(sub, f"{path}.properties.{name}") for name, sub in value.items()}
        elif target in ("items", "anyOf"):
            cleaned[target] = _clean_schema(value, f"{path}.{key}")
        else:
            cleaned[target] = value
    if isinstance(cleaned.get("type"), list):
        _split_type_list(cleaned)
    return cleaned


def _split_type_list(schema: Json) -> None:
    """``"type": ["string", "null"]`` (OpenAI strict mode's optional field) -> one type + nullable:
    Gemini's type is a single enum value."""
    types = schema.pop("type")
    rest = [t for t in types if t != "null"]
    if len(rest) == 1:
        schema["type"] = rest[0]
    elif rest:
        schema.setdefault("anyOf", [{"type": t} for t in rest])
    if len(rest) < len(types):
        schema["nullable"] = True


def _function_calling_config(choice: Any) -> Json | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    if isinstance(choice, dict) and choice.get("type") == "function":
        _, name = _named_function(choice, "tool_choice")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise UnsupportedContent("tool_choice", "must be auto, none, required or a function")


def _generation_config(request: Json) -> Json:
    config: Json = {}
    for openai_key, gemini_key in _SAMPLING:
        value = request.get(openai_key)
        if value is not None:
            config[gemini_key] = value
    max_tokens = request.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = request.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = request.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    config.update(_response_format(request.get("response_format")))
    return config


def _response_format(response_format: Any) -> Json:
    if not isinstance(response_format, dict) or response_format.get("type") in (None, "text"):
        return {}
    kind = response_format.get("type")
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        config: Json = {"responseMimeType": "application/json"}
        if isinstance(schema, dict):
            config["responseSchema"] = _clean_schema(schema, "response_format.json_schema.schema")
        return config
    raise UnsupportedContent("response_format.type", f"{kind!r} has no Gemini equivalent")


# ---------------------------------------------------------------------------------------------------------------------
# Answers: GenerateContentResponse -> chat.completion
# ---------------------------------------------------------------------------------------------------------------------

# Response field names as Gemini writes them -> their snake_case spelling, also accepted.
_SNAKE = {
    name: re.sub(r"([A-Z])", r"_\1", name).lower()
    for name in (
        "usageMetadata", "promptTokenCount", "candidatesTokenCount", "cachedContentTokenCount",
        "thoughtsTokenCount", "responseId", "promptFeedback", "blockReason", "finishReason", "functionCall",
    )
}

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def _get(obj: Json, camel: str) -> Any:
    value = obj.get(camel)
    return value if value is not None else obj.get(_SNAKE[camel])


def gemini_to_completion(response: dict[str, Any], model: str, created: int, completion_id: str) -> dict[str, Any]:
    """The OpenAI chat.completion for a Gemini GenerateContentResponse."""
    calls = _CallIds(response, completion_id)
    candidates = response.get("candidates") or []
    choices = [_choice(candidate, i, calls) for i, candidate in enumerate(candidates) if isinstance(candidate, dict)]
    if not choices:
        # No candidates: the prompt was blocked (promptFeedback.blockReason), or nothing came back.
        finish = "content_filter" if _blocked(response) else "stop"
        choices = [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": finish,
                    "logprobs": None}]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": _usage(_get(response, "usageMetadata")),
    }


class _CallIds:
    """Deterministic tool call ids (Gemini sends none): call_<responseId or completion id>_<n>."""

    __slots__ = ("count", "prefix")

    def __init__(self, response: Json, completion_id: str) -> None:
        response_id = _get(response, "responseId")
        self.prefix = f"call_{response_id if isinstance(response_id, str) and response_id else completion_id}_"
        self.count = 0

    def tool_call(self, function_call: Json) -> Json:
        call_id = f"{self.prefix}{self.count}"
        self.count += 1
        arguments = orjson.dumps(function_call.get("args") or {}).decode()
        name = function_call.get("name")
        return {"id": call_id, "type": "function",
                "function": {"name": name if isinstance(name, str) else "", "arguments": arguments}}


def _choice(candidate: Json, position: int, calls: _CallIds) -> Json:
    text: list[str] = []
    tool_calls: list[Json] = []
    for part in _parts(candidate):
        if _is_answer_text(part):
            text.append(part["text"])
        function_call = _get(part, "functionCall")
        if isinstance(function_call, dict):
            tool_calls.append(calls.tool_call(function_call))
    content = "".join(text)
    message: Json = {"role": "assistant", "content": content if content or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = "tool_calls" if tool_calls else _finish_reason(_get(candidate, "finishReason"))
    return {"index": _index(candidate, position), "message": message, "finish_reason": finish, "logprobs": None}


def _parts(candidate: Json) -> list[Json]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _is_answer_text(part: Json) -> bool:
    # Thought summaries (thinking models, part.thought == true) are the model's notes, not its answer.
    return isinstance(part.get("text"), str) and not part.get("thought")


def _index(candidate: Json, position: int) -> int:
    index = candidate.get("index")
    return index if isinstance(index, int) else position


def _finish_reason(reason: Any) -> str:
    return _FINISH_REASONS.get(reason, "stop") if isinstance(reason, str) else "stop"


def _blocked(response: Json) -> bool:
    feedback = _get(response, "promptFeedback")
    return isinstance(feedback, dict) and bool(_get(feedback, "blockReason"))


def _usage(metadata: Any) -> Json:
    prompt, completion = _counts(metadata if isinstance(metadata, dict) else {})
    usage: Json = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if isinstance(metadata, dict):
        cached = _get(metadata, "cachedContentTokenCount")
        if isinstance(cached, int):
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        thoughts = _get(metadata, "thoughtsTokenCount")
        if isinstance(thoughts, int) and thoughts:
            usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return usage


def _counts(metadata: Json) -> tuple[int, int]:
    """(prompt, completion) of a usageMetadata.  Gemini's JSON omits zero counts (proto3), so an absent
    count in a present usageMetadata is 0; thinking tokens are billed as output, so they count as completion."""
    prompt = _get(metadata, "promptTokenCount")
    candidates = _get(metadata, "candidatesTokenCount")
    thoughts = _get(metadata, "thoughtsTokenCount")
    completion = (candidates if isinstance(candidates, int) else 0) + (thoughts if isinstance(thoughts, int) else 0)
    return (prompt if isinstance(prompt, int) else 0), completion


def token_counts(response: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens of a Gemini response; (-1, -1) when it has no usageMetadata."""
    metadata = _get(response, "usageMetadata")
    return _counts(metadata) if isinstance(metadata, dict) else (-1, -1)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_CLIP = 200  # characters of a foreign error body quoted in the message


def error_to_openai(status: int, body: bytes) -> bytes:
    """The OpenAI error JSON for a Gemini error body ``{"error": {"code", "message", "status"}}``."""
    return orjson.dumps(_openai_error(status, body))


def _openai_error(status: int, body: bytes) -> Json:
    error = _gemini_error(body)
    if error is None:
        text = body.decode("utf-8", "replace")
        clipped = text if len(text) <= _CLIP else text[:_CLIP] + "…"
        message = f"The upstream answered {status} with a body that is not a Gemini error: {clipped}"
        return {"error": {"message": message, "type": "upstream_error", "param": None, "code": None}}
    raw_message = error.get("message")
    message = raw_message.strip() if isinstance(raw_message, str) else ""
    message = message or f"Gemini answered {status}."
    error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": None, "code": _error_code(error)}}


def _error_code(error: Json) -> str | None:
    """The most precise code Gemini gives: an ErrorInfo reason (API_KEY_INVALID says more than its
    INVALID_ARGUMENT status), else the status; lower-cased like OpenAI's codes."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        reason = detail.get("reason") if isinstance(detail, dict) else None
        if isinstance(reason, str) and reason:
            return reason.lower()
    status = error.get("status")
    return status.lower() if isinstance(status, str) and status else None


def _gemini_error(body: bytes) -> Json | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, list) and value:
        value = value[0]  # streamGenerateContent without alt=sse answers a JSON array, errors included
    error = value.get("error") if isinstance(value, dict) else None
    return error if isinstance(error, dict) else None


# ---------------------------------------------------------------------------------------------------------------------
# Streams: streamGenerateContent?alt=sse -> chat.completion.chunk events
# ---------------------------------------------------------------------------------------------------------------------

_STREAM_ERROR = "upstream_stream_error"
_DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class _ChoiceState:
    tool_calls: int = 0  # tool calls sent so far: the next one's index in delta.tool_calls
    finished: bool = False


class GeminiToChatStream:
    """Gemini streamGenerateContent?alt=sse bytes -> OpenAI chat.completion.chunk SSE bytes, incrementally.

    Each Gemini event is translated as soon as it is complete: a first chunk with the role per choice,
    content deltas for text, one complete tool_call delta per functionCall (Gemini never splits one),
    and a finish chunk for the event carrying finishReason.  Gemini has no end marker, so only ``close``
    (upstream EOF) can tell a finished stream (usage chunk when asked for, then [DONE]) from a cut one
    (an error event).  A Gemini error event ends the stream with its OpenAI error event at once.

    ``usage`` is (prompt, completion) from the last usageMetadata, (-1, -1) before one; ``error`` the
    code of the error event that ended the stream, if one did.
    """

    __slots__ = ("_base", "_calls", "_choices", "_closed", "_completion_id", "_include_usage", "_last_byte",
                 "_parser", "_usage_body", "error", "usage")

    def __init__(self, model: str, created: int, completion_id: str, include_usage: bool) -> None:
        self._base: Json = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self._completion_id = completion_id
        self._include_usage = include_usage
        self._parser = SSEParser()
        self._choices: dict[int, _ChoiceState] = {}
        self._calls: _CallIds | None = None  # made at the first event that has a responseId, or the first call
        self._usage_body = _usage(None)
        self._closed = False
        self._last_byte = b""
        self.usage: tuple[int, int] = (-1, -1)
        self.error: str | None = None

    def feed(self, data: bytes) -> bytes:
        """The OpenAI events completed by ``data`` (bytes split anywhere)."""
        if self.error is not None or self._closed:
            return b""
        if data:
            self._last_byte = data[-1:]
        try:
            events = self._parser.feed(data)
        except SSEError as exc:
            return self._fail(f"The upstream stream is not valid SSE: {exc}.")
        out: list[bytes] = []
        for event in events:
            out.append(self._event(event.data))
            if self.error is not None:
                break
        return b"".join(out)

    def close(self) -> bytes:
        """At upstream EOF: the usage chunk (when asked for) and [DONE], or an error event for a cut stream."""
        if self.error is not None or self._closed:
            return b""
        head = b""
        if self._parser.pending and self._last_byte == b"\r":
            # The parser holds a final CR as the possible first half of a CRLF; at EOF it is a line end.
            head = self.feed(b"\n")
            if self.error is not None:
                return head
        self._closed = True
        if self._parser.pending:
            return head + self._fail("The upstream stream ended in the middle of an event.")
        if not self._choices or not all(state.finished for state in self._choices.values()):
            return head + self._fail("The upstream stream ended before the answer was complete (no finishReason).")
        if self._include_usage:
            head += sse_event(orjson.dumps({**self._base, "choices": [], "usage": self._usage_body}))
        return head + _DONE

    def _event(self, data: str) -> bytes:
        if not data.strip():
            return b""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return self._fail(f"The upstream sent an event that is not a JSON object: {data[:_CLIP]}")
        if "error" in payload:
            return self._upstream_error(payload, data)
        self._remember(payload)
        out: list[bytes] = []
        candidates = payload.get("candidates") or []
        for position, candidate in enumerate(candidates):
            if isinstance(candidate, dict):
                self._candidate(candidate, position, out)
        if not candidates and _blocked(payload):
            self._finish(self._state(0, out), 0, "content_filter", out)
        return b"".join(out)

    def _remember(self, payload: Json) -> None:
        """Usage (Gemini repeats it, growing, in every event: the last one wins) and the call id prefix."""
        metadata = _get(payload, "usageMetadata")
        if isinstance(metadata, dict):
            self.usage = _counts(metadata)
            self._usage_body = _usage(metadata)
        if self._calls is None and _get(payload, "responseId"):
            self._calls = _CallIds(payload, self._completion_id)

    def _candidate(self, candidate: Json, position: int, out: list[bytes]) -> None:
        index = _index(candidate, position)
        state = self._state(index, out)
        if state.finished:
            return  # OpenAI clients expect nothing for a choice after its finish_reason
        text: list[str] = []
        for part in _parts(candidate):
            if _is_answer_text(part):
                text.append(part["text"])
            function_call = _get(part, "functionCall")
            if isinstance(function_call, dict):
                self._text(index, text, out)  # keeps text and calls in the order Gemini sent them
                out.append(self._tool_call(index, state, function_call))
        self._text(index, text, out)
        reason = _get(candidate, "finishReason")
        if isinstance(reason, str) and reason != "FINISH_REASON_UNSPECIFIED":
            self._finish(state, index, "tool_calls" if state.tool_calls else _finish_reason(reason), out)

    def _state(self, index: int, out: list[bytes]) -> _ChoiceState:
        """The state of choice ``index``; a choice seen for the first time opens with the role chunk."""
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _ChoiceState()
            out.append(self._chunk(index, {"role": "assistant", "content": ""}))
        return state

    def _text(self, index: int, text: list[str], out: list[bytes]) -> None:
        content = "".join(text)
        text.clear()
        if content:
            out.append(self._chunk(index, {"content": content}))

    def _tool_call(self, index: int, state: _ChoiceState, function_call: Json) -> bytes:
        if self._calls is None:
            self._calls = _CallIds({}, self._completion_id)
        call = {"index": state.tool_calls, **self._calls.tool_call(function_call)}
        state.tool_calls += 1
        return self._chunk(index, {"tool_calls": [call]})

    def _finish(self, state: _ChoiceState, index: int, reason: str, out: list[bytes]) -> None:
        if not state.finished:
            state.finished = True
            out.append(self._chunk(index, {}, reason))

    def _chunk(self, index: int, delta: Json, finish_reason: str | None = None) -> bytes:
        chunk = {**self._base, "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                                            "logprobs": None}]}
        if self._include_usage:
            chunk["usage"] = None  # as OpenAI does: only the last chunk carries usage
        return sse_event(orjson.dumps(chunk))

    def _upstream_error(self, payload: Json, data: str) -> bytes:
        """Gemini reports a failure mid-stream (e.g. 503 UNAVAILABLE) as an event holding only ``error``."""
        error = payload["error"]
        code = error.get("code") if isinstance(error, dict) else None
        body = _openai_error(code if isinstance(code, int) and code >= 400 else 502, data.encode())
        self.error = body["error"]["code"] or _STREAM_ERROR
        return sse_event(orjson.dumps(body))

    def _fail(self, message: str) -> bytes:
        self.error = _STREAM_ERROR
        body = {"error": {"message": message, "type": "upstream_error", "param": None, "code": _STREAM_ERROR}}
        return sse_event(orjson.dumps(body))
