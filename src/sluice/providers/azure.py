"""Kind ``azure``: Azure OpenAI, the OpenAI wire format on deployment URLs.

A target's model is the deployment name:
``{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}``,
with the key in an ``api-key`` header.  Bodies pass through untouched.
"""

from __future__ import annotations

from urllib.parse import quote

from ..config import ProviderConfig
from .base import Call, Provider, UpstreamRequest

__all__ = ["AzureProvider"]


class AzureProvider(Provider):
    kind = "azure"

    @classmethod
    def check_config(cls, config: ProviderConfig) -> list[tuple[str, str]]:
        if not config.api_version:
            return [("api_version", "an azure provider needs its api_version, e.g. 2024-10-21")]
        return []

    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        return (("api-key", api_key),) if api_key else ()

    def health_request(self, auth: tuple[tuple[str, str], ...] | None = None) -> UpstreamRequest:
        """GET /openai/models: the models of the resource."""
        headers = [("accept", "application/json"), *(self.next_auth() if auth is None else auth),
                   *self.extra_headers()]
        target = f"{self.prefix}/openai/models?api-version={quote(self.config.api_version or '', safe='')}"
        return UpstreamRequest(self.origin, "GET", target, headers, None)

    def prepare(self, call: Call) -> UpstreamRequest:
        operation = call.endpoint.removeprefix("/v1")  # /chat/completions, /completions, /embeddings
        target = (f"{self.prefix}/openai/deployments/{quote(call.model, safe='')}{operation}"
                  f"?api-version={quote(self.config.api_version or '', safe='')}")
        return UpstreamRequest(self.origin, call.method, target, self.request_headers(call), call.body)
