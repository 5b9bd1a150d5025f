"""What a config may name about its providers: the provider kinds, and the capabilities of a target.

These are words of the config (``providers.<name>.kind``, ``capabilities:`` of a provider or a
target), so they live here, below the code that implements them: ``sluice.providers`` imports
``CAPABILITIES`` and ``ENTRY_POINT_GROUP`` from this module, never the other way round.

The provider kinds a config may name are known without loading any provider code:

- the built-in kinds, as data (``BUILTIN_KINDS``; sluice.providers holds the classes, and a test
  checks that the two agree);
- a third-party kind by the name of its entry point in the ``sluice.providers`` group, read from the
  installed packages' metadata (``provider_kind_names``); the plugin is not imported here.

So the loader refuses an unknown kind at load time, with the path (``providers.p.kind: unknown
provider kind 'opneai' (known: ...)``), and the config layer never imports ``sluice.providers``
(which takes ``ProviderConfig``: importing it from here would close a circle).  What needs a kind's
code (a plugin that fails to load or is no Provider subclass, left out of the registry; a kind's own
``check_config``) is checked by ``sluice.providers.check_providers``, which ``sluice check-config``
and every other command that loads the config run right after loading it, and again when the router
builds the providers: a failure is a ConfigError with the same path and wording.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

__all__ = ["BUILTIN_KINDS", "CAPABILITIES", "ENTRY_POINT_GROUP", "provider_kind_names"]

# What a target can do; a request that needs one its target lacks is routed elsewhere or refused.
CAPABILITIES = frozenset({"chat", "completions", "embeddings", "vision", "tools", "json_mode", "streaming"})

# The kinds sluice brings (sluice.providers: openai, anthropic, gemini, azure).
BUILTIN_KINDS = frozenset({"openai", "anthropic", "gemini", "azure"})

# Third-party kinds register here, the entry point's name being the kind (docs/providers.md).
ENTRY_POINT_GROUP = "sluice.providers"


@functools.cache
def provider_kind_names() -> frozenset[str]:
    """The kinds a config may name: the built-in ones and the installed plugins' (by name, none loaded)."""
    return BUILTIN_KINDS | {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}
