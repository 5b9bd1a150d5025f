"""The Authenticator on an in-memory store: cache, misses, refusals, the change feed, the store down;
request signatures; the auth config's checks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from sluice.auth.keys import Authenticator
from sluice.auth.signing import Signatures, sign
from sluice.config import AuthConfig, StaticKeyConfig, parse_config
from sluice.errors import AuthUnavailable, ConfigError, Unauthorized
from sluice.store import ApiKey, Change, RecordNotFound, Role, StoreUnavailable, Team, User, generate_key, hash_key

STATIC = "sk-static-admin-0123456789"


def run(body: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await body()

    asyncio.run(bounded())


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class MemoryStore:
    """The few Store calls the Authenticator makes, in memory, with a switch to make it fail."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.users: dict[str, User] = {}
        self.teams: dict[str, Team] = {}
        self.roles: dict[str, Role] = {}
        self.changes: list[Change] = []
        self.down = False
        self.delay = 0.0
        self.reads = 0
        self.hash_reads = 0
        self.closed = False

    def change(self, kind: str, ref: str, op: str = "update") -> None:
        self.changes.append(Change(version=len(self.changes) + 1, kind=kind, ref=ref, op=op, at=0.0))

    def add(self, secret: str, **fields: Any) -> ApiKey:
        record = ApiKey(id=f"key_{len(self.keys)}", key_hash=hash_key(secret), prefix=secret[:10] + "…",
                        **{"roles": ("user",), **fields})
        self.keys[record.key_hash] = record
        self.change("key", record.key_hash, "create")
        return record

    def replace(self, record: ApiKey, **fields: Any) -> None:
        self.keys[record.key_hash] = msgspec.structs.replace(self.keys[record.key_hash], **fields)
        self.change("key", record.key_hash)

    async def _io(self) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise StoreUnavailable("down")

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        found = self.keys.get(key_hash)  # read first, answered after the delay: a change may overtake it
        await self._io()
        self.reads += 1
        return found

    async def key_hashes(self, *, after: str | None = None, limit: int = 10_000) -> list[tuple[str, str]]:
        await self._io()
        self.hash_reads += 1
        rows = sorted((k.id, k.key_hash) for k in self.keys.values())
        return [row for row in rows if after is None or row[0] > after][:limit]

    async def get_user(self, user_id: str) -> User:
        await self._io()
        if user_id not in self.users:
            raise RecordNotFound(user_id)
        return self.users[user_id]

    async def get_team(self, team_id: str) -> Team:
        await self._io()
        if team_id not in self.teams:
            raise RecordNotFound(team_id)
        return self.teams[team_id]

    async def list_roles(self, *, after: str | None = None, limit: int = 100) -> list[Role]:
        await self._io()
        names = sorted(n for n in self.roles if after is None or n > after)[:limit]
        return [self.roles[n] for n in names]

    async def changes_since(self, version: int, limit: int = 1000) -> tuple[int, list[Change]]:
        await self._io()
        found = [c for c in self.changes if c.version > version][:limit]
        if found:
            return found[-1].version, found
        return (self.changes[-1].version if self.changes else 0), []

    async def aclose(self) -> None:
        self.closed = True


def make(store: MemoryStore | None = None, clock: Clock | None = None, **auth: Any) -> Authenticator:
    config = AuthConfig(enabled=True, static_keys=(StaticKeyConfig(name="ops", key=STATIC, roles=("admin",)),),
                        **auth)
    return Authenticator(config, store, lambda: None, clock=clock or Clock())  # type: ignore[arg-type,return-value]


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


def test_a_store_key_is_read_once_then_cached() -> None:
    async def body() -> None:
        store = MemoryStore()
        secret = generate_key()
        store.add(secret, owner_user="alice", models=("gpt-4o*",))
        auth = make(store)
        assert auth.cached(secret) is None
        principal = await auth.authenticate(secret)
        assert (principal.user, principal.kind, principal.models) == ("alice", "key", ("gpt-4o*",))
        assert auth.cached(secret) is principal and store.reads == 1
        await auth.aclose()
        assert store.closed

    run(body)


def test_concurrent_misses_share_one_lookup() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.delay = 0.05
        secret = generate_key()
        store.add(secret)
        auth = make(store)
        principals = await asyncio.gather(*(auth.authenticate(secret) for _ in range(50)))
        assert store.reads == 1 and len({id(p) for p in principals}) == 1
        unknown = generate_key()
        results = await asyncio.gather(*(auth.authenticate(unknown) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, Unauthorized) for r in results)
        assert store.reads == 1  # the known-key filter refused the unknown one without a read

    run(body)


