"""Auth with Redis: change notices over pub/sub, and the replay cache of signed requests shared by instances.

Real redis-server processes (``redis_server`` shared under a ``prefix``, or ``redis``, a server of the test's
own that it stops, kills and starts again) and the real store (SQLite and PostgreSQL, ``store_config``).

Instances in-process are Authenticators of their own (own store connection, own ChangeNotices), changed
through the Manager as the admin API and the CLI change them.  With ``revocation_poll_s: 30`` only a notice
can bring a change within the 5 s the tests wait, so arriving at all is the proof that pub/sub delivered it.
The end-to-end test runs two ``sluice serve`` processes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from sluice.admin.bodies import KeyCreate, KeyRevoke, RoleCreate, RoleUpdate
from sluice.admin.grants import Actor
from sluice.admin.manager import Manager
from sluice.auth.audit import AuditLog
from sluice.auth.changes import ChangeNotices, auth_redis_url
from sluice.auth.keys import SUBSCRIBED_POLL_S, Authenticator
from sluice.auth.signing import Signatures, sign
from sluice.config import AuthConfig, StoreConfig
from sluice.config.loader import parse_config
from sluice.errors import AuthUnavailable, ConfigError, Unauthorized
from sluice.store import open_store
from tests.conftest import Proc, call, wait_until
from tests.integration.test_auth import ADMIN_KEY, bearer, chat, gateway_yaml, migrated, openai_error, serve, signed
from tests.redis_server import command

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ACTOR = Actor("cli:test")
LONG_POLL_S = 30.0  # far past every wait below: a change that arrives in time came by pub/sub
WAIT_S = 5.0


def run(body: Callable[[], Awaitable[None]], within: float = 90.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(within):
            await body()

    asyncio.run(bounded())


async def eventually(check: Callable[[], bool], within: float = WAIT_S) -> bool:
    """Polls ``check`` every 10 ms until it holds (True) or ``within`` seconds passed (False)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)  # pacing: poll interval
    return True


def refused(auth: Authenticator, key: str) -> bool:
    """The instance refuses the key from its cache (it read the change and the key again)."""
    try:
        auth.cached(key)
    except Unauthorized:
        return True
    return False


def permissions(auth: Authenticator, key: str) -> frozenset[str]:
    principal = auth.cached(key)
    return principal.permissions if principal is not None else frozenset()


def no_client() -> Any:
    raise AssertionError("no upstream client for API keys")


class Cluster:
    """Two instances (Authenticators) and a writer (Manager + its own ChangeNotices) on one store and Redis."""

    def __init__(self, store: StoreConfig, url: str, prefix: str, poll_s: float) -> None:
        config = AuthConfig(enabled=True, revocation_poll_s=poll_s, redis=url, redis_prefix=prefix)
        self.instances = [Authenticator(config, open_store(store), no_client,
                                        notices=ChangeNotices(url, prefix, timeout_s=0.5)) for _ in range(2)]
        self.store = open_store(store)
        self.audit = AuditLog(self.store)
        self.writer = ChangeNotices(url, prefix, timeout_s=0.5)
        self.manager = Manager(self.store, self.audit, publish=self.writer.publish)

    @property
    def second(self) -> Authenticator:
        return self.instances[1]

    async def key(self, **fields: Any) -> tuple[str, str]:
        """A new key made through the manager, cached by both instances: (key, id).

        Each instance has read the change feed past the key's creation first: a read of it running while the
        key is looked up would rightly keep that answer out of the cache, and a key that is not cached is
        refused by a store read, whatever the notices do.
        """
        made = await self.manager.create_key(KeyCreate(**fields), ACTOR)
        latest, _ = await self.store.changes_since(2**62, 1)
        for auth in self.instances:
            assert await eventually(lambda a=auth: (a.stats()["version"] or 0) >= latest,  # type: ignore[misc]
                                    within=LONG_POLL_S)
            await auth.authenticate(made["key"])
            assert auth.cached(made["key"]) is not None
        return made["key"], made["id"]

    async def aclose(self) -> None:
        for auth in self.instances:
            await auth.aclose()
        await self.writer.aclose()
        await self.audit.aclose()
        await self.store.aclose()


@asynccontextmanager
async def cluster(store: StoreConfig, url: str, prefix: str, poll_s: float) -> AsyncIterator[Cluster]:
    group = Cluster(store, url, prefix, poll_s)
    try:
        for auth in group.instances:
            auth.start()
        yield group
    finally:
        await group.aclose()


