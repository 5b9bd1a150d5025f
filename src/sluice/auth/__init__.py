"""Authentication of callers: who a credential stands for, or why it is refused.

- ``sluice.auth.identity``: Identity, AuthFailure (with its reasons) and the claim mapping;
- ``sluice.auth.jwt``: bearer JWTs of configured issuers (JwtVerifier, looks_like_jwt);
- ``sluice.auth.oidc``: OIDC discovery and the issuers' JWKS caches;
- ``sluice.auth.introspection``: opaque tokens by RFC 7662 introspection (Introspector).

Only the identity types are imported here: the JWT modules pull in PyJWT and
cryptography, which a gateway without auth.jwt or auth.introspection never loads.
"""

from .identity import REASONS, AuthFailure, ClaimMap, Identity, Reason

__all__ = ["REASONS", "AuthFailure", "ClaimMap", "Identity", "Reason"]
