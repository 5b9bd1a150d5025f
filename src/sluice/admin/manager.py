"""Managing keys, users, teams and roles: checked, stored, audited.  The admin API and the CLI both call this.

``Manager`` takes the bodies as typed structs (sluice.admin.bodies: ``KeyCreate``,
``UserUpdate``, …), checks what the types cannot say (globs, CIDRs, times, that
the roles, users and teams named exist), checks that the actor may grant what
the change gives (sluice.admin.grants), calls the store and records one audit
event per change (``key.create``, ``key.update``, ``key.revoke``,
``key.rotate``, ``user.create``, …, ``role.delete``).  It answers plain
JSON-ready dicts: a key's view never holds its hash or its signing secret; the
key itself (and a new signing secret) only in the answers of create and
rotate, the one time they are shown.

Every refusal is a GatewayError that names the field in ``param``: 400 for bad
input, 403 for a grant the actor may not make, 404 for an id that does not
exist, 409 for a clash (an id taken, a key already revoked or rotated, a user
who still owns keys), 503 when the store cannot be reached (``_store_errors``
maps the store's errors to these).  The audit details never hold key material.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import msgspec

from .. import store as st
from ..auth.audit import AuditLog
from ..config.permissions import ALL, BUILTIN_ROLES, MODEL_PREFIX
from ..errors import Conflict, InvalidRequest, NotFound, StoreDown
from ..pipeline.quotas import own_quota
from ..pipeline.ratelimit import own_policy
from ..store import MAX_PAGE, ApiKey, Role, Store, Team, User, display_prefix, generate_key, hash_key, new_id
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
    check_cidr,
    check_glob,
    check_grace,
    check_id,
    check_list,
    check_metadata,
    check_page_limit,
    check_permission_name,
    check_policies,
    check_role_name,
    check_text,
    given_fields,
    invalid_value,
)
from .grants import Actor, denied, grants_models, missing_permission, model_limits

__all__ = ["DEFAULT_GRACE_S", "Manager", "key_status", "key_view"]

log = logging.getLogger("sluice.admin")

DEFAULT_GRACE_S = 86400.0  # a rotated key keeps working this long unless told otherwise


@contextlib.contextmanager
def _store_errors(kind: str, ref: str | None = None) -> Iterator[None]:
    """The store's errors as the caller's: 404, 409, 503, 400."""
    try:
        yield
    except st.RecordNotFound:
        raise NotFound(f"No {kind} {ref!r}." if ref else f"No such {kind}.", param="id",
                       code=f"{kind}_not_found") from None
    except st.RecordConflict as exc:
        raise Conflict(f"The {kind} clashes with one that exists: {exc}", code=f"{kind}_conflict") from None
    except st.StoreUnavailable:
        raise StoreDown("The key store is unavailable; try again shortly.", code="store_unavailable") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_value") from None


# -- views --------------------------------------------------------------------------------------------------


def key_status(key: ApiKey, now: float) -> str:
    if key.revoked_at is not None and key.revoked_at <= now:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    if key.rotated_to is not None:
        return "rotating" if key.usable(now) else "rotated"
    return "active"


def key_view(key: ApiKey, now: float) -> dict[str, Any]:
    """A key as the admin API shows it: never its hash, its secret or its signing secret."""
    view = msgspec.structs.asdict(key)
    del view["key_hash"], view["signing_secret"]
    return {"object": "api_key", **view, "status": key_status(key, now)}


def _view(kind: str, record: msgspec.Struct) -> dict[str, Any]:
    return {"object": kind, **msgspec.structs.asdict(record)}


def _page(data: list[dict[str, Any]], more: bool, cursor: str, last: Any) -> dict[str, Any]:
    """One page of a list: ``next_<cursor>`` is what to pass as the cursor for the next page (None: no more)."""
    return {"object": "list", "data": data, "has_more": more, f"next_{cursor}": last if more else None}


# -- the manager --------------------------------------------------------------------------------------------


class Manager:
    """Keys, users, teams and roles on ``store``, each change recorded in ``audit``."""

    def __init__(self, store: Store, audit: AuditLog, *, builtin_roles: Collection[str] = (),
                 config_roles: Mapping[str, Iterable[str]] | None = None, default_grace_s: float = DEFAULT_GRACE_S,
                 on_change: Callable[[], Awaitable[None]] | None = None,
                 publish: Callable[[str], Awaitable[object]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.audit = audit
        self.on_change = on_change  # after each change (the gateway: read the change feed now)
        # After each change, tells every worker and instance (sluice.auth.changes: Redis pub/sub); never raises.
        self.publish = publish
        self.config_roles = {name: tuple(perms) for name, perms in (config_roles or {}).items()}
        # Roles that exist without a record (config, built in); only an actor with "*" may change these.
        self.builtin_roles = frozenset(builtin_roles) | frozenset(BUILTIN_ROLES) | frozenset(self.config_roles)
        self.default_grace_s = default_grace_s
        self._clock = clock

    async def _changed(self, actor: Actor, action: str, target: str, details: dict[str, Any]) -> None:
        """Audits a change (committed by then), announces it, then lets ``on_change`` see it (its failure only
        delays that)."""
        if actor.key_prefix is not None:
            details = {**details, "actor_prefix": actor.key_prefix}
        self.audit.record(action, actor=actor.name, target=target, client_ip=actor.client_ip, details=details)
        if self.publish is not None:
            await self.publish(action)
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception as exc:  # the store down, say: the regular poll catches up
                log.warning("admin: could not apply %s at once (%s: %s)", action, type(exc).__name__, exc)

    # -- references ---------------------------------------------------------------------------------------

    async def _exists(self, field: str, kind: str, ref: str, get: Callable[[str], Any]) -> None:
        try:
            with _store_errors(kind, ref):
                await get(ref)
        except NotFound:
            raise invalid_value(field, f"no {kind} {ref!r}.") from None

    async def _check_roles(self, field: str, roles: tuple[str, ...]) -> None:
        for i, role in enumerate(roles):
            if role not in self.builtin_roles:
                await self._exists(f"{field}[{i}]", "role", role, self.store.get_role)

    async def _role_permissions(self, name: str) -> tuple[str, ...]:
        """A role's permissions as the gateway resolves them: the store's record, else config, else built in."""
        try:
            with _store_errors("role", name):
                return (await self.store.get_role(name)).permissions
        except NotFound:
            pass
        if name in self.config_roles:
            return self.config_roles[name]
        return BUILTIN_ROLES.get(name, (ALL,))  # a role named in the config whose permissions we were not told

    async def _check_grant(self, field: str, roles: Iterable[str], actor: Actor) -> None:
        """403 unless ``actor`` holds every permission of each role it would grant."""
        if ALL in actor.permissions and not actor.models:
            return
        for i, role in enumerate(roles):
            for permission in await self._role_permissions(role):
                if (missing := missing_permission(actor, permission)) is not None:
                    raise denied(f"{field}[{i}]", f"Granting the role `{role}`", missing)

    async def _check_key_grant(self, key: ApiKey, actor: Actor) -> None:
        """403 unless ``actor`` could grant all the key holds: its roles, those of the team that owns it, and
        (for a model-limited actor) its models, which must then be limited to globs within the actor's."""
        if ALL in actor.permissions and not actor.models:
            return
        await self._check_grant("roles", key.roles, actor)
        if key.owner_team is not None:
            with _store_errors("team", key.owner_team):
                team = await self.store.get_team(key.owner_team)
            for role in team.roles:
                for permission in await self._role_permissions(role):
                    if (missing := missing_permission(actor, permission)) is not None:
                        raise denied("owner_team", f"A key of team `{team.id}` (role `{role}`)", missing)
        limits = model_limits(actor)
        if not limits:
            return
        if not key.models:  # its roles alone may allow any model (a role without model:<glob> limits none)
            raise denied("models", "A key without `models` (any model its roles allow)", MODEL_PREFIX + "*")
        for i, pattern in enumerate(key.models):
            if not grants_models(limits, pattern):
                raise denied(f"models[{i}]", f"A key limited to the models `{pattern}`", MODEL_PREFIX + pattern)

    async def _check_model_limit_kept(self, field: str, what: str, before: Iterable[str], after: Iterable[str],
                                      actor: Actor) -> None:
        """403 when a model-limited actor would lift the model limit of a role or a team's roles: permissions
        ``before`` had a ``model:<glob>``, ``after`` none, so their holders could use every model."""
        if not model_limits(actor):
            return
        if any(p.startswith(MODEL_PREFIX) for p in before) and not any(p.startswith(MODEL_PREFIX) for p in after):
            raise denied(field, f"Lifting the model limits of {what}", MODEL_PREFIX + "*")

    async def _key_fields(self, given: dict[str, Any], now: float) -> dict[str, Any]:
        """The checked ApiKey fields of a create or update body (``ttl_s`` becomes ``expires_at``)."""
        fields: dict[str, Any] = {}
        for name, value in given.items():
            if name == "name":
                fields[name] = check_text(name, value)
            elif name in ("roles", "ip_allow", "ip_deny", "models"):
                check = {"roles": check_role_name, "models": check_glob}.get(name, check_cidr)
                fields[name] = check_list(name, value, check)
            elif name in ("policies", "quotas"):
                fields[name] = check_policies(name, value, own_policy if name == "policies" else own_quota)
            elif name == "metadata":
                fields[name] = check_metadata(name, value)
            elif name in ("owner_user", "owner_team"):
                fields[name] = None if value is None else check_id(name, value)
            elif name == "ttl_s":
                if not 0 < value < math.inf:
                    raise invalid_value(name, "must be more than zero.")
                if given.get("expires_at") is not None:
                    raise invalid_value(name, "give expires_at or ttl_s, not both.")
                fields["expires_at"] = now + value
            elif name == "expires_at":
                if value is not None and value <= now:
                    raise invalid_value(name, "is in the past.")
                fields.setdefault(name, value)
            else:  # service_account, signing
                fields[name] = value
        if "owner_user" in fields and fields["owner_user"] is not None:
            await self._exists("owner_user", "user", fields["owner_user"], self.store.get_user)
        if "owner_team" in fields and fields["owner_team"] is not None:
            await self._exists("owner_team", "team", fields["owner_team"], self.store.get_team)
        if "roles" in fields:
            await self._check_roles("roles", fields["roles"])
        return fields

    @staticmethod
    def _check_owner(key: ApiKey) -> None:
        if key.owner_user is not None and key.owner_team is not None:
            raise invalid_value("owner_team", "a key has one owner: give owner_user or owner_team, not both.")
        if key.service_account and key.owner_team is None:
            raise invalid_value("service_account", "a service account's key is owned by a team: give owner_team.")

    # -- keys ---------------------------------------------------------------------------------------------

    async def create_key(self, body: KeyCreate, actor: Actor) -> dict[str, Any]:
        """The new key's view with ``key`` (and ``signing_secret`` when signing): shown this once."""
        now = self._clock()
        given = msgspec.structs.asdict(body)
        if given["ttl_s"] is None:
            del given["ttl_s"]
        fields = await self._key_fields(given, now)
        secret = generate_key()
        signing_secret = secrets.token_urlsafe(32) if body.signing else None
        key = ApiKey(id=new_id("key"), key_hash=hash_key(secret), prefix=display_prefix(secret),
                     signing_secret=signing_secret, **fields)
        self._check_owner(key)
        await self._check_key_grant(key, actor)
        with _store_errors("key", key.id):
            key = await self.store.create_key(key)
        view = key_view(key, now)
        await self._changed(actor, "key.create", key.id, _key_details(view))
        shown = {**view, "key": secret}
        if signing_secret is not None:
            shown["signing_secret"] = signing_secret
        return shown

    async def list_keys(self, *, owner_user: str | None = None, owner_team: str | None = None,
                        include_revoked: bool = False, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        with _store_errors("key"):
            keys, more = await _paged(lambda n, a: self.store.list_keys(
                owner_user=owner_user, owner_team=owner_team, include_revoked=include_revoked, after=a, limit=n),
                after, check_page_limit(limit), "id")
        now = self._clock()
        return _page([key_view(k, now) for k in keys], more, "after", keys[-1].id if keys else None)

    async def get_key(self, key_id: str) -> dict[str, Any]:
        with _store_errors("key", key_id):
            key = await self.store.get_key(key_id)
        return key_view(key, self._clock())

    async def update_key(self, key_id: str, body: KeyUpdate, actor: Actor) -> dict[str, Any]:
        """The key changed; with ``signing_secret`` (shown once) when signing was turned on without one."""
        now = self._clock()
        given = given_fields(body)
        if not given:
            raise InvalidRequest("Nothing to update: give at least one field.", code="invalid_body")
        fields = await self._key_fields(given, now)
        with _store_errors("key", key_id):
            old = await self.store.get_key(key_id)
        signing_secret = None
        if fields.get("signing") and old.signing_secret is None:
            fields["signing_secret"] = signing_secret = secrets.token_urlsafe(32)
        await self._check_key_grant(old, actor)  # a key that holds more than the actor is not its to change
        changed = msgspec.structs.replace(old, **fields)
        self._check_owner(changed)
        await self._check_key_grant(changed, actor)
        with _store_errors("key", key_id):
            key = await self.store.update_key(key_id, **fields)
        changes = {name: value for name, value in fields.items() if name != "signing_secret"}
        if signing_secret is not None:
            changes["signing_secret"] = "[new]"
        await self._changed(actor, "key.update", key_id, {"prefix": key.prefix, "changes": changes})
        view = key_view(key, now)
        return view if signing_secret is None else {**view, "signing_secret": signing_secret}

    async def revoke_key(self, key_id: str, body: KeyRevoke, actor: Actor) -> dict[str, Any]:
        """The key revoked from now on (a key revoked before is answered as it is, and not audited again)."""
        now = self._clock()
        reason = check_text("reason", body.reason, 1000)
        with _store_errors("key", key_id):
            before = await self.store.get_key(key_id)
            key = await self.store.revoke_key(key_id, now)
        if before.revoked_at is None:
            details = {"prefix": key.prefix} | ({"reason": reason} if reason else {})
            await self._changed(actor, "key.revoke", key_id, details)
        return key_view(key, now)

    async def rotate_key(self, key_id: str, body: KeyRotate, actor: Actor) -> dict[str, Any]:
        """A new key with the old one's settings (and a new signing secret), shown once; the old one works
        until ``grace_s`` from now."""
        now = self._clock()
        grace_until = now + check_grace(body.grace_s, self.default_grace_s)
        with _store_errors("key", key_id):
            old = await self.store.get_key(key_id)
        if old.revoked_at is not None:
            raise Conflict(f"Key {key_id!r} is revoked; create a new key instead.", code="key_revoked")
        if old.rotated_to is not None:
            raise Conflict(f"Key {key_id!r} was already rotated to {old.rotated_to!r}; rotate that one.",
                           code="key_rotated")
        if old.expires_at is not None and old.expires_at <= now:
            raise Conflict(f"Key {key_id!r} has expired; extend its expires_at first, or create a new key.",
                           code="key_expired")
        await self._check_key_grant(old, actor)  # the new key is shown to the actor: no more than it could grant
        secret = generate_key()
        signing_secret = secrets.token_urlsafe(32) if old.signing else None
        new = msgspec.structs.replace(old, id=new_id("key"), key_hash=hash_key(secret), prefix=display_prefix(secret),
                                      signing_secret=signing_secret, created_at=0.0, updated_at=0.0)
        with _store_errors("key", key_id):
            new = await self.store.rotate_key(key_id, new, grace_until)
        await self._changed(actor, "key.rotate", key_id, {"prefix": old.prefix, "new_id": new.id,
                                                   "new_prefix": new.prefix, "grace_until": grace_until})
        shown = {**key_view(new, now), "key": secret, "rotated_from": key_id, "old_key_valid_until": grace_until}
        if signing_secret is not None:
            shown["signing_secret"] = signing_secret
        return shown

    # -- users --------------------------------------------------------------------------------------------

    async def _user_fields(self, given: dict[str, Any], actor: Actor) -> dict[str, Any]:
        fields = dict(given)
        if "name" in fields:
            check_text("name", fields["name"])
        if fields.get("email") is not None:
            check_text("email", fields["email"])
        if "metadata" in fields:
            check_metadata("metadata", fields["metadata"])
        if "teams" in fields:
            fields["teams"] = teams = check_list("teams", fields["teams"], check_id)
            for i, team in enumerate(teams):
                await self._exists(f"teams[{i}]", "team", team, self.store.get_team)
        if "roles" in fields:
            fields["roles"] = check_list("roles", fields["roles"], check_role_name)
            await self._check_roles("roles", fields["roles"])
            await self._check_grant("roles", fields["roles"], actor)
        return fields

    async def create_user(self, body: UserCreate, actor: Actor) -> dict[str, Any]:
        given = msgspec.structs.asdict(body)
        user_id = check_id("id", given.pop("id") or new_id("user"))
        user = User(id=user_id, **await self._user_fields(given, actor))
        with _store_errors("user", user_id):
            user = await self.store.create_user(user)
        view = _view("user", user)
        await self._changed(actor, "user.create", user_id, _details(view))
        return view

    async def list_users(self, *, team: str | None = None, after: str | None = None,
                         limit: int = 100) -> dict[str, Any]:
        with _store_errors("user"):
            users, more = await _paged(lambda n, a: self.store.list_users(team=team, after=a, limit=n), after,
                                       check_page_limit(limit), "id")
        return _page([_view("user", u) for u in users], more, "after", users[-1].id if users else None)

    async def get_user(self, user_id: str) -> dict[str, Any]:
        with _store_errors("user", user_id):
            return _view("user", await self.store.get_user(user_id))

    async def update_user(self, user_id: str, body: UserUpdate, actor: Actor) -> dict[str, Any]:
        fields = await self._user_fields(_nonempty(body), actor)
        with _store_errors("user", user_id):
            user = await self.store.update_user(user_id, **fields)
        await self._changed(actor, "user.update", user_id, {"changes": fields})
        return _view("user", user)

    async def delete_user(self, user_id: str, actor: Actor) -> dict[str, Any]:
        with _store_errors("user", user_id):
            await self.store.get_user(user_id)
            if await self.store.list_keys(owner_user=user_id, limit=1):
                raise Conflict(f"User {user_id!r} owns keys that are not revoked; revoke them first.",
                               param="id", code="user_has_keys")
            await self.store.delete_user(user_id)
        await self._changed(actor, "user.delete", user_id, {})
        return {"object": "user", "id": user_id, "deleted": True}

    # -- teams --------------------------------------------------------------------------------------------

    async def _team_fields(self, given: dict[str, Any], actor: Actor) -> dict[str, Any]:
        fields = dict(given)
        if "name" in fields:
            check_text("name", fields["name"])
        if "metadata" in fields:
            check_metadata("metadata", fields["metadata"])
        if "roles" in fields:
            fields["roles"] = check_list("roles", fields["roles"], check_role_name)
            await self._check_roles("roles", fields["roles"])
            await self._check_grant("roles", fields["roles"], actor)
        return fields

    async def create_team(self, body: TeamCreate, actor: Actor) -> dict[str, Any]:
        given = msgspec.structs.asdict(body)
        team_id = check_id("id", given.pop("id") or new_id("team"))
        team = Team(id=team_id, **await self._team_fields(given, actor))
        with _store_errors("team", team_id):
            team = await self.store.create_team(team)
        view = _view("team", team)
        await self._changed(actor, "team.create", team_id, _details(view))
        return view

    async def list_teams(self, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        with _store_errors("team"):
            teams, more = await _paged(lambda n, a: self.store.list_teams(after=a, limit=n), after,
                                       check_page_limit(limit), "id")
        return _page([_view("team", t) for t in teams], more, "after", teams[-1].id if teams else None)

    async def get_team(self, team_id: str) -> dict[str, Any]:
        with _store_errors("team", team_id):
            return _view("team", await self.store.get_team(team_id))

    async def update_team(self, team_id: str, body: TeamUpdate, actor: Actor) -> dict[str, Any]:
        fields = await self._team_fields(_nonempty(body), actor)
        if "roles" in fields and model_limits(actor):  # the team's keys hold its roles: keep them limited
            with _store_errors("team", team_id):
                old = await self.store.get_team(team_id)
            before = [p for role in old.roles for p in await self._role_permissions(role)]
            after = [p for role in fields["roles"] for p in await self._role_permissions(role)]
            await self._check_model_limit_kept("roles", f"the keys of team `{team_id}`", before, after, actor)
        with _store_errors("team", team_id):
            team = await self.store.update_team(team_id, **fields)
        await self._changed(actor, "team.update", team_id, {"changes": fields})
        return _view("team", team)

    async def delete_team(self, team_id: str, actor: Actor) -> dict[str, Any]:
        with _store_errors("team", team_id):
            await self.store.get_team(team_id)
            if await self.store.list_keys(owner_team=team_id, limit=1):
                raise Conflict(f"Team {team_id!r} owns keys that are not revoked; revoke them first.",
                               param="id", code="team_has_keys")
            if await self.store.list_users(team=team_id, limit=1):
                raise Conflict(f"Team {team_id!r} has members; remove them from it first.", param="id",
                               code="team_has_members")
            await self.store.delete_team(team_id)
        await self._changed(actor, "team.delete", team_id, {})
        return {"object": "team", "id": team_id, "deleted": True}

    # -- roles --------------------------------------------------------------------------------------------

    def _check_role_change(self, name: str, actor: Actor) -> None:
        """403 unless ``actor`` may create, change or delete the role ``name`` (built-in and config names: ``*``)."""
        if name in self.builtin_roles and (missing := missing_permission(actor, ALL)) is not None:
            raise denied("name", f"Changing the built-in or configured role `{name}`", missing)

    async def _check_role_held(self, name: str, actor: Actor) -> tuple[str, ...]:
        """403 unless ``actor`` holds every permission the role ``name`` has now (404 when there is none);
        answers those permissions."""
        with _store_errors("role", name):
            role = await self.store.get_role(name)
        for permission in role.permissions:
            if (missing := missing_permission(actor, permission)) is not None:
                raise denied("name", f"Changing the role `{name}`", missing)
        return role.permissions

    @staticmethod
    def _role_fields(given: dict[str, Any], actor: Actor) -> dict[str, Any]:
        fields = dict(given)
        if "permissions" in fields:
            fields["permissions"] = check_list("permissions", fields["permissions"], check_permission_name)
            for i, permission in enumerate(fields["permissions"]):
                if (missing := missing_permission(actor, permission)) is not None:
                    raise denied(f"permissions[{i}]", "Granting it in a role", missing)
        if "description" in fields:
            check_text("description", fields["description"], 1000)
        return fields

    async def create_role(self, body: RoleCreate, actor: Actor) -> dict[str, Any]:
        given = msgspec.structs.asdict(body)
        name = check_id("name", given.pop("name"))  # a built-in or configured role's name: overrides it
        self._check_role_change(name, actor)
        role = Role(name=name, **self._role_fields(given, actor))
        with _store_errors("role", name):
            role = await self.store.create_role(role)
        view = _view("role", role)
        await self._changed(actor, "role.create", name, _details(view))
        return view

    async def list_roles(self, *, after: str | None = None, limit: int = 100) -> dict[str, Any]:
        with _store_errors("role"):
            roles, more = await _paged(lambda n, a: self.store.list_roles(after=a, limit=n), after,
                                       check_page_limit(limit), "name")
        return _page([_view("role", r) for r in roles], more, "after", roles[-1].name if roles else None)

    async def get_role(self, name: str) -> dict[str, Any]:
        with _store_errors("role", name):
            return _view("role", await self.store.get_role(name))

    async def update_role(self, name: str, body: RoleUpdate, actor: Actor) -> dict[str, Any]:
        self._check_role_change(name, actor)
        fields = self._role_fields(_nonempty(body), actor)
        before = await self._check_role_held(name, actor)
        if "permissions" in fields:
            await self._check_model_limit_kept("permissions", f"the role `{name}`", before, fields["permissions"],
                                               actor)
        with _store_errors("role", name):
            role = await self.store.update_role(name, **fields)
        await self._changed(actor, "role.update", name, {"changes": fields})
        return _view("role", role)

    async def delete_role(self, name: str, actor: Actor) -> dict[str, Any]:
        self._check_role_change(name, actor)
        before = await self._check_role_held(name, actor)
        await self._check_model_limit_kept("name", f"the role `{name}` (by deleting it)", before, (), actor)
        with _store_errors("role", name):
            await self.store.delete_role(name)
        await self._changed(actor, "role.delete", name, {})
        return {"object": "role", "id": name, "deleted": True}

    # -- audit --------------------------------------------------------------------------------------------

    async def list_audit(self, *, action: str | None = None, actor: str | None = None, target: str | None = None,
                         since: float | None = None, until: float | None = None, after_seq: int | None = None,
                         limit: int = 100) -> dict[str, Any]:
        """Records in seq order; what this process recorded before is flushed first (bounded)."""
        await self.audit.flush(timeout_s=2.0)
        limit = check_page_limit(limit)
        with _store_errors("audit record"):
            records, more = await _paged(lambda n, a: self.store.list_audit(
                action=action, actor=actor, target=target, since=since, until=until, after_seq=a, limit=n),
                after_seq, limit, "seq")
        return _page([msgspec.structs.asdict(r) for r in records], more, "after_seq",
                     records[-1].seq if records else None)

    async def verify_audit(self) -> dict[str, Any]:
        await self.audit.flush(timeout_s=2.0)
        with _store_errors("audit record"):
            ok, first_bad, checked = await self.store.verify_audit()
        return {"ok": ok, "first_bad_seq": first_bad, "checked": checked}


C = TypeVar("C")


async def _paged(fetch: Callable[[int, C | None], Any], after: C | None, limit: int,
                 cursor: str) -> tuple[list[Any], bool]:
    """One page and whether more follow: one extra record asked for (a second call at the largest page)."""
    if limit < MAX_PAGE:
        records = await fetch(limit + 1, after)
        return records[:limit], len(records) > limit
    records = await fetch(limit, after)
    more = len(records) == limit and bool(await fetch(1, getattr(records[-1], cursor)))
    return records, more


def _nonempty(body: msgspec.Struct) -> dict[str, Any]:
    given = given_fields(body)
    if not given:
        raise InvalidRequest("Nothing to update: give at least one field.", code="invalid_body")
    return given


def _details(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k not in ("object", "created_at", "updated_at")}


def _key_details(view: dict[str, Any]) -> dict[str, Any]:
    keep = ("prefix", "name", "owner_user", "owner_team", "service_account", "roles", "models", "ip_allow",
            "ip_deny", "signing", "expires_at")
    return {k: view[k] for k in keep} | {"policies": len(view["policies"]), "quotas": len(view["quotas"])}
