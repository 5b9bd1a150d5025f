"""Decodes a request body once into the typed fields the gateway needs.

Fields the gateway does not use are not decoded into the struct and reach the
provider untouched, because the caller's bytes are forwarded as they came (only
the model is rewritten when the target calls it differently).

Because the bytes are forwarded, what the gateway decodes must be all the
provider can read in them.  Before msgspec decodes a body, one compiled pass
(``json_problem``, ext/_jsoncheck.pyx) refuses what msgspec lets through:

- a key twice in one object, at any level (``{"model": "a", "model": "b"}``):
  msgspec keeps the last value, a provider's parser may keep the first, so a
  key limited to one model could be served another;
- nesting deeper than ``MAX_DEPTH`` (msgspec recurses, and fails with a
  RecursionError near 1,000 levels; orjson, which re-encodes a renamed body,
  stops at 254);
- bytes that are not UTF-8, in a field msgspec skips without reading;
- a number beyond a double's range (``1e400``) in a field msgspec skips or
  keeps untyped: orjson, which re-reads a renamed or translated body,
  refuses it.

The fields that the gateway or the provider count with are typed and bounded
here, as OpenAI and Anthropic document them: ``max_tokens``, ``n``, ``stop``,
``user``, ``logit_bias``, ``metadata``.  A refusal is InvalidRequest (400)
with ``param`` naming the field, in the caller's wire format.  See
docs/validation.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
import orjson

from .._native import json_problem
from ..context import Exchange, RequestContext
from ..errors import InvalidRequest
from .stage import Stage

__all__ = ["MAX_DEPTH", "ChatRequest", "CompletionRequest", "CountTokensRequest", "DecodeStage", "EmbeddingRequest",
           "MessagesRequest", "ModelRequest", "check_json", "decode", "rename_model"]

# The deepest nesting a body may have (its top object is level 1). Requests nest 4-6 levels, and a tool's
# JSON Schema a few dozen at most; 128 is far above them and well below every parser on the path: orjson
# re-encodes a renamed body and stops at 254, msgspec and Python's recursion at about 1,000.
MAX_DEPTH = 128
INT32_MAX = 2**31 - 1

# A token budget: at least one (a negative one would turn the rate limits' reservation into a credit), at
# most 2^31-1: no model comes near it, and an upstream parsing it as a 32-bit integer would wrap around
# (2^32 + 1 read as 1) or fail (2^63).
Tokens = Annotated[int, msgspec.Meta(ge=1, le=INT32_MAX)]
# OpenAI's limits (its API reference and OpenAPI spec): n in 1..128 (also when streamed: each chunk's
# choices carry their index); up to 4 stop sequences; logit_bias maps token ids to a bias in -100..100;
# metadata is up to 16 pairs of strings, keys up to 64 characters, values up to 512.
Choices = Annotated[int, msgspec.Meta(ge=1, le=128)]
Stop = str | Annotated[list[str], msgspec.Meta(max_length=4)]
TokenId = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,10}$")]
LogitBias = dict[TokenId, Annotated[float, msgspec.Meta(ge=-100, le=100)]]
Metadata = Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
                     msgspec.Meta(max_length=16)]


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class Message(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None


class ModelRequest(msgspec.Struct):
    model: str
    stream: bool | None = False


class ChatRequest(ModelRequest):
    messages: list[Message] = msgspec.field(default_factory=list)
    # UNSET when the body has no such key, however spelt (None: it is null): the upstream stage adds one.
    stream_options: StreamOptions | msgspec.UnsetType | None = msgspec.UNSET
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    n: Choices | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: Stop | None = None
    user: str | None = None
    logit_bias: LogitBias | None = None
    metadata: Metadata | None = None


class CompletionRequest(ModelRequest):
    prompt: str | list[Any] | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    n: Choices | None = None
    stop: Stop | None = None
    user: str | None = None
    logit_bias: LogitBias | None = None


class EmbeddingRequest(ModelRequest):
    input: str | list[Any] = ""
    user: str | None = None


class AnthropicMessage(msgspec.Struct):
    role: str
    content: str | list[Any]


class AnthropicMetadata(msgspec.Struct):
    user_id: str | None = None


class MessagesRequest(ModelRequest):
    """An Anthropic Messages request (POST /v1/messages)."""

    messages: list[AnthropicMessage] = msgspec.field(default_factory=list)
    max_tokens: Tokens | None = None
    tools: list[Any] | None = None
    stop_sequences: list[str] | None = None
    metadata: AnthropicMetadata | None = None


class CountTokensRequest(ModelRequest):
    """POST /v1/messages/count_tokens."""

    messages: list[AnthropicMessage] = msgspec.field(default_factory=list)


# msgspec's "- at `$.path`", "- at `$.logit_bias[...]`" (a value of a map), "- at `key` in `$.metadata`".
_AT = re.compile(r" - at (`key` in )?`\$\.?(.*?)(\[\.\.\.\])?`$")
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_NEED_MESSAGES = (ChatRequest, MessagesRequest, CountTokensRequest)


def check_json(body: bytes) -> None:
    """InvalidRequest when the body has a key twice in an object, nests deeper than MAX_DEPTH, is not
    UTF-8 or has a number beyond a double's range (see the module docstring); for every JSON body the
    gateway reads before it forwards it."""
    problem = json_problem(body, MAX_DEPTH)
    if problem is not None:
        raise _json_error(*problem)


def _json_error(kind: str, path: str) -> InvalidRequest:
    if kind == "duplicate":
        shown = path if len(path) <= 200 else path[:200] + "..."
        return InvalidRequest(
            f"The JSON body of your request has the key '{shown}' more than once in the same object. "
            "Each key may appear once: send it a single time.", param=shown, code="duplicate_key")
    if kind in ("depth", "number"):
        field = re.split(r"[.\[]", path, maxsplit=1)[0] or None
        if kind == "number":  # orjson, which re-reads the body to rename or translate it, refuses infinity
            return InvalidRequest(
                "The JSON body of your request has a number beyond the range of a double (about 1.8e308)"
                + (f" (in '{field}')." if field else "."), param=field, code="invalid_number")
        return InvalidRequest(
            f"The JSON body of your request nests deeper than {MAX_DEPTH} levels"
            + (f" (in '{field}')." if field else "."), param=field, code="json_too_deep")
    return InvalidRequest("The body of your request is not valid UTF-8 text.", code="invalid_json")


def decode(body: bytes, kind: type[ModelRequest]) -> Any:
    """The typed request, or InvalidRequest naming the field that is wrong."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    problem = json_problem(body, MAX_DEPTH)  # check_json, without a call more on the hot path
    if problem is not None:
        raise _json_error(*problem)
    try:
        request = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _field_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). "
            "The body must be a JSON object.", code="invalid_json",
        ) from None
    if kind in _NEED_MESSAGES and not request.messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages",
                             code="missing_required_parameter")
    if not request.model:
        raise InvalidRequest("'model' must not be empty.", param="model", code="invalid_value")
    return request


