"""Gemini API wire format for the mock upstream: generateContent, streamGenerateContent, countTokens, errors.

Answers are deterministic functions of the request, the model in the path and a sequence number
(the response id), on the rules of the Anthropic format (``cut_reply``) and ``mock.tools``:

- the reply is REPLY, cut to ``generationConfig.maxOutputTokens`` words (finishReason
  "MAX_TOKENS") or before the earliest of ``generationConfig.stopSequences`` (finishReason
  "STOP"); one word is one token; ``candidateCount`` candidates, all the same;
- with ``tools[].functionDeclarations``, a last user turn without a ``functionResponse`` part is
  answered with ``functionCall`` parts when ``toolConfig.functionCallingConfig.mode`` is ANY
  (among ``allowedFunctionNames`` if given), or when its text says "use a tool" or "call <name>";
  "parallel" asks for two calls; the args hold the parameters' required properties;
- prompt tokens are ``prompt_tokens`` of every string in contents, systemInstruction and tools,
  except that an inlineData or fileData part counts IMAGE_TOKENS.

Streams come as SSE (``?alt=sse``: ``data: <chunk>\\r\\n\\r\\n``) or, without it, as a JSON array
written piece by piece, as the real API does. Text goes word by word; every chunk carries the
running ``usageMetadata`` and the last one the ``finishReason``.  Field names are accepted in
lowerCamelCase and in snake_case, as Google's JSON parser accepts both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

import orjson

from .anthropic import cut_reply
from .openai import prompt_tokens
from .tools import choose_tools, sample_input

__all__ = [
    "IMAGE_TOKENS",
    "MISSING_KEY_MESSAGE",
    "count_tokens",
    "error_body",
    "error_event",
    "generate",
    "json_array_pieces",
    "model_list",
    "prompt_token_count",
    "sse_events",
    "validate",
]

IMAGE_TOKENS = 258
MISSING_KEY_MESSAGE = ("Method doesn't allow unregistered callers (callers without established identity). "
                       "Please use API key or other form of API consumer identity to call this API.")

_REQUEST_FIELDS = frozenset({"model", "contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
                             "generationConfig", "cachedContent"})
_PART_DATA = frozenset({"text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
                        "codeExecutionResult"})
_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
             503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_FINISH = {"end": "STOP", "max": "MAX_TOKENS", "stop": "STOP"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _field(value: Any, name: str) -> Any:
    """``value[name]`` in lowerCamelCase or snake_case; None when absent (or ``value`` is no object)."""
    if not isinstance(value, dict):
        return None
    found = value.get(name)
    if found is None:
        found = value.get("".join("_" + c.lower() if c.isupper() else c for c in name))
    return found


# -- requests ---------------------------------------------------------------------------------------

def validate(request: Any, *, count: bool = False) -> None:
    """Raises ValueError with the real API's kind of message for a body it would reject.

    ``count``: a countTokens body, whose contents may come inside ``generateContentRequest``.
    """
    if not isinstance(request, dict):
        raise ValueError("Invalid JSON payload received. Expected an object.")
    if count:
        inner = _field(request, "generateContentRequest")
        for key in request:
            if _camel(key) not in ("contents", "generateContentRequest"):
                raise ValueError(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
        request = inner if isinstance(inner, dict) else request
    for key in request:
        if _camel(key) not in _REQUEST_FIELDS:
            raise ValueError(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ValueError("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            raise ValueError(f"* GenerateContentRequest.contents[{i}]: must be an object")
        if content.get("role") not in (None, "user", "model"):
            raise ValueError("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise ValueError(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        for j, part in enumerate(parts):
            if not isinstance(part, dict) or not any(_camel(key) in _PART_DATA for key in part):
                raise ValueError(f"* GenerateContentRequest.contents[{i}].parts[{j}].data: required oneof field "
                                 "'data' must have one initialized field")
    config = _field(request, "generationConfig") or {}
    limit = _field(config, "maxOutputTokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError("* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer")
    count = _field(config, "candidateCount")
    if count is not None and (not isinstance(count, int) or not 1 <= count <= 8):
        raise ValueError("* GenerateContentRequest.generation_config.candidate_count: must be between 1 and 8")
    mode = _mode(request)
    if mode == "ANY" and not _declarations(request):
        raise ValueError("Function calling config is set without function_declarations.")


def _declarations(request: dict[str, Any]) -> list[dict[str, Any]]:
    tools = _field(request, "tools")
    found = []
    for tool in tools if isinstance(tools, list) else []:
        declarations = _field(tool, "functionDeclarations")
        for declaration in declarations if isinstance(declarations, list) else []:
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                found.append(declaration)
    return found


def _calling_config(request: dict[str, Any]) -> dict[str, Any]:
    config = _field(_field(request, "toolConfig"), "functionCallingConfig")
    return config if isinstance(config, dict) else {}


def _mode(request: dict[str, Any]) -> str:
    return str(_calling_config(request).get("mode") or "AUTO").upper()


def prompt_token_count(request: dict[str, Any]) -> int:
    return (_tokens(request.get("contents")) + _tokens(_field(request, "systemInstruction"))
            + _tokens(_field(request, "tools")))


def _tokens(value: Any) -> int:
    return prompt_tokens(value, _is_image, IMAGE_TOKENS)


def _is_image(part: dict[str, Any]) -> bool:
    return _field(part, "inlineData") is not None or _field(part, "fileData") is not None


def count_tokens(request: dict[str, Any]) -> bytes:
    inner = _field(request, "generateContentRequest")
    return orjson.dumps({"totalTokens": prompt_token_count(inner if isinstance(inner, dict) else request)})


# -- answers ----------------------------------------------------------------------------------------

class _Answer(NamedTuple):
    parts: list[dict[str, Any]]  # the function calls, or one text part
    finish: str
    tokens: int  # per candidate


def _answer(request: dict[str, Any]) -> _Answer:
    last = request["contents"][-1]
    parts = last["parts"]
    declarations = _declarations(request)
    mode = _mode(request)
    if declarations and last.get("role") in (None, "user") and mode != "NONE" \
            and not any(_field(p, "functionResponse") is not None for p in parts):
        text = " ".join(p["text"] for p in parts if isinstance(p.get("text"), str))
        allowed = _field(_calling_config(request), "allowedFunctionNames")
        only = [n for n in allowed if isinstance(n, str)] if mode == "ANY" and isinstance(allowed, list) else None
        calls = choose_tools([d["name"] for d in declarations], text, forced=mode == "ANY", only=only)
        if calls:
            schemas = {d["name"]: _field(d, "parameters") or _field(d, "parametersJsonSchema") for d in declarations}
            uses = [{"functionCall": {"name": name, "args": sample_input(schemas[name])}} for name in calls]
            tokens = sum(prompt_tokens(name) + prompt_tokens(json.dumps(u["functionCall"]["args"]))
                         for name, u in zip(calls, uses, strict=True))
            return _Answer(uses, "STOP", tokens)
    config = _field(request, "generationConfig") or {}
    text, why, _ = cut_reply(_field(config, "maxOutputTokens"), _field(config, "stopSequences"))
    return _Answer([{"text": text}], _FINISH[why], len(text.split()))


def _candidates(request: dict[str, Any]) -> int:
    count = _field(_field(request, "generationConfig"), "candidateCount")
    return count if isinstance(count, int) else 1


def _usage(prompt: int, candidates: int) -> dict[str, int]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": candidates, "totalTokenCount": prompt + candidates}


def _response(candidates: list[dict[str, Any]], usage: dict[str, int], model: str, number: int) -> dict[str, Any]:
    return {"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": f"mock-{number}"}


def generate(request: dict[str, Any], model: str, number: int) -> bytes:
    """The GenerateContentResponse to a validated request."""
    answer = _answer(request)
    n = _candidates(request)
    candidates = [{"content": {"role": "model", "parts": answer.parts}, "finishReason": answer.finish, "index": i}
                  for i in range(n)]
    return orjson.dumps(_response(candidates, _usage(prompt_token_count(request), answer.tokens * n), model, number))


def _chunks(request: dict[str, Any], model: str, number: int) -> Iterator[dict[str, Any]]:
    """The GenerateContentResponse chunks of a streamed answer: text word by word, the calls in one."""
    answer = _answer(request)
    n = _candidates(request)
    prompt = prompt_token_count(request)
    if "text" in answer.parts[0]:
        words = answer.parts[0]["text"].split(" ")
        pieces = [[{"text": w if i == 0 else " " + w}] for i, w in enumerate(words)]
    else:
        pieces = [answer.parts]
    so_far = 0
    for position, parts in enumerate(pieces):
        last = position == len(pieces) - 1
        so_far = answer.tokens if last else so_far + sum(1 for p in parts if p.get("text", "").strip())
        candidates = [{"content": {"role": "model", "parts": parts}, "index": i} for i in range(n)]
        if last:
            for candidate in candidates:
                candidate["finishReason"] = answer.finish
        yield _response(candidates, _usage(prompt, so_far * n), model, number)


def sse_events(request: dict[str, Any], model: str, number: int) -> Iterator[bytes]:
    """``streamGenerateContent?alt=sse``: one ``data:`` event per chunk."""
    for chunk in _chunks(request, model, number):
        yield b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"


def json_array_pieces(request: dict[str, Any], model: str, number: int) -> Iterator[bytes]:
    """``streamGenerateContent`` without alt=sse: a JSON array of the chunks, written one by one."""
    for position, chunk in enumerate(_chunks(request, model, number)):
        yield (b"[" if position == 0 else b",\r\n") + orjson.dumps(chunk)
    yield b"]"


def error_body(status: int, message: str) -> bytes:
    """Google's error object; its status name follows the code."""
    name = _STATUSES.get(status) or ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return orjson.dumps({"error": {"code": status, "message": message, "status": name}})


def model_list(names: tuple[str, ...]) -> bytes:
    """GET /v1beta/models: what a health check asks for."""
    return orjson.dumps({"models": [{"name": f"models/{name}", "displayName": name,
                                     "supportedGenerationMethods": ["generateContent", "countTokens"]}
                                    for name in names]})


def error_event(status: int, message: str, *, sse: bool) -> bytes:
    """An error in place of a stream's chunks: a ``data:`` event (alt=sse), else a JSON array holding the error."""
    body = error_body(status, message)
    return b"data: " + body + b"\r\n\r\n" if sse else b"[" + body + b"]"
