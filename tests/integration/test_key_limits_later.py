"""A key given rate limits or a quota later, through the admin API, is limited from its next request on, though the
config has no policy and no quota of its own (the admission stage's shortcut for keys that carry none, read from
the caller's principal per request: pipeline/admission.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.config import StoreConfig
from sluice.store import open_store
from tests.conftest import Proc, Reply, call, start_gateway
from tests.integration.test_admin_api import CHAT, Admin, config_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def admin(tmp_path: Path, mock_upstream: Proc) -> Iterator[Admin]:
    """A gateway with auth on and no `ratelimit` section at all, on a fresh SQLite store."""
    store = StoreConfig(sqlite_path=str(tmp_path / "store.db"), timeout_s=10.0)

    async def migrate() -> None:
        opened = open_store(store)
        try:
            await opened.migrate()
        finally:
            await opened.aclose()

    asyncio.run(migrate())
    proc = start_gateway(tmp_path, config_yaml(store, mock_upstream.url))
    try:
        yield Admin(proc)
    finally:
        proc.stop()


def chat(admin: Admin, key: str) -> Reply:
    return call(admin.url, "POST", "/v1/chat/completions", CHAT,
                {"authorization": f"Bearer {key}", "content-type": "application/json"})


def test_a_key_given_a_policy_then_a_quota_is_limited_from_its_next_request(admin: Admin) -> None:
    created = admin.ok("POST", "/admin/keys", {"name": "later", "roles": ["user"]}, status=201)
    secret, key_id = created["key"], created["id"]
    for _ in range(3):  # no limits anywhere: served, and no rate-limit headers
        reply = chat(admin, secret)
        assert reply.status == 200, reply.body[:300]
        assert not [name for name in reply.headers if name.startswith(("x-ratelimit-", "x-sluice-quota-"))]

    admin.ok("PATCH", f"/admin/keys/{key_id}", {"policies": [{"name": "two", "rate": 2, "period_s": 3600}]})
    first, second, third = (chat(admin, secret) for _ in range(3))
    assert first.status == second.status == 200, (first.body[:300], second.body[:300])
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.status == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"

    one_a_day = [{"name": "one", "limit": 1, "period": "day"}]
    admin.ok("PATCH", f"/admin/keys/{key_id}", {"policies": [], "quotas": one_a_day})
    served, refused = chat(admin, secret), chat(admin, secret)
    assert served.status == 200 and served.headers["x-sluice-quota-remaining-requests"] == "0", served.body[:300]
    assert refused.status == 429 and refused.json()["error"]["code"] == "quota_exceeded"

    admin.ok("PATCH", f"/admin/keys/{key_id}", {"quotas": []})  # and back to none: served again, unlimited
    reply = chat(admin, secret)
    assert reply.status == 200 and "x-ratelimit-limit-requests" not in reply.headers
