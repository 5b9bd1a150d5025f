"""The Authenticator on the real SQLite store (in tmp_path): cache, misses, refusals, the change feed, the store down;
request signatures; the auth config's checks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluice.auth.keys import Authenticator
from sluice.auth.signing import Signatures, sign
from sluice.config import AuthConfig, StaticKeyConfig, parse_config
from sluice.errors import AuthUnavailable, ConfigError, Unauthorized
from sluice.store import ApiKey, Change, Role, SqliteStore, StoreUnavailable, Team, User, generate_key, hash_key
from tests.conftest import async_wait_until

STATIC = "sk-static-admin-0123456789"


def run(body: Callable[[KeyStore], Awaitable[None]], tmp_path: Path) -> None:
    """Runs ``body`` (bounded) with a KeyStore on a fresh SQLite file in ``tmp_path``, closed at the end."""

    async def bounded() -> None:
        store = await KeyStore.open(tmp_path)
        try:
            async with asyncio.timeout(30):  # a bound for a hung test, generous for a loaded machine
                await body(store)
        finally:
            await store.real.aclose()  # once is enough: a second close does nothing

    asyncio.run(bounded())


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class KeyStore:
    """The real SQLite store, as the Authenticator sees it, with what the tests watch and steer.

    A thin wrapper around the REAL store (every answer is the store's, every write goes to its file and its change
    feed): it counts the reads of keys, raises StoreUnavailable while ``down`` is set (a store that is down and
    back on cue, as no real failure could be), and can hold one read's answer (``hold``) after it was read, so
    that a change can overtake it."""

    def __init__(self, real: SqliteStore) -> None:
        self.real = real
        self.down = False
        self.reads = 0  # key_by_hash calls answered
        self.hash_reads = 0  # key_hashes calls answered
        self.closed = False
        self.holds: dict[str, asyncio.Event] = {}  # method name -> its next call waits for this event, once
        self.held = asyncio.Event()  # set when a held call has read its answer and waits
        self._created = 0

    @classmethod
    async def open(cls, tmp_path: Path) -> KeyStore:
        real = SqliteStore(str(tmp_path / "store.db"), timeout_s=10.0)
        await real.migrate()
        return cls(real)

    # -- what the tests write (to the real store: each write is in its change feed) --

    async def add(self, secret: str, **fields: Any) -> ApiKey:
        record = ApiKey(id=f"key_{self._created}", key_hash=hash_key(secret), prefix=secret[:10] + "…",
                        **{"roles": ("user",), **fields})
        self._created += 1
        return await self.real.create_key(record)

    # -- what the Authenticator calls --

    async def _io(self) -> None:
        if self.down:
            raise StoreUnavailable("down")

    async def _hold(self, method: str) -> None:
        gate = self.holds.pop(method, None)
        if gate is not None:  # read first, answered later: a change may overtake it
            self.held.set()
            await gate.wait()

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        await self._io()
        found = await self.real.key_by_hash(key_hash)
        await self._hold("key_by_hash")
        self.reads += 1
        return found

    async def key_hashes(self, *, after: str | None = None, limit: int = 10_000) -> list[tuple[str, str]]:
        await self._io()
        self.hash_reads += 1
        return await self.real.key_hashes(after=after, limit=limit)

    async def get_user(self, user_id: str) -> User:
        await self._io()
        found = await self.real.get_user(user_id)
        await self._hold("get_user")
        return found

    async def get_team(self, team_id: str) -> Team:
        await self._io()
        return await self.real.get_team(team_id)

    async def list_roles(self, *, after: str | None = None, limit: int = 100) -> list[Role]:
        await self._io()
        return await self.real.list_roles(after=after, limit=limit)

    async def changes_since(self, version: int, limit: int = 1000) -> tuple[int, list[Change]]:
        await self._io()
        return await self.real.changes_since(version, limit)

    async def aclose(self) -> None:
        self.closed = True
        await self.real.aclose()


def make(store: KeyStore | None = None, clock: Clock | None = None, **auth: Any) -> Authenticator:
    config = AuthConfig(enabled=True, static_keys=(StaticKeyConfig(name="ops", key=STATIC, roles=("admin",)),),
                        **auth)
    return Authenticator(config, store, lambda: None, clock=clock or Clock())  # type: ignore[arg-type,return-value]


def revoked(authenticator: Authenticator, token: str) -> bool:
    """The cache refuses ``token`` (a check for async_wait_until)."""
    try:
        authenticator.cached(token)
    except Unauthorized:
        return True
    return False


async def refused(authenticator: Authenticator, token: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        if authenticator.cached(token) is None:
            await authenticator.authenticate(token)
    return info.value


# -- the cache -----------------------------------------------------------------------------------------------


def test_static_keys_are_cached_from_the_start() -> None:
    auth = make()
    principal = auth.cached(STATIC)
    assert principal is not None and principal.key_id == "static:ops" and principal.allows("admin:keys")
    assert auth.cached("sk-" + "x" * 40) is None  # a miss, not a refusal


def test_a_store_key_is_read_once_then_cached(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        secret = generate_key()
        await store.add(secret, owner_user="alice", models=("gpt-4o*",))
        auth = make(store)
        assert auth.cached(secret) is None
        principal = await auth.authenticate(secret)
        assert (principal.user, principal.kind, principal.models) == ("alice", "key", ("gpt-4o*",))
        assert auth.cached(secret) is principal and store.reads == 1
        await auth.aclose()
        assert store.closed

    run(body, tmp_path)


def test_concurrent_misses_share_one_lookup(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        secret = generate_key()
        await store.add(secret)
        auth = make(store)
        store.holds["key_by_hash"] = release = asyncio.Event()
        lookups = asyncio.gather(*(auth.authenticate(secret) for _ in range(50)))
        await store.held.wait()  # the first lookup has read the key; the 49 others started meanwhile
        release.set()
        principals = await lookups
        assert store.reads == 1 and len({id(p) for p in principals}) == 1
        unknown = generate_key()
        results = await asyncio.gather(*(auth.authenticate(unknown) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, Unauthorized) for r in results)
        assert store.reads == 1  # the known-key filter refused the unknown one without a read

    run(body, tmp_path)


def test_unknown_keys_are_remembered_briefly_and_boundedly(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        clock = Clock()
        auth = make(store, clock)
        unknown = generate_key()
        await refused(auth, unknown)  # the known-key filter refuses it: no read of the key
        assert store.reads == 0 and auth.filtered == 1
        auth._filter = None  # as while the filter is not built (the store was down): the store is asked
        known_later = generate_key()
        await refused(auth, known_later)
        await refused(auth, known_later)
        await refused(auth, unknown)
        assert store.reads == 1  # the second refusals came from the cache, without an await
        clock.now += 6
        await refused(auth, known_later)
        assert store.reads == 2
        for _ in range(200):
            await refused(auth, generate_key())
        assert len(auth._unknown) <= 10_000

    run(body, tmp_path)


def test_the_key_cache_is_bounded_and_keeps_static_keys(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        secrets = [generate_key() for _ in range(10)]
        for secret in secrets:
            await store.add(secret)
        auth = make(store, key_cache_size=4)
        for secret in secrets:
            await auth.authenticate(secret)
        assert len(auth._keys) == 4 and auth.cached(secrets[0]) is None and auth.cached(secrets[-1]) is not None
        assert auth.cached(STATIC) is not None

    run(body, tmp_path)


# -- refusals ------------------------------------------------------------------------------------------------


def test_unknown_revoked_and_rotated_keys_get_one_message(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        clock = Clock()
        revoked, rotated = generate_key(), generate_key()
        await store.add(revoked, revoked_at=clock.now - 1)
        await store.add(rotated, rotated_to="key_9", grace_until=clock.now - 1)
        auth = make(store, clock)
        refusals = [await refused(auth, k) for k in (generate_key(), revoked, rotated, "sk-\x00bad")]
        assert {(r.code, r.message, r.status) for r in refusals} == {(refusals[0].code, refusals[0].message, 401)}
        assert refusals[0].code == "invalid_api_key"
        assert [r.reason for r in refusals] == ["unknown", "revoked", "rotated", "malformed"]
        assert ("www-authenticate", 'Bearer realm="sluice", error="invalid_token"') in refusals[0].headers
        assert store.reads == 2  # a revoked key costs one read; an unknown one none (the known-key filter)
        assert json.loads(refusals[1].body("anthropic"))["error"]["type"] == "authentication_error"

    run(body, tmp_path)


def test_expiry_rotation_grace_and_scheduled_revocation_follow_the_clock(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        clock = Clock()
        expiring, old, scheduled = generate_key(), generate_key(), generate_key()
        await store.add(expiring, expires_at=clock.now + 10)
        await store.add(old, rotated_to="key_9", grace_until=clock.now + 20)
        await store.add(scheduled, revoked_at=clock.now + 30)
        auth = make(store, clock)
        for secret in (expiring, old, scheduled):
            await auth.authenticate(secret)  # all usable now: rotated within its grace period
        clock.now += 10
        assert (await refused(auth, expiring)).code == "expired_api_key"
        assert auth.cached(old) is not None
        clock.now += 10
        assert (await refused(auth, old)).reason == "rotated"
        assert auth.cached(scheduled) is not None
        clock.now += 10
        assert (await refused(auth, scheduled)).reason == "revoked"
        assert store.reads == 3

    run(body, tmp_path)


def test_a_disabled_owner_refuses_the_key_and_the_team_adds_its_roles(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        await store.real.create_user(User(id="bob", disabled=True))
        await store.real.create_team(Team(id="ml", roles=("auditor",)))
        await store.real.create_role(Role(name="auditor", permissions=("admin:audit",)))
        disabled, team_key, ghost = generate_key(), generate_key(), generate_key()
        await store.add(disabled, owner_user="bob")
        await store.add(team_key, owner_team="ml", roles=("user",), service_account=True)
        await store.add(ghost, owner_user="nobody", owner_team="no-team")  # owners not in the store: the key stands
        auth = make(store)
        assert (await refused(auth, disabled)).reason == "user_disabled"
        principal = await auth.authenticate(team_key)
        assert principal.roles == ("user", "auditor") and principal.allows("admin:audit") and principal.allows("chat")
        assert principal.service_account
        assert (await auth.authenticate(ghost)).user == "nobody"

    run(body, tmp_path)


def test_the_store_down_keeps_cached_keys_and_answers_503_to_new_ones(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        cached, new = generate_key(), generate_key()
        await store.add(cached)
        await store.add(new)
        auth = make(store)
        await auth.authenticate(cached)
        store.down = True
        assert auth.cached(cached) is not None and auth.cached(STATIC) is not None
        with pytest.raises(AuthUnavailable) as info:
            await auth.authenticate(new)
        assert (info.value.status, info.value.code) == (503, "store_unavailable")
        with pytest.raises(StoreUnavailable):
            await auth.poll()
        assert auth.cached(cached) is not None
        store.down = False
        assert (await auth.authenticate(new)).key_id == "key_1"

    run(body, tmp_path)


def test_the_store_down_before_the_first_read_is_a_503(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        store.down = True
        auth = make(store)
        with pytest.raises(AuthUnavailable):
            await auth.authenticate(generate_key())

    run(body, tmp_path)


def test_without_a_store_only_static_keys_work(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        auth = make(None)
        assert auth.cached(STATIC) is not None
        assert (await refused(auth, generate_key())).reason == "unknown"
        auth.start()
        assert not auth.running
        await auth.aclose()

    run(body, tmp_path)


# -- the change feed -----------------------------------------------------------------------------------------


def test_a_revocation_is_applied_and_the_key_read_again_by_the_poll(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        clock = Clock()
        secret = generate_key()
        record = await store.add(secret)
        auth = make(store, clock)
        await auth.authenticate(secret)
        await store.real.revoke_key(record.id, clock.now - 1)
        await auth.poll()
        assert store.reads == 2  # read again by the poll, not by the next request
        assert (await refused(auth, secret)).reason == "revoked" and store.reads == 2

    run(body, tmp_path)


def test_a_created_key_clears_its_negative_entry(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        auth = make(store)
        secret = generate_key()
        await refused(auth, secret)
        await store.add(secret)
        await auth.poll()
        assert (await auth.authenticate(secret)).key_id == "key_0"

    run(body, tmp_path)


def test_role_changes_rebuild_principals(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        await store.real.create_role(Role(name="user", permissions=("chat",)))  # the store overrides the built-in
        secret = generate_key()
        await store.add(secret)
        auth = make(store, roles={"user": ("chat", "embeddings")})
        principal = await auth.authenticate(secret)
        assert principal.allows("chat") and not principal.allows("embeddings")
        await store.real.update_role("user", permissions=("embeddings",))
        await auth.poll()
        principal = auth.cached(secret)
        assert principal is not None and principal.allows("embeddings") and not principal.allows("chat")
        admin = auth.cached(STATIC)
        assert admin is not None and admin.allows("admin:keys")
        await store.real.delete_role("user")
        await auth.poll()
        principal = auth.cached(secret)
        assert principal is not None and principal.allows("embeddings") and principal.allows("chat")  # config's

    run(body, tmp_path)


def test_user_and_team_changes_drop_the_keys_they_own(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        await store.real.create_user(User(id="alice"))
        alice, other = generate_key(), generate_key()
        await store.add(alice, owner_user="alice")
        await store.add(other, owner_user="carol")
        auth = make(store)
        await auth.authenticate(alice)
        await auth.authenticate(other)
        await store.real.update_user("alice", disabled=True)
        await auth.poll()
        assert auth.cached(other) is not None
        assert auth.cached(alice) is None
        assert (await refused(auth, alice)).reason == "user_disabled"

    run(body, tmp_path)


def test_a_change_during_a_lookup_keeps_its_answer_out_of_the_cache(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        clock = Clock()
        secret = generate_key()
        record = await store.add(secret)
        auth = make(store, clock)
        await auth.poll()  # the feed's version is known
        store.holds["key_by_hash"] = release = asyncio.Event()
        pending = asyncio.ensure_future(auth.authenticate(secret))
        await store.held.wait()  # the lookup has read the key, its answer is on its way
        await store.real.revoke_key(record.id, clock.now - 1)
        await auth.poll()
        release.set()
        await pending  # answered with what it read, but not cached
        assert auth.cached(secret) is None
        assert (await refused(auth, secret)).reason == "revoked"

    run(body, tmp_path)


def test_a_user_change_during_a_lookup_keeps_its_answer_out_of_the_cache(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        await store.real.create_user(User(id="alice"))
        secret = generate_key()
        await store.add(secret, owner_user="alice")
        auth = make(store)
        await auth.poll()  # the feed's version is known
        store.holds["get_user"] = release = asyncio.Event()  # read first, answered later: the change overtakes it
        pending = asyncio.ensure_future(auth.authenticate(secret))
        await store.held.wait()  # the lookup has read alice enabled; nothing of hers is cached yet
        await store.real.update_user("alice", disabled=True)
        await auth.poll()
        release.set()
        await pending  # answered with what it read, but not cached
        assert auth.cached(secret) is None
        assert (await refused(auth, secret)).reason == "user_disabled"

    run(body, tmp_path)


def test_the_poller_starts_follows_changes_and_stops(tmp_path: Path) -> None:
    async def body(store: KeyStore) -> None:
        secret = generate_key()
        record = await store.add(secret)
        auth = make(store, revocation_poll_s=0.02)
        await auth.authenticate(secret)
        auth.start()
        assert auth.running
        await store.real.revoke_key(record.id, 0.0)
        await async_wait_until(lambda: revoked(auth, secret), "the revocation arriving by the poller")
        store.down = True
        await async_wait_until(lambda: auth.store_failures > 1, "polls failing, and retried")
        assert auth.running  # nothing raised
        await auth.aclose()
        assert not auth.running

    run(body, tmp_path)


# -- signatures ----------------------------------------------------------------------------------------------


def test_signatures_valid_wrong_stale_replayed_missing() -> None:
    clock = Clock(1_700_000_000.0)
    signatures = Signatures(300, clock=clock)
    secret, body = b"s3cret", b'{"model": "m"}'
    ts = str(int(clock.now))
    good = sign(secret, "POST", "/v1/chat/completions", ts, body)
    expected = hmac.new(secret, f"POST\n/v1/chat/completions\n{ts}\n{hashlib.sha256(body).hexdigest()}".encode(),
                        hashlib.sha256).hexdigest()
    assert good == expected
    signatures.verify(secret, "POST", "/v1/chat/completions", ts, good.upper(), body)

    def reason(*args: Any) -> str:
        with pytest.raises(Unauthorized) as info:
            signatures.verify(*args)
        assert info.value.code == "invalid_signature"
        return info.value.reason

    assert reason(secret, "POST", "/v1/chat/completions", ts, good, body) == "signature_replayed"
    assert reason(secret, "POST", "/v1/chat/completions", ts, sign(secret, "POST", "/x", ts, body),
                  body) == "signature_mismatch"
    assert reason(secret, "POST", "/v1/chat/completions", ts, good, body + b" ") == "signature_mismatch"
    stale = str(int(clock.now) - 301)
    assert reason(secret, "POST", "/p", stale, sign(secret, "POST", "/p", stale, b""), b"") == "signature_stale"
    future = str(int(clock.now) + 301)
    assert reason(secret, "POST", "/p", future, sign(secret, "POST", "/p", future, b""), b"") == "signature_stale"
    assert reason(secret, "POST", "/p", None, good, b"") == "signature_missing"
    assert reason(secret, "POST", "/p", ts, None, b"") == "signature_missing"
    assert reason(secret, "POST", "/p", "soon", good, b"") == "signature_malformed"
    assert reason(b"", "GET", "/p", ts, sign(b"", "GET", "/p", ts, b""), b"") == "signature_mismatch"


def test_signatures_refuse_wild_timestamps_and_cover_the_query() -> None:
    clock = Clock(1_700_000_000.0)
    signatures = Signatures(300, clock=clock)
    secret, ts = b"s3cret", str(int(clock.now))

    def reason(timestamp: str, query: str = "", signed_query: str = "") -> str:
        with pytest.raises(Unauthorized) as info:
            signatures.verify(secret, "GET", "/p", timestamp, sign(secret, "GET", "/p", timestamp, b"", signed_query),
                              b"", query)
        assert info.value.code == "invalid_signature"
        return info.value.reason

    for wild in ("9" * 400, "9" * 13, "+1700000000", "1_700_000_000", " 1700000000", "-1", "\u0661" * 10):
        assert reason(wild) == "signature_malformed", wild
    assert reason("9" * 12) == "signature_stale"
    assert reason(ts, query="a=1&b=2") == "signature_mismatch"  # signed without its query
    assert reason(ts, query="a=1&b=2", signed_query="b=2&a=1") == "signature_mismatch"
    signatures.verify(secret, "GET", "/p", ts, sign(secret, "GET", "/p", ts, b"", "a=1&b=2"), b"", "a=1&b=2")
    expected = hmac.new(secret, f"GET\n/p?a=1\n{ts}\n{hashlib.sha256(b'').hexdigest()}".encode(),
                        hashlib.sha256).hexdigest()
    assert sign(secret, "GET", "/p", ts, b"", "a=1") == expected
    assert sign(secret, "GET", "/p", ts, b"") == sign(secret, "GET", "/p", ts, b"", "")  # no query: the path alone


def test_the_replay_memory_is_bounded_and_forgets_what_left_the_window() -> None:
    clock = Clock(1_700_000_000.0)
    signatures = Signatures(10, max_seen=50, clock=clock)
    for i in range(200):
        ts = str(int(clock.now))
        signatures.verify(b"k", "GET", f"/p{i}", ts, sign(b"k", "GET", f"/p{i}", ts, b""), b"")
    assert len(signatures._seen) <= 50
    clock.now += 30
    ts = str(int(clock.now))
    signatures.verify(b"k", "GET", "/q", ts, sign(b"k", "GET", "/q", ts, b""), b"")
    assert len(signatures._seen) == 1


# -- config --------------------------------------------------------------------------------------------------


def parse(text: str, **env: str) -> Any:
    return parse_config(text, env)


def test_auth_defaults() -> None:
    auth = parse("").auth
    assert not auth.enabled and auth.static_keys == () and auth.roles == {}
    assert (auth.revocation_poll_s, auth.signature_skew_s, auth.key_cache_size) == (0.5, 300.0, 100_000)


def test_a_full_auth_section() -> None:
    auth = parse("""
