"""The optional parts of sluice, installed as extras, and the error that names the one a config lacks.

The default install serves the quickstart and anything else that needs no more than the runtime. Three
features pull in large libraries of their own, so they are extras (as in ``pip install 'sluice[postgres]'``):

=============  ==========================================  =====================================================
extra          what it installs                            the config that needs it
=============  ==========================================  =====================================================
``postgres``   asyncpg                                     ``store.postgres_url``
``otel``       the OpenTelemetry SDK and OTLP/HTTP export  ``observability.tracing.enabled: true``
``jwt``        PyJWT with cryptography                     ``auth.jwt`` issuers or ``auth.introspection``
=============  ==========================================  =====================================================

``check_extras`` runs when a config is loaded (``sluice serve`` and ``sluice check-config`` alike), so a
missing extra stops the start with a ConfigError naming it, never an ImportError at the first request.
The modules that import these libraries guard their import with ``missing_extra`` too, for callers that
reach them without a loaded config.  ``dev`` includes every extra, so the tests run them all.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .model import Config

__all__ = ["EXTRAS", "check_extras", "installed", "missing_extra"]

# extra -> the modules it provides (all of them must be importable for the feature to work)
EXTRAS: dict[str, tuple[str, ...]] = {
    "postgres": ("asyncpg",),
    "otel": ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"),
    "jwt": ("jwt", "cryptography"),
}


def installed(extra: str) -> bool:
    """Whether every module of the extra can be found; looks for them without importing them."""
    for module in EXTRAS[extra]:
        try:
            if importlib.util.find_spec(module) is None:
                return False
        except (ImportError, ValueError):  # a parent package missing, or a module without a spec
            return False
    return True


def missing_extra(extra: str, path: str) -> ConfigError:
    """The error for a config at ``path`` that needs ``extra``, which is not installed."""
    return ConfigError(path, f"needs the {extra} extra, which is not installed: pip install 'sluice[{extra}]'")


def needed(config: Config) -> list[tuple[str, str]]:
    """(config path, extra) for each optional feature the config turns on."""
    wants: list[tuple[str, str]] = []
    if config.store.postgres_url is not None:
        wants.append(("store.postgres_url", "postgres"))
    if config.observability.tracing.enabled:
        wants.append(("observability.tracing.enabled", "otel"))
    if config.auth.jwt:
        wants.append(("auth.jwt", "jwt"))
    elif config.auth.introspection:  # its OIDC discovery shares the JWT modules
        wants.append(("auth.introspection", "jwt"))
    return wants


def check_extras(config: Config) -> None:
    """Raises ConfigError naming the first extra the config needs and the install lacks."""
    for path, extra in needed(config):
        if not installed(extra):
            raise missing_extra(extra, path)
