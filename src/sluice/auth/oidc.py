"""OIDC discovery and an issuer's JWKS, fetched through the gateway's upstream client and cached.

One ``JwksCache`` per configured issuer holds its signing keys by ``kid``:

- the first verification fetches them (after discovery, unless ``jwks_uri`` is
  configured); they are refetched once older than ``jwks_ttl_s``;
- a ``kid`` it does not hold refetches them, at most once per
  ``jwks_min_refresh_s`` (a flood of made-up kids costs one fetch per interval),
  and every verification that misses meanwhile waits for that same fetch;
- a refetch replaces the keys: a key the issuer no longer publishes stops
  validating, and the verifier is told so that it forgets tokens verified with it;
- a failed refetch keeps the keys it had (stale beats down); with none yet, the
  verification fails as ``issuer_unavailable``.  Failures count as attempts for
  the rate limit, so a down issuer is not hammered.

Keys are built for one algorithm each (``PyJWK(jwk, algorithm)``), which checks
that the key type fits it (an RSA key never verifies an ES256 or HS256 token),
and RSA keys shorter than 2048 bits are ignored.  ``oct`` (symmetric) and
``use: enc`` keys are never used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..config.extras import missing_extra

try:
    from jwt import PyJWK
    from jwt.exceptions import PyJWTError
except ImportError as exc:  # the jwt extra is not installed (introspection's discovery shares it)
    raise missing_extra("jwt", "auth.introspection") from exc

from ..config.model import JwtIssuerConfig
from ..errors import DependencyUnavailable
from ..upstream import Origin, UpstreamClient, UpstreamError, parse_base_url
from .identity import AuthFailure

__all__ = ["ClientFactory", "Endpoint", "IssuerUnavailable", "JwksCache", "fetch", "fetch_json"]

log = logging.getLogger("sluice.auth")

ClientFactory = Callable[[], UpstreamClient]
MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or JWKS larger than this is refused
MIN_RSA_BITS = 2048  # NIST SP 800-131A; a shorter RSA key in a JWKS is ignored
_HEADERS = [("accept", "application/json"), ("user-agent", "sluice")]


class IssuerUnavailable(DependencyUnavailable):
    """An issuer's endpoint could not be used; the message is for the operator's log."""

    dependency = "a token issuer"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL split once into the client's origin (pool key, TLS context) and request target."""

    url: str
    origin: Origin
    target: str

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise IssuerUnavailable(f"not an http(s) URL: {url!r}")
        try:
            origin, _ = parse_base_url(url, ca_file=ca_file)
        except (ValueError, OSError) as exc:  # a bad port; an unreadable CA file
            raise IssuerUnavailable(f"cannot use {url!r}: {exc}") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, origin, target)


async def fetch(
    client: UpstreamClient, endpoint: Endpoint, method: str, headers: list[tuple[str, str]],
    body: bytes | None, timeout: float, limit: int,
) -> tuple[int, bytes]:
    """One exchange bounded by ``timeout`` seconds: (status, body); IssuerUnavailable when it fails."""
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        response = await client.request(endpoint.origin, method, endpoint.target, headers, body, deadline=deadline)
        data = response.read_arrived(limit)
        if data is None:
            data = await response.read(limit)
    except UpstreamError as exc:
        raise IssuerUnavailable(f"{method} {endpoint.url}: {exc}") from None
    return response.status, data


async def fetch_json(client: UpstreamClient, endpoint: Endpoint, timeout: float) -> dict[str, Any]:
    """GET a JSON object; IssuerUnavailable unless the answer is 200 with one."""
    status, data = await fetch(client, endpoint, "GET", _HEADERS, None, timeout, MAX_DOCUMENT_BYTES)
    if status != 200:
        raise IssuerUnavailable(f"GET {endpoint.url}: status {status}")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise IssuerUnavailable(f"GET {endpoint.url}: not JSON") from None
    if not isinstance(document, dict):
        raise IssuerUnavailable(f"GET {endpoint.url}: not a JSON object")
    return document


def _usable(jwk: Any) -> bool:
    return isinstance(jwk, dict) and jwk.get("kty") not in (None, "oct") and jwk.get("use", "sig") == "sig"


