"""The store's config section, record helpers and the pieces that need no database."""

from __future__ import annotations

import pytest

from sluice.config import StoreConfig, parse_config
from sluice.errors import ConfigError
from sluice.store import (
    GENESIS_HASH,
    ApiKey,
    SqliteStore,
    audit_hash,
    display_prefix,
    generate_key,
    hash_key,
    new_id,
    open_store,
)
from sluice.store.migrations import available, split_statements
from sluice.store.postgres import PostgresStore, numbered, redact_url


def test_store_section_defaults_and_values() -> None:
    assert parse_config("", {}).store == StoreConfig(sqlite_path="sluice.db", postgres_url=None, migrate_on_start=True,
                                                     pool_size=10, timeout_s=2.0)
    config = parse_config("store: {postgres_url: 'postgres://u:p@db:5432/sluice', pool_size: 4, timeout_s: 0.5, "
                          "migrate_on_start: false}", {})
    assert (config.store.postgres_url, config.store.pool_size, config.store.timeout_s,
            config.store.migrate_on_start) == ("postgres://u:p@db:5432/sluice", 4, 0.5, False)


@pytest.mark.parametrize(("text", "path", "problem"), [
    ("store: {postgres_url: 'mysql://db/x'}", "store.postgres_url", "must be a postgresql:// or postgres:// URL"),
    ("store: {postgres_url: 'postgresql://db:port/x'}", "store.postgres_url", "invalid URL"),
    ("store: {postgres_url: 'postgresql:///x'}", "store.postgres_url", "names no host"),
    ("store: {sqlite_path: ''}", "store.sqlite_path", "must be a file path"),
    ("store: {pool_size: 0}", "store.pool_size", "must be more than zero"),
    ("store: {timeout_s: -1}", "store.timeout_s", "must be more than zero"),
    ("store: {timeout_s: .inf}", "store.timeout_s", "must be finite"),
    ("store: {sqlite: x}", "store", "unknown field `sqlite`"),
])
def test_store_section_errors_name_the_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert info.value.path == path and problem in info.value.problem


def test_open_store_picks_the_backend_and_never_shows_the_password() -> None:
    sqlite = open_store(StoreConfig(sqlite_path="/tmp/x.db"))
    assert isinstance(sqlite, SqliteStore) and (sqlite.dialect, sqlite.location) == ("sqlite", "/tmp/x.db")
    postgres = open_store(StoreConfig(postgres_url="postgresql://app:hunter2@db:5432/sluice?sslmode=require"))
    assert isinstance(postgres, PostgresStore) and postgres.dialect == "postgres"
    assert postgres.location == "postgresql://app:***@db:5432/sluice"
    assert redact_url("postgresql://db/x?password=hunter2") == "postgresql://db/x"
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"


def test_key_helpers() -> None:
    key = generate_key()
    assert key.startswith("sk-sl-") and len(key) == 6 + 43 and generate_key() != key
    assert hash_key(key) == hash_key(key) and len(hash_key(key)) == 64 and key not in hash_key(key)
    assert display_prefix(key) == key[:10] + "…"
    assert new_id("key").startswith("key_") and len(new_id("key")) == 4 + 16


@pytest.mark.parametrize(("fields", "now", "usable"), [
    ({}, 100.0, True),
    ({"revoked_at": 50.0}, 100.0, False),
    ({"revoked_at": 150.0}, 100.0, True),  # revoked from a future time on
    ({"expires_at": 100.0}, 100.0, False),
    ({"rotated_to": "key_b", "grace_until": 120.0}, 100.0, True),
    ({"rotated_to": "key_b", "grace_until": 120.0}, 120.0, False),
    ({"rotated_to": "key_b"}, 100.0, False),
])
def test_key_usable(fields: dict[str, object], now: float, usable: bool) -> None:
    assert ApiKey(id="key_a", key_hash="h", prefix="p", **fields).usable(now) is usable  # type: ignore[arg-type]


def test_audit_hash_is_canonical() -> None:
    one = audit_hash(GENESIS_HASH, 1, 5, "a", "key.create", None, None, {"b": 1, "a": [1, 2.5]})
    assert one == audit_hash(GENESIS_HASH, 1, 5.0, "a", "key.create", None, None, {"a": [1, 2.5], "b": 1})
    assert one != audit_hash(GENESIS_HASH, 2, 5.0, "a", "key.create", None, None, {"a": [1, 2.5], "b": 1})
    assert one != audit_hash("1" * 64, 1, 5.0, "a", "key.create", None, None, {"a": [1, 2.5], "b": 1})
    with pytest.raises(ValueError):
        audit_hash(GENESIS_HASH, 1, 5.0, "a", "x", None, None, {"nan": float("nan")})


def test_placeholders_and_statements() -> None:
    assert numbered("SELECT a FROM t WHERE a = ? AND b > ? LIMIT ?") == \
        "SELECT a FROM t WHERE a = $1 AND b > $2 LIMIT $3"
    assert numbered("SELECT 1") == "SELECT 1"
    text = ("-- c\nCREATE TABLE a (x INT);\n"
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n-- end\n")
    assert split_statements(text) == ["-- c\nCREATE TABLE a (x INT);",
                                      "CREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;"]
    with pytest.raises(ValueError):
        split_statements("CREATE TABLE a (x INT)")
    for dialect in ("sqlite", "postgres"):
        assert [m.version for m in available(dialect)] == list(range(1, len(available(dialect)) + 1))
    assert [(m.version, m.name) for m in available("sqlite")] == [(m.version, m.name) for m in available("postgres")]
