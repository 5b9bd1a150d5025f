"""A model-limited actor grants no model it does not hold: keys, rotations, team keys, roles and teams, on a
real SQLite store; and ``covers``, the conservative glob-inside-glob test those checks use."""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.admin.bodies import KeyCreate, KeyRotate, KeyUpdate, RoleCreate, RoleUpdate, TeamCreate, TeamUpdate
from sluice.admin.grants import Actor
from sluice.admin.manager import Manager
from sluice.auth.audit import AuditLog
from sluice.auth.globs import covers, units
from sluice.config.permissions import USER_PERMISSIONS
from sluice.errors import Forbidden
from sluice.store import SqliteStore

ROOT = Actor("cli:root")  # holds "*", no model limits
KEYS_ONLY = frozenset({"admin:keys", "admin:teams", "admin:roles", *USER_PERMISSIONS})


# -- _covers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("held", "wanted", "covered"), [
    ("gpt-4o-mini", "gpt-4o-mini", True),
    ("*", "anything*", True),
    ("gpt-4*", "gpt-4o*", True),
    ("gpt-4*", "gpt-4o-mini", True),
    ("gpt-4o*", "gpt-4*", False),
    ("gpt-4o-mini", "gpt-4o*", False),
    ("gpt-4o?", "gpt-4o*", False),  # fnmatch on the text would say yes: "?" matches the character "*"
    ("gpt-4o?", "gpt-4o?", True),
    ("claude-3-?", "claude-3-[57]", True),
    ("claude-3-?", "claude-3-*", False),
    ("gpt-4o?", "gpt-4o[ab]", True),
    ("gpt-[45]o", "gpt-[0-9]o", False),  # fnmatch on the text: no, and rightly so
    ("gpt-[45]*", "gpt-4o", True),
    ("gpt-[45]*", "gpt-[45]o", False),  # a set of held covers literal characters only (conservative)
    ("*-mini", "gpt-4o-mini", True),
    ("*-mini", "*", False),
    ("*-mini", "gpt-*-mini", True),
    ("a*b*c", "a[xy]b?zc", True),
    ("*b*", "[bc]", False),  # "c" is in [bc] and has no "b"
    ("gpt-[45]o", "gpt-?o", False),  # a set does not cover any character
    ("x[!a]", "x[!a]", True),
    ("x[!a]", "xb", True),
    ("x[!a]", "xa", False),
    ("claude-*", "gpt-4o", False),
])
def testcovers(held: str, wanted: str, covered: bool) -> None:
    assert covers(held, wanted) is covered


_CHARS = "ab-*?[]!"


def _expansions(data: st.DataObject, pattern: str) -> str:
    """A model name ``pattern`` matches, drawn unit by unit (so that the wildcards are exercised)."""
    name = []
    for unit in units(pattern):
        if unit == "*":
            name.append(data.draw(st.text("ab-*?[", max_size=3)))
        elif unit == "?":
            name.append(data.draw(st.sampled_from("ab-*?[")))
        elif len(unit) > 1:
            fits = [c for c in "ab-*?[]!" if fnmatch.fnmatchcase(c, unit)]
            name.append(data.draw(st.sampled_from(fits)) if fits else "")
        else:
            name.append(unit)
    return "".join(name)


@settings(max_examples=500, deadline=None)
@given(held=st.text(_CHARS, min_size=1, max_size=6), wanted=st.text(_CHARS, min_size=1, max_size=6),
       data=st.data())
def test_covers_never_says_yes_wrongly(held: str, wanted: str, data: st.DataObject) -> None:
    if not covers(held, wanted):
        return
    for _ in range(8):
        name = _expansions(data, wanted)
        if fnmatch.fnmatchcase(name, wanted):  # an empty set expands to nothing: not a match then
            assert fnmatch.fnmatchcase(name, held), (held, wanted, name)


# -- the manager on a real store ------------------------------------------------------------------------------