def subscribed(group: Cluster) -> bool:
    return all(auth.notices is not None and auth.notices.subscribed for auth in group.instances)


# -- change notices ------------------------------------------------------------------------------------------


def test_a_revocation_reaches_another_instance_by_pub_sub(store_config: StoreConfig, redis_server: Any,
                                                          prefix: str) -> None:
    config = migrated(store_config)

    async def body() -> None:
        async with cluster(config, redis_server.url, prefix + ":", LONG_POLL_S) as group:
            assert await eventually(lambda: subscribed(group)), "the instances never subscribed"
            key, key_id = await group.key()
            second = group.second
            assert second.notices is not None
            notices, polls = second.notices.notices, second.polls
            assert not refused(second, key)
            await group.manager.revoke_key(key_id, KeyRevoke(reason="test"), ACTOR)
            assert await eventually(lambda: refused(second, key)), "the revocation never reached the instance"
            assert second.notices.notices > notices and second.polls > polls
            assert group.writer.published >= 2 and group.writer.publish_failures == 0  # create, revoke
            assert second.poll_interval == LONG_POLL_S  # max(revocation_poll_s, SUBSCRIBED_POLL_S)

    run(body)


def test_a_role_change_reaches_another_instance_by_pub_sub(store_config: StoreConfig, redis_server: Any,
                                                           prefix: str) -> None:
    config = migrated(store_config)

    async def body() -> None:
        async with cluster(config, redis_server.url, prefix + ":", LONG_POLL_S) as group:
            assert await eventually(lambda: subscribed(group)), "the instances never subscribed"
            await group.manager.create_role(RoleCreate(name="analyst", permissions=["chat", "models"]), ACTOR)
            key, _ = await group.key(roles=["analyst"])
            second = group.second
            assert "chat" in permissions(second, key)
            await group.manager.update_role("analyst", RoleUpdate(permissions=["embeddings"]), ACTOR)
            assert await eventually(lambda: "chat" not in permissions(second, key)), "the role change never came"
            assert permissions(second, key) == {"embeddings"}

    run(body)


def test_redis_down_at_start_and_killed_midway_falls_back_to_polling(store_config: StoreConfig, redis: Any,
                                                                      prefix: str) -> None:
    config = migrated(store_config)
    redis.stop()
    poll_s = 0.2

    async def revoked_everywhere(group: Cluster) -> bool:
        key, key_id = await group.key()
        await group.manager.revoke_key(key_id, KeyRevoke(), ACTOR)  # never fails for want of Redis
        return await eventually(lambda: refused(group.second, key))

    async def body() -> None:
        async with cluster(config, redis.url, prefix + ":", poll_s) as group:
            second = group.second
            notices = second.notices
            assert notices is not None
            # Down from the start: nothing raised, the change feed polled at revocation_poll_s.
            assert await revoked_everywhere(group), "the revocation never arrived by polling"
            assert group.writer.publish_failures >= 1 and not notices.subscribed
            assert second.poll_interval == poll_s and notices.listening
            # Back: subscribed again, the poll slows down, a change arrives by a notice.
            redis.start()
            assert await eventually(lambda: subscribed(group), within=20), "never subscribed after the restart"
            assert second.poll_interval == SUBSCRIBED_POLL_S
            heard = notices.notices
            assert await revoked_everywhere(group)
            assert await eventually(lambda: notices.notices > heard)
            # Killed mid-way: the listener notices, the poll goes back to revocation_poll_s, changes still arrive.
            redis.kill()
            assert await eventually(lambda: not notices.subscribed, within=20), "the lost connection went unseen"
            assert notices.disconnects >= 1 and second.poll_interval == poll_s
            polls = second.polls
            assert await revoked_everywhere(group), "the revocation never arrived by polling"
            assert second.polls > polls and notices.listening
            redis.start()
            assert await eventually(lambda: subscribed(group), within=20), "never subscribed after the kill"
            assert notices.subscriptions >= 2

    run(body)


