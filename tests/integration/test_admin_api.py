"""The admin API on a real gateway (`sluice serve`) with auth on, over SQLite and PostgreSQL: keys made, used by
the openai SDK at once, never shown again, changed, revoked (401 right after), rotated with a grace period;
users, teams and roles; pagination; every bad input answered 4xx naming the field; permissions; the audit log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openai
import pytest

from sluice.config import StoreConfig
from sluice.store import open_store
from tests.conftest import Proc, Reply, call, start_gateway, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN_KEY = "sk-admin-test-4f1c9e7a2b8d6035"  # a static key of the test config, role admin
ADMIN_ACTOR = "static:admin"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def config_yaml(store: StoreConfig | None, mock_url: str, *, auth: bool = True) -> str:
    if store is None:
        store_section = ""
    elif store.postgres_url is None:
        store_section = f"store: {{sqlite_path: {json.dumps(store.sqlite_path)}}}\n"
    else:
        store_section = f"store: {{postgres_url: {json.dumps(store.postgres_url)}}}\n"
    auth_section = f"""auth:
  enabled: true
  revocation_poll_s: 0.2
  static_keys: [{{name: admin, key: {ADMIN_KEY}, roles: [admin]}}]
""" if auth else ""
    return f"""server: {{grace_period_s: 5}}
{store_section}{auth_section}providers:
  mock: {{kind: openai, base_url: {mock_url}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  gpt-4o: {{targets: [{{provider: mock, model: gpt-4o}}]}}
"""


class Admin:
    """JSON calls to the gateway, with the admin key unless told otherwise."""

    def __init__(self, proc: Proc) -> None:
        self.url = proc.url

    def __call__(self, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY) -> Reply:
        headers = {"content-type": "application/json"}
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        return call(self.url, method, path, data, headers)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200, key: str | None = ADMIN_KEY) -> Any:
        reply = self(method, path, body, key)
        assert reply.status == status, (method, path, reply.status, reply.body[:500])
        assert reply.headers.get("cache-control") == "no-store"
        return reply.json()

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def admin(store_config: StoreConfig, tmp_path: Path, mock_upstream: Proc) -> Iterator[Admin]:
    """A gateway with auth on, on a fresh database of each kind (migrated first, as `sluice db migrate` would)."""

    async def migrate() -> None:
        store = open_store(store_config)
        try:
            await store.migrate()
        finally:
            await store.aclose()

    asyncio.run(migrate())
    proc = start_gateway(tmp_path, config_yaml(store_config, mock_upstream.url))
    try:
        yield Admin(proc)
    finally:
        proc.stop()


def chat(admin: Admin, key: str, model: str = "gpt-4o-mini") -> str | None:
    with admin.openai(key) as client:
        answer = client.chat.completions.create(model=model, messages=CHAT["messages"])  # type: ignore[arg-type]
    content: str | None = answer.choices[0].message.content
    return content


def test_key_lifecycle_create_use_list_patch_revoke_and_its_audit(admin: Admin) -> None:
    created = admin.ok("POST", "/admin/keys", {"name": "ci", "models": ["gpt-4o-mini"], "roles": ["user"],
                                               "metadata": {"ticket": 42}}, status=201)
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("sk-sl-") and created["prefix"] == secret[:10] + "…" and created["status"] == "active"
    assert "key_hash" not in created and "signing_secret" not in created

    assert chat(admin, secret)  # at once
    with pytest.raises(openai.PermissionDeniedError):
        chat(admin, secret, "gpt-4o")

    for path in (f"/admin/keys/{key_id}", "/admin/keys", "/admin/keys?include_revoked=true"):
        reply = admin("GET", path)
        assert reply.status == 200 and secret not in reply.body.decode() and secret[10:20] not in reply.body.decode()
        assert b"key_hash" not in reply.body
    got = admin.ok("GET", f"/admin/keys/{key_id}")
    assert got["models"] == ["gpt-4o-mini"] and got["metadata"] == {"ticket": 42} and "key" not in got

    patched = admin.ok("PATCH", f"/admin/keys/{key_id}", {"name": "ci-2", "models": ["gpt-4o*"]})
    assert patched["name"] == "ci-2" and patched["models"] == ["gpt-4o*"] and patched["updated_at"] > got["updated_at"]
    assert chat(admin, secret, "gpt-4o")  # the change applies at once

    revoked = admin.ok("POST", f"/admin/keys/{key_id}/revoke", {"reason": "test over"})
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    with pytest.raises(openai.AuthenticationError):  # right after
        chat(admin, secret)
    assert admin.ok("POST", f"/admin/keys/{key_id}/revoke")["revoked_at"] == revoked["revoked_at"]  # idempotent
    assert key_id not in [k["id"] for k in admin.ok("GET", "/admin/keys")["data"]]
    assert key_id in [k["id"] for k in admin.ok("GET", "/admin/keys?include_revoked=true")["data"]]

    records = admin.ok("GET", f"/admin/audit?target={key_id}")["data"]
    assert [r["action"] for r in records] == ["key.create", "key.update", "key.revoke"]
    assert all(r["actor"] == ADMIN_ACTOR and r["client_ip"] == "127.0.0.1" for r in records)
    assert records[1]["details"]["changes"] == {"name": "ci-2", "models": ["gpt-4o*"]}
    assert records[2]["details"]["reason"] == "test over"
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    everything = admin("GET", "/admin/audit?limit=1000").body.decode()
    assert secret not in everything and secret[10:] not in everything
    assert admin.ok("GET", "/admin/audit?action=key.update")["data"] == [records[1]]
    assert admin.ok("GET", f"/admin/audit?actor={quote(ADMIN_ACTOR)}&action=key.revoke")["data"] == [records[2]]
    later = admin.ok("GET", f"/admin/audit?target={key_id}&since={records[1]['at']}")["data"]
    assert [r["action"] for r in later] == ["key.update", "key.revoke"]
    until = admin.ok("GET", f"/admin/audit?target={key_id}&until={records[1]['at']}")["data"]
    assert [r["action"] for r in until] == ["key.create"]
    page = admin.ok("GET", f"/admin/audit?target={key_id}&limit=2")
    assert page["has_more"] and page["next_after_seq"] == records[1]["seq"]
    rest = admin.ok("GET", f"/admin/audit?target={key_id}&after_seq={page['next_after_seq']}")
    assert rest["data"] == [records[2]] and not rest["has_more"]
    assert admin.ok("GET", "/admin/audit/verify") == {"ok": True, "first_bad_seq": None,
                                                      "checked": admin_count(admin)}


def admin_count(admin: Admin) -> int:
    return len(admin.ok("GET", "/admin/audit?limit=1000")["data"])


def refused(admin: Admin, key: str, model: str = "gpt-4o-mini",
            error: type[openai.APIStatusError] = openai.AuthenticationError) -> bool:
    """True when a chat with ``key`` is refused with ``error`` (False when it is answered)."""
    try:
        chat(admin, key, model)
    except error:
        return True
    return False


def test_rotation_keeps_the_old_key_until_the_grace_ends(admin: Admin) -> None:
    old = admin.ok("POST", "/admin/keys", {"name": "svc", "roles": ["user"], "signing": False}, status=201)
    assert chat(admin, old["key"])
    # A grace period long enough for the checks below on a loaded machine; the test then polls for its end.
    sent = time.time()
    new = admin.ok("POST", f"/admin/keys/{old['id']}/rotate", {"grace_s": 5}, status=201)
    assert new["key"] != old["key"] and new["rotated_from"] == old["id"] and new["name"] == "svc"
    assert sent + 5 <= new["old_key_valid_until"] <= time.time() + 5  # from the moment of the rotation
    assert chat(admin, new["key"]) and chat(admin, old["key"])  # both during the grace period
    assert admin.ok("GET", f"/admin/keys/{old['id']}")["status"] == "rotating"
    again = admin("POST", f"/admin/keys/{old['id']}/rotate", {})
    assert again.status == 409 and again.json()["error"]["code"] == "key_rotated"
    wait_until(lambda: refused(admin, old["key"]), "the old key refused once its grace period is over")
    assert chat(admin, new["key"])
    assert admin.ok("GET", f"/admin/keys/{old['id']}")["status"] == "rotated"

    sent = time.time()
    default = admin.ok("POST", f"/admin/keys/{new['id']}/rotate", status=201)  # no body: 24 h
    assert sent + 86400 <= default["old_key_valid_until"] <= time.time() + 86400
    admin.ok("POST", f"/admin/keys/{default['id']}/revoke")
    revoked = admin("POST", f"/admin/keys/{default['id']}/rotate", {"grace_s": 0})
    assert revoked.status == 409 and revoked.json()["error"]["code"] == "key_revoked"
    actions = [r["action"] for r in admin.ok("GET", f"/admin/audit?target={old['id']}")["data"]]
    assert actions == ["key.create", "key.rotate"]


def test_users_teams_roles_crud_and_ownership(admin: Admin) -> None:
    role = admin.ok("POST", "/admin/roles", {"name": "analyst", "permissions": ["chat", "model:gpt-4o-mini"],
                                             "description": "chat on mini"}, status=201)
    assert role["object"] == "role" and role["permissions"] == ["chat", "model:gpt-4o-mini"]
    team = admin.ok("POST", "/admin/teams", {"id": "ml", "name": "ML", "roles": ["analyst"]}, status=201)
    generated = admin.ok("POST", "/admin/teams", {"name": "no id given"}, status=201)
    assert team["id"] == "ml" and generated["id"].startswith("team_")
    user = admin.ok("POST", "/admin/users", {"id": "alice", "email": "alice@example.com", "teams": ["ml"],
                                             "roles": ["user"]}, status=201)
    assert user["teams"] == ["ml"] and not user["disabled"]
    assert admin.ok("GET", "/admin/users/alice") == user
    assert [u["id"] for u in admin.ok("GET", "/admin/users?team=ml")["data"]] == ["alice"]
    assert admin.ok("GET", "/admin/users?team=nobody")["data"] == []

    owned = admin.ok("POST", "/admin/keys", {"owner_user": "alice"}, status=201)
    service = admin.ok("POST", "/admin/keys", {"owner_team": "ml", "service_account": True}, status=201)
    assert chat(admin, service["key"])  # the team's role grants chat on gpt-4o-mini
    with pytest.raises(openai.PermissionDeniedError):
        chat(admin, service["key"], "gpt-4o")
    assert [k["id"] for k in admin.ok("GET", "/admin/keys?owner_user=alice")["data"]] == [owned["id"]]
    assert [k["id"] for k in admin.ok("GET", "/admin/keys?owner_team=ml")["data"]] == [service["id"]]

    updated = admin.ok("PATCH", "/admin/roles/analyst", {"permissions": ["chat", "model:gpt-4o*"]})
    assert updated["permissions"] == ["chat", "model:gpt-4o*"]
    # the role table is read again from the change feed
    wait_until(lambda: not refused(admin, service["key"], "gpt-4o", openai.PermissionDeniedError),
               "the role change reaching the gateway")
    assert admin.ok("PATCH", "/admin/users/alice", {"disabled": True, "name": "Alice"})["disabled"] is True
    assert admin.ok("PATCH", "/admin/teams/ml", {"name": "Machine learning"})["name"] == "Machine learning"

    for path, code in (("/admin/users/alice", "user_has_keys"), ("/admin/teams/ml", "team_has_keys")):
        in_use = admin("DELETE", path)
        assert in_use.status == 409 and in_use.json()["error"]["code"] == code
    admin.ok("POST", f"/admin/keys/{owned['id']}/revoke")
    admin.ok("POST", f"/admin/keys/{service['id']}/revoke")
    members = admin("DELETE", "/admin/teams/ml")
    assert members.status == 409 and members.json()["error"]["code"] == "team_has_members"
    assert admin.ok("DELETE", "/admin/users/alice") == {"object": "user", "id": "alice", "deleted": True}
    assert admin.ok("DELETE", "/admin/teams/ml")["deleted"] is True
    assert admin.ok("DELETE", "/admin/roles/analyst")["deleted"] is True
    for path in ("/admin/users/alice", "/admin/teams/ml", "/admin/roles/analyst"):
        assert admin("GET", path).status == 404

    actions = [r["action"] for r in admin.ok("GET", f"/admin/audit?actor={quote(ADMIN_ACTOR)}&limit=1000")["data"]
               if r["action"].split(".")[0] in ("user", "team", "role")]
    assert actions == ["role.create", "team.create", "team.create", "user.create", "role.update", "user.update",
                       "team.update", "user.delete", "team.delete", "role.delete"]


def test_pagination_of_keys_users_and_roles(admin: Admin) -> None:
    made = sorted(admin.ok("POST", "/admin/keys", {"name": f"k{i}"}, status=201)["id"] for i in range(5))
    seen: list[str] = []
    after = None
    while True:
        page = admin.ok("GET", "/admin/keys?limit=2" + (f"&after={after}" if after else ""))
        seen += [k["id"] for k in page["data"]]
        assert len(page["data"]) <= 2
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
    assert seen == made
    whole = admin.ok("GET", "/admin/keys?limit=1000")
    assert [k["id"] for k in whole["data"]] == made and not whole["has_more"]
    for i in range(3):
        admin.ok("POST", "/admin/users", {"id": f"u{i}"}, status=201)
        admin.ok("POST", "/admin/roles", {"name": f"r{i}", "permissions": ["chat"]}, status=201)
    first = admin.ok("GET", "/admin/users?limit=2")
    assert [u["id"] for u in first["data"]] == ["u0", "u1"] and first["next_after"] == "u1"
    assert [u["id"] for u in admin.ok("GET", "/admin/users?after=u1")["data"]] == ["u2"]
    roles = admin.ok("GET", "/admin/roles?limit=2&after=r0")
    assert [r["name"] for r in roles["data"]] == ["r1", "r2"] and not roles["has_more"]


def bad_cases(key_id: str, revoked_id: str) -> list[tuple[str, str, Any, int, str | None]]:
    """(method, path, body, status, the param or code the answer names)."""
    k = f"/admin/keys/{key_id}"
    return [
        ("POST", "/admin/keys", b"{not json", 400, "invalid_json"),
        ("POST", "/admin/keys", b"[1, 2]", 400, "invalid_body"),
        ("POST", "/admin/keys", {"nmae": "typo"}, 400, "nmae"),
        ("POST", "/admin/keys", {"name": 5}, 400, "name"),
        ("POST", "/admin/keys", {"roles": "admin"}, 400, "roles"),
        ("POST", "/admin/keys", {"signing": "yes"}, 400, "signing"),
        ("POST", "/admin/keys", {"models": ["gpt-[4o"]}, 400, "models[0]"),
        ("POST", "/admin/keys", {"models": ["gpt 4o"]}, 400, "models[0]"),
        ("POST", "/admin/keys", {"ip_allow": ["10.0.0.1/33"]}, 400, "ip_allow[0]"),
        ("POST", "/admin/keys", {"ip_deny": ["::1", "banana"]}, 400, "ip_deny[1]"),
        ("POST", "/admin/keys", {"roles": ["user", "no-such-role"]}, 400, "roles[1]"),
        ("POST", "/admin/keys", {"owner_user": "ghost"}, 400, "owner_user"),
        ("POST", "/admin/keys", {"owner_team": "ghost"}, 400, "owner_team"),
        ("POST", "/admin/keys", {"service_account": True}, 400, "service_account"),
        ("POST", "/admin/keys", {"expires_at": 1000}, 400, "expires_at"),
        ("POST", "/admin/keys", {"ttl_s": 0}, 400, "ttl_s"),
        ("POST", "/admin/keys", {"ttl_s": 60, "expires_at": 4e9}, 400, "ttl_s"),
        ("POST", "/admin/keys", b'{"ttl_s": 1e999}', 400, "ttl_s"),
        ("POST", "/admin/keys", {"policies": [{"name": "p", "rate": "fast"}]}, 400, "policies[0]"),
        ("POST", "/admin/keys", {"quotas": [{"name": "q", "limit": -1}]}, 400, "quotas[0]"),
        ("POST", "/admin/keys", {"metadata": {"x": "y" * 20000}}, 400, "metadata"),
        ("GET", "/admin/keys?limit=0", None, 400, "limit"),
        ("GET", "/admin/keys?limit=1001", None, 400, "limit"),
        ("GET", "/admin/keys?limit=ten", None, 400, "limit"),
        ("GET", "/admin/keys?include_revoked=maybe", None, 400, "include_revoked"),
        ("GET", "/admin/keys?owner=alice", None, 400, "owner"),
        ("GET", "/admin/keys/key_0000000000000000", None, 404, "key_not_found"),
        ("GET", f"{k}?verbose=1", None, 400, "verbose"),
        ("PATCH", "/admin/keys/key_0000000000000000", {"name": "x"}, 404, "key_not_found"),
        ("PATCH", k, {}, 400, "invalid_body"),
        ("PATCH", k, {"key_hash": "0" * 64}, 400, "key_hash"),
        ("PATCH", k, {"revoked_at": 1}, 400, "revoked_at"),
        ("PATCH", k, {"owner_user": None, "owner_team": "ghost"}, 400, "owner_team"),
        ("PATCH", k, {"models": [""]}, 400, "models[0]"),
        ("POST", "/admin/keys/key_0000000000000000/revoke", None, 404, "key_not_found"),
        ("POST", f"{k}/revoke", {"when": "now"}, 400, "when"),
        ("POST", f"{k}/rotate", {"grace_s": -1}, 400, "grace_s"),
        ("POST", f"{k}/rotate", {"grace_s": "1h"}, 400, "grace_s"),
        ("POST", f"/admin/keys/{revoked_id}/rotate", None, 409, "key_revoked"),
        ("POST", "/admin/keys/key_0000000000000000/rotate", None, 404, "key_not_found"),
        ("GET", f"{k}/secret", None, 404, "unknown_url"),
        ("PUT", "/admin/keys", {}, 405, "method_not_allowed"),
        ("DELETE", k, None, 405, "method_not_allowed"),
        ("POST", "/admin/users", {"id": "taken"}, 409, "user_conflict"),
        ("POST", "/admin/users", {"id": "has space"}, 400, "id"),
        ("POST", "/admin/users", {"teams": ["ghost"]}, 400, "teams[0]"),
        ("POST", "/admin/users", {"roles": [7]}, 400, "roles[0]"),
        ("PATCH", "/admin/users/nobody", {"name": "x"}, 404, "user_not_found"),
        ("PATCH", "/admin/users/taken", {"id": "other"}, 400, "id"),
        ("DELETE", "/admin/users/nobody", None, 404, "user_not_found"),
        ("GET", "/admin/users?team=ml&after=a&limit=-1", None, 400, "limit"),
        ("POST", "/admin/teams", {"roles": ["ghost"]}, 400, "roles[0]"),
        ("GET", "/admin/teams/nothing", None, 404, "team_not_found"),
        ("POST", "/admin/roles", {}, 400, "name"),
        ("POST", "/admin/roles", {"name": "r", "permissions": ["fly"]}, 400, "permissions[0]"),
        ("POST", "/admin/roles", {"name": "r", "permissions": ["model:"]}, 400, "permissions[0]"),
        ("PATCH", "/admin/roles/nope", {"description": "x"}, 404, "role_not_found"),
        ("DELETE", "/admin/roles/nope", None, 404, "role_not_found"),
        ("GET", "/admin/audit?since=yesterday", None, 400, "since"),
        ("GET", "/admin/audit?after_seq=-1", None, 400, "after_seq"),
        ("GET", "/admin/audit?severity=high", None, 400, "severity"),
        ("POST", "/admin/audit", {}, 405, "method_not_allowed"),
        ("GET", "/admin/audit/verify?fix=1", None, 400, "fix"),
    ]


def test_every_bad_input_is_a_4xx_naming_the_field(admin: Admin) -> None:
    key_id = admin.ok("POST", "/admin/keys", {"name": "target"}, status=201)["id"]
    revoked_id = admin.ok("POST", "/admin/keys", {"name": "gone"}, status=201)["id"]
    admin.ok("POST", f"/admin/keys/{revoked_id}/revoke")
    admin.ok("POST", "/admin/users", {"id": "taken"}, status=201)
    before = admin_count(admin)
    failures = []
    for method, path, body, status, named in bad_cases(key_id, revoked_id):
        reply = admin(method, path, body)
        error = reply.json().get("error", {}) if reply.body.startswith(b"{") else {}
        if (reply.status != status or named not in (error.get("param"), error.get("code"))
                or not error.get("message") or error.get("type") != "invalid_request_error"
                or reply.headers.get("cache-control") != "no-store"):
            failures.append(f"{method} {path} {body!r:.80}: {reply.status} {reply.body[:300]!r}")
    assert not failures, "\n".join(failures)
    assert admin_count(admin) == before  # nothing refused was changed, nor audited
    assert admin.ok("GET", f"/admin/keys/{key_id}")["name"] == "target"


def test_admin_permissions_are_required(admin: Admin) -> None:
    user_key = admin.ok("POST", "/admin/keys", {"roles": ["user"]}, status=201)["key"]
    denied = admin("GET", "/admin/keys", key=user_key)
    assert denied.status == 403 and denied.json()["error"]["code"] == "permission_denied"
    assert "admin:keys" in denied.json()["error"]["message"]
    assert denied.headers.get("cache-control") == "no-store"
    assert admin("POST", "/admin/keys", {"roles": ["admin"]}, key=user_key).status == 403  # no self-promotion

    admin.ok("POST", "/admin/roles", {"name": "auditor", "permissions": ["admin:audit"]}, status=201)
    auditor = admin.ok("POST", "/admin/keys", {"roles": ["auditor"]}, status=201)["key"]
    assert admin.ok("GET", "/admin/audit/verify", key=auditor)["ok"] is True
    for method, path, needed in (("GET", "/admin/keys", "admin:keys"), ("POST", "/admin/roles", "admin:roles"),
                                 ("GET", "/admin/users/x", "admin:users"), ("DELETE", "/admin/teams/x", "admin:teams")):
        reply = admin(method, path, {"name": "x"}, key=auditor)
        assert reply.status == 403 and needed in reply.json()["error"]["message"], (path, reply.body)
    missing = admin("GET", "/admin/keys", key=None)
    assert missing.status == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = admin("GET", "/admin/keys", key="sk-sl-" + "x" * 43)
    assert wrong.status == 401

    failures = admin.ok("GET", "/admin/audit?action=auth.failure&limit=1000")["data"]
    assert sum(r["details"].get("count", 1) for r in failures) >= 7
    assert "x" * 43 not in json.dumps(failures)


def test_no_credential_grants_more_than_it_holds(admin: Admin) -> None:
    for name, permissions in (("keyadmin", ["admin:keys", "chat"]), ("teamadmin", ["admin:teams", "chat"]),
                              ("roleadmin", ["admin:roles", "chat"]), ("chatter", ["chat"])):
        admin.ok("POST", "/admin/roles", {"name": name, "permissions": permissions}, status=201)
    admin.ok("POST", "/admin/teams", {"id": "ops", "roles": ["teamadmin"]}, status=201)
    admin.ok("POST", "/admin/teams", {"id": "root", "roles": ["admin"]}, status=201)
    keys = admin.ok("POST", "/admin/keys", {"roles": ["keyadmin"]}, status=201)
    root = admin.ok("POST", "/admin/keys", {"roles": ["admin"]}, status=201)
    teams = admin.ok("POST", "/admin/keys", {"owner_team": "ops", "service_account": True, "roles": []}, status=201)
    roles = admin.ok("POST", "/admin/keys", {"roles": ["roleadmin"]}, status=201)

    def denied(method: str, path: str, body: Any, key: str, permission: str) -> None:
        reply = admin(method, path, body, key=key)
        assert reply.status == 403, (method, path, body, reply.status, reply.body[:300])
        error = reply.json()["error"]
        assert error["code"] == "permission_denied" and f"`{permission}`" in error["message"], error

    denied("POST", "/admin/keys", {"roles": ["admin"]}, keys["key"], "*")
    denied("PATCH", f"/admin/keys/{keys['id']}", {"roles": ["keyadmin", "admin"]}, keys["key"], "*")
    denied("POST", "/admin/keys", {"roles": ["roleadmin"]}, keys["key"], "admin:roles")
    denied("POST", "/admin/keys", {"roles": [], "owner_team": "root", "service_account": True}, keys["key"], "*")
    denied("PATCH", f"/admin/keys/{root['id']}", {"ip_deny": ["0.0.0.0/0"]}, keys["key"], "*")
    denied("POST", f"/admin/keys/{root['id']}/rotate", {}, keys["key"], "*")
    assert admin.ok("POST", "/admin/keys", {"roles": ["chatter"]}, status=201, key=keys["key"])["roles"] == [
        "chatter"]

    denied("PATCH", "/admin/teams/ops", {"roles": ["teamadmin", "admin"]}, teams["key"], "*")
    denied("POST", "/admin/teams", {"id": "t2", "roles": ["keyadmin"]}, teams["key"], "admin:keys")
    admin.ok("POST", "/admin/teams", {"id": "t3", "roles": ["chatter"]}, status=201, key=teams["key"])

    denied("PATCH", "/admin/roles/user", {"permissions": ["*"]}, roles["key"], "*")
    denied("POST", "/admin/roles", {"name": "admin", "permissions": []}, roles["key"], "*")
    denied("DELETE", "/admin/roles/keyadmin", None, roles["key"], "admin:keys")
    denied("POST", "/admin/roles", {"name": "escalate", "permissions": ["admin:*"]}, roles["key"], "admin:*")
    denied("PATCH", "/admin/roles/chatter", {"permissions": ["chat", "admin:users"]}, roles["key"], "admin:users")
    admin.ok("POST", "/admin/roles", {"name": "mini", "permissions": ["chat", "model:gpt-4o-mini"]}, status=201,
             key=roles["key"])
    assert admin.ok("POST", "/admin/roles", {"name": "user", "permissions": ["chat"]}, status=201)  # "*" may


def test_admin_routes_answer_404_when_auth_is_off(tmp_path: Path, mock_upstream: Proc) -> None:
    proc = start_gateway(tmp_path, config_yaml(None, mock_upstream.url, auth=False))
    try:
        for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/keys/key_1"),
                             ("POST", "/admin/keys/key_1/revoke"), ("GET", "/admin/audit"),
                             ("GET", "/admin/audit/verify"), ("DELETE", "/admin/users/u")):
            reply = call(proc.url, method, path, b"{}" if method == "POST" else None,
                         {"authorization": f"Bearer {ADMIN_KEY}"})
            assert reply.status == 404, (method, path, reply.status)
            assert reply.json()["error"]["code"] == "unknown_url"
    finally:
        proc.stop()