def run(tmp_path: Path, body: Callable[[Manager], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(30):
            store = SqliteStore(str(tmp_path / "grants.db"), timeout_s=10.0)
            await store.migrate()
            audit = AuditLog(store)
            manager = Manager(store, audit)
            try:
                await body(manager)
            finally:
                await audit.aclose()
                await store.aclose()

    asyncio.run(main())


async def refused(work: Awaitable[Any], permission: str, param: str | None = None) -> None:
    with pytest.raises(Forbidden) as caught:
        await work
    error = caught.value
    assert error.code == "permission_denied" and f"`{permission}`" in error.message, error.message
    if param is not None:
        assert error.param == param, error.param


def limited(models: tuple[str, ...] = ("gpt-4o*",), permissions: frozenset[str] = KEYS_ONLY) -> Actor:
    return Actor("key_limited", permissions=permissions, models=models)


def test_a_model_limited_actor_makes_only_keys_within_its_models(tmp_path: Path) -> None:
    async def body(m: Manager) -> None:
        actor = limited()
        await refused(m.create_key(KeyCreate(roles=["user"]), actor), "model:*", "models")
        await refused(m.create_key(KeyCreate(roles=["user"], models=["claude-*"]), actor), "model:claude-*",
                      "models[0]")
        await refused(m.create_key(KeyCreate(roles=["user"], models=["gpt-4o-mini", "*"]), actor), "model:*",
                      "models[1]")
        await refused(m.create_key(KeyCreate(roles=["user"], models=["gpt-4*"]), actor), "model:gpt-4*")
        made = await m.create_key(KeyCreate(roles=["user"], models=["gpt-4o-mini", "gpt-4o"]), actor)
        assert list(made["models"]) == ["gpt-4o-mini", "gpt-4o"]
        # An unlimited actor is not held to this (and the CLI acts as one).
        assert not (await m.create_key(KeyCreate(roles=["user"]), ROOT))["models"]

    run(tmp_path, body)


def test_update_and_rotate_keep_a_limited_actor_within_its_models(tmp_path: Path) -> None:
    async def body(m: Manager) -> None:
        actor = limited()
        own = await m.create_key(KeyCreate(roles=["user"], models=["gpt-4o-mini"]), actor)
        await refused(m.update_key(own["id"], KeyUpdate(models=[]), actor), "model:*", "models")
        await refused(m.update_key(own["id"], KeyUpdate(models=["o1*"]), actor), "model:o1*", "models[0]")
        assert list((await m.update_key(own["id"], KeyUpdate(models=["gpt-4o"]), actor))["models"]) == ["gpt-4o"]
        # A key with other models, or none, is not the limited actor's to change or rotate.
        wide = await m.create_key(KeyCreate(roles=["user"]), ROOT)
        other = await m.create_key(KeyCreate(roles=["user"], models=["claude-3-haiku"]), ROOT)
        await refused(m.update_key(wide["id"], KeyUpdate(name="x"), actor), "model:*")
        await refused(m.update_key(other["id"], KeyUpdate(models=["gpt-4o"]), actor), "model:claude-3-haiku")
        await refused(m.rotate_key(wide["id"], KeyRotate(), actor), "model:*")
        await refused(m.rotate_key(other["id"], KeyRotate(), actor), "model:claude-3-haiku")
        rotated = await m.rotate_key(own["id"], KeyRotate(grace_s=0), actor)
        assert list(rotated["models"]) == ["gpt-4o"]

    run(tmp_path, body)


def test_team_and_service_account_keys_are_held_to_the_same_rule(tmp_path: Path) -> None:
    async def body(m: Manager) -> None:
        await m.create_role(RoleCreate(name="claude", permissions=["chat", "model:claude-*"]), ROOT)
        await m.create_team(TeamCreate(id="ml", roles=["user"]), ROOT)
        await m.create_team(TeamCreate(id="anthropic", roles=["claude"]), ROOT)
        actor = limited()
        service = KeyCreate(owner_team="ml", service_account=True, roles=[])
        await refused(m.create_key(service, actor), "model:*", "models")
        service.models = ["gpt-4o-mini"]
        assert (await m.create_key(service, actor))["service_account"] is True
        # The team's roles grant models the actor does not hold.
        await refused(m.create_key(KeyCreate(owner_team="anthropic", roles=[], models=["gpt-4o"]), actor),
                      "model:claude-*", "owner_team")

    run(tmp_path, body)


def test_roles_grant_only_models_the_actor_holds(tmp_path: Path) -> None:
    async def body(m: Manager) -> None:
        # Limited by its key's models: model:<glob> permissions within them only.
        actor = limited()
        await refused(m.create_role(RoleCreate(name="r1", permissions=["chat", "model:claude-*"]), actor),
                      "model:claude-*", "permissions[1]")
        await refused(m.create_role(RoleCreate(name="r2", permissions=["*"]), actor), "*", "permissions[0]")
        await m.create_role(RoleCreate(name="mini", permissions=["chat", "model:gpt-4o-mini"]), actor)
        await refused(m.update_role("mini", RoleUpdate(permissions=["chat", "model:gpt-*"]), actor), "model:gpt-*")
        # Lifting the limit of a role (its holders would get every model): refused, by update or delete.
        await refused(m.update_role("mini", RoleUpdate(permissions=["chat"]), actor), "model:*", "permissions")
        await refused(m.delete_role("mini", actor), "model:*", "name")
        await m.update_role("mini", RoleUpdate(permissions=["chat", "model:gpt-4o"]), actor)
        # Limited by its roles (not by its key): the same, against the role globs.
        by_role = Actor("key_r", permissions=KEYS_ONLY | {"model:gpt-4o-mini"})
        await refused(m.create_role(RoleCreate(name="r3", permissions=["model:gpt-4o*"]), by_role),
                      "model:gpt-4o*")
        await m.create_role(RoleCreate(name="r4", permissions=["model:gpt-4o-mini"]), by_role)
        # Holding "*" but limited by its key: "*" is not its to grant, nor are the built-in roles.
        star = limited(permissions=frozenset({"*"}))
        await refused(m.create_key(KeyCreate(roles=["admin"], models=["gpt-4o"]), star), "model:*", "roles[0]")
        await refused(m.create_role(RoleCreate(name="user", permissions=["chat"]), star), "model:*", "name")
        assert list((await m.create_key(KeyCreate(roles=["user"], models=["gpt-4o"]), star))["roles"]) == ["user"]
        # Unlimited actors may still lift limits.
        await m.update_role("mini", RoleUpdate(permissions=["chat"]), ROOT)

    run(tmp_path, body)


def test_a_limited_actor_cannot_lift_a_teams_model_limit(tmp_path: Path) -> None:
    async def body(m: Manager) -> None:
        await m.create_role(RoleCreate(name="mini", permissions=["chat", "model:gpt-4o-mini"]), ROOT)
        await m.create_role(RoleCreate(name="chatter", permissions=["chat"]), ROOT)
        await m.create_team(TeamCreate(id="ops", roles=["mini"]), ROOT)
        actor = limited()
        await refused(m.update_team("ops", TeamUpdate(roles=["chatter"]), actor), "model:*", "roles")
        await refused(m.create_team(TeamCreate(id="t2", roles=["admin"]), limited(permissions=frozenset({"*"}))),
                      "model:*", "roles[0]")
        changed = await m.update_team("ops", TeamUpdate(roles=["mini", "chatter"]), actor)
        assert list(changed["roles"]) == ["mini", "chatter"]
        assert list((await m.update_team("ops", TeamUpdate(roles=["chatter"]), ROOT))["roles"]) == ["chatter"]

    run(tmp_path, body)
