"""Bearer JWTs from configured issuers, verified by PyJWT and cached until they expire.

A token is checked in this order, cheapest first, so that a doomed token costs no
signature check and no key fetch:

1. the verified-token cache: SHA-256 of the token → (identity, exp + leeway), a
   bounded LRU; a hit costs a hash, a dict lookup and a comparison with the clock;
2. shape: three base64url segments, a JSON header naming ``alg``, a JSON payload;
3. issuer: the unverified ``iss`` picks the configured issuer (``wrong_issuer``
   when none), whose allowlist must hold ``alg`` (``wrong_algorithm``: never
   ``none``; HS* only for an issuer configured with a secret and nothing else);
4. ``exp`` (required), ``nbf`` and ``aud``, with the issuer's leeway;
5. the key: the configured secret for HS*, else the issuer's JWKS key of the
   token's ``kid`` built for ``alg`` (sluice.auth.oidc: a missing kid refetches);
6. the signature, by ``jwt.PyJWS`` with the key and only that algorithm;
7. user, team and roles from the claims (sluice.auth.identity.ClaimMap).

The claims checked in 3-4 are read before the signature is: they only decide to
refuse early.  A token is accepted only once PyJWS has verified the signature over
exactly those header and payload segments.

When a refetch shows that a key was withdrawn, the cached tokens it verified are
forgotten at once, so that they stop validating too.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from ..config.extras import missing_extra

try:
    from jwt import PyJWK, PyJWS
    from jwt.exceptions import (
        DecodeError,
        InvalidAlgorithmError,
        InvalidKeyError,
        InvalidSignatureError,
        PyJWTError,
    )
except ImportError as exc:  # the jwt extra is not installed: say which, not a traceback
    raise missing_extra("jwt", "auth.jwt") from exc

from ..config.model import JwtIssuerConfig
from .identity import AuthFailure, ClaimMap, Identity
from .oidc import ClientFactory, JwksCache

__all__ = ["MAX_TOKEN_BYTES", "JwtVerifier", "looks_like_jwt"]

MAX_TOKEN_BYTES = 16 * 1024  # a longer bearer token is refused unread
_SHAPE = re.compile(r"[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]*={0,2}")
_HMAC = frozenset({"HS256", "HS384", "HS512"})
_B64URL_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments separated by dots (an API key like "sk-..." is not one); the last may be empty.

    The auth stage asks this of every bearer token, cached or not, so it is one C pass and no regex:
    deleting the base64url characters must leave exactly the two dots.
    """
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        return False
    raw = token.encode("ascii")
    if raw.translate(None, _B64URL_CHARS) != b"..":
        return False
    first = raw.index(b".")
    return first > 0 and raw[first + 1] != 0x2E  # neither the header nor the payload is empty


def _segment(segment: str) -> Any:
    return orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _malformed(what: str) -> AuthFailure:
    return AuthFailure("malformed", f"the bearer token is not a valid JWT ({what})")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _malformed(f"its {name} claim is not a number")
    return float(value)


class _Issuer:
    """One configured issuer, prepared for verification."""

    __slots__ = ("algorithms", "audience", "claims", "config", "jwks", "secret")

    def __init__(self, config: JwtIssuerConfig, jwks: JwksCache | None) -> None:
        algorithms = frozenset(config.algorithms)
        hmac = algorithms & _HMAC
        # The loader refuses these; a verifier built from other configs refuses them too.
        if any(alg.lower() == "none" for alg in algorithms):
            raise ValueError(f"issuer {config.issuer!r}: alg 'none' is never accepted")
        if hmac and (config.hs256_secret is None or hmac != algorithms):
            raise ValueError(f"issuer {config.issuer!r}: HS* algorithms need hs256_secret and no others")
        if config.hs256_secret is not None and not hmac:
            raise ValueError(f"issuer {config.issuer!r}: hs256_secret needs HS* algorithms")
        self.config = config
        self.algorithms = algorithms
        audience = config.audience
        self.audience = frozenset((audience,) if isinstance(audience, str) else audience)
        self.secret = config.hs256_secret.encode() if config.hs256_secret is not None else None
        self.jwks = jwks
        self.claims = ClaimMap(config.claims)


class _Verified:
    __slots__ = ("identity", "issuer", "kid", "valid_until")

    def __init__(self, identity: Identity, valid_until: float, issuer: str, kid: str | None) -> None:
        self.identity = identity
        self.valid_until = valid_until
        self.issuer = issuer
        self.kid = kid


