"""Floods of made-up API keys, and the per-address limit on authentication failures (issue 15, finding 7).

The probe that found it: 3,000 random keys made 4,659 PostgreSQL transactions.  Done when a 10,000-random-key
flood makes fewer than 100 store queries.  The store is real (SQLite and PostgreSQL, ``store_config``); its
calls are counted by a proxy the test wraps around it (in-process) or read from the gateway's
``/health/details`` (``auth_store_calls``: every operation the store ran, the change feed's polls included).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sluice.auth.keys import Authenticator
from sluice.config import AuthConfig, StoreConfig
from sluice.errors import Unauthorized
from sluice.store import ApiKey, Store, display_prefix, generate_key, hash_key, new_id, open_store
from tests.conftest import Proc, call
from tests.integration.test_auth import (
    ADMIN_KEY,
    anthropic_error,
    bearer,
    chat,
    gateway_yaml,
    messages,
    migrated,
    new_key,
    openai_error,
    serve,
    store_run,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FLOOD = 10_000
TOKEN = "details-token-0123456789"


def made_up_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


class Counted:
    """The store, with every call counted by name (what reaches the database)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.counts: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not asyncio.iscoroutinefunction(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] += 1
            return await attr(*args, **kwargs)

        return counted

    def total(self) -> int:
        return sum(self.counts.values())


