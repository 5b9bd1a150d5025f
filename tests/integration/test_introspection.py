"""Introspector against a local RFC 7662 endpoint made here (tests/integration/_auth_http.py).

The endpoint checks the client's basic auth, answers from a table of tokens, and counts requests;
time is a settable clock, so caching until exp (capped by max_ttl_s) is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

from sluice.auth import AuthFailure
from sluice.auth.introspection import Introspector
from sluice.config import ClaimsConfig, IntrospectionConfig
from sluice.upstream import UpstreamClient
from tests.conftest import free_port
from tests.integration._auth_http import Clock, LocalHttp, Request, async_test

CLIENT_ID = "sluice gateway"  # a space: form-encoded before base64 (RFC 6749 §2.3.1)
CLIENT_SECRET = "s3cr:et"
TOKEN = "opaque-0123456789abcdef"
REVOKED = "opaque-revoked-0123456789"
BASIC = "Basic " + base64.b64encode(b"sluice+gateway:s3cr%3Aet").decode()


@dataclass
class Endpoint:
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: int = 200
    delay: float = 0.0
    server: LocalHttp | None = None

    @property
    def hits(self) -> int:
        assert self.server is not None
        return len(self.server.requests)

    async def handle(self, request: Request) -> tuple[int, Any]:
        if self.delay:
            await asyncio.sleep(self.delay)  # pacing: a slow introspection endpoint
        if request.headers.get("authorization") != BASIC:
            return 401, {"error": "invalid_client"}
        if self.status != 200:
            return self.status, {"error": "down"}
        form = parse_qs(request.body.decode())
        return 200, self.answers.get(form["token"][0], {"active": False})


@dataclass
class Env:
    endpoint: Endpoint
    introspector: Introspector
    clock: Clock

    async def reason(self, token: str) -> str:
        with pytest.raises(AuthFailure) as info:
            await self.introspector.verify(token)
        assert token not in str(info.value)
        return info.value.reason


@asynccontextmanager
async def introspection(**config: Any) -> AsyncIterator[Env]:
    endpoint = Endpoint()
    async with LocalHttp(endpoint.handle) as server:
        endpoint.server = server
        client = UpstreamClient(connect_timeout=1.0, read_timeout=2.0, total_timeout=3.0)
        clock = Clock(time.time())
        settings = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **config}
        made = IntrospectionConfig(endpoint=server.url + "/oauth/introspect", **settings)
        try:
            yield Env(endpoint, Introspector([made], lambda: client, clock=clock), clock)
        finally:
            await client.close()


@async_test
async def test_active_token_is_an_identity_with_claims_mapped() -> None:
    claims = ClaimsConfig(user="username", team="ext.team", roles="scope")
    async with introspection(claims=claims, token_type_hint="access_token") as env:
        exp = int(env.clock.now) + 120
        env.endpoint.answers["opaque-1"] = {"active": True, "sub": "id-7", "username": "dana", "ext": {"team": "ops"},
                                            "scope": "chat read", "exp": exp, "iss": "https://idp.example"}
        identity = await env.introspector.verify("opaque-1")
        assert (identity.kind, identity.subject) == ("introspection", "id-7")
        assert (identity.user, identity.team) == ("dana", "ops")
        assert (identity.roles, identity.issuer, identity.expires_at) == (("chat", "read"), "https://idp.example", exp)
        [request] = env.endpoint.server.requests  # type: ignore[union-attr]
        assert (request.method, request.path) == ("POST", "/oauth/introspect")
        assert request.headers["authorization"] == BASIC
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert parse_qs(request.body.decode()) == {"token": ["opaque-1"], "token_type_hint": ["access_token"]}


@async_test
async def test_active_answer_is_cached_until_exp() -> None:
    async with introspection() as env:
        exp = int(env.clock.now) + 60
        env.endpoint.answers[TOKEN] = {"active": True, "sub": "u", "exp": exp}
        first = await env.introspector.verify(TOKEN)
        for _ in range(50):
            assert await env.introspector.verify(TOKEN) is first
        assert env.endpoint.hits == 1
        env.clock.now = exp  # the token's lifetime is over: asked again (and now it is gone)
        del env.endpoint.answers[TOKEN]
        assert await env.reason(TOKEN) == "inactive"
        assert env.endpoint.hits == 2


@async_test
async def test_cache_is_capped_by_max_ttl() -> None:
    async with introspection(max_ttl_s=30) as env:
        env.endpoint.answers[TOKEN] = {"active": True, "sub": "u", "exp": int(env.clock.now) + 3600}
        await env.introspector.verify(TOKEN)
        env.clock.now += 29
        await env.introspector.verify(TOKEN)
        assert env.endpoint.hits == 1
        env.clock.now += 1
        await env.introspector.verify(TOKEN)
        assert env.endpoint.hits == 2


@async_test
async def test_inactive_answer_is_cached_briefly() -> None:
    async with introspection(inactive_ttl_s=10) as env:
        assert await env.reason(REVOKED) == "inactive"
        assert await env.reason(REVOKED) == "inactive"
        assert env.endpoint.hits == 1
        env.clock.now += 10
        env.endpoint.answers[REVOKED] = {"active": True, "sub": "back"}
        assert (await env.introspector.verify(REVOKED)).user == "back"
        assert env.endpoint.hits == 2


@async_test
async def test_concurrent_checks_of_one_token_share_one_request() -> None:
    async with introspection() as env:
        env.endpoint.delay = 0.05
        env.endpoint.answers[TOKEN] = {"active": True, "sub": "u"}
        identities = await asyncio.gather(*(env.introspector.verify(TOKEN) for _ in range(20)))
        assert {identity.user for identity in identities} == {"u"}
        assert env.endpoint.hits == 1


@pytest.mark.parametrize("status", [500, 401])
@async_test
async def test_endpoint_error_is_issuer_unavailable_and_not_cached(status: int) -> None:
    async with introspection() as env:
        env.endpoint.answers[TOKEN] = {"active": True, "sub": "u"}
        env.endpoint.status = status
        if status == 401:  # the gateway's own client credentials are wrong: not the caller's fault
            env.endpoint.status = 200
            env.introspector = Introspector(
                [IntrospectionConfig(endpoint=env.endpoint.server.url, client_id="x", client_secret="y")],  # type: ignore[union-attr]
                env.introspector._client_factory, clock=env.clock,
            )
        with pytest.raises(AuthFailure) as info:
            await env.introspector.verify(TOKEN)
        assert info.value.reason == "issuer_unavailable" and info.value.status == 503
        assert env.introspector.cached == 0


@async_test
async def test_endpoint_down_is_issuer_unavailable() -> None:
    client = UpstreamClient(connect_timeout=1.0, total_timeout=2.0)
    try:
        config = IntrospectionConfig(endpoint=f"http://127.0.0.1:{free_port()}/introspect", client_id="c",
                                     client_secret="s")
        with pytest.raises(AuthFailure) as info:
            await Introspector([config], lambda: client).verify(TOKEN)
        assert info.value.reason == "issuer_unavailable"
    finally:
        await client.close()


@async_test
async def test_endpoints_are_asked_in_turn() -> None:
    async with introspection() as first, introspection() as second:
        second.endpoint.answers[TOKEN] = {"active": True, "sub": "from-second"}
        configs = [IntrospectionConfig(endpoint=env.endpoint.server.url, client_id=CLIENT_ID,  # type: ignore[union-attr]
                                       client_secret=CLIENT_SECRET) for env in (first, second)]
        client = UpstreamClient()
        try:
            both = Introspector(configs, lambda: client)
            assert (await both.verify(TOKEN)).user == "from-second"
            with pytest.raises(AuthFailure) as info:
                await both.verify("nobody")
            assert info.value.reason == "inactive"
        finally:
            await client.close()
        assert (first.endpoint.hits, second.endpoint.hits) == (2, 2)


@async_test
async def test_active_answer_without_the_user_claim_is_refused() -> None:
    async with introspection(claims=ClaimsConfig(user="username")) as env:
        env.endpoint.answers[TOKEN] = {"active": True, "sub": "u"}
        assert await env.reason(TOKEN) == "malformed"