def test_unknown_keys_are_remembered_briefly_and_boundedly() -> None:
    async def body() -> None:
        store, clock = MemoryStore(), Clock()
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

    run(body)


def test_the_key_cache_is_bounded_and_keeps_static_keys() -> None:
    async def body() -> None:
        store = MemoryStore()
        secrets = [generate_key() for _ in range(10)]
        for secret in secrets:
            store.add(secret)
        auth = make(store, key_cache_size=4)
        for secret in secrets:
            await auth.authenticate(secret)
        assert len(auth._keys) == 4 and auth.cached(secrets[0]) is None and auth.cached(secrets[-1]) is not None
        assert auth.cached(STATIC) is not None

    run(body)


# -- refusals ------------------------------------------------------------------------------------------------


def test_unknown_revoked_and_rotated_keys_get_one_message() -> None:
    async def body() -> None:
        store, clock = MemoryStore(), Clock()
        revoked, rotated = generate_key(), generate_key()
        store.add(revoked, revoked_at=clock.now - 1)
        store.add(rotated, rotated_to="key_9", grace_until=clock.now - 1)
        auth = make(store, clock)
        refusals = [await refused(auth, k) for k in (generate_key(), revoked, rotated, "sk-\x00bad")]
        assert {(r.code, r.message, r.status) for r in refusals} == {(refusals[0].code, refusals[0].message, 401)}
        assert refusals[0].code == "invalid_api_key"
        assert [r.reason for r in refusals] == ["unknown", "revoked", "rotated", "malformed"]
        assert ("www-authenticate", 'Bearer realm="sluice", error="invalid_token"') in refusals[0].headers
        assert store.reads == 2  # a revoked key costs one read; an unknown one none (the known-key filter)
        assert json.loads(refusals[1].body("anthropic"))["error"]["type"] == "authentication_error"

    run(body)


def test_expiry_rotation_grace_and_scheduled_revocation_follow_the_clock() -> None:
    async def body() -> None:
        store, clock = MemoryStore(), Clock()
        expiring, old, scheduled = generate_key(), generate_key(), generate_key()
        store.add(expiring, expires_at=clock.now + 10)
        store.add(old, rotated_to="key_9", grace_until=clock.now + 20)
        store.add(scheduled, revoked_at=clock.now + 30)
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

    run(body)


def test_a_disabled_owner_refuses_the_key_and_the_team_adds_its_roles() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.users["bob"] = User(id="bob", disabled=True)
        store.teams["ml"] = Team(id="ml", roles=("auditor",))
        store.roles["auditor"] = Role(name="auditor", permissions=("admin:audit",))
        disabled, team_key, ghost = generate_key(), generate_key(), generate_key()
        store.add(disabled, owner_user="bob")
        store.add(team_key, owner_team="ml", roles=("user",), service_account=True)
        store.add(ghost, owner_user="nobody", owner_team="no-team")  # owners not in the store: the key stands
        auth = make(store)
        assert (await refused(auth, disabled)).reason == "user_disabled"
        principal = await auth.authenticate(team_key)
        assert principal.roles == ("user", "auditor") and principal.allows("admin:audit") and principal.allows("chat")
        assert principal.service_account
        assert (await auth.authenticate(ghost)).user == "nobody"

    run(body)


def test_the_store_down_keeps_cached_keys_and_answers_503_to_new_ones() -> None:
    async def body() -> None:
        store = MemoryStore()
        cached, new = generate_key(), generate_key()
        store.add(cached)
        store.add(new)
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

    run(body)


def test_the_store_down_before_the_first_read_is_a_503() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.down = True
        auth = make(store)
        with pytest.raises(AuthUnavailable):
            await auth.authenticate(generate_key())

    run(body)


def test_without_a_store_only_static_keys_work() -> None:
    async def body() -> None:
        auth = make(None)
        assert auth.cached(STATIC) is not None
        assert (await refused(auth, generate_key())).reason == "unknown"
        auth.start()
        assert not auth.running
        await auth.aclose()

    run(body)


# -- the change feed -----------------------------------------------------------------------------------------


def test_a_revocation_is_applied_and_the_key_read_again_by_the_poll() -> None:
    async def body() -> None:
        store, clock = MemoryStore(), Clock()
        secret = generate_key()
        record = store.add(secret)
        auth = make(store, clock)
        await auth.authenticate(secret)
        store.replace(record, revoked_at=clock.now - 1)
        await auth.poll()
        assert store.reads == 2  # read again by the poll, not by the next request
        assert (await refused(auth, secret)).reason == "revoked" and store.reads == 2

    run(body)


