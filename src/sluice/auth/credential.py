"""The caller's credential, read from its headers once per request onto ``ctx.credential``.

The auth stage reads it strictly (``presented_credential``: a request without one is refused); the
rate limits and quotas, which count per key even when authentication is off, read it leniently
(``credential_of``: None when there is none) and only when the auth stage did not.  Either way the
headers are parsed once, and every later reader (limits, quotas, the access log's key prefix) takes
it from the context.  Its digest (``key_digest``: the hex SHA-256 the key store keeps, whose first 24
digits name the key in rate-limit buckets) is computed once per key per process, not per request.
"""

from __future__ import annotations

import hashlib

from ..context import Exchange, RequestContext
from ..errors import Unauthorized

__all__ = ["credential_of", "key_digest", "presented_credential", "presented_key"]

_DIGESTS: dict[str, str] = {}  # the keys seen lately -> their digests: a dict lookup instead of a SHA-256
_DIGESTS_MAX = 10_000  # bounded: random keys sent by a flood cannot grow it


def key_digest(key: str) -> str:
    """The hex SHA-256 of a presented key (sluice.store.hash_key's), from a bounded per-process cache."""
    digest = _DIGESTS.get(key)
    if digest is None:
        if len(_DIGESTS) >= _DIGESTS_MAX:
            _DIGESTS.clear()
        digest = _DIGESTS[key] = hashlib.sha256(key.encode()).hexdigest()
    return digest


def presented_credential(ex: Exchange) -> str:
    """The bearer token, else the x-api-key header; Unauthorized (missing_api_key) when there is neither."""
    authorization = ex.header("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = token.strip()
            if token:
                return token
            raise _missing("The Authorization header carries no key")
    key = ex.header("x-api-key")
    if key is not None and key.strip():
        return key.strip()
    if authorization is not None:
        raise _missing("The Authorization header must use the Bearer scheme")
    raise _missing()


def credential_of(ex: Exchange, ctx: RequestContext) -> str | None:
    """The credential the auth stage read, else the one the headers carry (None when they carry none)."""
    credential: str | None = ctx.credential
    if credential is None:
        ctx.credential = credential = presented_key(ex)
    return credential


def presented_key(ex: Exchange) -> str | None:
    """The bearer token, else the x-api-key header, else None (no refusal: for counting, not for admitting)."""
    authorization = ex.header("authorization")
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return ex.header("x-api-key") or None


def _missing(problem: str | None = None) -> Unauthorized:
    from .keys import missing_key  # the refusal's wording lives with the keys

    return missing_key(problem) if problem is not None else missing_key()
