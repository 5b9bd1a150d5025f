"""The admin API: keys, users, teams, roles and the audit log over HTTP, JSON in and out.

    POST   /admin/keys                  create (201; the key shown once)     admin:keys
    GET    /admin/keys                  list (owner_user, owner_team, include_revoked, after, limit)
    GET    /admin/keys/{id}             one key (never the key or its hash)
    PATCH  /admin/keys/{id}             change the updatable fields
    POST   /admin/keys/{id}/revoke      revoke now
    POST   /admin/keys/{id}/rotate      a new key (201, shown once); the old works for grace_s
    POST   /admin/{users,teams,roles}   create (201)                         admin:users, admin:teams, admin:roles
    GET    /admin/{users,teams,roles}   list (after, limit; users also team)
    GET    /admin/{users,teams,roles}/{id}, PATCH …/{id}, DELETE …/{id}
    GET    /admin/audit                 records (action, actor, target, since, until, after_seq, limit)  admin:audit
    GET    /admin/audit/verify          {ok, first_bad_seq, checked}

The routes exist only when ``auth.enabled``: without authentication they answer
404 like any unknown path, never open to everyone.  Each handler requires its
permission (``_require``, on top of the auth stage's check by path) and the
checked, audited work is ``sluice.admin.manager.Manager``'s, which the CLI shares.
The caller acts with its own permissions and model limits: it grants no role
holding more than it holds, no model outside its own (a model-limited caller
makes only keys limited to its models), and only a holder of ``*`` changes the
built-in or configured roles (403 ``permission_denied`` naming the missing
permission).
Every answer, errors included, carries ``cache-control: no-store`` (the
gateway's security headers on /admin); errors are in OpenAI's shape and name
the field at fault.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson

from ..auth import rbac
from ..config.permissions import BUILTIN_ROLES
from ..errors import InvalidRequest, Unauthorized
from .bodies import (
    KeyCreate,
    KeyRevoke,
    KeyRotate,
    KeyUpdate,
    RoleCreate,
    RoleUpdate,
    TeamCreate,
    TeamUpdate,
    UserCreate,
    UserUpdate,
    decode_body,
    parse_time,
)
from .grants import Actor
from .manager import Manager

if TYPE_CHECKING:
    from ..auth.audit import AuditLog
    from ..config import Config
    from ..context import Exchange, RequestContext
    from ..pipeline.auth import AuthStage

__all__ = ["PREFIX", "AdminApi", "mount_admin"]

PREFIX = "/admin/"
MAX_ADMIN_BODY = 1024 * 1024
_JSON = ("content-type", "application/json")

Handler = Callable[["Exchange", "RequestContext"], Awaitable[None]]
Work = Callable[["Exchange", "RequestContext"], Awaitable[tuple[int, Any]]]


def mount_admin(config: Config, auth: AuthStage | None, audit: AuditLog | None,
                routes: dict[str, dict[str, Handler]]) -> AdminApi | None:
    """Adds the admin routes without ids to ``routes`` and answers the API (its ``routes_for`` serves the
    paths with ids); None, and nothing added, when authentication is off.

    After each change the worker that made it reads the store's change feed at once, so that it answers
    with the change right after (a revoked key: 401); the other workers and instances within
    ``auth.revocation_poll_s``, or at once with Redis (the change announced on pub/sub)."""
    if not config.auth.enabled or auth is None or auth.store is None or audit is None:
        return None
    builtin = set(BUILTIN_ROLES) | set(config.auth.roles)
    manager = Manager(auth.store, audit, builtin_roles=builtin, config_roles=config.auth.roles,
                      on_change=auth.authenticator.poll,
                      publish=auth.notices.publish if auth.notices is not None else None)  # Redis pub/sub
    api = AdminApi(manager, auth, min(config.server.max_body_bytes, MAX_ADMIN_BODY))
    routes.update(api.routes())
    return api


class AdminApi:
    """The handlers; ``routes()`` the exact paths, ``routes_for(path)`` those with an id."""

    def __init__(self, manager: Manager, auth: AuthStage, max_body: int) -> None:
        self.manager = manager
        self.auth = auth  # the signatures of admin request bodies
        self.client_ip = auth.client_ip
        self.max_body = max_body

    def routes(self) -> dict[str, dict[str, Handler]]:
        m = self.manager
        return {
            "/admin/keys": {"GET": self._wrap("admin:keys", self._list_keys),
                            "POST": self._wrap("admin:keys", self._create(KeyCreate, m.create_key))},
            "/admin/users": {"GET": self._wrap("admin:users", self._list_users),
                             "POST": self._wrap("admin:users", self._create(UserCreate, m.create_user))},
            "/admin/teams": {"GET": self._wrap("admin:teams", self._lister(m.list_teams)),
                             "POST": self._wrap("admin:teams", self._create(TeamCreate, m.create_team))},
            "/admin/roles": {"GET": self._wrap("admin:roles", self._lister(m.list_roles)),
                             "POST": self._wrap("admin:roles", self._create(RoleCreate, m.create_role))},
            "/admin/audit": {"GET": self._wrap("admin:audit", self._list_audit)},
            "/admin/audit/verify": {"GET": self._wrap("admin:audit", self._verify_audit)},
        }

    def routes_for(self, path: str) -> dict[str, Handler] | None:
        """The methods of an admin path with an id (``/admin/keys/{id}``, ``…/{id}/revoke``), or None."""
        if not path.startswith(PREFIX):
            return None
        parts = path[len(PREFIX):].split("/")
        if len(parts) < 2 or not parts[1]:
            return None
        kind, ident, action = parts[0], unquote(parts[1]), "/".join(parts[2:])
        m = self.manager
        if kind == "keys":
            if action == "":
                return {"GET": self._wrap("admin:keys", self._get(ident, m.get_key)),
                        "PATCH": self._wrap("admin:keys", self._update(ident, KeyUpdate, m.update_key))}
            if action == "revoke":
                return {"POST": self._wrap("admin:keys", self._revoke(ident))}
            if action == "rotate":
                return {"POST": self._wrap("admin:keys", self._rotate(ident))}
            return None
        found: dict[str, tuple[Any, Any, Any, Any]] = {
            "users": (m.get_user, UserUpdate, m.update_user, m.delete_user),
            "teams": (m.get_team, TeamUpdate, m.update_team, m.delete_team),
            "roles": (m.get_role, RoleUpdate, m.update_role, m.delete_role),
        }
        if kind not in found or action:
            return None
        get, update_body, update, delete = found[kind]
        permission = f"admin:{kind}"
        return {"GET": self._wrap(permission, self._get(ident, get)),
                "PATCH": self._wrap(permission, self._update(ident, update_body, update)),
                "DELETE": self._wrap(permission, self._delete(ident, delete))}

    # -- plumbing -----------------------------------------------------------------------------------------

    def _wrap(self, permission: str, work: Work) -> Handler:
        """The permission checked, the work done, its answer sent as JSON (the gateway adds no-store on /admin)."""

        async def handler(ex: Exchange, ctx: RequestContext) -> None:
            _require(ctx, permission)
            status, data = await work(ex, ctx)
            await ex.respond(status, ctx.headers(_JSON), orjson.dumps(data))

        return handler

    def _actor(self, ex: Exchange, ctx: RequestContext) -> Actor:
        principal = ctx.principal
        assert principal is not None  # _require ran
        prefix = principal.key_prefix if principal.kind == "key" else None  # a static key's id names it already
        # The caller's permissions and its key's own model globs: the manager lets it grant no more than these.
        return Actor(principal.actor, self.client_ip(ex), prefix, principal.permissions, principal.models)

    async def _body(self, ex: Exchange, ctx: RequestContext, kind: type[Any]) -> Any:
        body = await ex.read_body(self.max_body)
        if (claim := self.auth.verify_body(ex, ctx, body)) is not None:  # a signing key signs admin bodies too
            await claim  # its signature, verified, claimed on Redis
        return decode_body(body, kind)

    def _create(self, kind: type[Any], create: Callable[[Any, Actor], Awaitable[dict[str, Any]]]) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            return 201, await create(await self._body(ex, ctx, kind), self._actor(ex, ctx))

        return work

    def _get(self, ident: str, get: Callable[[str], Awaitable[dict[str, Any]]]) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            _query(ex, set())
            return 200, await get(ident)

        return work

    def _update(self, ident: str, kind: type[Any],
                update: Callable[[str, Any, Actor], Awaitable[dict[str, Any]]]) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            return 200, await update(ident, await self._body(ex, ctx, kind), self._actor(ex, ctx))

        return work

    def _delete(self, ident: str, delete: Callable[[str, Actor], Awaitable[dict[str, Any]]]) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            _query(ex, set())
            return 200, await delete(ident, self._actor(ex, ctx))

        return work

    def _revoke(self, ident: str) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            body = await self._body(ex, ctx, KeyRevoke)
            return 200, await self.manager.revoke_key(ident, body, self._actor(ex, ctx))

        return work

    def _rotate(self, ident: str) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            body = await self._body(ex, ctx, KeyRotate)
            return 201, await self.manager.rotate_key(ident, body, self._actor(ex, ctx))

        return work

    @staticmethod
    def _lister(list_: Callable[..., Awaitable[dict[str, Any]]]) -> Work:
        async def work(ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
            query = _query(ex, {"after", "limit"})
            return 200, await list_(after=query.get("after"), limit=_int(query, "limit") or 100)

        return work

    # -- lists with filters -----------------------------------------------------------------------------------

    async def _list_keys(self, ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
        query = _query(ex, {"owner_user", "owner_team", "include_revoked", "after", "limit"})
        return 200, await self.manager.list_keys(
            owner_user=query.get("owner_user"), owner_team=query.get("owner_team"),
            include_revoked=_bool(query, "include_revoked"), after=query.get("after"),
            limit=_int(query, "limit") or 100)

    async def _list_users(self, ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
        query = _query(ex, {"team", "after", "limit"})
        return 200, await self.manager.list_users(team=query.get("team"), after=query.get("after"),
                                                  limit=_int(query, "limit") or 100)

    async def _list_audit(self, ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
        query = _query(ex, {"action", "actor", "target", "since", "until", "after_seq", "limit"})
        since, until = (parse_time(name, query[name]) if name in query else None for name in ("since", "until"))
        after_seq = _int(query, "after_seq", minimum=0)
        return 200, await self.manager.list_audit(
            action=query.get("action"), actor=query.get("actor"), target=query.get("target"), since=since,
            until=until, after_seq=after_seq, limit=_int(query, "limit") or 100)

    async def _verify_audit(self, ex: Exchange, ctx: RequestContext) -> tuple[int, Any]:
        _query(ex, set())
        return 200, await self.manager.verify_audit()


def _require(ctx: RequestContext, permission: str) -> None:
    """Unauthorized without a principal (the auth stage makes one on every admin route), else rbac's 403."""
    principal = ctx.principal
    if principal is None:
        raise Unauthorized("Admin routes need a credential: an API key or a bearer token.",
                           code="missing_credentials")
    rbac.require(principal, permission)


def _query(ex: Exchange, allowed: set[str]) -> dict[str, str]:
    """The query string's parameters (the last of a repeated one); 400 naming one not in ``allowed``."""
    params = dict(parse_qsl(ex.query, keep_blank_values=True)) if ex.query else {}
    unknown = sorted(set(params) - allowed)
    if unknown:
        hint = f"; this route takes {', '.join(sorted(allowed))}" if allowed else "; this route takes none"
        raise InvalidRequest(f"Unknown query parameter `{unknown[0][:64]}`{hint}.", param=unknown[0][:64],
                             code="unknown_parameter")
    return params


def _int(query: dict[str, str], name: str, *, minimum: int = 1) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InvalidRequest(f"`{name}` must be a whole number of at least {minimum}, got {text[:32]!r}.",
                             param=name, code="invalid_parameter")
    return value


def _bool(query: dict[str, str], name: str) -> bool:
    text = query.get(name, "false").lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise InvalidRequest(f"`{name}` must be true or false, got {text[:32]!r}.", param=name,
                         code="invalid_parameter")
