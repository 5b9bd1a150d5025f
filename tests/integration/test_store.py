"""The store on both databases: a SQLite file and a real PostgreSQL (tests/postgres_server.py).

Every test that takes ``config`` runs twice, once per backend, each time on a
fresh database (a new file, or a new PostgreSQL database on the session's server).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sluice.config import StoreConfig
from sluice.store import (
    MAX_PAGE,
    ApiKey,
    RecordConflict,
    RecordNotFound,
    Role,
    Store,
    StoreError,
    StoreUnavailable,
    Team,
    User,
    audit_hash,
    display_prefix,
    generate_key,
    hash_key,
    new_id,
    open_store,
)
from sluice.store.migrations import available, latest_version
from sluice.store.postgres import PostgresStore, numbered
from tests.conftest import ROOT, free_port
from tests.postgres_server import PostgresServer, find_bin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def config(store_config: StoreConfig) -> StoreConfig:
    """A fresh, empty database of each kind (tests/conftest.py)."""
    return store_config


def run(body: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await body()

    asyncio.run(bounded())


@asynccontextmanager
async def opened(config: StoreConfig, *, migrate: bool = True) -> AsyncIterator[Store]:
    store = open_store(config)
    try:
        if migrate:
            await store.migrate()
        yield store
    finally:
        await store.aclose()


async def raw(config: StoreConfig, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """One statement on a connection of the test's own, behind the store's back."""
    if config.postgres_url is None:
        with contextlib.closing(sqlite3.connect(config.sqlite_path, isolation_level=None, timeout=10)) as db:
            return db.execute(sql, args).fetchall()
    conn = await asyncpg.connect(config.postgres_url, timeout=10)
    try:
        return [tuple(row) for row in await conn.fetch(numbered(sql), *args)]
    finally:
        await conn.close()


def make_key(name: str = "k", **fields: Any) -> ApiKey:
    secret = generate_key()
    values = {"id": new_id("key"), "key_hash": hash_key(secret), "prefix": display_prefix(secret), "name": name}
    return ApiKey(**{**values, **fields})


def migrations_of(config: StoreConfig) -> list[tuple[int, str]]:
    return [(m.version, m.name) for m in available("sqlite" if config.postgres_url is None else "postgres")]


# -- migrations ----------------------------------------------------------------------------------------------


def test_migrations_apply_once_and_are_idempotent(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config, migrate=False) as store:
            assert await store.current_version() == 0
            assert await store.migrate() == migrations_of(config)
            assert await store.migrate() == []
            assert await store.current_version() == latest_version(store.dialect)
            assert await store.ping() >= 0
        assert [r[:2] for r in await raw(config, "SELECT version, name FROM schema_migrations ORDER BY version")] \
            == migrations_of(config)
        async with opened(config, migrate=False) as again:  # a restart applies nothing
            assert await again.migrate() == []

    run(scenario)


def test_concurrent_migrate_applies_each_version_once(config: StoreConfig) -> None:
    async def scenario() -> None:
        stores = [open_store(config) for _ in range(4)]  # four connections (SQLite: four threads)
        try:
            results = await asyncio.gather(*(store.migrate() for store in stores))
            assert sorted(applied for result in results for applied in result) == migrations_of(config)
            assert {await store.current_version() for store in stores} == {latest_version(stores[0].dialect)}
        finally:
            for store in stores:
                await store.aclose()

    run(scenario)


# -- keys ----------------------------------------------------------------------------------------------------


def test_key_create_get_lookup_update(config: StoreConfig) -> None:
    key = make_key("ci", owner_user="alice", owner_team="ml", service_account=True, roles=("chat", "embeddings"),
                   models=("gpt-4o*",), policies=({"name": "rpm", "rate": 2.5, "burst": None, "n": {"a": [1, 2]}},),
                   quotas=({"name": "daily", "limit": 1000},), ip_allow=("10.0.0.0/8",), ip_deny=("10.1.0.0/16",),
                   signing=True, signing_secret="whsec-shared", metadata={"env": "prod", "ünï": "cödé", "n": 3},
                   expires_at=4_000_000_000.5)

    async def scenario() -> None:
        async with opened(config) as store:
            created = await store.create_key(key)
            assert created.created_at > 0 and created.updated_at == created.created_at
            assert created == ApiKey(**{**{f: getattr(key, f) for f in key.__struct_fields__},
                                        "created_at": created.created_at, "updated_at": created.created_at})
            assert await store.get_key(key.id) == created
            assert await store.key_by_hash(key.key_hash) == created
            assert await store.key_by_hash(hash_key("sk-sl-not-issued")) is None
            with pytest.raises(RecordConflict):
                await store.create_key(key)
            with pytest.raises(RecordConflict):  # another id, the same secret
                await store.create_key(make_key(key_hash=key.key_hash))
            with pytest.raises(RecordNotFound):
                await store.get_key("key_missing")

            updated = await store.update_key(key.id, name="renamed", roles=["chat"], metadata={"env": "dev"},
                                             expires_at=None, ip_deny=())
            assert (updated.name, updated.roles, updated.metadata, updated.expires_at, updated.ip_deny) == \
                ("renamed", ("chat",), {"env": "dev"}, None, ())
            assert updated.updated_at >= created.updated_at and updated.created_at == created.created_at
            assert await store.get_key(key.id) == updated == await store.key_by_hash(key.key_hash)
            for bad in ({"key_hash": "x"}, {"revoked_at": 1.0}, {"rotated_to": "k"}, {"bogus": 1}, {},
                        {"roles": 5}, {"service_account": "yes"}):
                with pytest.raises(ValueError):
                    await store.update_key(key.id, **bad)
            with pytest.raises(RecordNotFound):
                await store.update_key("key_missing", name="x")
            assert await store.get_key(key.id) == updated  # nothing above changed it

    run(scenario)


def test_list_keys_pages_by_id_and_filters(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            keys = [await store.create_key(make_key(f"k{i}", owner_user="alice" if i % 2 else "bob",
                                                    owner_team="ml" if i % 3 == 0 else None)) for i in range(23)]
            revoked = {keys[4].id, keys[9].id}
            for key_id in revoked:
                await store.revoke_key(key_id, time.time())

            async def pages(**filters: Any) -> list[str]:
                seen: list[str] = []
                while True:
                    page = await store.list_keys(after=seen[-1] if seen else None, limit=5, **filters)
                    assert len(page) <= 5
                    seen += [k.id for k in page]
                    if len(page) < 5:
                        return seen

            every = sorted(k.id for k in keys)
            assert await pages() == [i for i in every if i not in revoked]
            assert await pages(include_revoked=True) == every
            assert await pages(owner_user="alice", include_revoked=True) == \
                sorted(k.id for k in keys if k.owner_user == "alice")
            assert await pages(owner_team="ml") == sorted(k.id for k in keys if k.owner_team == "ml"
                                                          and k.id not in revoked)
            assert await pages(owner_user="bob", owner_team="ml", include_revoked=True) == \
                sorted(k.id for k in keys if k.owner_user == "bob" and k.owner_team == "ml")
            assert await store.list_keys(owner_user="nobody") == []
            for limit in (0, MAX_PAGE + 1):
                with pytest.raises(ValueError):
                    await store.list_keys(limit=limit)

    run(scenario)


def test_revoke_is_idempotent_and_the_key_stays_findable(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            key = await store.create_key(make_key())
            assert key.usable(time.time())
            revoked = await store.revoke_key(key.id, 1_700_000_000.0)
            assert revoked.revoked_at == 1_700_000_000.0 and not revoked.usable(time.time())
            assert (await store.revoke_key(key.id, 1_800_000_000.0)).revoked_at == 1_700_000_000.0
            found = await store.key_by_hash(key.key_hash)
            assert found is not None and found.revoked_at == 1_700_000_000.0  # the auth stage sees why it fails
            _, changes = await store.changes_since(0)
            assert [(c.ref, c.op) for c in changes] == [(key.key_hash, "create"), (key.key_hash, "revoke")]
            with pytest.raises(RecordNotFound):
                await store.revoke_key("key_missing", 1.0)

    run(scenario)


def test_rotate_makes_the_new_key_and_the_grace_period_together(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            old = await store.create_key(make_key("svc", owner_team="ml", roles=("chat",)))
            now = time.time()
            new = await store.rotate_key(old.id, make_key("svc", owner_team="ml", roles=("chat",)), now + 60)
            assert new.created_at > 0 and await store.key_by_hash(new.key_hash) == new
            old_now = await store.get_key(old.id)
            assert (old_now.rotated_to, old_now.grace_until, old_now.revoked_at) == (new.id, now + 60, None)
            assert old_now.usable(now) and not old_now.usable(now + 61) and new.usable(now + 61)
            with pytest.raises(RecordConflict):  # rotated once already
                await store.rotate_key(old.id, make_key(), now + 60)
            gone = await store.create_key(make_key())
            await store.revoke_key(gone.id, now)
            with pytest.raises(RecordConflict):
                await store.rotate_key(gone.id, make_key(), now + 60)
            with pytest.raises(RecordNotFound):
                await store.rotate_key("key_missing", make_key(), now + 60)
            fresh = await store.create_key(make_key())
            with pytest.raises(RecordConflict):  # the new key's hash is taken: nothing happens
                await store.rotate_key(fresh.id, make_key(key_hash=new.key_hash), now + 60)
            assert (await store.get_key(fresh.id)).rotated_to is None
            _, changes = await store.changes_since(0)
            assert [(c.ref, c.op) for c in changes if c.op != "create"] == \
                [(old.key_hash, "rotate"), (gone.key_hash, "revoke")]

    run(scenario)


def test_a_rotation_that_fails_half_way_leaves_nothing(config: StoreConfig) -> None:
    """A trigger makes the second write of the rotation fail: the new key, inserted first, is rolled back."""
    if config.postgres_url is None:
        triggers = ["CREATE TRIGGER fail_rotation BEFORE UPDATE OF rotated_to ON api_keys "
                    "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"]
    else:
        triggers = ["CREATE FUNCTION fail_rotation() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
                    "CREATE TRIGGER fail_rotation BEFORE UPDATE OF rotated_to ON api_keys "
                    "FOR EACH ROW EXECUTE FUNCTION fail_rotation()"]

    async def scenario() -> None:
        async with opened(config) as store:
            old = await store.create_key(make_key())
            version, _ = await store.changes_since(0)
            for trigger in triggers:
                await raw(config, trigger)
            new = make_key()
            with pytest.raises(StoreError):
                await store.rotate_key(old.id, new, time.time() + 60)
            assert await store.key_by_hash(new.key_hash) is None
            assert (await store.get_key(old.id)).rotated_to is None
            assert await store.changes_since(version) == (version, [])

    run(scenario)


# -- users, teams, roles -----------------------------------------------------------------------------------


def test_users_crud(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            users = [await store.create_user(User(id=f"user_{i}", name=f"U{i}", email=f"u{i}@example.com",
                                                  teams=("ml",) if i % 2 else ("ops", "ml-infra"), roles=("chat",)))
                     for i in range(5)]
            assert all(u.created_at > 0 for u in users)
            with pytest.raises(RecordConflict):
                await store.create_user(User(id="user_0"))
            assert await store.get_user("user_3") == users[3]
            with pytest.raises(RecordNotFound):
                await store.get_user("user_9")
            first = await store.list_users(limit=2)
            rest = await store.list_users(after=first[-1].id)
            assert first + rest == users
            assert [u.id for u in await store.list_users(team="ml")] == ["user_1", "user_3"]  # exact, not a prefix
            assert [u.id for u in await store.list_users(team="ml-infra", after="user_0")] == ["user_2", "user_4"]
            disabled = await store.update_user("user_1", disabled=True, teams=("ops",), metadata={"why": "left"})
            assert disabled.disabled and disabled.teams == ("ops",) and await store.get_user("user_1") == disabled
            with pytest.raises(ValueError):
                await store.update_user("user_1", id="user_x")
            with pytest.raises(RecordNotFound):
                await store.update_user("user_9", name="x")
            await store.delete_user("user_1")
            with pytest.raises(RecordNotFound):
                await store.get_user("user_1")
            with pytest.raises(RecordNotFound):
                await store.delete_user("user_1")

    run(scenario)


def test_teams_and_roles_crud(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            team = await store.create_team(Team(id="team_ml", name="ML", roles=("chat",), metadata={"cost": "ml-1"}))
            with pytest.raises(RecordConflict):
                await store.create_team(Team(id="team_ml"))
            assert await store.get_team("team_ml") == team
            renamed = await store.update_team("team_ml", name="Machine learning")
            assert [t.name for t in await store.list_teams()] == ["Machine learning"] and renamed.name == \
                "Machine learning"
            await store.delete_team("team_ml")
            with pytest.raises(RecordNotFound):
                await store.update_team("team_ml", name="x")

            admin = await store.create_role(Role(name="admin", permissions=("admin:keys", "admin:audit")))
            user = await store.create_role(Role(name="user", permissions=("chat", "model:gpt-4o*")))
            with pytest.raises(RecordConflict):
                await store.create_role(Role(name="admin"))
            assert await store.list_roles() == [admin, user]
            assert await store.list_roles(after="admin") == [user]
            widened = await store.update_role("user", permissions=["chat", "embeddings", "models"])
            assert (await store.get_role("user")).permissions == ("chat", "embeddings", "models") == \
                widened.permissions
            with pytest.raises(ValueError):
                await store.update_role("user", name="other")
            await store.delete_role("admin")
            with pytest.raises(RecordNotFound):
                await store.get_role("admin")
            with pytest.raises(RecordNotFound):
                await store.delete_role("admin")

    run(scenario)


# -- change feed ---------------------------------------------------------------------------------------------


def test_changes_since_sees_every_mutation_in_order(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            assert await store.changes_since(0) == (0, [])
            key = await store.create_key(make_key())
            await store.update_key(key.id, name="x")
            new = await store.rotate_key(key.id, make_key(), time.time() + 5)
            await store.revoke_key(new.id, time.time())
            with pytest.raises(RecordConflict):  # a failed mutation appends nothing
                await store.create_key(key)
            await store.create_user(User(id="u"))
            await store.update_user("u", disabled=True)
            await store.delete_user("u")
            await store.create_team(Team(id="t"))
            await store.update_team("t", roles=("chat",))
            await store.delete_team("t")
            await store.create_role(Role(name="r"))
            await store.update_role("r", permissions=("chat",))
            await store.delete_role("r")
            expected = [("key", key.key_hash, "create"), ("key", key.key_hash, "update"),
                        ("key", new.key_hash, "create"), ("key", key.key_hash, "rotate"),
                        ("key", new.key_hash, "revoke"), ("user", "u", "create"), ("user", "u", "update"),
                        ("user", "u", "delete"), ("team", "t", "create"), ("team", "t", "update"),
                        ("team", "t", "delete"), ("role", "r", "create"), ("role", "r", "update"),
                        ("role", "r", "delete")]
            latest, changes = await store.changes_since(0)
            assert [(c.kind, c.ref, c.op) for c in changes] == expected
            versions = [c.version for c in changes]
            assert versions == sorted(set(versions)) and latest == versions[-1]
            assert all(c.at > 0 for c in changes)
            assert await store.changes_since(latest) == (latest, [])
            paged, since = [], 0
            while True:
                since, page = await store.changes_since(since, limit=4)
                if not page:
                    break
                paged += page
            assert paged == changes and since == latest

    run(scenario)


def test_a_poller_misses_no_change_while_two_instances_write(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as one, opened(config, migrate=False) as two, \
                opened(config, migrate=False) as poller:
            seen: list[int] = []
            done = asyncio.Event()

            async def poll() -> None:
                version = 0
                while True:
                    finished = done.is_set()
                    version, page = await poller.changes_since(version)
                    seen.extend(c.version for c in page)
                    if finished and not page:
                        return
                    await asyncio.sleep(0.001)  # pacing: a poller's next round, while the writes go on

            async def write(i: int) -> str:
                key = await (one if i % 2 else two).create_key(make_key(f"k{i}"))
                await (two if i % 2 else one).update_key(key.id, name=f"k{i}-renamed")
                return key.key_hash

            polling = asyncio.create_task(poll())
            hashes = await asyncio.gather(*(write(i) for i in range(30)))
            done.set()
            await polling
            _, every = await one.changes_since(0)
            assert seen == [c.version for c in every]  # each exactly once, in order
            assert sorted({c.ref for c in every}) == sorted(hashes) and len(every) == 60

    run(scenario)


# -- audit log -----------------------------------------------------------------------------------------------


def test_concurrent_appends_keep_one_unbroken_chain(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as one, opened(config, migrate=False) as two:
            appended = await asyncio.gather(*(
                (one if i % 2 else two).append_audit(f"key:{i % 7}", "auth.failure", client_ip="10.0.0.1",
                                                     details={"i": i, "reason": "unknown key"})
                for i in range(120)))
            assert sorted(r.seq for r in appended) == list(range(1, 121))
            assert await one.verify_audit() == (True, None, 120)
            records, after = [], 0
            while page := await two.list_audit(after_seq=after, limit=50):
                records += page
                after = page[-1].seq
            assert [r.seq for r in records] == list(range(1, 121))
            assert sorted(records, key=lambda r: r.seq) == sorted(appended, key=lambda r: r.seq)
            for before, record in itertools.pairwise(records):
                assert record.prev_hash == before.hash

    run(scenario)


def test_list_audit_filters(config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            for i in range(10):
                await store.append_audit("user:alice" if i < 5 else "system", "key.create" if i % 2 else "key.revoke",
                                         target=f"key_{i % 3}", client_ip=None, details={"i": i}, at=100.0 + i)
            first = (await store.list_audit(limit=1))[0]
            assert (first.seq, first.at, first.actor, first.target, first.client_ip, first.details) == \
                (1, 100.0, "user:alice", "key_0", None, {"i": 0})
            assert first.hash == audit_hash(first.prev_hash, 1, 100.0, "user:alice", "key.revoke", "key_0", None,
                                            {"i": 0})
            assert [r.seq for r in await store.list_audit(action="key.create")] == [2, 4, 6, 8, 10]
            assert [r.seq for r in await store.list_audit(actor="system", target="key_2")] == [6, 9]
            assert [r.seq for r in await store.list_audit(since=103.0, until=106.0)] == [4, 5, 6]
            assert [r.seq for r in await store.list_audit(action="key.revoke", after_seq=5, limit=2)] == [7, 9]
            with pytest.raises(ValueError):
                await store.list_audit(limit=0)

    run(scenario)


TAMPERING = {
    # name: (statements, first bad seq, records checked)
    "edited": (["UPDATE audit_log SET details = '{\"i\":99}' WHERE seq = 4"], 4, 4),
    "deleted-middle": (["DELETE FROM audit_log WHERE seq = 4"], 4, 4),
    "deleted-last": (["DELETE FROM audit_log WHERE seq >= 8"], 8, 7),
    "deleted-all": (["DELETE FROM audit_log"], 1, 0),
    "reordered": (["UPDATE audit_log SET seq = -1 WHERE seq = 3", "UPDATE audit_log SET seq = 3 WHERE seq = 4",
                   "UPDATE audit_log SET seq = 4 WHERE seq = -1"], 3, 3),
    "head-deleted": (["DELETE FROM audit_head"], 11, 10),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_verify_finds_tampering(config: StoreConfig, tampering: str) -> None:
    statements, bad_seq, checked = TAMPERING[tampering]

    async def scenario() -> None:
        async with opened(config) as store:
            for i in range(10):
                await store.append_audit("system", "config.reload", details={"i": i})
            assert await store.verify_audit() == (True, None, 10)
            for statement in statements:
                await raw(config, statement)
            assert await store.verify_audit() == (False, bad_seq, checked)

    run(scenario)


def test_verify_finds_a_record_edited_with_its_hash_recomputed_and_one_forged_past_the_head(
        config: StoreConfig) -> None:
    async def scenario() -> None:
        async with opened(config) as store:
            records = [await store.append_audit("system", "role.update", details={"i": i}) for i in range(6)]
            forged = audit_hash(records[2].prev_hash, 3, records[2].at, "user:mallory", "role.update", None, None,
                                {"i": 2})
            await raw(config, "UPDATE audit_log SET actor = 'user:mallory', hash = ? WHERE seq = 3", forged)
            assert await store.verify_audit() == (False, 4, 4)  # record 4 no longer follows record 3
            await raw(config, "UPDATE audit_log SET actor = 'system', hash = ? WHERE seq = 3", records[2].hash)
            assert await store.verify_audit() == (True, None, 6)
            extra = audit_hash(records[-1].hash, 7, 1.0, "x", "key.create", None, None, {})
            await raw(config, "INSERT INTO audit_log (seq, at, actor, action, target, client_ip, details, prev_hash, "
                              "hash) VALUES (7, 1.0, 'x', 'key.create', NULL, NULL, '{}', ?, ?)", records[-1].hash,
                      extra)
            assert await store.verify_audit() == (False, 7, 7)  # the head never moved past 6

    run(scenario)


# -- failures ------------------------------------------------------------------------------------------------


def test_sqlite_unreachable_or_locked_raises_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "garbage.db").write_bytes(b"this is not a database" * 100)

    async def scenario() -> None:
        for path in (tmp_path / "missing" / "store.db", tmp_path / "a-directory", tmp_path / "garbage.db"):
            async with opened(StoreConfig(sqlite_path=str(path), timeout_s=0.5), migrate=False) as store:
                for call in (store.ping, store.migrate, lambda: store.key_by_hash("0" * 64)):
                    with pytest.raises(StoreUnavailable) as failure:
                        await call()
                    assert isinstance(failure.value.__cause__, sqlite3.Error)
        path = str(tmp_path / "store.db")
        async with opened(StoreConfig(sqlite_path=path, timeout_s=0.2)) as store:
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
                other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
                with pytest.raises(StoreUnavailable):
                    await store.create_key(make_key())
                other.execute("ROLLBACK")
            key = await store.create_key(make_key())  # usable again once the lock is gone
            assert await store.key_by_hash(key.key_hash) == key

    run(scenario)


def test_postgres_down_or_hung_raises_store_unavailable_and_recovers(tmp_path: Path) -> None:
    bin_dir = find_bin()
    if bin_dir is None:
        pytest.skip("stopping a server needs one of our own (the PostgreSQL binaries)")
    with PostgresServer(bin_dir) as server:
        _, url = server.create_database()

        async def scenario() -> None:
            store = PostgresStore(url, timeout_s=0.5, pool_size=2)
            try:
                await store.migrate()
                key = await store.create_key(make_key())
                server.pause()  # accepts connections, answers nothing
                try:
                    with pytest.raises(StoreUnavailable) as hung:
                        await store.key_by_hash(key.key_hash)
                    assert isinstance(hung.value.__cause__, TimeoutError)
                    with pytest.raises(StoreUnavailable):
                        await store.append_audit("system", "key.create")
                finally:
                    server.resume()
                assert await store.key_by_hash(key.key_hash) == key
                server.stop()
                for call in (store.ping, lambda: store.key_by_hash(key.key_hash), lambda: store.revoke_key(key.id, 1)):
                    with pytest.raises(StoreUnavailable):
                        await call()
                server.start()
                assert await store.key_by_hash(key.key_hash) == key
                assert await store.verify_audit() == (True, None, 0)  # the hung append never landed
            finally:
                await store.aclose()

        run(scenario)

    async def refused() -> None:
        async with opened(StoreConfig(postgres_url=f"postgresql://u:secret@127.0.0.1:{free_port()}/x",
                                      timeout_s=0.5), migrate=False) as store:
            with pytest.raises(StoreUnavailable) as failure:
                await store.migrate()
            assert "secret" not in str(failure.value) and "u:***@" in str(failure.value)

    run(refused)


# -- the CLI -------------------------------------------------------------------------------------------------


def sluice(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


def write_config(config: StoreConfig, path: Path) -> str:
    if config.postgres_url is None:
        path.write_text(f"store:\n  sqlite_path: {config.sqlite_path}\n")
    else:
        path.write_text(f"store:\n  postgres_url: {config.postgres_url}\n  timeout_s: 10\n")
    return str(path)


def test_db_cli_migrates_and_reports_the_version(config: StoreConfig, tmp_path: Path) -> None:
    path = write_config(config, tmp_path / "sluice.yaml")
    latest = latest_version("sqlite" if config.postgres_url is None else "postgres")
    before = sluice("db", "version", "--config", path)
    assert before.returncode == 0, before.stderr
    assert f"version 0 (latest {latest}), {latest} pending" in before.stdout
    first = sluice("db", "migrate", "--config", path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == "applied 0001_init" and f"migrated to version {latest}" in first.stdout
    again = sluice("db", "migrate", "--config", path)
    assert again.returncode == 0 and "applied" not in again.stdout and f"up to date at version {latest}" in again.stdout
    after = sluice("db", "version", "--config", path)
    assert after.returncode == 0 and f"version {latest} (latest {latest})" in after.stdout
    assert "pending" not in after.stdout


def test_db_migrate_from_two_processes_at_once(config: StoreConfig, tmp_path: Path) -> None:
    path = write_config(config, tmp_path / "sluice.yaml")
    processes = [subprocess.Popen([sys.executable, "-m", "sluice", "db", "migrate", "--config", path], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert process.returncode == 0, err
        outputs.append(out)
    assert sum(out.count("applied 0001_init") for out in outputs) == 1


def test_db_cli_says_when_the_store_is_unreachable(tmp_path: Path) -> None:
    for store in (f"sqlite_path: {tmp_path / 'missing' / 'x.db'}",
                  f"postgres_url: postgresql://127.0.0.1:{free_port()}/x\n  timeout_s: 0.5"):
        path = tmp_path / "sluice.yaml"
        path.write_text(f"store:\n  {store}\n")
        done = sluice("db", "migrate", "--config", str(path))
        assert done.returncode == 1 and done.stderr.startswith("sluice: store ") and not done.stdout
    path.write_text("store:\n  postgres_url: mysql://127.0.0.1/x\n")
    done = sluice("db", "version", "--config", str(path))
    assert done.returncode == 2 and "store.postgres_url" in done.stderr
