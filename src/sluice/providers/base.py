"""The provider interface: what a provider kind implements to serve requests.

A provider turns a validated request into an upstream request (origin, path,
headers, body).  Kinds whose wire format differs from the caller's (next:
anthropic, gemini) also translate the answer back; the OpenAI kind passes it
through untouched, which is the fast path.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ..config import ProviderConfig
from ..upstream import Origin, parse_base_url

__all__ = ["Call", "Provider", "UpstreamRequest"]


@dataclass(slots=True)
class Call:
    """One request as the gateway understood it, on its way to a provider."""

    endpoint: str  # the caller's path, e.g. /v1/chat/completions
    method: str
    body: bytes  # the caller's body, with the model already renamed for the target
    stream: bool
    request_id: str


@dataclass(slots=True)
class UpstreamRequest:
    origin: Origin
    method: str
    target: str  # path and query on the origin
    headers: list[tuple[str, str]]
    body: bytes | None


class Provider(ABC):
    """A configured provider: one base URL, a pool of API keys, a wire format."""

    kind: ClassVar[str]

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        self.origin, self.prefix = parse_base_url(
            config.base_url, verify_tls=config.verify_tls, ca_file=config.ca_file
        )
        self._auth = itertools.cycle(self.auth_headers(key) for key in config.api_keys or ("",))
        self._extra = list(config.headers.items())

    @abstractmethod
    def auth_headers(self, api_key: str) -> tuple[tuple[str, str], ...]:
        """The headers that carry ``api_key`` (empty key: no credentials)."""

    @abstractmethod
    def prepare(self, call: Call) -> UpstreamRequest:
        """The upstream request for ``call``."""

    def next_auth(self) -> tuple[tuple[str, str], ...]:
        """Credentials of the next key of the pool, in rotation."""
        return next(self._auth)

    def extra_headers(self) -> list[tuple[str, str]]:
        return self._extra
