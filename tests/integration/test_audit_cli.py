"""`sluice keys|users|teams|roles|audit` on the configured store, SQLite and PostgreSQL: JSON out, every change
audited as cli:<os user>, and `sluice audit verify` catching a record edited or removed behind the store's back."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sluice.config import StoreConfig
from sluice.store.postgres import numbered

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ACTOR = f"cli:{getpass.getuser()}"


class Cli:
    """`sluice <args> --config <a YAML naming the test's store>`."""

    def __init__(self, config: StoreConfig, tmp: Path) -> None:
        self.store = config
        self.path = tmp / "sluice.yaml"
        if config.postgres_url is None:
            self.path.write_text(f"store: {{sqlite_path: {json.dumps(config.sqlite_path)}}}\n")
        else:
            self.path.write_text(f"store: {{postgres_url: {json.dumps(config.postgres_url)}}}\n")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sluice", *args, "--config", str(self.path)],
                              capture_output=True, text=True, timeout=60, env=dict(os.environ))

    def ok(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def raw(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """One statement behind the store's back (as an attacker with database access would)."""
        if self.store.postgres_url is None:
            with contextlib.closing(sqlite3.connect(self.store.sqlite_path, isolation_level=None)) as db:
                return db.execute(sql, args).fetchall()

        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.store.postgres_url, timeout=10)
            try:
                return [tuple(row) for row in await conn.fetch(numbered(sql), *args)]
            finally:
                await conn.close()

        return asyncio.run(run())


@pytest.fixture
def cli(store_config: StoreConfig, tmp_path: Path) -> Cli:
    return Cli(store_config, tmp_path)


def test_keys_create_then_audit_list_and_verify(cli: Cli) -> None:
    created = cli.run("keys", "create", "--name", "ci", "--model", "gpt-4o-mini", "--role", "user", "--ttl-s", "3600")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("sk-sl-") and key["prefix"] == key["key"][:10] + "…"
    assert "shown once" in created.stderr
    assert "key_hash" not in key and "signing_secret" not in key

    listed = cli.ok("audit", "list")
    [record] = listed["data"]
    assert record["action"] == "key.create" and record["actor"] == ACTOR and record["target"] == key["id"]
    assert record["details"]["prefix"] == key["prefix"] and record["details"]["models"] == ["gpt-4o-mini"]
    assert key["key"] not in json.dumps(listed) and key["key"][10:] not in json.dumps(listed)

    verified = cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout) == {"ok": True, "first_bad_seq": None, "checked": 1}


def test_a_tampered_record_fails_verify_naming_its_seq(cli: Cli) -> None:
    key = cli.ok("keys", "create", "--name", "a")
    cli.ok("keys", "update", key["id"], "--name", "b")
    cli.ok("keys", "revoke", key["id"], "--reason", "left the company")
    assert cli.run("audit", "verify").returncode == 0

    cli.raw("UPDATE audit_log SET details = ? WHERE seq = ?", '{"changes":{"name":"innocent"}}', 2)
    result = cli.run("audit", "verify")
    assert result.returncode == 1
    assert "seq 2" in result.stderr
    assert json.loads(result.stdout) == {"ok": False, "first_bad_seq": 2, "checked": 2}


def test_a_removed_last_record_fails_verify(cli: Cli) -> None:
    cli.ok("users", "create", "--id", "alice")
    cli.ok("users", "delete", "alice")
    cli.raw("DELETE FROM audit_log WHERE seq = ?", 2)
    result = cli.run("audit", "verify")
    assert result.returncode == 1 and "seq 2" in result.stderr


