"""Provider kinds and their registry.

A kind is a Provider subclass registered under its ``kind`` name.  Third-party
kinds will register through the ``sluice.providers`` entry-point group.
"""

from __future__ import annotations

from ..config import ProviderConfig
from .base import Call, Provider, UpstreamRequest
from .openai import OpenAIProvider

__all__ = ["Call", "Provider", "UpstreamRequest", "build_provider", "provider_kinds"]

_KINDS: dict[str, type[Provider]] = {OpenAIProvider.kind: OpenAIProvider}


def provider_kinds() -> dict[str, type[Provider]]:
    return dict(_KINDS)


def build_provider(name: str, config: ProviderConfig) -> Provider:
    return _KINDS[config.kind](name, config)