def _parse_jwks(document: dict[str, Any], url: str) -> dict[str | None, list[dict[str, Any]]]:
    """The usable keys of a JWKS by kid (None: keys without one)."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise IssuerUnavailable(f"GET {url}: not a JWKS (no keys list)")
    jwks: dict[str | None, list[dict[str, Any]]] = {}
    for jwk in keys:
        if _usable(jwk):
            kid = jwk.get("kid")
            jwks.setdefault(kid if isinstance(kid, str) else None, []).append(jwk)
    return jwks


class JwksCache:
    """The signing keys of one issuer (see the module docstring for when they are fetched)."""

    def __init__(self, config: JwtIssuerConfig, client_factory: ClientFactory, clock: Callable[[], float],
                 on_removed: Callable[[str, set[str | None]], None] | None = None) -> None:
        self.config = config
        self._client_factory = client_factory
        self._clock = clock
        self._on_removed = on_removed
        self._configured = Endpoint.parse(config.jwks_uri, config.ca_file) if config.jwks_uri else None
        self._jwks_endpoint = self._configured
        self._jwks: dict[str | None, list[dict[str, Any]]] | None = None  # kid → its JWKs (None: no kid)
        self._keys: dict[tuple[str | None, str], list[PyJWK]] = {}  # (kid, alg) → keys built for alg
        self._inflight: asyncio.Task[None] | None = None
        self.fetched_at = float("-inf")  # clock time of the last fetch that worked
        self.attempted_at = float("-inf")  # ... of the last one tried
        self.fetches = 0  # JWKS fetches tried (discovery not counted)

    async def keys_for(self, kid: str | None, alg: str) -> list[PyJWK]:
        """The keys that may have signed a token of ``alg`` and ``kid``; AuthFailure when there are none."""
        config = self.config
        now = self._clock()
        if (self._jwks is None or now - self.fetched_at >= config.jwks_ttl_s) and self._may_fetch(now):
            await self._refresh()
        if self._jwks is None:
            raise AuthFailure("issuer_unavailable", "the token's issuer could not be reached to check its "
                                                    "signature; try again later")
        keys = self._lookup(kid, alg)
        if keys is None and self._may_fetch(self._clock()):
            await self._refresh()
            keys = self._lookup(kid, alg)
        if keys is None:
            raise AuthFailure("unknown_key", "the token was signed with a key its issuer does not publish "
                                             "(kid unknown or retired); get a new token")
        if not keys:
            raise AuthFailure("wrong_algorithm", f"the token's key cannot be used with {alg}")
        return keys

    def _may_fetch(self, now: float) -> bool:
        return self._inflight is not None or now - self.attempted_at >= self.config.jwks_min_refresh_s

    def _lookup(self, kid: str | None, alg: str) -> list[PyJWK] | None:
        """None: no key of that kid; []: keys of that kid, none of which fits ``alg``."""
        built = self._keys.get((kid, alg))
        if built is not None:
            return built
        jwks = self._jwks
        if jwks is None or kid not in jwks:
            return None
        built = []
        for jwk in jwks[kid]:
            declared = jwk.get("alg")
            if declared is not None and declared != alg:
                continue
            try:
                key = PyJWK(jwk, alg)
                key.Algorithm.prepare_key(key.key)  # the curve must fit the algorithm too
            except PyJWTError:
                continue
            size = getattr(key.key, "key_size", None)
            if alg[:2] in ("RS", "PS") and isinstance(size, int) and size < MIN_RSA_BITS:
                log.warning("auth: issuer %s publishes an RSA key of %d bits (kid %r); under %d it is not used",
                            self.config.issuer, size, kid, MIN_RSA_BITS)
                continue
            built.append(key)
        self._keys[(kid, alg)] = built
        return built

    async def _refresh(self) -> None:
        """Fetches the keys, or joins the fetch already under way (a cancelled caller does not stop it)."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.ensure_future(self._fetch())
            task.add_done_callback(self._fetched)
        await asyncio.shield(task)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        if not task.cancelled() and (exc := task.exception()) is not None:  # retrieved even if no one waits
            log.error("auth: fetching the keys of issuer %s failed", self.config.issuer, exc_info=exc)

    async def _fetch(self) -> None:
        config = self.config
        self.attempted_at = self._clock()
        try:
            client = self._client_factory()
            if self._jwks_endpoint is None:
                self._jwks_endpoint = await self._discover(client)
            self.fetches += 1
            document = await fetch_json(client, self._jwks_endpoint, config.timeout_s)
            jwks = _parse_jwks(document, self._jwks_endpoint.url)
        except IssuerUnavailable as exc:
            self._jwks_endpoint = self._configured  # rediscover next time
            log.warning("auth: cannot fetch the signing keys of issuer %s: %s", config.issuer, exc)
            return
        self._install(jwks)
        self.fetched_at = self._clock()

    async def _discover(self, client: UpstreamClient) -> Endpoint:
        issuer = self.config.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await fetch_json(client, Endpoint.parse(url, self.config.ca_file), self.config.timeout_s)
        if document.get("issuer") != issuer:
            raise IssuerUnavailable(f"GET {url}: the document names issuer {document.get('issuer')!r}, not {issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IssuerUnavailable(f"GET {url}: no jwks_uri")
        return Endpoint.parse(jwks_uri, self.config.ca_file)

    def _install(self, jwks: dict[str | None, list[dict[str, Any]]]) -> None:
        old = self._jwks
        self._jwks = jwks
        self._keys = {}
        if old and self._on_removed is not None:
            removed = {kid for kid, jwk in old.items() if jwks.get(kid) != jwk}
            if removed:
                self._on_removed(self.config.issuer, removed)