def test_users_teams_roles_and_key_lifecycle(cli: Cli) -> None:
    role = cli.ok("roles", "create", "analyst", "--permission", "chat", "--permission", "model:gpt-4o*",
                  "--description", "chat on gpt-4o")
    assert role["permissions"] == ["chat", "model:gpt-4o*"]
    team = cli.ok("teams", "create", "--id", "ml", "--name", "ML", "--role", "analyst")
    user = cli.ok("users", "create", "--id", "bob", "--team", "ml", "--role", "user", "--email", "bob@example.com")
    assert (team["roles"], user["teams"]) == (["analyst"], ["ml"])
    assert [u["id"] for u in cli.ok("users", "list", "--team", "ml")["data"]] == ["bob"]
    assert cli.ok("roles", "update", "analyst", "--permission", "embeddings")["permissions"] == ["embeddings"]
    assert cli.ok("users", "get", "bob")["email"] == "bob@example.com"

    service = cli.ok("keys", "create", "--owner-team", "ml", "--service-account", "--signing",
                     "--ip-allow", "10.0.0.0/8", "--json", '{"metadata": {"ci": true}}')
    assert service["service_account"] and service["signing_secret"] and service["ip_allow"] == ["10.0.0.0/8"]
    rotated = cli.ok("keys", "rotate", service["id"], "--grace-s", "60")
    assert rotated["key"] != service["key"] and rotated["rotated_from"] == service["id"]
    assert rotated["signing_secret"] != service["signing_secret"]
    old = cli.ok("keys", "get", service["id"])
    assert old["rotated_to"] == rotated["id"] and old["status"] == "rotating" and "key" not in old
    listed = cli.ok("keys", "list", "--owner-team", "ml")
    assert {k["id"] for k in listed["data"]} == {service["id"], rotated["id"]}
    assert all("key" not in k and "key_hash" not in k and "signing_secret" not in k for k in listed["data"])

    busy = cli.run("teams", "delete", "ml")
    assert busy.returncode == 1 and "owns keys" in busy.stderr
    for key_id in (service["id"], rotated["id"]):
        assert cli.ok("keys", "revoke", key_id)["status"] == "revoked"
    cli.ok("users", "update", "bob", "--json", '{"teams": []}')
    assert cli.ok("teams", "delete", "ml")["deleted"] is True
    assert cli.ok("roles", "delete", "analyst")["deleted"] is True

    actions = [r["action"] for r in cli.ok("audit", "list", "--actor", ACTOR, "--limit", "1000")["data"]]
    assert actions == ["role.create", "team.create", "user.create", "role.update", "key.create", "key.rotate",
                       "key.revoke", "key.revoke", "user.update", "team.delete", "role.delete"]
    page = cli.ok("audit", "list", "--action", "key.revoke", "--limit", "1")
    assert page["has_more"] and len(page["data"]) == 1
    rest = cli.ok("audit", "list", "--action", "key.revoke", "--after-seq", str(page["next_after_seq"]))
    assert [r["target"] for r in page["data"] + rest["data"]] == [service["id"], rotated["id"]]
    assert cli.run("audit", "verify").returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (("keys", "create", "--model", "gpt-[4o"), "`models[0]`"),
    (("keys", "create", "--ip-deny", "10.0.0.300/8"), "`ip_deny[0]`"),
    (("keys", "create", "--role", "no-such-role"), "`roles[0]`: no role 'no-such-role'"),
    (("keys", "create", "--owner-user", "ghost"), "`owner_user`: no user 'ghost'"),
    (("keys", "create", "--service-account"), "`service_account`"),
    (("keys", "create", "--ttl-s", "-5"), "`ttl_s`"),
    (("keys", "create", "--expires-at", "2001-01-01T00:00:00"), "`expires_at`: is in the past"),
    (("keys", "create", "--json", '{"nmae": "x"}'), "unknown field `nmae`"),
    (("keys", "create", "--json", '{"roles": "admin"}'), "`roles`"),
    (("keys", "create", "--policies", '[{"rate": 0}]'), "`policies[0]`"),
    (("keys", "get", "key_0000000000000000"), "No key 'key_0000000000000000'"),
    (("keys", "revoke", "key_0000000000000000"), "No key"),
    (("roles", "create", "r1", "--permission", "chat:all"), "`permissions[0]`"),
    (("users", "create", "--id", "has space"), "`id`"),
    (("users", "update", "nobody", "--name", "x"), "No user 'nobody'"),
    (("teams", "update", "t", "--json", "{}"), "Nothing to update"),
    (("audit", "list", "--limit", "0"), "`limit`"),
    (("audit", "list", "--since", "yesterday"), "`since`"),
])
def test_bad_input_exits_1_naming_the_field(cli: Cli, args: tuple[str, ...], message: str) -> None:
    result = cli.run(*args)
    assert result.returncode == 1, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_duplicate_id_is_a_conflict(cli: Cli) -> None:
    cli.ok("users", "create", "--id", "carol")
    result = cli.run("users", "create", "--id", "carol")
    assert result.returncode == 1 and "clashes" in result.stderr
