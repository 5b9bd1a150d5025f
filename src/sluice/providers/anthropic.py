"""Kind ``anthropic``: the Anthropic Messages API.

OpenAI chat calls are translated to Messages requests, and answers, streams and
errors back (``translate.anthropic``); calls that came in as Anthropic requests
(``POST /v1/messages``) pass through untouched both ways.  The key goes in
``x-api-key``; ``anthropic-version`` is the provider's ``api_version`` (default
below), and a caller's ``anthropic-beta`` header is passed on.
"""

from __future__ import annotations

import time

import orjson

from .base import Call, InvalidAnswer, Provider, StreamTranslator, UpstreamRequest, json_answer
from .translate import anthropic as translate

__all__ = ["AnthropicProvider"]

DEFAULT_VERSION = "2023-06-01"


class AnthropicProvider(Provider):
    kind = "anthropic"
    wire = "anthropic"
    capabilities = frozenset({"chat", "vision", "tools", "json_mode", "streaming"})

    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", api_key),) if api_key else ()

    def prepare(self, call: Call) -> UpstreamRequest:
        if call.wire == self.wire:
            body = call.body
            path = call.endpoint  # /v1/messages or /v1/messages/count_tokens
        else:
            body = orjson.dumps(translate.chat_to_messages(call.json(), call.model))
            path = "/v1/messages"
        headers = self.request_headers(call, ("anthropic-version", self.config.api_version or DEFAULT_VERSION))
        beta = call.headers.get("anthropic-beta") if call.headers else None
        if beta:
            headers.append(("anthropic-beta", beta))
        return UpstreamRequest(self.origin, "POST", self.prefix + path, headers, body)

    def health_request(self, auth: tuple[tuple[str, str], ...] | None = None) -> UpstreamRequest:
        """GET /v1/models: the model list, with the version header the API wants on every call."""
        headers = [("accept", "application/json"), ("anthropic-version", self.config.api_version or DEFAULT_VERSION),
                   *(self.next_auth() if auth is None else auth), *self.extra_headers()]
        return UpstreamRequest(self.origin, "GET", self.prefix + "/v1/models", headers, None)

    def answer(self, call: Call, status: int, body: bytes) -> bytes:
        if call.wire == self.wire:
            return body
        if status >= 400:
            return translate.error_to_openai(status, body)
        message = json_answer(status, body)
        if message.get("type") != "message" or not isinstance(message.get("content"), list):
            raise InvalidAnswer(status, body, "not an Anthropic message")
        return orjson.dumps(translate.message_to_completion(message, str(message.get("model") or call.model),
                                                           int(time.time())))

    def stream(self, call: Call) -> StreamTranslator | None:
        if call.wire == self.wire:
            return translate.NativeMessagesStream()
        options = call.json().get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return translate.MessagesToChatStream(call.model, int(time.time()), include_usage)

    def token_counts(self, call: Call, answer: bytes) -> tuple[int, int] | None:
        if call.wire != self.wire:
            return None
        try:
            message = orjson.loads(answer)
        except orjson.JSONDecodeError:
            return -1, -1
        return translate.token_counts(message) if isinstance(message, dict) else (-1, -1)

