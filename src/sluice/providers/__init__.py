"""Provider kinds and their registry.

A kind is a Provider subclass.  The built-in kinds are below; third-party kinds
register through the ``sluice.providers`` entry-point group, the entry point's
name being the kind (docs/providers.md).  A plugin cannot replace a built-in
kind, and one that fails to load is reported and left out, never fatal.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points

from ..config import ProviderConfig
from .anthropic import AnthropicProvider
from .azure import AzureProvider
from .base import CAPABILITIES, Call, InvalidAnswer, Provider, StreamTranslator, UpstreamRequest
from .gemini import GeminiProvider
from .openai import OpenAIProvider

__all__ = ["CAPABILITIES", "Call", "InvalidAnswer", "Provider", "StreamTranslator", "UpstreamRequest",
           "build_provider", "provider_kinds"]

ENTRY_POINT_GROUP = "sluice.providers"
_BUILT_IN: dict[str, type[Provider]] = {
    kind.kind: kind for kind in (OpenAIProvider, AnthropicProvider, GeminiProvider, AzureProvider)
}

log = logging.getLogger("sluice.providers")


@functools.cache
def provider_kinds() -> dict[str, type[Provider]]:
    """Every kind this installation knows: the built-in ones and the plugins'."""
    kinds = dict(_BUILT_IN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in kinds:
            log.warning("provider plugin %s (%s) ignored: kind %r exists already", entry.name, entry.value,
                        entry.name)
            continue
        try:
            kind = entry.load()
        except Exception:
            log.exception("provider plugin %s (%s) failed to load", entry.name, entry.value)
            continue
        if not (isinstance(kind, type) and issubclass(kind, Provider)):
            log.warning("provider plugin %s (%s) is not a sluice.providers.Provider subclass", entry.name,
                        entry.value)
            continue
        kinds[entry.name] = kind
    return kinds


def build_provider(name: str, config: ProviderConfig) -> Provider:
    return provider_kinds()[config.kind](name, config)