def test_publishing_never_fails_a_change(tmp_path: Path, redis: Any, prefix: str) -> None:
    config = migrated(StoreConfig(sqlite_path=str(tmp_path / "store.db")))
    redis.stop()

    async def body() -> None:
        store = open_store(config)
        audit = AuditLog(store)
        writer = ChangeNotices(redis.url, prefix + ":", timeout_s=0.2)
        manager = Manager(store, audit, publish=writer.publish)
        try:
            made = await manager.create_key(KeyCreate(name="down"), ACTOR)
            revoked = await manager.revoke_key(made["id"], KeyRevoke(), ACTOR)
            assert revoked["status"] == "revoked"
            assert writer.publish_failures == 2 and writer.published == 0
        finally:
            await writer.aclose()
            await audit.aclose()
            await store.aclose()

    run(body)


def test_the_cli_announces_its_changes(tmp_path: Path, redis_server: Any, prefix: str) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(f"store: {{sqlite_path: '{tmp_path / 'store.db'}'}}\n"
                    f"auth: {{enabled: true, redis: '{redis_server.url}', redis_prefix: '{prefix}:'}}\n")

    async def body() -> None:
        listener = ChangeNotices(redis_server.url, prefix + ":")
        listener.listen(lambda: None)
        try:
            assert await eventually(lambda: listener.subscribed)
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sluice", "keys", "create", "--config", str(path), "--name", "ci",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await cli.communicate()
            assert cli.returncode == 0, err.decode()
            assert json.loads(out)["name"] == "ci"
            assert await eventually(lambda: listener.notices == 1), "the CLI's change was not announced"
        finally:
            await listener.aclose()

    run(body)


# -- the shared replay cache ---------------------------------------------------------------------------------


SECRET = b"whsec-test-signing-secret"


def headers(method: str = "GET", path: str = "/v1/models", body: bytes = b"") -> tuple[str, str]:
    timestamp = str(int(time.time()))
    return timestamp, sign(SECRET, method, path, timestamp, body)


@asynccontextmanager
async def shared(url: str, prefix: str, *, fail_closed: bool = False) -> AsyncIterator[list[Signatures]]:
    """Two instances' replay caches on one Redis (each with its own client)."""
    clients = [redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5) for _ in range(2)]
    try:
        yield [Signatures(300, redis=client, prefix=prefix, fail_closed=fail_closed, timeout_s=0.5)
               for client in clients]
    finally:
        for client in clients:
            await client.aclose()


class Request:
    """The little of an Exchange the auth stage reads."""

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.query, self.client = method, path, "", "127.0.0.1:40000"
        self.headers = headers

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        value = self.headers.get(name)
        return [] if value is None else [value]


def claim_keys(server: Any, prefix: str) -> int:
    """How many signatures are claimed under the test's prefix, read from Redis itself."""
    pattern = "".join("\\" + c if c in "[]*?\\" else c for c in f"{prefix}:sig:") + "*"  # [sqlite]: literal
    return int(command(server.port, "EVAL", "return #redis.call('KEYS', ARGV[1])", "0", pattern)[1:])


@asynccontextmanager
async def stages(store: StoreConfig, url: str, prefix: str) -> AsyncIterator[tuple[list[Any], Manager]]:
    """Two instances' auth stages on one (migrated) store and one Redis (``ratelimit.redis``: auth's too), and a
    Manager."""
    from sluice.auth.iprules import ClientIp
    from sluice.pipeline.auth import AuthStage

    config = parse_config(f"store: {{sqlite_path: '{store.sqlite_path}'}}\n"
                          f"auth: {{enabled: true, redis_prefix: '{prefix}:'}}\n"
                          f"ratelimit: {{redis: '{url}'}}\n", {})
    writer = open_store(store)
    audit = AuditLog(writer)
    both = [AuthStage(config, ClientIp(()), no_client) for _ in range(2)]
    try:
        yield both, Manager(writer, audit)
    finally:
        for stage in both:
            await stage.aclose()
        await audit.aclose()
        await writer.aclose()


def context(request_id: str = "r") -> Any:
    from sluice.context import RequestContext

    return RequestContext(request_id, 0.0)


async def handled(stage: Any, request: Request, body: bytes = b"") -> None:
    """What the gateway does with a request before it acts: admission, then for a body the handler's
    ``verify_body`` and the claim it returns."""
    ctx = context()
    if not stage.admit(request, ctx):
        await stage.admit_slow(request, ctx)
    if request.method in ("POST", "PUT", "PATCH") and (claim := stage.verify_body(request, ctx, body)) is not None:
        await claim


def signed_by(key: str, signature: str, timestamp: str | None = None) -> dict[str, str]:
    return {**bearer(key), "x-sluice-timestamp": timestamp or str(int(time.time())), "x-sluice-signature": signature}