auth:
  enabled: true
  static_keys:
    - {name: ops, key: "${ADMIN_KEY}", roles: [admin]}
    - {name: ci, key: "sk-ci-0123456789abcdefgh", roles: [mini], models: ["gpt-4o-mini"], team: ci,
       service_account: true}
  roles: {mini: [chat, "model:gpt-4o-mini*"], ops: ["admin:*"]}
  ip_allow: ["10.0.0.0/8", "2001:db8::/32"]
  ip_deny: ["10.66.0.0/16"]
""", ADMIN_KEY="sk-admin-from-the-environment").auth
    assert auth.enabled and auth.static_keys[0].key == "sk-admin-from-the-environment"
    assert auth.static_keys[1].service_account and auth.roles["mini"] == ("chat", "model:gpt-4o-mini*")


@pytest.mark.parametrize(("text", "path", "problem"), [
    ("auth: {static_keys: [{name: a, key: short, roles: [admin]}]}", "auth.static_keys[0].key", "at least 20"),
    ("auth: {static_keys: [{name: a, key: sk-0123456789abcdefghij, roles: []}]}", "auth.static_keys[0].roles",
     "at least one role"),
    ("auth: {static_keys: [{name: a, key: sk-0123456789abcdefghij}]}", "auth.static_keys[0]", "roles"),
    ("auth: {static_keys: [{name: a, key: sk-0123456789abcdefghij, roles: [boss]}]}",
     "auth.static_keys[0].roles[0]", "unknown role 'boss'"),
    ("auth: {static_keys: [{name: a, key: sk-0123456789abcdefghij, roles: [user]},"
     " {name: a, key: sk-0123456789abcdefghik, roles: [user]}]}", "auth.static_keys[1].name", "unique"),
    ("auth: {static_keys: [{name: a, key: sk-0123456789abcdefghij, roles: [user]},"
     " {name: b, key: sk-0123456789abcdefghij, roles: [user]}]}", "auth.static_keys[1].key", "same secret"),
    ("auth: {roles: {r: [chat, sing]}}", "auth.roles.r[1]", "unknown permission 'sing'"),
    ("auth: {ip_allow: [10.0.0.0/8, nope]}", "auth.ip_allow[1]", "not an IP network"),
    ("auth: {ip_deny: ['2001:db8::/200']}", "auth.ip_deny[0]", "not an IP network"),
    ("auth: {revocation_poll_s: 0}", "auth.revocation_poll_s", "more than zero"),
    ("auth: {signature_skew_s: -1}", "auth.signature_skew_s", "more than zero"),
    ("auth: {key_cache_size: 0}", "auth.key_cache_size", "more than zero"),
    ("auth: {enabled: true, bogus: 1}", "auth", "bogus"),
])
def test_auth_config_mistakes_name_their_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.path == path and problem in info.value.problem, str(info.value)


# -- prepare_store ---------------------------------------------------------------------------------------------


def test_prepare_store_migrates_once_when_auth_is_on(tmp_path: Any) -> None:
    from sluice.auth.keys import prepare_store
    from sluice.store.migrations import latest_version

    path = tmp_path / "store.db"
    off = parse(f"store: {{sqlite_path: '{path}'}}")
    assert prepare_store(off) == [] and not path.exists()  # auth off: no store is touched
    manual = parse(f"store: {{sqlite_path: '{path}', migrate_on_start: false}}\nauth: {{enabled: true}}")
    assert prepare_store(manual) == [] and not path.exists()
    on = parse(f"store: {{sqlite_path: '{path}'}}\nauth: {{enabled: true}}")
    applied = prepare_store(on)
    assert [version for version, _ in applied] == list(range(1, latest_version("sqlite") + 1))
    assert prepare_store(on) == []  # already there