def _field_error(message: str) -> InvalidRequest:
    match = _AT.search(message)
    field = match.group(2) if match else None
    problem = message[: match.start()] if match else message
    if problem.startswith("Object missing required field `"):
        missing = problem.split("`")[1]
        param = f"{field}.{missing}" if field else missing
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    problem = problem[0].lower() + problem[1:]
    if not field:
        return InvalidRequest(f"Invalid request body: {problem}.", code="invalid_type")
    assert match is not None
    part = "a key of " if match.group(1) else "a value of " if match.group(3) else ""
    if ", got `" in problem:  # the wrong type
        return InvalidRequest(f"Invalid type for {part}'{field}': {problem}.", param=field, code="invalid_type")
    # The right type beyond its bounds: "expected `int` <= 128", "expected `array` of length <= 4", ...
    return InvalidRequest(f"Invalid value for {part}'{field}': {problem}.", param=field, code="invalid_value")


def rename_model(body: bytes, model: str) -> bytes:
    """The body with its ``model`` replaced; everything else is kept."""
    data = orjson.loads(body)
    data["model"] = model
    return orjson.dumps(data)


class DecodeStage(Stage):
    """Reads the body whole (bounded by ``server.max_body_bytes``) and decodes it once into ``kind``:
    ``ctx.body``, ``ctx.request`` and ``ctx.model`` for the stages after."""

    name = "decode"

    def __init__(self, kind: type[ModelRequest], max_body: int, *, log_bodies: bool = False) -> None:
        self.kind = kind
        self.max_body = max_body
        self.log_bodies = log_bodies

    async def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        ctx.body = body = await ex.read_body(self.max_body)
        if self.log_bodies:
            ctx.request_body = body
        ctx.request = request = decode(body, self.kind)
        ctx.model = request.model

    def describe(self) -> str:
        return f"decode ({self.kind.__name__})"
