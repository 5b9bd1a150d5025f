"""The auth stage: IP rules, the credential, the route's permission, and signatures once the body is read.

``Gateway.handle`` runs it before dispatch on every path but the health probes
and /metrics::

    if not stage.admit(ex, ctx):          # no await on a cached key
        await stage.admit_slow(ex, ctx)   # a key not cached yet, a JWT, an introspected token

In order: the global IP rules (``auth.ip_allow`` / ``auth.ip_deny``, on the
client address of sluice.pipeline.iprules.ClientIp, which the rate limits use
too), the credential (sluice.auth.keys.Authenticator), the key's own IP rules,
the permission the route needs (sluice.pipeline.rbac), and, for a key that signs
its requests, the signature of a request without a body (GET, HEAD, DELETE,
OPTIONS: over an empty body).  It sets ``ctx.principal``, ``ctx.key_prefix`` and
``ctx.user``.  The handlers that read a body (POST, PUT, PATCH) call
``verify_body`` (a no-op unless the key signs; with Redis, it returns the
signature's claim to await, below) and check the model
(``rbac.require_model``); a route that takes no body for those methods answers
405 or 404 before it acts.  Any other method (PROPFIND, TRACE, …) is refused
for a signing key at once (401 ``invalid_signature``): nothing would verify it
later, and the passthrough would relay it.

With Redis (``auth.redis``, else ``ratelimit.redis``) the stage opens the
worker's change notices (sluice.auth.changes: the authenticator listens, the
admin API publishes) and claims each signed request's signature there
(``Signatures.claim``: a replay to another worker or instance is refused too),
once it is verified: only a signature made with the key's secret is claimed, a
wrong one costs Redis nothing.  That claim is the one await a signed request
adds: for a request without a body in ``admit_slow`` (``admit`` leaves those
of a signing key to it), for one with a body where the handler verifies it::

    if (claim := stage.verify_body(ex, ctx, body)) is not None:
        await claim                       # a signing key, signatures shared

An unsigned request pays nothing for it, nor a signed one without Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..auth.changes import ChangeNotices, auth_redis_url
from ..auth.keys import Authenticator, missing_key
from ..auth.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, Signatures
from ..config import Config
from ..errors import Forbidden, GatewayError, Unauthorized
from ..store import display_prefix, open_store
from .iprules import ClientIp, IpRules, parse_networks
from .rbac import permission_for, require

if TYPE_CHECKING:
    from ..auth.principal import Principal
    from ..server.app import RequestContext
    from ..server.exchange import Exchange
    from ..upstream import UpstreamClient

__all__ = ["AuthStage", "presented_credential"]

_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})  # signed over an empty body, here
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # signed over their body, by the handler that reads it


def presented_credential(ex: Exchange) -> str:
    """The bearer token, else the x-api-key header; Unauthorized (missing_api_key) when there is neither."""
    authorization = ex.header("authorization")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = token.strip()
            if token:
                return token
            raise missing_key("The Authorization header carries no key")
    key = ex.header("x-api-key")
    if key is not None and key.strip():
        return key.strip()
    if authorization is not None:
        raise missing_key("The Authorization header must use the Bearer scheme")
    raise missing_key()


def _shown(token: str) -> str | None:
    """What the logs may show of a refused credential: a key's display prefix, nothing of a token."""
    return display_prefix(token) if token.startswith("sk-") and len(token) >= 20 and token.isprintable() else None


def _check_method(ex: Exchange) -> None:
    """A signing key's request without a body to verify later must be one signed over an empty body."""
    if ex.method not in _BODYLESS:
        raise Unauthorized(f"This key signs its requests, and signed requests must use GET, HEAD, DELETE, "
                           f"OPTIONS, POST, PUT or PATCH; {ex.method[:32]} cannot be verified.",
                           code="invalid_signature", reason="signature_method")


def _ip_refused(ip: str, by_key: bool) -> Forbidden:
    scope = "with this credential" if by_key else "to this gateway"
    return Forbidden(f"Requests from your address ({ip[:64]}) are not allowed {scope}.", code="ip_not_allowed",
                     reason="ip_not_allowed")


