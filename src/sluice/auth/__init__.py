"""Authentication of callers: who a credential stands for, or why it is refused.

- ``sluice.auth.identity``: Identity, AuthFailure (with its reasons) and the claim mapping;
- ``sluice.auth.jwt``: bearer JWTs of configured issuers (JwtVerifier, looks_like_jwt);
- ``sluice.auth.oidc``: OIDC discovery and the issuers' JWKS caches;
- ``sluice.auth.introspection``: opaque tokens by RFC 7662 introspection (Introspector);
- ``sluice.auth.keys``: API keys through the in-process cache and the store's change feed, tokens through
  the two above (Authenticator), and ``prepare_store`` (migrations before the workers start);
- ``sluice.auth.principal``: who is calling (Principal), its permissions from the role table;
- ``sluice.auth.signing``: HMAC request signatures of keys that sign, with their replay memory (per worker,
  and on Redis across instances);
- ``sluice.auth.changes``: change notices on Redis pub/sub (ChangeNotices): a committed change wakes every
  worker's change-feed reader;
- ``sluice.auth.credential``: the caller's credential, read from its headers once per request;
- ``sluice.auth.iprules``: the caller's address (ClientIp, shared with the rate limits) and allow/deny networks
  (IpRules);
- ``sluice.auth.rbac``: the permission each route needs, and the 403s (the permissions a role may list are the
  config's vocabulary, ``sluice.config.permissions``).

The request-path stage that uses them is ``sluice.pipeline.auth``; the admin API and the manager behind it
(keys, users, teams, roles) are ``sluice.admin``'s.

Only the identity types are imported here: the JWT modules pull in PyJWT and
cryptography, which a gateway without auth.jwt or auth.introspection never loads.
"""

from .identity import REASONS, AuthFailure, ClaimMap, Identity, Reason

__all__ = ["REASONS", "AuthFailure", "ClaimMap", "Identity", "Reason"]
