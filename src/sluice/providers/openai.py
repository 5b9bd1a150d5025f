"""Kind ``openai``: any OpenAI-compatible API (OpenAI, vLLM, Ollama, Groq, Together, proxies...).

The request and the answer pass through untouched but for the model name and
the credentials.
"""

from __future__ import annotations

from .base import Call, Provider, UpstreamRequest

__all__ = ["OpenAIProvider"]


class OpenAIProvider(Provider):
    kind = "openai"

    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def prepare(self, call: Call) -> UpstreamRequest:
        return UpstreamRequest(self.origin, call.method, self.prefix + call.endpoint, self.request_headers(call),
                               call.body if call.method == "POST" else None)
