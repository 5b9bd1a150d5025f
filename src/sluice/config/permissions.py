"""The permission vocabulary: what a role may list in the config's ``auth.roles`` (and the admin API's roles).

Deny by default; a role is a list of permissions, each one of:

- a user permission: ``chat``, ``embeddings``, ``models`` and the passthrough families by their name
  (``responses``, ``assistants``, ``threads``, ``files``, ``batches``, ``audio``, ``images``,
  ``vector_stores``, ``uploads``);
- an admin permission: ``admin:keys``, ``admin:users``, ``admin:teams``, ``admin:roles``,
  ``admin:audit``, ``admin:usage``;
- a wildcard: ``*`` grants everything (every model too), ``admin:*`` every admin permission;
- ``model:<glob>``: limits the models its holder may call to those globs (the union over its roles).

Built-in roles: ``admin`` = ``*``, ``user`` = every non-admin permission.

This is data about what may be written, so that the loader checks a config's roles without the
request path: which route needs which permission, and the 403s, are ``sluice.auth.rbac``'s; what a
caller holds is ``sluice.auth.principal``'s.
"""

from __future__ import annotations

__all__ = ["ADMIN_ALL", "ADMIN_PERMISSIONS", "ALL", "BUILTIN_ROLES", "MODEL_PREFIX", "PASSTHROUGH_PERMISSIONS",
           "PERMISSIONS", "USER_PERMISSIONS", "check_permission"]

ALL = "*"
ADMIN_ALL = "admin:*"
MODEL_PREFIX = "model:"
PASSTHROUGH_PERMISSIONS = ("responses", "assistants", "threads", "files", "batches", "audio", "images",
                           "vector_stores", "uploads")
USER_PERMISSIONS: tuple[str, ...] = ("chat", "embeddings", "models", *PASSTHROUGH_PERMISSIONS)
ADMIN_PERMISSIONS: tuple[str, ...] = ("admin:keys", "admin:users", "admin:teams", "admin:roles", "admin:audit",
                                      "admin:usage")
PERMISSIONS: frozenset[str] = frozenset(USER_PERMISSIONS + ADMIN_PERMISSIONS)
BUILTIN_ROLES: dict[str, tuple[str, ...]] = {"admin": (ALL,), "user": USER_PERMISSIONS}


def check_permission(permission: str) -> str | None:
    """What is wrong with a permission a role lists (None: nothing), for the config loader and the admin API."""
    if permission in PERMISSIONS or permission in (ALL, ADMIN_ALL):
        return None
    if permission.startswith(MODEL_PREFIX):
        return None if permission[len(MODEL_PREFIX):] else "a model permission needs a glob, e.g. 'model:gpt-4o*'"
    known = ", ".join(sorted(PERMISSIONS))
    return f"unknown permission {permission!r} (known: {known}, '*', 'admin:*' and 'model:<glob>')"
