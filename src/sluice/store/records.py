"""What the store keeps: API keys, users, teams, roles, the change feed and the audit log.

Every record is a frozen msgspec Struct; the store answers new records rather
than changing old ones.  Times are epoch seconds (floats).  A key's secret is
never stored: only ``key_hash`` (hex SHA-256 of the whole key, what the auth
stage looks a caller up by) and a display ``prefix``.

The helpers make the values a new key needs: ``generate_key`` (the secret,
shown once), ``hash_key``, ``display_prefix`` and ``new_id``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import msgspec

__all__ = ["GENESIS_HASH", "KEY_SCHEME", "ApiKey", "AuditRecord", "Change", "Role", "Team", "User", "audit_hash",
           "canonical_json", "display_prefix", "generate_key", "hash_key", "new_id"]

KEY_SCHEME = "sk-sl-"  # every key sluice issues starts with this
GENESIS_HASH = "0" * 64  # the prev_hash of the first audit record


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """A virtual API key.  Revoked, expired, or rotated and past its grace period: no longer usable."""

    id: str  # "key_" + 16 hex digits (new_id("key"))
    key_hash: str  # hex SHA-256 of the full key (hash_key)
    prefix: str  # for display only, e.g. "sk-sl-ab12…" (display_prefix)
    name: str = ""
    owner_user: str | None = None
    owner_team: str | None = None
    service_account: bool = False  # a machine's key: owned by a team, not a person
    roles: tuple[str, ...] = ()
    models: tuple[str, ...] = ()  # glob patterns of the models it may call; empty: as its roles allow
    policies: tuple[dict[str, Any], ...] = ()  # rate-limit policy overrides (PolicyConfig fields)
    quotas: tuple[dict[str, Any], ...] = ()  # quota overrides (QuotaConfig fields)
    ip_allow: tuple[str, ...] = ()  # CIDRs; empty: any address
    ip_deny: tuple[str, ...] = ()
    signing: bool = False  # requests must carry an HMAC signature made with signing_secret
    signing_secret: str | None = None  # a shared secret (like a webhook secret): kept as given
    metadata: dict[str, Any] = {}
    created_at: float = 0.0  # 0: stamped by the store on create
    updated_at: float = 0.0  # stamped by the store on every change
    expires_at: float | None = None
    revoked_at: float | None = None
    rotated_to: str | None = None  # the id of the key that replaced this one
    grace_until: float | None = None  # after a rotation, this key works until then

    def usable(self, now: float) -> bool:
        """Whether a request made at ``now`` may use this key."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        if self.expires_at is not None and self.expires_at <= now:
            return False
        return self.rotated_to is None or (self.grace_until is not None and now < self.grace_until)


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str = ""
    email: str | None = None
    teams: tuple[str, ...] = ()  # team ids
    roles: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    disabled: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0


class Team(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str = ""
    roles: tuple[str, ...] = ()  # given to every member and every key the team owns
    metadata: dict[str, Any] = {}
    created_at: float = 0.0
    updated_at: float = 0.0


class Role(msgspec.Struct, frozen=True, kw_only=True):
    """A named set of permissions, e.g. "chat", "embeddings", "models", "admin:keys", "model:gpt-4o*"."""

    name: str
    permissions: tuple[str, ...] = ()
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One mutation in the change feed: what another instance must forget from its caches."""

    version: int  # increasing; an instance polls for the versions after the last it saw
    kind: str  # "key", "user", "team" or "role"
    ref: str  # a key's hash (the auth cache's key), a user's or team's id, a role's name
    op: str  # "create", "update", "revoke", "rotate" or "delete"
    at: float


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of the hash-chained audit log: ``hash = audit_hash(prev_hash, seq, at, ...)``."""

    seq: int  # 1, 2, 3, ... without gaps
    at: float
    actor: str  # e.g. "key:key_0123…", "user:alice", "system"
    action: str  # e.g. "auth.failure", "key.create", "key.revoke", "key.rotate", "role.update", "config.reload"
    target: str | None = None
    client_ip: str | None = None
    details: dict[str, Any] = {}
    prev_hash: str = GENESIS_HASH
    hash: str = ""


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept, no NaN: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def audit_hash(prev_hash: str, seq: int, at: float, actor: str, action: str, target: str | None,
               client_ip: str | None, details: dict[str, Any]) -> str:
    """Hex SHA-256 over ``prev_hash`` followed by the canonical JSON of the record's fields."""
    body = canonical_json([seq, float(at), actor, action, target, client_ip, details])
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def generate_key() -> str:
    """A new secret key: ``sk-sl-`` and 43 URL-safe characters (256 random bits).  Shown once, never stored."""
    return KEY_SCHEME + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """What the store keeps of a key and looks it up by: hex SHA-256 of the whole key."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    """The start of a key, safe to show in lists and logs: ``sk-sl-ab12…``."""
    return key[: len(KEY_SCHEME) + 4] + "…"


def new_id(kind: str) -> str:
    """``<kind>_`` and 16 random hex digits, e.g. ``key_3f9c0a1b2d4e5f60``."""
    return f"{kind}_{secrets.token_hex(8)}"
