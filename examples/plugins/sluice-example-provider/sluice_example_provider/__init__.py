"""An example sluice provider kind: an OpenAI-compatible API with its own way of taking keys.

Many inference servers speak OpenAI's wire format but authenticate differently
or want extra headers.  This kind sends the key as ``x-example-key`` and says
who called in ``x-example-client``; bodies pass through untouched, so it needs
no translation (see sluice's anthropic and gemini kinds for ones that do).
"""

from __future__ import annotations

from sluice.providers import Call, Provider, UpstreamRequest

__all__ = ["ExampleProvider"]


class ExampleProvider(Provider):
    kind = "example"
    capabilities = frozenset({"chat", "streaming"})  # what its targets can do unless configured otherwise

    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        return (("x-example-key", api_key),) if api_key else ()

    def prepare(self, call: Call) -> UpstreamRequest:
        headers = self.request_headers(call, ("x-example-client", "sluice"))
        return UpstreamRequest(self.origin, call.method, self.prefix + call.endpoint, headers, call.body)
