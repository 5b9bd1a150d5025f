"""Principals: role tables, permissions and wildcards, model globs, IP rules and the client address."""

from __future__ import annotations

import pytest

from sluice.auth.identity import Identity
from sluice.auth.iprules import ClientIp, IpRules, parse_networks
from sluice.auth.principal import Principal, RoleTable, for_identity, for_key, for_static
from sluice.config import StaticKeyConfig
from sluice.config.permissions import ADMIN_PERMISSIONS, USER_PERMISSIONS
from sluice.store import ApiKey


def key(**fields: object) -> ApiKey:
    base: dict[str, object] = {"id": "key_1", "key_hash": "h" * 64, "prefix": "sk-sl-abcd…", "roles": ("user",)}
    return ApiKey(**{**base, **fields})  # type: ignore[arg-type]


class FakeExchange:
    def __init__(self, client: str, headers: dict[str, str] | None = None) -> None:
        self.client = client
        self.headers = headers or {}

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        value = self.headers.get(name)
        return [] if value is None else value.split("\n")  # "\n": the header came on several lines


# -- role tables ---------------------------------------------------------------------------------------------


def test_role_table_layers_override_by_name() -> None:
    table = RoleTable({"user": ("chat",), "ops": ("admin:*",)}, {"ops": ("admin:audit",), "reader": ("models",)})
    assert table.permissions(["user"]) == {"chat"}  # the config's user overrides the built-in
    assert table.permissions(["ops"]) == {"admin:audit"}  # the store's overrides the config's
    assert table.permissions(["reader", "user"]) == {"chat", "models"}
    assert table.permissions(["admin"]) == {"*"}
    assert table.permissions(["nope"]) == frozenset()
    assert "ops" in table and "nope" not in table


def test_admin_star_expands_to_every_admin_permission() -> None:
    assert RoleTable({"ops": ("admin:*",)}).permissions(["ops"]) >= set(ADMIN_PERMISSIONS)


def test_builtin_user_holds_every_user_permission() -> None:
    assert RoleTable().permissions(["user"]) == set(USER_PERMISSIONS)


# -- permissions and models ----------------------------------------------------------------------------------


def test_star_allows_everything_and_every_model() -> None:
    admin = for_key(key(roles=("admin",)), RoleTable())
    assert admin.allows("admin:keys") and admin.allows("chat") and admin.allows("anything")
    assert admin.may_use("any-model") and admin.model_globs is None


def test_key_model_globs() -> None:
    p = for_key(key(models=("gpt-4o-mini", "claude-*")), RoleTable())
    assert p.may_use("gpt-4o-mini") and p.may_use("claude-3-5-sonnet")
    assert not p.may_use("gpt-4o") and not p.may_use("GPT-4O-MINI")  # case-sensitive
    assert p.model_globs == (("gpt-4o-mini", "claude-*"), ())


def test_role_model_permissions_limit_models() -> None:
    table = RoleTable({"mini": ("chat", "model:gpt-4o-mini*")})
    p = for_key(key(roles=("mini",)), table)
    assert p.allows("chat") and not p.allows("embeddings")
    assert p.may_use("gpt-4o-mini") and p.may_use("gpt-4o-mini-2024") and not p.may_use("gpt-4o")
    assert p.role_models == ("gpt-4o-mini*",)


def test_roles_without_model_permissions_allow_any_model() -> None:
    p = for_key(key(roles=("user",)), RoleTable())
    assert p.model_globs is None and p.may_use("whatever")


def test_key_globs_and_role_globs_both_apply() -> None:
    table = RoleTable({"gpt": ("chat", "model:gpt-*")})
    p = for_key(key(roles=("gpt",), models=("*-mini",)), table)
    assert p.may_use("gpt-4o-mini")
    assert not p.may_use("gpt-4o")  # the key's globs
    assert not p.may_use("claude-mini")  # the role's globs


def test_star_ignores_role_globs_but_not_key_globs() -> None:
    table = RoleTable({"gpt": ("model:gpt-*",)})
    p = for_key(key(roles=("admin", "gpt"), models=("claude-*",)), table)
    assert p.may_use("claude-3") and not p.may_use("gpt-4o")


def test_model_answers_are_remembered_within_a_bound() -> None:
    p = for_key(key(models=("a*",)), RoleTable())
    for i in range(1000):
        assert p.may_use(f"a{i}") and not p.may_use(f"b{i}")
    assert len(p._models_ok) <= 256


# -- building principals -------------------------------------------------------------------------------------


def test_for_key_merges_team_roles_and_keeps_no_secret() -> None:
    record = key(roles=("reader",), owner_user="alice", owner_team="ml", service_account=True,
                 policies=({"name": "p", "scope": "key", "rate": 1},), quotas=({"name": "q"},))
    table = RoleTable({"reader": ("models",)})
    p = for_key(record, table, team_roles=("user", "reader"))
    assert p.roles == ("reader", "user")
    assert p.allows("chat") and p.allows("models")
    assert (p.kind, p.key_id, p.key_prefix, p.user, p.team) == ("key", "key_1", "sk-sl-abcd…", "alice", "ml")
    assert p.service_account and p.policies == record.policies and p.quotas == record.quotas
    assert p.signing_secret is None and p.ip_rules is None and p.expires_at is None
    assert "key_1" in repr(p)


