"""Provider kinds and their registry.

A kind is a Provider subclass.  The built-in kinds are below; third-party kinds
register through the ``sluice.providers`` entry-point group, the entry point's
name being the kind (docs/providers.md).  A plugin cannot replace a built-in
kind, and one that fails to load is reported and left out, never fatal.

The config loader knows the kinds by name only (``sluice.config.vocabulary``:
the built-in names as data, the plugins' entry-point names from the installed
packages' metadata) and never imports this package, which takes its
``ProviderConfig``.  What needs a kind's code is checked here, by
``check_providers`` (``sluice check-config`` and every command that loads a
config run it) and by ``build_provider`` (the router, at build time): a kind that
is not in the registry (a plugin that failed to load or is no Provider subclass)
and a kind's own ``check_config`` problems are ConfigErrors naming the path, in
the loader's words (``providers.p.kind: unknown provider kind 'x' (known: ...)``).
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points

from ..config import Config, ProviderConfig
from ..config.vocabulary import ENTRY_POINT_GROUP
from ..errors import ConfigError
from .anthropic import AnthropicProvider
from .azure import AzureProvider
from .base import Call, InvalidAnswer, Provider, StreamTranslator, UpstreamRequest
from .gemini import GeminiProvider
from .openai import OpenAIProvider

__all__ = ["Call", "InvalidAnswer", "Provider", "StreamTranslator", "UpstreamRequest", "build_provider",
           "check_providers", "provider_kind", "provider_kinds"]

# The classes of sluice.config.vocabulary.BUILTIN_KINDS (tests/unit/test_config.py checks they agree).
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


def provider_kind(name: str, config: ProviderConfig) -> type[Provider]:
    """The kind of provider section ``name``, checked by its own ``check_config``; ConfigError naming the path
    when the kind is not in the registry or the section has a problem for it."""
    kinds = provider_kinds()
    kind = kinds.get(config.kind)
    if kind is None:
        raise ConfigError(f"providers.{name}.kind", f"unknown provider kind {config.kind!r} "
                                                    f"(known: {', '.join(sorted(kinds))})")
    for field, problem in kind.check_config(config):
        raise ConfigError(f"providers.{name}.{field}", problem)
    return kind


def check_providers(config: Config) -> None:
    """What the loader cannot check without the kinds' code (module docstring); ConfigError on the first problem."""
    for name, provider in config.providers.items():
        provider_kind(name, provider)


def build_provider(name: str, config: ProviderConfig) -> Provider:
    return provider_kind(name, config)(name, config)