def test_the_stage_claims_signed_requests_only(tmp_path: Path, redis_server: Any, prefix: str) -> None:
    store = migrated(StoreConfig(sqlite_path=str(tmp_path / "store.db")))

    async def body() -> None:
        async with stages(store, redis_server.url, prefix) as (both, manager):
            plain = (await manager.create_key(KeyCreate(name="plain"), ACTOR))["key"]
            signing = await manager.create_key(KeyCreate(name="signs", signing=True), ACTOR)
            secret = signing["signing_secret"].encode()
            ask = Request("GET", "/v1/models", bearer(plain))
            assert not both[0].admit(ask, context())  # not cached yet
            await both[0].admit_slow(ask, context())
            assert both[0].admit(ask, context())  # cached, unsigned: no await, no Redis
            assert claim_keys(redis_server, prefix) == 0 and both[0].signatures.claims == 0
            timestamp = str(int(time.time()))
            sent = Request("GET", "/v1/models", signed_by(signing["key"], sign(secret, "GET", "/v1/models",
                                                                               timestamp, b""), timestamp))
            for stage in both:
                assert not stage.admit(sent, context())  # cached or not: a claim to make
            await both[0].admit_slow(sent, context())
            assert claim_keys(redis_server, prefix) == 1
            with pytest.raises(Unauthorized) as replay:  # the other instance
                await both[1].admit_slow(sent, context())
            assert replay.value.reason == "signature_replayed"
            # With a body: admitted at once (cached), the claim left to verify_body, once the body is read.
            post = Request("POST", "/v1/chat/completions", signed_by(signing["key"], "0" * 64))
            assert both[0].admit(post, context())
            assert claim_keys(redis_server, prefix) == 1 and both[0].signatures.claims == 1

    run(body)


def test_a_wrong_signature_is_refused_without_touching_redis(tmp_path: Path, redis_server: Any,
                                                             prefix: str) -> None:
    store = migrated(StoreConfig(sqlite_path=str(tmp_path / "store.db")))

    async def body() -> None:
        async with stages(store, redis_server.url, prefix) as (both, manager):
            made = await manager.create_key(KeyCreate(name="signs", signing=True), ACTOR)
            key, secret = made["key"], made["signing_secret"].encode()
            timestamp = str(int(time.time()))  # fresh: only the signature is wrong
            chat_body = b'{"model": "gpt-4o-mini", "messages": []}'
            for method, path, sent, signature in (
                    ("GET", "/v1/models", b"", sign(b"not the secret", "GET", "/v1/models", timestamp, b"")),
                    ("DELETE", "/v1/files/file-1", b"", "ab" * 32),
                    ("POST", "/v1/chat/completions", chat_body,
                     sign(secret, "POST", "/v1/chat/completions", timestamp, b"another body")),
                    ("POST", "/v1/chat/completions", chat_body, "not-hex")):
                for stage in both:  # not cached yet, then cached
                    with pytest.raises(Unauthorized) as refused:
                        await handled(stage, Request(method, path, signed_by(key, signature, timestamp)), sent)
                    assert (refused.value.status, refused.value.code, refused.value.reason) == (
                        401, "invalid_signature", "signature_mismatch"), (method, signature)
            assert claim_keys(redis_server, prefix) == 0, "a signature that does not match was claimed"
            for stage in both:
                counted = stage.signatures
                assert (counted.claims, counted.replays, counted.claim_failures) == (0, 0, 0)

    run(body)


def test_a_signature_seen_on_the_wire_cannot_be_spent_before_its_request(tmp_path: Path, redis_server: Any,
                                                                         prefix: str) -> None:
    """A bearer of the key without its secret copies a signed request's headers onto a body of its own and sends
    it first, to the other instance: refused, and the real request is not spent by it (claimed once, replay
    refused)."""
    store = migrated(StoreConfig(sqlite_path=str(tmp_path / "store.db")))

    async def body() -> None:
        async with stages(store, redis_server.url, prefix) as (both, manager):
            made = await manager.create_key(KeyCreate(name="signs", signing=True), ACTOR)
            key, secret = made["key"], made["signing_secret"].encode()
            timestamp = str(int(time.time()))
            real = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
            wire = signed_by(key, sign(secret, "POST", "/v1/chat/completions", timestamp, real), timestamp)
            sent = Request("POST", "/v1/chat/completions", wire)
            with pytest.raises(Unauthorized) as forged:
                await handled(both[1], sent, b'{"model": "gpt-4o", "messages": []}')
            assert forged.value.reason == "signature_mismatch"
            assert claim_keys(redis_server, prefix) == 0, "a forged request claimed the signature it copied"
            await handled(both[0], sent, real)  # accepted: not spent by the forgery
            assert claim_keys(redis_server, prefix) == 1 and both[0].signatures.claims == 1
            with pytest.raises(Unauthorized) as replay:  # the real request replayed to the other instance
                await handled(both[1], sent, real)
            assert replay.value.reason == "signature_replayed"
            assert claim_keys(redis_server, prefix) == 1 and both[1].signatures.replays == 1

    run(body)