def test_for_key_expiry_is_the_earliest_end() -> None:
    assert for_key(key(expires_at=200.0, revoked_at=150.0), RoleTable()).expires_at == 150.0
    assert for_key(key(expires_at=200.0, rotated_to="key_2", grace_until=120.0), RoleTable()).expires_at == 120.0
    assert for_key(key(grace_until=120.0), RoleTable()).expires_at is None  # not rotated: grace means nothing


def test_signing_keys() -> None:
    assert for_key(key(signing=True, signing_secret="s3cret"), RoleTable()).signing_secret == b"s3cret"
    assert for_key(key(signing=True), RoleTable()).signing_secret == b""  # never verifies: fail closed
    assert for_key(key(signing=False, signing_secret="s3cret"), RoleTable()).signing_secret is None


def test_for_static_and_for_identity() -> None:
    static = StaticKeyConfig(name="ops", key="sk-static-0123456789abcdef", roles=("admin",), team="platform")
    p = for_static(static, RoleTable())
    assert (p.kind, p.key_id, p.team) == ("static", "static:ops", "platform")
    assert p.key_prefix == "sk-static-…" and "0123456789abcdef" not in (p.key_prefix or "")
    identity = Identity(kind="jwt", subject="s", user="alice", team="ml", roles=("user",), expires_at=99.0)
    q = for_identity(identity, RoleTable())
    assert (q.kind, q.key_id, q.user, q.team, q.expires_at) == ("jwt", "jwt:alice", "alice", "ml", 99.0)
    assert q.allows("chat") and not q.allows("admin:keys") and q.key_prefix is None


# -- IP rules ------------------------------------------------------------------------------------------------


def test_ip_rules_allow_and_deny_with_deny_winning() -> None:
    rules = IpRules(parse_networks(["10.0.0.0/8", "2001:db8::/32"]), parse_networks(["10.66.0.0/16"]))
    assert rules.allows("10.1.2.3") and rules.allows("2001:db8::1")
    assert not rules.allows("10.66.1.1")  # deny wins
    assert not rules.allows("192.168.1.1") and not rules.allows("2001:db9::1")  # outside the allow list
    assert not rules.allows("not-an-ip")
    assert rules.allows("::ffff:10.1.2.3")  # IPv4-mapped IPv6 is the IPv4 address
    assert not rules.allows("::ffff:10.66.0.1")


def test_deny_only_rules_and_empty_rules() -> None:
    deny = IpRules((), parse_networks(["203.0.113.0/24", "fd00::/8"]))
    assert deny.allows("198.51.100.1") and not deny.allows("203.0.113.9") and not deny.allows("fd12::1")
    assert not IpRules() and bool(deny)


def test_per_key_ip_rules_and_a_bad_rule_failing_closed() -> None:
    p = for_key(key(ip_allow=("192.0.2.0/24",)), RoleTable())
    assert p.ip_rules is not None and p.ip_rules.allows("192.0.2.7") and not p.ip_rules.allows("192.0.3.1")
    broken = for_key(key(ip_deny=("not-a-network",)), RoleTable())
    assert broken.ip_rules is not None
    assert not broken.ip_rules.allows("192.0.2.7") and not broken.ip_rules.allows("::1")


@pytest.mark.parametrize(("client", "forwarded", "trusted", "expected"), [
    ("127.0.0.1:5000", None, [], "127.0.0.1"),
    ("127.0.0.1:5000", "203.0.113.5", [], "127.0.0.1"),  # no trusted proxy: the header is ignored
    ("127.0.0.1:5000", "203.0.113.5", ["127.0.0.0/8"], "203.0.113.5"),
    ("127.0.0.1:5000", "198.51.100.1, 203.0.113.5", ["127.0.0.0/8"], "203.0.113.5"),  # right-most untrusted
    ("127.0.0.1:5000", "198.51.100.1, 10.0.0.2", ["127.0.0.0/8", "10.0.0.0/8"], "198.51.100.1"),
    ("127.0.0.1:5000", "2001:db8::7", ["127.0.0.1/32"], "2001:db8::7"),
    ("[::1]:5000", "2001:db8::7", ["::1/128"], "2001:db8::7"),
    ("[2001:db8::1]:5000", None, [], "2001:db8::1"),
    ("192.0.2.1:5000", "203.0.113.5", ["127.0.0.0/8"], "192.0.2.1"),  # an untrusted peer
    # several lines (a proxy that appends its own): joined in order, the proxy's line last
    ("127.0.0.1:5000", "198.51.100.1\n203.0.113.5", ["127.0.0.0/8"], "203.0.113.5"),
    ("127.0.0.1:5000", "198.51.100.1\n203.0.113.5, 10.0.0.2", ["127.0.0.0/8", "10.0.0.0/8"], "203.0.113.5"),
    ("127.0.0.1:5000", "198.51.100.1\n10.0.0.2", ["127.0.0.0/8", "10.0.0.0/8"], "198.51.100.1"),
])
def test_client_ip(client: str, forwarded: str | None, trusted: list[str], expected: str) -> None:
    ex = FakeExchange(client, {"x-forwarded-for": forwarded} if forwarded else {})
    assert ClientIp(trusted)(ex) == expected  # type: ignore[arg-type]


def test_principal_defaults() -> None:
    p = Principal(kind="static", key_id="static:x", key_prefix=None, user=None, team=None, roles=(),
                  permissions=frozenset())
    assert not p.allows("chat") and p.may_use("m") and p.actor == "static:x"
