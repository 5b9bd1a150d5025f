"""How each ``sluice`` command loads its config: what must be set, and what may stand in for an unset variable.

``serve`` needs every ``${VAR}`` of the file.  The other commands need less, so an unset variable elsewhere
does not stop them:

- ``check-config`` and ``routes`` describe a config's structure: an unset variable that holds a secret (an API
  key, a static key, a token or client secret) gets a placeholder, and the command says which it filled in.
  Any other unset variable (a URL, a port, a path) still fails: the structure depends on it.
- the admin commands (``db``, ``keys``, ``users``, ``teams``, ``roles``, ``audit``, ``dlq``) need only the
  sections they use (the store, and e.g. the auth Redis): an unset variable anywhere else gets a placeholder,
  silently.

A placeholder fits the field it fills (1 where a number goes, false where a yes/no goes, a URL where a URL goes,
32 printable characters where a secret or any other string goes), so the rest of the config still validates;
nothing ever connects to one.  The file is read and validated as a
whole either way (a typo anywhere is still reported).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

import yaml
from msgspec import inspect as mi

if TYPE_CHECKING:
    from .config import Config

__all__ = ["ADMIN_NEEDS", "DLQ_NEEDS", "Unset", "config_path", "load_for_admin", "load_for_description",
           "note_placeholders", "unset_variables"]

_INDEX = re.compile(r"\[\d+\]$")
# Fields that hold secrets (the last key of their path, list indexes dropped).
_SECRET_FIELDS = frozenset({"api_keys", "key", "keys", "hs256_secret", "client_secret", "secret",
                            "health_details_token"})

# The config paths (prefixes) each kind of admin command reads; their variables must be set.
ADMIN_NEEDS = ("store", "auth.redis", "auth.roles", "ratelimit.redis")
DLQ_NEEDS = ("store", "resilience", "ratelimit.redis", "server.host", "server.port")


class Unset:
    """An unset variable and the config paths that name it."""

    def __init__(self, name: str, paths: list[str]) -> None:
        self.name = name
        self.paths = paths

    def is_secret(self) -> bool:
        return all(_INDEX.sub("", path).rsplit(".", 1)[-1] in _SECRET_FIELDS for path in self.paths)

    def needed_by(self, needs: tuple[str, ...]) -> bool:
        return any(path.startswith(need) for path in self.paths for need in needs)  # auth.redis: _prefix too

    def placeholder(self) -> str:
        """A value that validates where this variable stands (see the module docstring)."""
        kind = _field_kind(self.paths[0])
        if kind == "number":
            return "1"  # an int or a float; 1 passes the bounds of a port, a count, a timeout and a fraction
        if kind == "bool":
            return "false"
        field = _INDEX.sub("", self.paths[0]).rsplit(".", 1)[-1]
        if field == "postgres_url":
            return "postgresql://unset.invalid/sluice"
        if "redis" in field:
            return "redis://unset.invalid:6379/0"
        if field.endswith(("url", "uri", "endpoint", "issuer")):
            return "https://unset.invalid"
        return f"unset-{self.name}-".ljust(32, "x")


@cache
def _field_kind(path: str) -> str:
    """"number", "bool" or "other": what the Config field at ``path`` ("server.port", "models.m.targets[0].weight")
    holds, as the config's types say; "other" for a path they do not know (the loader says what is wrong)."""
    from .config import Config
    from .config.schema import type_at

    info = type_at(Config, path)
    if info is None:
        return "other"
    kinds = [t for t in (info.types if isinstance(info, mi.UnionType) else (info,))
             if not isinstance(t, mi.NoneType)]
    if kinds and all(isinstance(t, mi.IntType | mi.FloatType) for t in kinds):
        return "number"
    if kinds and all(isinstance(t, mi.BoolType) for t in kinds):
        return "bool"
    return "other"


def config_path(given: str | None) -> str | None:
    """``--config`` as given, else $SLUICE_CONFIG (None: neither)."""
    return given or os.environ.get("SLUICE_CONFIG") or None


def unset_variables(text: str, env: Mapping[str, str]) -> list[Unset]:
    """The ``${VAR}`` references of the YAML ``text`` that ``env`` leaves unset and no default fills, with
    their paths; [] when the text is not a YAML mapping (the loader says what is wrong with it)."""
    from .config.loader import VARIABLE

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    found: dict[str, list[str]] = {}
    for path, value in _strings(raw, ""):
        for match in VARIABLE.finditer(value):
            name, default = match.group(1), match.group(2)
            if name is not None and default is None and env.get(name) in (None, ""):
                found.setdefault(name, []).append(path)
    return [Unset(name, paths) for name, paths in found.items()]


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _strings(item, f"{path}[{i}]")


def _env_with(placeholders: list[Unset]) -> dict[str, str]:
    return {**os.environ, **{unset.name: unset.placeholder() for unset in placeholders}}


def load_for_description(path: str, *, strict: bool = False) -> tuple[Config, list[Unset]]:
    """The config for check-config and routes, with placeholders for its unset secrets (none when ``strict``):
    the config, and the variables filled in."""
    from .config import load_config
    from .config.loader import read_config_text

    filled = [] if strict else [u for u in unset_variables(read_config_text(path), os.environ) if u.is_secret()]
    return load_config(path, env=_env_with(filled)), filled


def load_for_admin(path: str, needs: tuple[str, ...]) -> Config:
    """The config for an admin command that reads only the ``needs`` paths: every other unset variable gets a
    placeholder.  Host names are not resolved (the command calls none of the config's upstreams); the extras
    those paths need (asyncpg for a PostgreSQL store) must be installed."""
    from .config import parse_config
    from .config.extras import installed, missing_extra, needed
    from .config.loader import read_config_text

    text = read_config_text(path)
    filled = [u for u in unset_variables(text, os.environ) if not u.needed_by(needs)]
    config = parse_config(text, _env_with(filled))
    for where, extra in needed(config):
        if where.startswith(needs) and not installed(extra):
            raise missing_extra(extra, where)
    return config


def note_placeholders(filled: list[Unset]) -> None:
    """Says on stderr which unset secrets were checked with placeholders (serve needs them set)."""
    for unset in filled:
        print(f"sluice: note: {unset.name} is not set ({', '.join(unset.paths)}): checked with a placeholder; "
              "serve needs it", file=sys.stderr)
