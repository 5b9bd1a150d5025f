"""The auth stage: IP rules, the credential, the route's permission, and signatures once the body is read.

Every route's pipeline but the health probes' and /metrics' has it (server/routes.py);
its request step awaits nothing for a cached key::

    on_request = admit(ex, ctx) or admit_slow(ex, ctx)   # a key not cached yet, a JWT, an introspected token

In order: the global IP rules (``auth.ip_allow`` / ``auth.ip_deny``, on the
client address of sluice.auth.iprules.ClientIp, which the rate limits use
too), the credential (sluice.auth.keys.Authenticator), the key's own IP rules,
the permission the route needs (sluice.auth.rbac), and, for a key that signs
its requests, the signature of a request without a body (GET, HEAD, DELETE,
OPTIONS: over an empty body).  It sets ``ctx.principal``, ``ctx.key_prefix`` and
``ctx.user``.  Once a body is read (POST, PUT, PATCH), the ``ModelAccess`` stage
(or the passthrough's request stage) calls ``verify_body`` (a no-op unless the
key signs; with Redis, it returns the signature's claim to await, below) and
checks the model against the key's globs; a route that takes no body for those
methods answers 405 or 404 before it acts.  Any other method (PROPFIND, TRACE, …) is refused
for a signing key at once (401 ``invalid_signature``): nothing would verify it
later, and the passthrough would relay it.

With Redis (``auth.redis``, else ``ratelimit.redis``) the stage opens the
worker's change notices (sluice.auth.changes: the authenticator listens, the
admin API publishes) and claims each signed request's signature there
(``Signatures.claim``: a replay to another worker or instance is refused too),
once it is verified: only a signature made with the key's secret is claimed, a
wrong one costs Redis nothing.  That claim is the one await a signed request
adds: for a request without a body in ``admit_slow`` (``admit`` leaves those
of a signing key to it), for one with a body where ``ModelAccess`` verifies it::

    if (claim := stage.verify_body(ex, ctx, body)) is not None:
        await claim                       # a signing key, signatures shared

An unsigned request pays nothing for it, nor a signed one without Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..auth.changes import ChangeNotices, auth_redis_url
from ..auth.credential import presented_credential
from ..auth.failures import FailureLimits
from ..auth.iprules import ClientIp, IpRules, parse_networks
from ..auth.keys import Authenticator
from ..auth.rbac import model_not_allowed, permission_for, require
from ..auth.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, Signatures
from ..config import Config
from ..context import Exchange, RequestContext
from ..errors import Forbidden, GatewayError, Unauthorized
from ..store import display_prefix, open_store
from .stage import Stage

if TYPE_CHECKING:
    from ..auth.principal import Principal
    from ..upstream import UpstreamClient

__all__ = ["AuthStage", "ModelAccess"]

_MEMO_MAX = 10_000
_UNSEEN = "\0unseen"  # a path not in the permission memo yet (None is an answer: no permission needed)
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})  # signed over an empty body, here
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})  # signed over their body, by the handler that reads it


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


class AuthStage(Stage):
    """One per worker (see the module docstring)."""

    name = "auth"

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
        self._bearers: dict[str, str] = {}  # the admit path's memos (``_remember_bearer``, ``_permission_of``)
        self._permissions: dict[str, str | None] = {}
        # Refused credentials per client address (sluice.auth.failures): 429 before a store lookup past the limit.
        self.failures = FailureLimits(auth.failure_limit, auth.failure_period_s) if auth.failure_limit else None

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[None] | None:
        """IP rules, the credential, RBAC on the route: no await for a cached key."""
        return None if self.admit(ex, ctx) else self.admit_slow(ex, ctx)

    def admit(self, ex: Exchange, ctx: RequestContext) -> bool:
        """True once the caller is known and allowed here; False when that needs an await (``admit_slow``)."""
        keys = self.authenticator
        if not keys.running:
            keys.start()
        rules = self.ip_rules
        if rules is not None and not rules.allows(ip := self.client_ip(ex)):
            raise _ip_refused(ip, False)
        authorization = ex.header("authorization")
        token = self._bearers.get(authorization) if authorization is not None else None
        if token is None:
            token = presented_credential(ex)
            if authorization is not None and authorization.startswith("Bearer "):
                self._remember_bearer(authorization, token)
        ctx.credential = token
        try:
            principal = keys.cached(token)
        except GatewayError as refusal:
            ctx.key_prefix = _shown(token)
            self._failed(ex, refusal)
            raise
        if principal is None or (principal.signing_secret is not None and self._shared_replays
                                 and ex.method not in _WITH_BODY):
            if principal is None and self.failures is not None:  # a lookup ahead: not past the failure limit
                ctx.key_prefix = _shown(token)
                self.failures.check(self.client_ip(ex))
            return False  # not cached, or a signature to claim on Redis now: both need an await
        if principal.signing_secret is not None or principal.ip_rules is not None:
            self._authorize(ex, ctx, principal)
            return True
        # The usual caller in one step: no signature, no IP rules of its own (``_permit`` without them).
        ctx.principal = principal
        ctx.key_prefix = principal.key_prefix or principal.key_id
        ctx.user = principal.user
        path = ex.path
        permission = self._permissions.get(path, _UNSEEN)
        if permission is _UNSEEN:
            permission = self._permission_of(path)
        if permission is not None and not principal.allows(permission):
            require(principal, permission)  # refuses, naming the permission
        return True

    def _remember_bearer(self, authorization: str, token: str) -> None:
        """``Authorization`` header -> the token it carries, so that a caller's header is parsed once (bounded: a
        flood of made-up keys cannot grow it)."""
        if len(self._bearers) >= _MEMO_MAX:
            self._bearers.clear()
        self._bearers[authorization] = token

    def _permission_of(self, path: str) -> str | None:
        """The permission a path needs (sluice.auth.rbac.permission_for), remembered per path (bounded)."""
        if len(self._permissions) >= _MEMO_MAX:
            self._permissions.clear()
        permission = self._permissions[path] = permission_for(path)
        return permission

    async def admit_slow(self, ex: Exchange, ctx: RequestContext) -> None:
        token = ctx.credential
        if token is None:
            ctx.credential = token = presented_credential(ex)
        try:
            principal = await self.authenticator.authenticate(token)
        except GatewayError as refusal:
            ctx.key_prefix = _shown(token)
            self._failed(ex, refusal)
            raise
        secret = principal.signing_secret
        if secret is not None and self._shared_replays and ex.method not in _WITH_BODY:
            await self._authorize_claimed(ex, ctx, principal, secret)
        else:
            self._authorize(ex, ctx, principal)

    def _failed(self, ex: Exchange, refusal: GatewayError) -> None:
        """A refused credential counts against its client address (AuthThrottled instead, past the limit)."""
        if self.failures is not None and isinstance(refusal, Unauthorized):
            self.failures.failed(self.client_ip(ex))

    def stats(self) -> dict[str, Any]:
        """For /health/details: the key cache, the known-key filter, the store's calls, the failure limits."""
        stats = self.authenticator.stats()
        state = {f"auth_{name}": stats[name] for name in ("lookups", "filtered", "filter_keys", "store_calls", "polls")}
        return {**state, **(self.failures.stats() if self.failures is not None else {})}

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


class ModelAccess(Stage):
    """Once the body is read (after the decode stage): its signature, for keys that sign, and the model it names,
    against the globs of the key and its roles (RBAC on models).  A verified signature's claim on Redis, when
    one is owed, is what the pipeline awaits."""

    name = "model_access"

    def __init__(self, auth: AuthStage) -> None:
        self.auth = auth

    def on_request(self, ex: Exchange, ctx: RequestContext) -> Awaitable[None] | None:
        principal = ctx.principal
        if principal is None:
            return None  # an open path: nothing to check against
        claim = self.auth.verify_body(ex, ctx, ctx.body or b"") if principal.signing_secret is not None else None
        model = ctx.model
        if model is not None and not principal.may_use(model):
            if claim is not None:
                claim.close()  # refused here: nothing to claim
            raise model_not_allowed(model)
        return claim