def test_a_bodyless_signature_seen_on_the_wire_cannot_be_spent_before_its_request(tmp_path: Path,
                                                                                  redis_server: Any,
                                                                                  prefix: str) -> None:
    """The same for a GET, verified (over an empty body) and claimed by the stage itself."""
    store = migrated(StoreConfig(sqlite_path=str(tmp_path / "store.db")))

    async def body() -> None:
        async with stages(store, redis_server.url, prefix) as (both, manager):
            made = await manager.create_key(KeyCreate(name="signs", signing=True), ACTOR)
            key, secret = made["key"], made["signing_secret"].encode()
            timestamp = str(int(time.time()))
            wire = signed_by(key, sign(secret, "GET", "/v1/models/gpt-4o-mini", timestamp, b""), timestamp)
            with pytest.raises(Unauthorized) as forged:  # the same headers on another path
                await handled(both[1], Request("GET", "/v1/models/gpt-4o", wire))
            assert forged.value.reason == "signature_mismatch"
            assert claim_keys(redis_server, prefix) == 0, "a forged request claimed the signature it copied"
            sent = Request("GET", "/v1/models/gpt-4o-mini", wire)
            await handled(both[0], sent)
            assert claim_keys(redis_server, prefix) == 1 and both[0].signatures.claims == 1
            with pytest.raises(Unauthorized) as replay:
                await handled(both[1], sent)
            assert replay.value.reason == "signature_replayed"
            with pytest.raises(Unauthorized, match="already used"):  # and to the same one: its own memory
                await handled(both[0], sent)
            assert claim_keys(redis_server, prefix) == 1 and (both[0].signatures.claims, both[1].signatures.claims,
                                                              both[1].signatures.replays) == (1, 1, 1)

    run(body)


def verified(signatures: Signatures, timestamp: str, signature: str, path: str = "/v1/models") -> bytes:
    return signatures.verify(SECRET, "GET", path, timestamp, signature, b"")


def test_a_replay_to_another_instance_is_refused(redis_server: Any, prefix: str) -> None:
    async def body() -> None:
        async with shared(redis_server.url, prefix + ":") as (first, second):
            timestamp, signature = headers()
            await first.claim(verified(first, timestamp, signature))
            with pytest.raises(Unauthorized) as replay:
                await second.claim(verified(second, timestamp, signature.upper()))  # new to that worker
            assert replay.value.reason == "signature_replayed" and replay.value.code == "invalid_signature"
            with pytest.raises(Unauthorized, match="already used"):  # the same instance again: its own memory
                verified(first, timestamp, signature)
            assert (first.claims, second.claims, second.replays) == (1, 1, 1)
            ttl = int(command(redis_server.port, "PTTL", f"{prefix}:sig:{signature}")[1:].strip())
            assert 0 < ttl <= 600_000  # 2 x skew

    run(body)


def test_without_redis_each_instance_remembers_only_its_own() -> None:
    first, second = Signatures(300), Signatures(300)
    timestamp, signature = headers()
    assert not first.shared
    digest = verified(first, timestamp, signature)
    run(lambda: first.claim(digest))  # a no-op without Redis
    verified(second, timestamp, signature)  # documented: per worker
    for signatures in (first, second):
        with pytest.raises(Unauthorized, match="already used"):
            verified(signatures, timestamp, signature)


async def claimed_again(signatures: Signatures, within: float = 10.0) -> bool:
    """Claims fresh signatures every 50 ms until one is claimed on Redis (True) or ``within`` passed (False)."""
    deadline = time.monotonic() + within
    before = signatures.claims
    while time.monotonic() < deadline:
        path = f"/v1/files/{time.monotonic_ns()}"
        timestamp, signature = headers("DELETE", path)
        with suppress(AuthUnavailable):  # fail-closed: still down
            await signatures.claim(signatures.verify(SECRET, "DELETE", path, timestamp, signature, b""))
        if signatures.claims > before:
            return True
        await asyncio.sleep(0.05)  # pacing: poll interval
    return False


