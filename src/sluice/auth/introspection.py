"""Opaque bearer tokens, checked by RFC 7662 token introspection and cached.

The token is POSTed (form-encoded, with ``token_type_hint`` when configured) to
each configured endpoint in turn, authenticated by HTTP basic auth with the
client id and secret (RFC 6749 §2.3.1: each form-encoded first).  The first
``"active": true`` answer names the caller; when every endpoint says inactive the
token is refused as ``inactive``; an endpoint that cannot be reached (or answers
other than 200 with a JSON object) without an active answer elsewhere fails as
``issuer_unavailable``.

Answers are cached by SHA-256 of the token in a bounded LRU: an active one until
the token's ``exp``, at most ``max_ttl_s``; an inactive one ``inactive_ttl_s``.
Concurrent checks of one uncached token share one round of requests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from urllib.parse import quote_plus, urlencode

import orjson

from ..config.model import IntrospectionConfig
from ..upstream import UpstreamClient
from .identity import AuthFailure, ClaimMap, Identity
from .oidc import ClientFactory, Endpoint, IssuerUnavailable, fetch

__all__ = ["MAX_ANSWER_BYTES", "Introspector"]

log = logging.getLogger("sluice.auth")

MAX_ANSWER_BYTES = 64 * 1024
_MAX_TOKEN_BYTES = 16 * 1024


class _Inactive(Exception):
    """An endpoint's answer: not active."""


class _Endpoint:
    __slots__ = ("claims", "config", "endpoint", "headers")

    def __init__(self, config: IntrospectionConfig) -> None:
        self.config = config
        self.endpoint = Endpoint.parse(config.endpoint, config.ca_file)
        credentials = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
        self.headers = [
            ("content-type", "application/x-www-form-urlencoded"),
            ("accept", "application/json"),
            ("authorization", "Basic " + base64.b64encode(credentials.encode()).decode()),
            ("user-agent", "sluice"),
        ]
        self.claims = ClaimMap(config.claims)


class _Answer:
    __slots__ = ("identity", "until")

    def __init__(self, identity: Identity | None, until: float) -> None:
        self.identity = identity  # None: inactive
        self.until = until


class Introspector:
    """Checks opaque bearer tokens at the configured RFC 7662 endpoints; ``verify`` returns an Identity."""

    def __init__(self, configs: Sequence[IntrospectionConfig], client_factory: ClientFactory, *,
                 cache_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._endpoints = [_Endpoint(config) for config in configs]
        self._client_factory = client_factory
        self._clock = clock
        self._cache: OrderedDict[bytes, _Answer] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: dict[bytes, asyncio.Task[Identity]] = {}
        self.requests = 0  # introspection requests sent

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def verify(self, token: str) -> Identity:
        if not token or len(token) > _MAX_TOKEN_BYTES or not token.isprintable():
            raise AuthFailure("malformed", "the bearer token is empty, too long or not printable")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if self._clock() < hit.until:
                self._cache.move_to_end(digest)
                if hit.identity is None:
                    raise _inactive()
                return hit.identity
            del self._cache[digest]
        task = self._inflight.get(digest)
        if task is None:
            task = self._inflight[digest] = asyncio.ensure_future(self._introspect(token, digest))
            task.add_done_callback(lambda done: self._done(digest, done))
        return await asyncio.shield(task)

    def _done(self, digest: bytes, task: asyncio.Task[Identity]) -> None:
        self._inflight.pop(digest, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone

    async def _introspect(self, token: str, digest: bytes) -> Identity:
        client = self._client_factory()
        inactive_ttl = None
        unavailable = False
        for endpoint in self._endpoints:
            config = endpoint.config
            try:
                identity, until = await self._ask(client, endpoint, token)
            except _Inactive:
                ttl = config.inactive_ttl_s
                inactive_ttl = ttl if inactive_ttl is None else min(inactive_ttl, ttl)
                continue
            except IssuerUnavailable as exc:
                log.warning("auth: token introspection at %s failed: %s", config.endpoint, exc)
                unavailable = True
                continue
            self._store(digest, _Answer(identity, until))
            return identity
        if unavailable:
            raise AuthFailure("issuer_unavailable", "the token could not be checked (its introspection endpoint "
                                                    "is unreachable); try again later")
        if inactive_ttl:
            self._store(digest, _Answer(None, self._clock() + inactive_ttl))
        raise _inactive()

    async def _ask(self, client: UpstreamClient, endpoint: _Endpoint, token: str) -> tuple[Identity, float]:
        config = endpoint.config
        form = {"token": token}
        if config.token_type_hint is not None:
            form["token_type_hint"] = config.token_type_hint
        self.requests += 1
        status, data = await fetch(client, endpoint.endpoint, "POST", endpoint.headers,
                                   urlencode(form).encode(), config.timeout_s, MAX_ANSWER_BYTES)
        if status != 200:
            raise IssuerUnavailable(f"status {status}")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise IssuerUnavailable("the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise IssuerUnavailable("the answer is not a JSON object")
        if answer.get("active") is not True:
            raise _Inactive
        now = self._clock()
        until = now + config.max_ttl_s
        exp = answer.get("exp")
        expires = 0.0
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            expires = float(exp)
            until = min(until, expires)
        iss = answer.get("iss")
        issuer = iss if isinstance(iss, str) else config.endpoint
        return endpoint.claims.identity("introspection", answer, issuer, expires), until

    def _store(self, digest: bytes, answer: _Answer) -> None:
        if answer.until <= self._clock():
            return
        cache = self._cache
        cache[digest] = answer
        if len(cache) > self._cache_size:
            cache.popitem(last=False)


def _inactive() -> AuthFailure:
    return AuthFailure("inactive", "the bearer token is not active (revoked, expired or unknown); get a new one")