class JwtVerifier:
    """Verifies bearer JWTs of the configured issuers; ``verify`` returns an Identity or raises AuthFailure.

    One per worker (event loop).  ``client_factory`` returns the worker's UpstreamClient (made inside the
    running loop, e.g. ``app.client``); ``clock`` is Unix time, for exp/nbf and the JWKS refresh intervals.
    """

    def __init__(self, configs: Sequence[JwtIssuerConfig], client_factory: ClientFactory, *,
                 cache_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._cache_size = cache_size
        self._jws = PyJWS()
        self._issuers: dict[str, _Issuer] = {}
        for config in configs:
            jwks = None
            if config.hs256_secret is None:
                jwks = JwksCache(config, client_factory, clock, self._forget)
            self._issuers[config.issuer] = _Issuer(config, jwks)
        self.signature_checks = 0  # signatures verified (cache misses that got that far)

    def jwks(self, issuer: str) -> JwksCache | None:
        """The key cache of a configured issuer (None for an HS* issuer)."""
        return self._issuers[issuer].jwks

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_BYTES:
            raise _malformed(f"longer than {MAX_TOKEN_BYTES} bytes")
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if self._clock() < hit.valid_until:
                self._cache.move_to_end(digest)
                return hit.identity
            del self._cache[digest]
            raise AuthFailure("expired", "the bearer token has expired; get a new one from its issuer")
        return await self._verify(token, digest)

    async def _verify(self, token: str, digest: bytes) -> Identity:
        if _SHAPE.fullmatch(token) is None:
            raise _malformed("it needs three base64url segments separated by dots")
        head, body, _ = token.split(".")
        try:
            header, claims = _segment(head), _segment(body)
        except ValueError:
            raise _malformed("its header or payload is not base64url-encoded JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _malformed("its header and payload must be JSON objects")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _malformed("its header names no algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _malformed("its kid is not a string")
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            shown = f"issuer {iss[:200]!r}" if isinstance(iss, str) else "no issuer (iss)"
            raise AuthFailure("wrong_issuer", f"the token names {shown}, which this gateway does not trust")
        if alg not in issuer.algorithms:
            raise AuthFailure("wrong_algorithm", f"tokens of this issuer must be signed with "
                                                 f"{' or '.join(sorted(issuer.algorithms))}, not {alg[:20]!r}")
        expires = self._check_claims(issuer, claims)
        if issuer.secret is not None:
            self._check_signature(token, (issuer.secret,), alg)
        else:
            assert issuer.jwks is not None
            self._check_signature(token, await issuer.jwks.keys_for(kid, alg), alg)
        identity = issuer.claims.identity("jwt", claims, issuer.config.issuer, expires)
        cache = self._cache
        cache[digest] = _Verified(identity, expires + issuer.config.leeway_s, issuer.config.issuer, kid)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return identity

    def _check_claims(self, issuer: _Issuer, claims: Mapping[str, Any]) -> float:
        """exp, nbf and aud with the issuer's leeway; returns exp."""
        now = self._clock()
        leeway = issuer.config.leeway_s
        exp = _number(claims, "exp")
        if exp is None:
            raise _malformed("it has no exp claim; tokens must expire")
        if now >= exp + leeway:
            raise AuthFailure("expired", "the bearer token has expired; get a new one from its issuer")
        nbf = _number(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise AuthFailure("not_yet_valid", "the bearer token is not valid yet (nbf is in the future); "
                                               "check the clocks of its issuer and client")
        aud = claims.get("aud")
        audiences = (aud,) if isinstance(aud, str) else aud if isinstance(aud, list) else ()
        if not any(isinstance(a, str) and a in issuer.audience for a in audiences):
            expected = " or ".join(sorted(issuer.audience))
            raise AuthFailure("wrong_audience", f"the token is not issued for this gateway (aud must name {expected})")
        return exp

    def _check_signature(self, token: str, keys: Sequence[PyJWK | bytes], alg: str) -> None:
        """PyJWS verifies the signature with each candidate key (one, unless the token names no kid)."""
        failure = AuthFailure("bad_signature", "the bearer token's signature does not verify")
        for key in keys:
            self.signature_checks += 1
            try:
                self._jws.decode_complete(token, key, algorithms=[alg])
                return
            except InvalidSignatureError:
                continue
            except (InvalidAlgorithmError, InvalidKeyError):
                failure = AuthFailure("wrong_algorithm", f"the token's key cannot be used with {alg}")
            except DecodeError:
                raise _malformed("PyJWT cannot decode it") from None
            except PyJWTError:
                raise _malformed("PyJWT refuses its header") from None
        raise failure

    def _forget(self, issuer: str, kids: set[str | None]) -> None:
        """Drops cached tokens verified with keys the issuer no longer publishes."""
        stale = [digest for digest, entry in self._cache.items() if entry.issuer == issuer and entry.kid in kids]
        for digest in stale:
            del self._cache[digest]