class AuthStage:
    """One per worker (see the module docstring)."""

    def __init__(self, config: Config, client_ip: ClientIp, client_factory: Callable[[], UpstreamClient]) -> None:
        auth = config.auth
        url = auth_redis_url(config)
        # Made here, connected at first use: Redis down at start stops nothing.
        self.notices = ChangeNotices(url, auth.redis_prefix, timeout_s=auth.redis_timeout_s) if url else None
        self.authenticator = Authenticator(auth, open_store(config.store), client_factory, notices=self.notices)
        self.store = self.authenticator.store
        self.client_ip = client_ip
        rules = IpRules(parse_networks(auth.ip_allow), parse_networks(auth.ip_deny))
        self.ip_rules = rules if rules else None
        self.signatures = Signatures(auth.signature_skew_s, redis=self.notices.client if self.notices else None,
                                     prefix=auth.redis_prefix, fail_closed=auth.signature_fail_closed,
                                     timeout_s=auth.redis_timeout_s)
        self._shared_replays = self.signatures.shared

    def admit(self, ex: Exchange, ctx: RequestContext) -> bool:
        """True once the caller is known and allowed here; False when that needs an await (``admit_slow``)."""
        keys = self.authenticator
        if not keys.running:
            keys.start()
        rules = self.ip_rules
        if rules is not None and not rules.allows(ip := self.client_ip(ex)):
            raise _ip_refused(ip, False)
        token = presented_credential(ex)
        try:
            principal = keys.cached(token)
        except GatewayError:
            ctx.key_prefix = _shown(token)
            raise
        if principal is None or (principal.signing_secret is not None and self._shared_replays
                                 and ex.method not in _WITH_BODY):
            return False  # not cached, or a signature to claim on Redis now: both need an await
        self._authorize(ex, ctx, principal)
        return True

    async def admit_slow(self, ex: Exchange, ctx: RequestContext) -> None:
        token = presented_credential(ex)
        try:
            principal = await self.authenticator.authenticate(token)
        except GatewayError:
            ctx.key_prefix = _shown(token)
            raise
        secret = principal.signing_secret
        if secret is not None and self._shared_replays and ex.method not in _WITH_BODY:
            await self._authorize_claimed(ex, ctx, principal, secret)
        else:
            self._authorize(ex, ctx, principal)

    def _authorize(self, ex: Exchange, ctx: RequestContext, principal: Principal) -> None:
        self._permit(ex, ctx, principal)
        secret = principal.signing_secret
        if secret is not None and ex.method not in _WITH_BODY:
            _check_method(ex)
            self._verify(ex, secret, b"")

    async def _authorize_claimed(self, ex: Exchange, ctx: RequestContext, principal: Principal,
                                 secret: bytes) -> None:
        """``_authorize`` for a signing key's request without a body when signatures are claimed on Redis: its
        signature verified over an empty body, then claimed."""
        self._permit(ex, ctx, principal)
        _check_method(ex)
        await self.signatures.claim(self._verify(ex, secret, b""))

    def _permit(self, ex: Exchange, ctx: RequestContext, principal: Principal) -> None:
        """The caller into ``ctx``, then its own IP rules and the route's permission."""
        ctx.principal = principal
        ctx.key_prefix = principal.key_prefix or principal.key_id
        ctx.user = principal.user
        rules = principal.ip_rules
        if rules is not None and not rules.allows(ip := self.client_ip(ex)):
            raise _ip_refused(ip, True)
        permission = permission_for(ex.path)
        if permission is not None:
            require(principal, permission)

    def verify_body(self, ex: Exchange, ctx: RequestContext, body: bytes) -> Coroutine[Any, Any, None] | None:
        """The request's signature over ``body`` (Unauthorized, invalid_signature), when the key signs; then, when
        signatures are shared, its claim on Redis, returned for the caller to await before the request acts (None:
        nothing to await)."""
        principal = ctx.principal
        if principal is None or principal.signing_secret is None:
            return None
        digest = self._verify(ex, principal.signing_secret, body)
        return self.signatures.claim(digest) if self._shared_replays else None

    def _verify(self, ex: Exchange, secret: bytes, body: bytes) -> bytes:
        return self.signatures.verify(secret, ex.method, ex.path, ex.header(TIMESTAMP_HEADER),
                                      ex.header(SIGNATURE_HEADER), body, ex.query)

    async def aclose(self) -> None:
        await self.authenticator.aclose()
