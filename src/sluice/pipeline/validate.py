"""Decodes a request body once into the typed fields the gateway needs.

Fields the gateway does not use are not decoded into the struct and reach the
provider untouched, because the caller's bytes are forwarded as they came (only
the model is rewritten when the target calls it differently).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
import orjson

from ..context import Exchange, RequestContext
from ..errors import InvalidRequest
from .stage import Stage

__all__ = ["ChatRequest", "CompletionRequest", "CountTokensRequest", "DecodeStage", "EmbeddingRequest",
           "MessagesRequest", "ModelRequest", "decode", "rename_model"]


# A token budget: at least one (a negative one would turn the rate limits' reservation into a credit).
Tokens = Annotated[int, msgspec.Meta(ge=1)]


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
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(ModelRequest):
    prompt: str | list[Any] | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    n: int | None = None


class EmbeddingRequest(ModelRequest):
    input: str | list[Any] = ""


class AnthropicMessage(msgspec.Struct):
    role: str
    content: str | list[Any]


class MessagesRequest(ModelRequest):
    """An Anthropic Messages request (POST /v1/messages)."""

    messages: list[AnthropicMessage] = msgspec.field(default_factory=list)
    max_tokens: Tokens | None = None
    tools: list[Any] | None = None


class CountTokensRequest(ModelRequest):
    """POST /v1/messages/count_tokens."""

    messages: list[AnthropicMessage] = msgspec.field(default_factory=list)


_AT = re.compile(r" - at `\$\.?(.*)`$")
_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_NEED_MESSAGES = (ChatRequest, MessagesRequest, CountTokensRequest)


def decode(body: bytes, kind: type[ModelRequest]) -> Any:
    """The typed request, or InvalidRequest naming the field that is wrong."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
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
    field = match.group(1) if match else None
    problem = message[: match.start()] if match else message
    if problem.startswith("Object missing required field `"):
        missing = problem.split("`")[1]
        param = f"{field}.{missing}" if field else missing
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    if not field:
        return InvalidRequest(f"Invalid request body: {problem[0].lower()}{problem[1:]}.", code="invalid_type")
    return InvalidRequest(f"Invalid type for '{field}': {problem[0].lower()}{problem[1:]}.", param=field,
                          code="invalid_type")


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