def test_redis_down_falls_back_to_each_instance_memory(redis: Any, prefix: str) -> None:
    async def body() -> None:
        redis.stop()
        async with shared(redis.url, prefix + ":") as (first, second):
            timestamp, signature = headers()
            await first.claim(verified(first, timestamp, signature))  # Redis down: no refusal, memory decides
            with pytest.raises(Unauthorized, match="already used"):
                verified(first, timestamp, signature)
            await second.claim(verified(second, timestamp, signature))  # per worker, as documented
            assert first.claim_failures == 1 and first.claims == 0
            redis.start()
            assert await claimed_again(first), "Redis never used again"

    run(body)


def test_redis_down_fails_closed_when_configured(redis: Any, prefix: str) -> None:
    async def body() -> None:
        redis.stop()
        async with shared(redis.url, prefix + ":", fail_closed=True) as (first, _):
            timestamp, signature = headers()
            for _ in range(3):  # the first asks Redis, the next ones within RETRY_S do not
                with pytest.raises(AuthUnavailable) as down:  # verified again each time: a 503 does not spend it
                    await first.claim(verified(first, timestamp, signature))
                assert down.value.status == 503 and down.value.code == "replay_cache_unavailable"
            assert first.claim_failures == 3
            verified(first, timestamp, signature)  # not remembered by the 503s
            redis.start()
            assert await claimed_again(first), "Redis never used again"

    run(body)


def test_auth_redis_config() -> None:
    config = parse_config("auth: {redis: 'redis://127.0.0.1:6379/0', signature_fail_closed: true}", {})
    assert config.auth.redis == "redis://127.0.0.1:6379/0" and config.auth.redis_prefix == "sluice:auth:"
    inherited = parse_config("ratelimit: {redis: 'redis://r:6379'}\nauth: {signature_fail_closed: true}", {})
    assert inherited.auth.redis is None and auth_redis_url(inherited) == "redis://r:6379"
    assert auth_redis_url(parse_config("", {})) is None
    for text, path in (("auth: {redis: 'http://r'}", "auth.redis"),
                       ("auth: {redis_prefix: 'a b'}", "auth.redis_prefix"),
                       ("auth: {redis_timeout_s: 0}", "auth.redis_timeout_s"),
                       ("auth: {signature_fail_closed: true}", "auth.signature_fail_closed")):
        with pytest.raises(ConfigError) as error:
            parse_config(text, {})
        assert error.value.path == path, str(error.value)


# -- two `sluice serve` processes ----------------------------------------------------------------------------