def test_a_created_key_clears_its_negative_entry() -> None:
    async def body() -> None:
        store = MemoryStore()
        auth = make(store)
        secret = generate_key()
        await refused(auth, secret)
        store.add(secret)
        await auth.poll()
        assert (await auth.authenticate(secret)).key_id == "key_0"

    run(body)


def test_role_changes_rebuild_principals() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.roles["user"] = Role(name="user", permissions=("chat",))  # the store overrides the built-in
        secret = generate_key()
        store.add(secret)
        auth = make(store, roles={"user": ("chat", "embeddings")})
        principal = await auth.authenticate(secret)
        assert principal.allows("chat") and not principal.allows("embeddings")
        store.roles["user"] = Role(name="user", permissions=("embeddings",))
        store.change("role", "user")
        await auth.poll()
        principal = auth.cached(secret)
        assert principal is not None and principal.allows("embeddings") and not principal.allows("chat")
        admin = auth.cached(STATIC)
        assert admin is not None and admin.allows("admin:keys")
        del store.roles["user"]
        store.change("role", "user", "delete")
        await auth.poll()
        principal = auth.cached(secret)
        assert principal is not None and principal.allows("embeddings") and principal.allows("chat")  # config's

    run(body)


def test_user_and_team_changes_drop_the_keys_they_own() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.users["alice"] = User(id="alice")
        alice, other = generate_key(), generate_key()
        store.add(alice, owner_user="alice")
        store.add(other, owner_user="carol")
        auth = make(store)
        await auth.authenticate(alice)
        await auth.authenticate(other)
        store.users["alice"] = User(id="alice", disabled=True)
        store.change("user", "alice")
        await auth.poll()
        assert auth.cached(other) is not None
        assert auth.cached(alice) is None
        assert (await refused(auth, alice)).reason == "user_disabled"

    run(body)


def test_a_change_during_a_lookup_keeps_its_answer_out_of_the_cache() -> None:
    async def body() -> None:
        store, clock = MemoryStore(), Clock()
        secret = generate_key()
        record = store.add(secret)
        auth = make(store, clock)
        await auth.poll()  # the feed's version is known
        store.delay = 0.05
        pending = asyncio.ensure_future(auth.authenticate(secret))
        await asyncio.sleep(0.01)  # the lookup has read the key, its answer is on its way
        store.keys[record.key_hash] = msgspec.structs.replace(record, revoked_at=clock.now - 1)
        store.change("key", record.key_hash, "revoke")
        store.delay = 0.0
        await auth.poll()
        await pending  # answered with what it read, but not cached
        assert auth.cached(secret) is None
        assert (await refused(auth, secret)).reason == "revoked"

    run(body)


def test_a_user_change_during_a_lookup_keeps_its_answer_out_of_the_cache() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.users["alice"] = User(id="alice")
        secret = generate_key()
        store.add(secret, owner_user="alice")
        auth = make(store)
        await auth.poll()  # the feed's version is known

        async def get_user(user_id: str) -> User:
            found = store.users[user_id]  # read first, answered later: the change overtakes it
            await asyncio.sleep(0.05)
            return found

        store.get_user = get_user  # type: ignore[method-assign]
        pending = asyncio.ensure_future(auth.authenticate(secret))
        await asyncio.sleep(0.01)  # the lookup has read alice enabled; nothing of hers is cached yet
        store.users["alice"] = User(id="alice", disabled=True)
        store.change("user", "alice")
        await auth.poll()
        await pending  # answered with what it read, but not cached
        assert auth.cached(secret) is None
        del store.get_user
        assert (await refused(auth, secret)).reason == "user_disabled"

    run(body)


def test_the_poller_starts_follows_changes_and_stops() -> None:
    async def body() -> None:
        store = MemoryStore()
        secret = generate_key()
        record = store.add(secret)
        auth = make(store, revocation_poll_s=0.02)
        await auth.authenticate(secret)
        auth.start()
        assert auth.running
        store.replace(record, revoked_at=0.0)
        for _ in range(100):
            await asyncio.sleep(0.02)
            try:
                auth.cached(secret)
            except Unauthorized:
                break
        else:
            raise AssertionError("the revocation did not arrive")
        store.down = True
        await asyncio.sleep(0.1)  # polls fail and are retried; nothing raises
        assert auth.store_failures > 0
        await auth.aclose()
        assert not auth.running

    run(body)


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
