"""Grant rules: nobody grants more than they hold.

The ``Actor`` carries the caller's permissions (the CLI's operator holds
``*``).  A role may be given to a key (directly or through the team that owns
it), a team or a user only when the actor holds every permission of that role
(``missing_permission``: ``*`` covers all, ``admin:*`` every admin permission,
a ``model:<glob>`` is held by an actor without model limits or with a glob that
covers it); a key whose roles the actor could not grant cannot be changed or
rotated by it either.  A role is created or changed only with permissions the
actor holds, and only an actor with ``*`` may create, change or delete a role
whose name is built in (``admin``, ``user``) or comes from the config.  A
refusal is a 403 with code ``permission_denied`` naming the missing permission
(``denied``).

Models: an actor is model-limited when its own key has ``models`` globs
(``Actor.models``) or its roles have ``model:<glob>`` permissions (and not
``*``).  Such an actor grants only models it holds: every key it creates,
changes or rotates (service accounts and team keys included) must have
``models`` of its own, each covered by one glob of each of the actor's limits;
each ``model:<glob>`` it puts in a role, or grants through a role, likewise;
``*`` it does not hold in full (``*`` grants every model: ``model:*``); and it
may not lift a model limit (change or delete a role so that it has no
``model:<glob>`` left, or take a team's last model-limited role away), which
would give the holders every model.  "Covered" is decided on the globs'
text by ``sluice.auth.globs.covers``: conservative, never a wrong yes
(``gpt-4*`` covers ``gpt-4o-mini`` and ``gpt-4o*``; ``claude-3-?`` does not
cover ``claude-3-*``).

The ``Manager`` (sluice.admin.manager) applies these rules to each change.
"""

from __future__ import annotations

from typing import NamedTuple

from ..auth.globs import covers
from ..config.permissions import ADMIN_ALL, ADMIN_PERMISSIONS, ALL, MODEL_PREFIX
from ..errors import Forbidden

__all__ = ["Actor", "denied", "grants_models", "missing_permission", "model_limits"]


class Actor(NamedTuple):
    """Who makes a change: a key id (``key_…``, ``static:<name>``), ``jwt:<user>``, ``cli:<os user>``; never a key."""

    name: str
    client_ip: str | None = None
    key_prefix: str | None = None  # the display prefix of the caller's key, when it used one
    # What the actor holds (its principal's permissions): it grants no more.  The CLI's operator holds "*".
    permissions: frozenset[str] = frozenset({ALL})
    # The model globs of the actor's own key (empty: its key does not limit them): it grants no other models.
    models: tuple[str, ...] = ()



def model_limits(actor: Actor) -> tuple[tuple[str, ...], ...]:
    """The glob lists that limit the actor's models: its key's and its roles' (a model must pass each)."""
    limits = [actor.models] if actor.models else []
    if ALL not in actor.permissions:  # "*" lifts the roles' model limits (not the key's own)
        role_globs = tuple(p[len(MODEL_PREFIX):] for p in actor.permissions if p.startswith(MODEL_PREFIX))
        if role_globs:
            limits.append(role_globs)
    return tuple(limits)


def grants_models(limits: tuple[tuple[str, ...], ...], pattern: str) -> bool:
    """Whether an actor with these limits holds every model ``pattern`` names."""
    return all(any(covers(held, pattern) for held in globs) for globs in limits)


def missing_permission(actor: Actor, permission: str) -> str | None:
    """What the actor lacks to grant ``permission`` (None: it holds it; see the module docstring).

    A model-limited actor holds ``model:<glob>`` only when the glob is within each of its limits, and does
    not hold ``*`` in full: ``*`` grants every model (``model:*``)."""
    held = actor.permissions
    if permission.startswith(MODEL_PREFIX):
        return None if grants_models(model_limits(actor), permission[len(MODEL_PREFIX):]) else permission
    if permission == ALL and ALL in held:
        return None if not model_limits(actor) else MODEL_PREFIX + "*"
    if ALL in held or permission in held:
        return None
    if permission == ADMIN_ALL:
        return None if all(p in held for p in ADMIN_PERMISSIONS) else permission
    if permission.startswith("admin:"):
        return None if ADMIN_ALL in held else permission
    return permission


def denied(field: str, message: str, permission: str) -> Forbidden:
    return Forbidden(f"{message} needs the `{permission}` permission, which this credential lacks; an actor "
                     f"grants only what it holds.", code="permission_denied", param=field,
                     reason=f"missing:{permission}")
