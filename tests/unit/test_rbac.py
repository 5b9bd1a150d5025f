"""RBAC: the permission each route needs, permission names, and the 403s in both wire formats."""

from __future__ import annotations

import json

import pytest

from sluice.auth.principal import Principal, RoleTable
from sluice.auth.rbac import permission_for, require, require_model
from sluice.config.permissions import ADMIN_PERMISSIONS, BUILTIN_ROLES, PERMISSIONS, USER_PERMISSIONS, check_permission
from sluice.errors import Forbidden


def principal(*roles: str, models: tuple[str, ...] = (), table: RoleTable | None = None) -> Principal:
    table = table or RoleTable()
    return Principal(kind="key", key_id="key_1", key_prefix="sk-sl-abcd…", user="u", team=None, roles=roles,
                     permissions=table.permissions(roles), models=models)


@pytest.mark.parametrize(("path", "permission"), [
    ("/v1/chat/completions", "chat"),
    ("/v1/completions", "chat"),
    ("/v1/messages", "chat"),
    ("/v1/messages/count_tokens", "chat"),
    ("/v1/embeddings", "embeddings"),
    ("/v1/models", "models"),
    ("/v1/models/gpt-4o", "models"),
    ("/v1/responses", "responses"),
    ("/v1/responses/resp_1/cancel", "responses"),
    ("/v1/assistants", "assistants"),
    ("/v1/threads/t_1/runs", "threads"),
    ("/v1/files/file-1/content", "files"),
    ("/v1/batches", "batches"),
    ("/v1/audio/speech", "audio"),
    ("/v1/images/generations", "images"),
    ("/v1/vector_stores/vs_1", "vector_stores"),
    ("/v1/uploads/u_1/parts", "uploads"),
    ("/admin/keys", "admin:keys"),
    ("/admin/keys/key_1/revoke", "admin:keys"),
    ("/admin/users", "admin:users"),
    ("/admin/teams/t1", "admin:teams"),
    ("/admin/roles", "admin:roles"),
    ("/admin/audit", "admin:audit"),
    ("/admin/usage", "admin:usage"),
    ("/admin/other", "*"),  # deny by default: an admin path without its own permission needs everything
    ("/admin", "*"),
])
def test_each_route_needs_its_permission(path: str, permission: str) -> None:
    assert permission_for(path) == permission


@pytest.mark.parametrize("path", ["/v1/unknown", "/v2/chat/completions", "/", "/administrator", "/v1/modelsx"])
def test_paths_that_are_no_route_need_none(path: str) -> None:
    assert permission_for(path) is None


def test_builtin_roles() -> None:
    assert BUILTIN_ROLES["admin"] == ("*",)
    assert set(BUILTIN_ROLES["user"]) == set(USER_PERMISSIONS)
    assert not any(p.startswith("admin:") for p in BUILTIN_ROLES["user"])
    assert set(USER_PERMISSIONS) | set(ADMIN_PERMISSIONS) == PERMISSIONS


@pytest.mark.parametrize("permission", ["chat", "admin:keys", "*", "admin:*", "model:gpt-4o*", "model:*"])
def test_known_permissions(permission: str) -> None:
    assert check_permission(permission) is None


@pytest.mark.parametrize(("permission", "problem"), [("chats", "unknown permission 'chats'"),
                                                     ("admin:everything", "unknown permission"),
                                                     ("model:", "needs a glob")])
def test_unknown_permissions_are_named(permission: str, problem: str) -> None:
    assert problem in (check_permission(permission) or "")


def test_require_allows_and_denies() -> None:
    user = principal("user")
    require(user, "chat")
    require(user, "files")
    with pytest.raises(Forbidden) as info:
        require(user, "admin:keys")
    exc = info.value
    assert (exc.status, exc.code, exc.reason) == (403, "permission_denied", "missing:admin:keys")
    assert "`admin:keys`" in exc.message
    openai = json.loads(exc.body("openai"))["error"]
    assert openai["type"] == "invalid_request_error" and openai["code"] == "permission_denied"
    anthropic = json.loads(exc.body("anthropic"))
    assert anthropic == {"type": "error", "error": {"type": "permission_error", "message": exc.message}}


def test_deny_by_default() -> None:
    nobody = principal()
    for permission in PERMISSIONS:
        with pytest.raises(Forbidden):
            require(nobody, permission)
    unknown_role = principal("no-such-role")
    with pytest.raises(Forbidden):
        require(unknown_role, "chat")


def test_admin_wildcards() -> None:
    admin = principal("admin")
    for permission in PERMISSIONS:
        require(admin, permission)
    table = RoleTable({"auditor": ("admin:*",)})
    auditor = principal("auditor", table=table)
    for permission in ADMIN_PERMISSIONS:
        require(auditor, permission)
    with pytest.raises(Forbidden):
        require(auditor, "chat")


def test_require_model() -> None:
    limited = principal("user", models=("gpt-4o-mini",))
    require_model(limited, "gpt-4o-mini")
    with pytest.raises(Forbidden) as info:
        require_model(limited, "gpt-4o")
    exc = info.value
    assert (exc.code, exc.param) == ("model_not_allowed", "model")
    assert "`gpt-4o`" in exc.message and "gpt-4o-mini" not in exc.message  # never what else exists
