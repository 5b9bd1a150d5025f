"""Who is calling: a Principal, built once per credential (and per role table) and cached with it.

A principal is made from a store key (``for_key``), a config static key
(``for_static``) or a verified token's Identity (``for_identity``).  Its
permissions are resolved from its roles through a role table (``RoleTable``:
built-in roles, then the config's, then the store's, each overriding the one
before by name) into a frozenset, with the wildcards expanded: ``*`` (everything,
every model), ``admin:*`` (every admin permission).  ``model:<glob>`` entries
limit the models (see sluice.config.permissions).

The request path asks ``allows(permission)`` (a flag or a set lookup),
``may_use(model)`` (globs matched once per model name, then remembered) and
``ip_rules.allows(ip)`` when the key has IP rules.  A principal never holds a
key's secret: ``key_prefix`` is the display prefix; ``signing_secret`` is the
shared secret of a key that signs its requests.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..config.model import StaticKeyConfig
from ..config.permissions import ADMIN_ALL, ADMIN_PERMISSIONS, ALL, BUILTIN_ROLES, MODEL_PREFIX
from ..store.records import ApiKey, display_prefix
from .identity import Identity
from .iprules import IpRules, parse_networks

__all__ = ["Principal", "RoleTable", "for_identity", "for_key", "for_static"]

log = logging.getLogger("sluice.auth")

_MODEL_MEMO = 256  # model names remembered per principal (a flood of made-up names clears it)


class RoleTable:
    """Role name -> permissions: built-ins overridden by config roles, those by store roles."""

    __slots__ = ("_roles",)

    def __init__(self, config_roles: Mapping[str, Iterable[str]] | None = None,
                 store_roles: Mapping[str, Iterable[str]] | None = None) -> None:
        roles = {name: tuple(permissions) for name, permissions in BUILTIN_ROLES.items()}
        for layer in (config_roles or {}, store_roles or {}):
            roles.update({name: tuple(permissions) for name, permissions in layer.items()})
        self._roles = roles

    def __contains__(self, name: str) -> bool:
        return name in self._roles

    def permissions(self, roles: Iterable[str]) -> frozenset[str]:
        """The union of the roles' permissions, ``admin:*`` expanded; unknown roles grant nothing."""
        granted: set[str] = set()
        for role in roles:
            granted.update(self._roles.get(role, ()))
        if ADMIN_ALL in granted:
            granted.update(ADMIN_PERMISSIONS)
        return frozenset(granted)


class Principal:
    """A caller the auth stage has identified (see the module docstring)."""

    __slots__ = ("_all", "_models_ok", "expires_at", "ip_rules", "key_id", "key_prefix", "kind", "model_globs",
                 "models", "permissions", "policies", "quotas", "role_models", "roles", "service_account",
                 "signing_secret", "team", "user")

    def __init__(self, *, kind: str, key_id: str, key_prefix: str | None, user: str | None, team: str | None,
                 roles: tuple[str, ...], permissions: frozenset[str], models: tuple[str, ...] = (),
                 ip_rules: IpRules | None = None, signing_secret: bytes | None = None,
                 service_account: bool = False, expires_at: float | None = None,
                 policies: tuple[dict[str, Any], ...] = (), quotas: tuple[dict[str, Any], ...] = ()) -> None:
        self.kind = kind  # "key", "static", "jwt" or "introspection"
        self.key_id = key_id  # the store's key id, "static:<name>", or "<kind>:<user>" for tokens
        self.key_prefix = key_prefix  # the display prefix of a key (None for tokens)
        self.user = user
        self.team = team
        self.roles = roles
        self.permissions = permissions
        self.models = models  # the key's own globs; empty: any model the permissions allow
        self.role_models = tuple(sorted(p[len(MODEL_PREFIX):] for p in permissions if p.startswith(MODEL_PREFIX)))
        self._all = ALL in permissions
        # What limits the models, for caching the model list per scope: None when nothing does.
        self.model_globs: tuple[tuple[str, ...], tuple[str, ...]] | None = (
            None if not models and (self._all or not self.role_models) else (models, self.role_models))
        self.ip_rules = ip_rules if ip_rules else None
        self.signing_secret = signing_secret
        self.service_account = service_account
        self.expires_at = expires_at
        self.policies = policies  # rate-limit overrides (PolicyConfig fields), for the rate limits
        self.quotas = quotas
        self._models_ok: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"Principal({self.kind} {self.key_id}, user={self.user!r}, roles={list(self.roles)})"

    @property
    def actor(self) -> str:
        """How the audit log names this caller: the key id, or the token's user."""
        return self.key_id

    def allows(self, permission: str) -> bool:
        return self._all or permission in self.permissions

    def may_use(self, model: str) -> bool:
        if self.model_globs is None:
            return True
        known = self._models_ok.get(model)
        if known is None:
            known = self._match(model)
            if len(self._models_ok) >= _MODEL_MEMO:
                self._models_ok.clear()
            self._models_ok[model] = known
        return known

    def _match(self, model: str) -> bool:
        if self.models and not any(fnmatch.fnmatchcase(model, glob) for glob in self.models):
            return False
        if self._all or not self.role_models:
            return True
        return any(fnmatch.fnmatchcase(model, glob) for glob in self.role_models)


def _ip_rules(allow: tuple[str, ...], deny: tuple[str, ...], what: str) -> IpRules | None:
    if not allow and not deny:
        return None
    try:
        return IpRules(parse_networks(allow), parse_networks(deny))
    except ValueError as exc:
        # Fail closed: a rule we cannot read must not widen access.
        log.error("auth: %s has an IP rule that is not a network (%s): every address is refused", what, exc)
        return IpRules(allow=(), deny=parse_networks(["0.0.0.0/0", "::/0"]))


def for_key(key: ApiKey, roles: RoleTable, team_roles: tuple[str, ...] = ()) -> Principal:
    """A store key's principal: its roles plus those of the team that owns it."""
    all_roles = key.roles + tuple(r for r in team_roles if r not in key.roles)
    expires = [t for t in (key.expires_at, key.revoked_at, key.grace_until if key.rotated_to else None)
               if t is not None]
    return Principal(
        kind="key", key_id=key.id, key_prefix=key.prefix, user=key.owner_user, team=key.owner_team,
        roles=all_roles, permissions=roles.permissions(all_roles), models=key.models,
        ip_rules=_ip_rules(key.ip_allow, key.ip_deny, f"key {key.id}"),
        # A signing key without a secret gets b"": its requests can never verify (fail closed).
        signing_secret=(key.signing_secret or "").encode() if key.signing else None,
        service_account=key.service_account, expires_at=min(expires) if expires else None,
        policies=key.policies, quotas=key.quotas,
    )


def for_static(config: StaticKeyConfig, roles: RoleTable) -> Principal:
    return Principal(
        kind="static", key_id=f"static:{config.name}", key_prefix=display_prefix(config.key), user=config.user,
        team=config.team, roles=config.roles, permissions=roles.permissions(config.roles), models=config.models,
        service_account=config.service_account,
    )


def for_identity(identity: Identity, roles: RoleTable) -> Principal:
    """A verified token's principal: user, team and roles from its claims."""
    return Principal(
        kind=identity.kind, key_id=f"{identity.kind}:{identity.user}", key_prefix=None, user=identity.user,
        team=identity.team, roles=identity.roles, permissions=roles.permissions(identity.roles),
        expires_at=identity.expires_at or None,
    )
