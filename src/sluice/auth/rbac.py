"""Role-based access at request time: which permission each route needs, and the checks that refuse with a 403.

Deny by default.  A principal (sluice.auth.principal) holds the permissions its
roles grant; a route needs one of them:

- ``chat``: /v1/chat/completions, /v1/completions, /v1/messages, /v1/messages/count_tokens;
- ``embeddings``: /v1/embeddings;
- ``models``: GET /v1/models and /v1/models/{id} (the list shows only the models the caller may use);
- the passthrough families by their name: ``responses``, ``assistants``, ``threads``, ``files``,
  ``batches``, ``audio``, ``images``, ``vector_stores``, ``uploads``;
- the admin routes: ``admin:keys``, ``admin:users``, ``admin:teams``, ``admin:roles``, ``admin:audit``,
  ``admin:usage`` (/admin/<name>...); any other /admin path needs ``*``.

What a role may list (the permissions, the wildcards ``*`` and ``admin:*``, ``model:<glob>``, the
built-in roles) is the config's vocabulary: ``sluice.config.permissions``.

A 403 names the permission or the model that is missing, never what else exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config.permissions import ADMIN_PERMISSIONS, ALL, PASSTHROUGH_PERMISSIONS
from ..errors import Forbidden

if TYPE_CHECKING:
    from .principal import Principal

__all__ = ["model_not_allowed", "permission_for", "require", "require_model"]

_EXACT = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "chat",
    "/v1/messages": "chat",
    "/v1/messages/count_tokens": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/models": "models",
}
_ADMIN = {permission.removeprefix("admin:"): permission for permission in ADMIN_PERMISSIONS}


def permission_for(path: str) -> str | None:
    """The permission a path needs; None for paths that are no route (they answer 404 anyway)."""
    permission = _EXACT.get(path)
    if permission is not None:
        return permission
    if path.startswith("/v1/"):
        family = path[4:].split("/", 1)[0]
        if family == "models":
            return "models"
        if family in PASSTHROUGH_PERMISSIONS:
            return family
        return None
    if path == "/admin" or path.startswith("/admin/"):
        return _ADMIN.get(path[7:].split("/", 1)[0], ALL)
    return None


def require(principal: Principal, permission: str) -> None:
    """Forbidden (403, code permission_denied) unless the principal holds ``permission``."""
    if not principal.allows(permission):
        raise Forbidden(f"This credential lacks the `{permission}` permission needed here; ask an administrator "
                        f"for a role that grants it.", code="permission_denied", reason=f"missing:{permission}")


def model_not_allowed(model: str) -> Forbidden:
    return Forbidden(f"This credential may not use the model `{model[:200]}`; ask an administrator for access "
                     f"to it.", code="model_not_allowed", param="model", reason="model_not_allowed")


def require_model(principal: Principal, model: str) -> None:
    """Forbidden (403, code model_not_allowed) unless the principal may call ``model``."""
    if not principal.may_use(model):
        raise model_not_allowed(model)
