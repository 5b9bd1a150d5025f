"""Kind ``gemini``: Google's Gemini API (generateContent / streamGenerateContent).

OpenAI chat calls are translated to Gemini requests and the answers, streams
(``?alt=sse``) and errors back (``translate.gemini``).  The key goes in
``x-goog-api-key``; the base URL is the origin, e.g.
``https://generativelanguage.googleapis.com``.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import orjson

from .base import Call, InvalidAnswer, Provider, StreamTranslator, UpstreamRequest, json_answer
from .translate import gemini as translate

__all__ = ["GeminiProvider"]


class GeminiProvider(Provider):
    kind = "gemini"
    wire = "gemini"
    capabilities = frozenset({"chat", "vision", "tools", "json_mode", "streaming"})

    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        return (("x-goog-api-key", api_key),) if api_key else ()

    def prepare(self, call: Call) -> UpstreamRequest:
        method = "streamGenerateContent?alt=sse" if call.stream else "generateContent"
        target = f"{self.prefix}/v1beta/models/{quote(call.model, safe='')}:{method}"
        headers = self.request_headers(call)
        body = orjson.dumps(translate.chat_to_gemini(call.json()))
        return UpstreamRequest(self.origin, "POST", target, headers, body)

    def health_request(self, auth: tuple[tuple[str, str], ...] | None = None) -> UpstreamRequest:
        """GET /v1beta/models: the model list."""
        headers = [("accept", "application/json"), *(self.next_auth() if auth is None else auth),
                   *self.extra_headers()]
        return UpstreamRequest(self.origin, "GET", self.prefix + "/v1beta/models", headers, None)

    def answer(self, call: Call, status: int, body: bytes) -> bytes:
        if status >= 400:
            return translate.error_to_openai(status, body)
        response = json_answer(status, body)
        if not isinstance(response.get("candidates"), list) and "promptFeedback" not in response:
            raise InvalidAnswer(status, body, "not a Gemini GenerateContentResponse")
        return orjson.dumps(translate.gemini_to_completion(response, call.model, int(time.time()),
                                                           f"chatcmpl-{call.request_id}"))

    def stream(self, call: Call) -> StreamTranslator | None:
        options = call.json().get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return translate.GeminiToChatStream(call.model, int(time.time()), f"chatcmpl-{call.request_id}",
                                            include_usage)
