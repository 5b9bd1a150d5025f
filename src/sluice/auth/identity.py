"""Who a verified credential stands for, why one is refused, and how claims name the caller.

    AuthFailure(reason)              every refusal of a credential; ``reason`` is one of REASONS
     ├── 401: malformed, expired, not_yet_valid, wrong_issuer, wrong_audience,
     │        wrong_algorithm, bad_signature, unknown_key, inactive
     └── 503: issuer_unavailable     the JWKS or introspection endpoint could not be reached

The message of an AuthFailure is for the caller: it says what to fix and never
repeats the credential.  Details for the operator (URLs, HTTP statuses) go to the
log, not to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from ..config.model import ClaimsConfig

__all__ = ["REASONS", "AuthFailure", "ClaimMap", "Identity", "Reason"]

Reason = Literal[
    "malformed",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "wrong_algorithm",
    "bad_signature",
    "unknown_key",
    "inactive",
    "issuer_unavailable",
]
REASONS: tuple[Reason, ...] = (
    "malformed", "expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "wrong_algorithm",
    "bad_signature", "unknown_key", "inactive", "issuer_unavailable",
)


class AuthFailure(Exception):
    """A credential refused: ``reason`` for the code, ``str()`` for the caller, ``status`` 401 or 503."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message

    @property
    def status(self) -> int:
        return 503 if self.reason == "issuer_unavailable" else 401


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """A verified caller.  ``claims`` is the verified claim set (JWT payload or introspection answer)."""

    kind: str  # "jwt", "introspection" (later "key")
    subject: str  # the ``sub`` claim, "" when there is none
    user: str
    team: str | None = None
    roles: tuple[str, ...] = ()
    issuer: str = ""
    expires_at: float = 0.0  # Unix time; 0: does not expire
    claims: Mapping[str, Any] = {}


_MISSING = object()


def _lookup(claims: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> Any:
    """The value at a dotted ``path``; a key that itself holds dots (e.g. an Auth0 namespaced claim) wins."""
    value = claims.get(path, _MISSING)
    if value is not _MISSING:
        return value
    node: Any = claims
    for part in parts:
        if not isinstance(node, Mapping):
            return _MISSING
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return _MISSING
    return node


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


class ClaimMap:
    """Maps a verified claim set to user, team and roles by the configured dotted paths."""

    __slots__ = ("_roles", "_team", "_user", "roles_path", "team_path", "user_path")

    def __init__(self, config: ClaimsConfig) -> None:
        self.user_path = config.user
        self.team_path = config.team
        self.roles_path = config.roles
        self._user = tuple(config.user.split("."))
        self._team = tuple(config.team.split(".")) if config.team else None
        self._roles = tuple(config.roles.split(".")) if config.roles else None

    def user(self, claims: Mapping[str, Any]) -> str:
        """The user the claims name; AuthFailure(malformed) when the claim is absent or not a string."""
        user = _scalar(_lookup(claims, self.user_path, self._user))
        if user is None:
            raise AuthFailure("malformed", f"the token carries no {self.user_path!r} claim naming its user")
        return user

    def team(self, claims: Mapping[str, Any]) -> str | None:
        if self._team is None or self.team_path is None:
            return None
        return _scalar(_lookup(claims, self.team_path, self._team))

    def roles(self, claims: Mapping[str, Any]) -> tuple[str, ...]:
        """Roles from a list of strings or a space-separated string; () when absent."""
        if self._roles is None or self.roles_path is None:
            return ()
        value = _lookup(claims, self.roles_path, self._roles)
        if isinstance(value, str):
            return tuple(value.split())
        if isinstance(value, list | tuple):
            return tuple(role for role in value if isinstance(role, str) and role)
        return ()

    def identity(self, kind: str, claims: Mapping[str, Any], issuer: str, expires_at: float) -> Identity:
        sub = claims.get("sub")
        return Identity(
            kind=kind,
            subject=sub if isinstance(sub, str) else "",
            user=self.user(claims),
            team=self.team(claims),
            roles=self.roles(claims),
            issuer=issuer,
            expires_at=expires_at,
            claims=claims,
        )
