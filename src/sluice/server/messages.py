"""The Anthropic ingress (POST /v1/messages): the call for the target, and the answer back.

An Anthropic request to an anthropic target passes through untouched (only the
model renamed).  To any other target it becomes an OpenAI chat call; the answer
the target's provider turns into OpenAI is then turned into Anthropic's format
by an ``Egress``: messages, stream events and errors.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..pipeline.validate import rename_model
from ..providers import Call, StreamTranslator
from ..providers.translate import anthropic as translate
from ..providers.translate.errors import UnsupportedContent
from ..routing import Deployment

__all__ = ["Egress", "chain", "messages_call"]


class Egress:
    """OpenAI answers, streams and errors, turned into the Anthropic format for the caller."""

    __slots__ = ("model",)

    def __init__(self, model: str) -> None:
        self.model = model  # the name the caller used

    def answer(self, status: int, body: bytes) -> tuple[int, bytes]:
        """(status, body) for the caller."""
        if status >= 400:
            return status, translate.error_to_anthropic(status, body)
        try:
            completion = orjson.loads(body)
            if not isinstance(completion, dict) or not completion.get("choices"):
                return 502, translate.error_to_anthropic(502, body)  # not a chat completion
            return status, orjson.dumps(translate.completion_to_message(completion, self.model))
        except (orjson.JSONDecodeError, UnsupportedContent, TypeError, AttributeError, KeyError):  # the answer's fault
            return 502, translate.error_to_anthropic(502, body)

    def stream(self) -> StreamTranslator:
        return translate.ChatToMessagesStream(self.model)


class _Chain:
    """Two translators in a row: the provider's (native to OpenAI), then the caller's (OpenAI to Anthropic)."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: StreamTranslator, second: StreamTranslator) -> None:
        self._first = first
        self._second = second

    @property
    def usage(self) -> tuple[int, int]:
        usage = self._first.usage
        return usage if usage != (-1, -1) else self._second.usage

    @property
    def error(self) -> str | None:
        return self._first.error or self._second.error

    def feed(self, data: bytes) -> bytes:
        return self._second.feed(self._first.feed(data))

    def close(self) -> bytes:
        return self._second.feed(self._first.close()) + self._second.close()


def chain(first: StreamTranslator | None, second: StreamTranslator | None) -> StreamTranslator | None:
    if first is None:
        return second
    if second is None:
        return first
    return _Chain(first, second)


def messages_call(request: Any, body: bytes, target: Deployment, request_id: str,
                  beta: str | None) -> tuple[Call, Egress | None]:
    """The call that carries an Anthropic request to ``target``, and the egress its answer needs."""
    stream = bool(request.stream)
    headers = {"anthropic-beta": beta} if beta else None
    if target.provider.wire == "anthropic":
        if target.model != request.model:
            body = rename_model(body, target.model)
        return Call("/v1/messages", "POST", body, stream, request_id, target.model, "anthropic", headers), None
    chat = translate.messages_to_chat(orjson.loads(body))
    chat["model"] = target.model
    if stream:
        chat["stream_options"] = {"include_usage": True}  # Anthropic streams always carry usage
    call = Call("/v1/chat/completions", "POST", orjson.dumps(chat), stream, request_id, target.model)
    return call, Egress(request.model)