def run(body: Callable[[], Awaitable[None]], within: float = 180.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(within):
            await body()

    asyncio.run(bounded())


async def refused(auth: Authenticator, key: str) -> Unauthorized | None:
    try:
        if auth.cached(key) is None:
            await auth.authenticate(key)
    except Unauthorized as refusal:
        return refusal
    return None


def test_a_flood_of_random_keys_makes_fewer_than_100_store_queries(store_config: StoreConfig) -> None:
    """In-process, one worker's Authenticator over the real store: 10,000 made-up keys, at once and in turns."""
    config = migrated(store_config)
    valid, _ = new_key(config)

    async def body() -> None:
        store = Counted(open_store(config))
        auth = Authenticator(AuthConfig(enabled=True, revocation_poll_s=0.5), store,
                             lambda: None)  # type: ignore[arg-type,return-value]
        try:
            auth.start()
            assert await auth.authenticate(valid) is not None
            before = store.total()
            refusals: list[Unauthorized | None] = []
            for _ in range(10):  # in waves, as clients on many connections would send them
                refusals += await asyncio.gather(*(refused(auth, made_up_key()) for _ in range(FLOOD // 10)))
            during = store.total() - before
            assert all(r is not None and r.code == "invalid_api_key" and r.status == 401 for r in refusals)
            # What ran meanwhile is the change feed's polls (every 0.5 s), not one read per key.
            assert store.counts["key_by_hash"] <= 1 and during < 100, store.counts
            assert auth.cached(valid) is not None  # the valid key stayed cached, nothing to read
        finally:
            await auth.aclose()

    run(body)


def test_a_key_made_elsewhere_works_at_its_first_use_and_a_revoked_one_stays_refused(
        store_config: StoreConfig) -> None:
    """Another instance (the store written directly, as its admin API would) makes a key after this worker built
    its filter: the first request waits for the feed's next read and is admitted.  A revocation is as immediate as
    before: refused from the next feed read on, cached or not."""
    config = migrated(store_config)

    async def body() -> None:
        store = open_store(config)
        auth = Authenticator(AuthConfig(enabled=True, revocation_poll_s=0.3), store,
                             lambda: None)  # type: ignore[arg-type,return-value]
        try:
            auth.start()
            assert await refused(auth, made_up_key()) is not None  # the filter is built now
            secret, record = fresh_key()
            await store.create_key(record)
            principal = await auth.authenticate(secret)  # waits for the feed, which names the new key
            assert principal.key_id == record.id
            await store.revoke_key(record.id, time.time())
            await auth.poll()  # what the reader does within revocation_poll_s (at once with Redis notices)
            refusal = await refused(auth, secret)
            assert refusal is not None and refusal.reason == "revoked"
        finally:
            await auth.aclose()

    run(body)


def fresh_key() -> tuple[str, ApiKey]:
    """A key as the admin API makes it: its secret and its record (not stored yet)."""
    secret = generate_key()
    return secret, ApiKey(id=new_id("key"), key_hash=hash_key(secret), prefix=display_prefix(secret),
                          roles=("user",))


# -- through sluice serve ------------------------------------------------------------------------------------


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
               headers: dict[str, str]) -> int:
    """One GET on a kept-alive HTTP/1.1 connection; answers the status (the body is read and dropped)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET {path} HTTP/1.1\r\nhost: sluice\r\n{lines}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])}
    if b"content-length" in fields:
        await reader.readexactly(int(fields[b"content-length"]))
    elif fields.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def flood(url: str, keys: list[str], connections: int, xff: str | None = None) -> collections.Counter[int]:
    host, port = url.removeprefix("http://").split(":")
    queue = collections.deque(keys)
    statuses: collections.Counter[int] = collections.Counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while queue:
                headers = {"authorization": f"Bearer {queue.popleft()}"}
                if xff is not None:
                    headers["x-forwarded-for"] = xff
                statuses[await _get(reader, writer, "/v1/models", headers)] += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


def details(gateway: Proc) -> dict[str, Any]:
    reply = call(gateway.url, "GET", "/health/details", headers={"authorization": f"Bearer {TOKEN}"})
    assert reply.status == 200, reply.body
    worker: dict[str, Any] = reply.json()["worker"]
    return worker


def one_worker(config: str, extra_auth: str = "") -> str:
    """One worker (its /health/details counts everything) and the details token."""
    return config.replace("server: {grace_period_s: 2}", "server: {grace_period_s: 2, workers: 1}") + \
        f"observability: {{health_details_token: {TOKEN}}}\n"


@pytest.fixture
def pg_store(postgres: Any) -> Any:
    name, url = postgres.create_database()
    try:
        yield migrated(StoreConfig(postgres_url=url, timeout_s=10.0))
    finally:
        postgres.drop_database(name)


def test_sluice_serve_a_10000_key_flood_makes_fewer_than_100_store_queries(
        pg_store: StoreConfig, mock_upstream: Proc, tmp_path: Path) -> None:
    extra = "  failure_limit: 0\n  revocation_poll_s: 0.25\n"  # the filter alone, without the per-address limit
    gateway = serve(tmp_path, one_worker(gateway_yaml(pg_store, mock_upstream.url, extra_auth=extra)))
    try:
        valid, _ = new_key(pg_store)
        assert chat(gateway, bearer(valid)).status == 200
        before = details(gateway)
        statuses = asyncio.run(asyncio.wait_for(flood(gateway.url, [made_up_key() for _ in range(FLOOD)], 500), 200))
        after = details(gateway)
        assert statuses == {401: FLOOD}
        calls = after["auth_store_calls"] - before["auth_store_calls"]
        lookups = after["auth_lookups"] - before["auth_lookups"]
        polls = after["auth_polls"] - before["auth_polls"]
        print(f"flood of {FLOOD}: {calls} store calls, of which {polls} change-feed polls; {lookups} key reads; "
              f"{after['auth_filtered'] - before['auth_filtered']} refused by the filter")
        assert lookups == 0 and calls < 100
        assert chat(gateway, bearer(valid)).status == 200
    finally:
        gateway.stop()


def test_auth_failures_are_limited_per_client_address_before_any_lookup(
        store_config: StoreConfig, mock_upstream: Proc, tmp_path: Path) -> None:
    config = migrated(store_config)
    extra = "  failure_limit: 5\n  failure_period_s: 3600\n"
    gateway = serve(tmp_path, one_worker(gateway_yaml(config, mock_upstream.url, extra_auth=extra)))
    try:
        valid, _ = new_key(config)
        revoked, record = new_key(config)
        store_run(config, lambda store: store.revoke_key(record.id, time.time()))
        assert chat(gateway, bearer(valid, **{"x-forwarded-for": "198.51.100.9"})).status == 200  # cached now
        guesser = {"x-forwarded-for": "198.51.100.7"}
        for _ in range(5):
            assert openai_error(chat(gateway, bearer(made_up_key(), **guesser)), 401)["code"] == "invalid_api_key"
        reply = chat(gateway, bearer(made_up_key(), **guesser))
        error = openai_error(reply, 429)
        assert error["code"] == "too_many_auth_failures" and error["type"] == "requests"
        assert int(reply.headers["retry-after"]) >= 1 and "retry-after-ms" in reply.headers
        anthropic_error(messages(gateway, {"x-api-key": made_up_key(), **guesser}), 429, "rate_limit_error")
        # A key the filter passes (a revoked one is in the store) is not even read for the throttled address.
        before = details(gateway)["auth_lookups"]
        assert chat(gateway, bearer(revoked, **guesser)).status == 429
        assert details(gateway)["auth_lookups"] == before
        # The neighbour and a cached valid key from the throttled address are served.
        assert chat(gateway, bearer(made_up_key(), **{"x-forwarded-for": "198.51.100.8"})).status == 401
        assert chat(gateway, bearer(valid, **guesser)).status == 200
        assert chat(gateway, bearer(ADMIN_KEY, **guesser)).status == 200
        assert details(gateway)["auth_throttled"] >= 3
    finally:
        gateway.stop()