def admin(gateway: Proc, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    reply = call(gateway.url, method, path, json.dumps(body or {}).encode(),
                 {**bearer(ADMIN_KEY), "content-type": "application/json"})
    assert reply.status in (200, 201), reply.body
    return reply.json()


def test_two_gateways_revocations_by_pub_sub_and_replays_across(store_config: StoreConfig, mock_upstream: Proc,
                                                                redis_server: Any, prefix: str,
                                                                tmp_path: Path) -> None:
    config = migrated(store_config)
    extra = (f"  revocation_poll_s: {LONG_POLL_S}\n  redis: '{redis_server.url}'\n"
             f"  redis_prefix: '{prefix}:'\n")
    first = serve(tmp_path, gateway_yaml(config, mock_upstream.url, extra_auth=extra))
    second = serve(tmp_path, gateway_yaml(config, mock_upstream.url, extra_auth=extra))
    try:
        made = admin(first, "POST", "/admin/keys", {"name": "e2e", "roles": ["user"]})
        for gateway in (first, second):
            assert chat(gateway, bearer(made["key"])).status == 200  # cached by both
        admin(first, "POST", f"/admin/keys/{made['id']}/revoke")
        wait_until(lambda: chat(second, bearer(made["key"])).status == 401, "the revocation on the other gateway",
                   interval=0.01)
        assert openai_error(chat(second, bearer(made["key"])), 401)["code"] == "invalid_api_key"
        # A signed request replayed to the other gateway: refused there too.
        signing = admin(first, "POST", "/admin/keys", {"name": "signs", "roles": ["user"], "signing": True})
        sent = {**bearer(signing["key"]), **signed(signing["signing_secret"], "GET", "/v1/models", b"")}
        assert call(first.url, "GET", "/v1/models", headers=sent).status == 200
        replayed = call(second.url, "GET", "/v1/models", headers=sent)
        assert openai_error(replayed, 401)["code"] == "invalid_signature" and b"already used" in replayed.body
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
        posted = {**bearer(signing["key"]), **signed(signing["signing_secret"], "POST", "/v1/chat/completions", body)}
        assert call(second.url, "POST", "/v1/chat/completions", body, posted).status == 200
        replayed = call(first.url, "POST", "/v1/chat/completions", body, posted)
        assert openai_error(replayed, 401)["code"] == "invalid_signature" and b"already used" in replayed.body
    finally:
        first.stop()
        second.stop()


def refused_with(reply: Any, words: bytes) -> None:
    """401 invalid_signature, in the OpenAI error format or Anthropic's (which has no code)."""
    assert reply.status == 401 and words in reply.body, (reply.status, reply.body[:300])
    if reply.json().get("type") != "error":
        assert openai_error(reply, 401)["code"] == "invalid_signature"


def test_two_gateways_claim_only_verified_signatures(store_config: StoreConfig, mock_upstream: Proc,
                                                     redis_server: Any, prefix: str, tmp_path: Path) -> None:
    """Through each handler that verifies a signature (a GET in the stage, a chat, a message, an admin call, a
    model refused): a wrong signature is refused without a key on Redis, even with the real request's headers
    (sent first to the other gateway), and the real request is then claimed once, its replay refused."""
    config = migrated(store_config)
    extra = f"  redis: '{redis_server.url}'\n  redis_prefix: '{prefix}:'\n"
    first = serve(tmp_path, gateway_yaml(config, mock_upstream.url, extra_auth=extra))
    second = serve(tmp_path, gateway_yaml(config, mock_upstream.url, extra_auth=extra))
    try:
        user = admin(first, "POST", "/admin/keys", {"name": "signs", "roles": ["user"], "signing": True})
        ops = admin(first, "POST", "/admin/keys", {"name": "ops", "roles": ["admin"], "signing": True})
        mini = admin(first, "POST", "/admin/keys", {"name": "mini", "roles": ["mini"], "signing": True})
        chat_body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
        message = json.dumps({"model": "gpt-4o-mini", "max_tokens": 16,
                              "messages": [{"role": "user", "content": "hi"}]}).encode()
        cases = [(user, "GET", "/v1/models", b"", 200), (user, "POST", "/v1/chat/completions", chat_body, 200),
                 (user, "POST", "/v1/messages", message, 200),
                 (ops, "POST", "/admin/keys", json.dumps({"name": "made-signed"}).encode(), 201)]
        claimed = 0
        for made, method, path, body, status in cases:
            secret = made["signing_secret"]
            wire = {**bearer(made["key"]), "content-type": "application/json", **signed(secret, method, path, body)}
            wrong = {**wire, **signed("not-the-secret", method, path, body)}
            forged_path = path + "/x" if method == "GET" else path
            for gateway, headers, target, sent in ((first, wrong, path, body),  # wrong secret
                                                   (second, wire, forged_path, body + b" ")):  # copied headers
                refused_with(call(gateway.url, method, target, sent, headers), b"does not match")
            assert claim_keys(redis_server, prefix) == claimed, f"{method} {path}: a wrong signature was claimed"
            assert call(first.url, method, path, body, wire).status == status, (method, path)
            claimed += 1
            assert claim_keys(redis_server, prefix) == claimed
            refused_with(call(second.url, method, path, body, wire), b"already used")
            assert claim_keys(redis_server, prefix) == claimed
        # Verified but refused for its model: not claimed (and its claim not left unawaited).
        gpt_4o = chat_body.replace(b"gpt-4o-mini", b"gpt-4o")
        limited = {**bearer(mini["key"]), **signed(mini["signing_secret"], "POST", "/v1/chat/completions", gpt_4o)}
        refused = call(first.url, "POST", "/v1/chat/completions", gpt_4o, limited)
        assert openai_error(refused, 403)["code"] == "model_not_allowed"
        assert claim_keys(redis_server, prefix) == claimed
    finally:
        first.stop()
        second.stop()
    for gateway in (first, second):
        assert b"never awaited" not in gateway.log.read_bytes()
