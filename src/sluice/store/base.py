"""The store's interface, which SQLite and PostgreSQL both implement, and its errors.

Errors::

    StoreError                  anything the store raises on purpose
    ├── StoreUnavailable        cannot connect, timed out, database failed (``__cause__`` says why; also a
    │                           sluice.errors.DependencyUnavailable)
    ├── RecordNotFound          no record with that id (get_*, update_*, delete_*, revoke, rotate)
    └── RecordConflict          a record with that id (or key hash) exists, or the change is not allowed

The admin API answers them as ``NotFound`` (404), ``Conflict`` (409) and
``StoreDown`` (503) of sluice.errors.

A call that raised ``StoreUnavailable`` after its timeout may still have been
applied by the database: a retried create then raises ``RecordConflict``.
Arguments the store cannot accept (an unknown field in ``update_*``, a bad ``limit``)
raise ``ValueError``.

Reads that a request may make on a cache miss (``key_by_hash``) answer None
when nothing matches; the admin reads (``get_*``) raise ``RecordNotFound``.
Lists are ordered by id (name for roles, seq for audit) and paged with a cursor:
pass the last id seen as ``after``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import DependencyUnavailable, SluiceError
from .records import ApiKey, AuditRecord, Change, Role, Team, User

if TYPE_CHECKING:
    from .dead_letters import Attempt, DeadLetter

__all__ = ["MAX_PAGE", "RecordConflict", "RecordNotFound", "Store", "StoreError", "StoreUnavailable"]

MAX_PAGE = 1000  # the most records one list call answers


class StoreError(SluiceError):
    """Base of the store's errors."""


class StoreUnavailable(StoreError, DependencyUnavailable):
    """The database could not be reached, or did not answer within the store's timeout."""

    dependency = "the key store"


class RecordNotFound(StoreError):
    """No record with that id."""


class RecordConflict(StoreError):
    """A record with that id already exists, or the record is in a state that forbids the change."""


class Store(Protocol):
    """Keys, users, teams, roles, a change feed and a hash-chained audit log, in SQLite or PostgreSQL."""

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgres"``."""
        ...

    @property
    def location(self) -> str:
        """Where the data is, safe to print: the SQLite path, or the PostgreSQL URL without its password."""
        ...

    # -- lifecycle --------------------------------------------------------------------------------
    async def migrate(self) -> list[tuple[int, str]]:
        """Applies the missing schema migrations in order, each in its own transaction; answers (version, name)
        of those applied by this call.  Safe when several processes migrate at once."""
        ...

    async def current_version(self) -> int:
        """The highest migration applied (0 on an empty database)."""
        ...

    async def ping(self) -> float:
        """One round trip to the database; answers the seconds it took."""
        ...

    async def aclose(self) -> None: ...

    @property
    def calls(self) -> int:
        """Operations run on the database since the store was made (each one statement or one transaction)."""
        ...

    # -- API keys ---------------------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> ApiKey:
        """Stores a new key (``RecordConflict`` when its id or hash exists); answers it with its times stamped."""
        ...

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose ``key_hash`` this is, revoked or not; None when there is none."""
        ...

    async def get_key(self, key_id: str) -> ApiKey: ...

    async def key_hashes(self, *, after: str | None = None, limit: int = 10_000) -> list[tuple[str, str]]:
        """(id, key_hash) of every key, revoked or not, by id, at most ``limit`` (1..10,000): what the known-key
        filter of sluice.auth.keyfilter is built from."""
        ...

    async def list_keys(self, *, owner_user: str | None = None, owner_team: str | None = None,
                        include_revoked: bool = False, after: str | None = None,
                        limit: int = 100) -> list[ApiKey]: ...

    async def update_key(self, key_id: str, /, **fields: Any) -> ApiKey:
        """Changes the named fields (not id, key_hash, prefix, the times, revocation or rotation)."""
        ...

    async def revoke_key(self, key_id: str, at: float) -> ApiKey:
        """Revokes the key from ``at`` on; a key already revoked is answered unchanged."""
        ...

    async def rotate_key(self, old_id: str, new: ApiKey, grace_until: float) -> ApiKey:
        """In one transaction: stores ``new`` and marks the old key rotated to it, usable until ``grace_until``.
        ``RecordConflict`` when the old key is revoked or already rotated.  Answers the new key."""
        ...

    # -- users --------------------------------------------------------------------------------------
    async def create_user(self, user: User) -> User: ...

    async def get_user(self, user_id: str) -> User: ...

    async def list_users(self, *, team: str | None = None, after: str | None = None,
                         limit: int = 100) -> list[User]: ...

    async def update_user(self, user_id: str, /, **fields: Any) -> User: ...

    async def delete_user(self, user_id: str) -> None: ...

    # -- teams --------------------------------------------------------------------------------------
    async def create_team(self, team: Team) -> Team: ...

    async def get_team(self, team_id: str) -> Team: ...

    async def list_teams(self, *, after: str | None = None, limit: int = 100) -> list[Team]: ...

    async def update_team(self, team_id: str, /, **fields: Any) -> Team: ...

    async def delete_team(self, team_id: str) -> None: ...

    # -- roles --------------------------------------------------------------------------------------
    async def create_role(self, role: Role) -> Role: ...

    async def get_role(self, name: str) -> Role: ...

    async def list_roles(self, *, after: str | None = None, limit: int = 100) -> list[Role]: ...

    async def update_role(self, name: str, /, **fields: Any) -> Role: ...

    async def delete_role(self, name: str) -> None: ...

    # -- change feed --------------------------------------------------------------------------------
    async def changes_since(self, version: int, limit: int = MAX_PAGE) -> tuple[int, list[Change]]:
        """The changes after ``version``, oldest first, at most ``limit``, and the version to ask from next
        time (the last one answered; with none, the newest in the feed).  A version never commits after a
        higher one, so polling with the answer misses nothing."""
        ...

    # -- audit log ----------------------------------------------------------------------------------
    async def append_audit(self, actor: str, action: str, target: str | None = None, client_ip: str | None = None,
                           details: dict[str, Any] | None = None, at: float | None = None) -> AuditRecord:
        """Appends one record to the chain (appends are serialised: the chain never forks)."""
        ...

    async def list_audit(self, *, action: str | None = None, actor: str | None = None, target: str | None = None,
                         since: float | None = None, until: float | None = None, after_seq: int | None = None,
                         limit: int = 100) -> list[AuditRecord]:
        """Records in seq order; ``since`` <= at < ``until``; page with ``after_seq``."""
        ...

    async def verify_audit(self) -> tuple[bool, int | None, int]:
        """(ok, first bad seq, records checked).  Finds an edited record, a removed or reordered one, and
        records removed from the end (against the chain head kept beside the log)."""
        ...

    # -- dead letters (sluice.store.dead_letters) ---------------------------------------------------
    async def add_dead_letters(self, letters: Sequence[DeadLetter]) -> list[str]:
        """Stores the letters (their ``id`` ignored) in one transaction; answers their new ids, in order."""
        ...

    async def list_dead_letters(self, *, route: str | None = None, model: str | None = None,
                                before: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first; page with ``before`` (the last id seen; ``ValueError`` for one that is no id)."""
        ...

    async def get_dead_letter(self, letter_id: str) -> DeadLetter: ...

    async def delete_dead_letters(self, ids: Sequence[str]) -> list[str]:
        """Removes the letters; answers the ids that were there."""
        ...

    async def trim_dead_letters(self, *, max_entries: int | None = None, before: float | None = None) -> int:
        """Removes the letters older than ``before`` and all but the newest ``max_entries``; answers how many."""
        ...

    async def note_dead_letter_replay(self, letter_id: str, attempt: Attempt) -> DeadLetter:
        """Counts a failed replay of the letter and appends ``attempt`` to its attempts; answers the letter."""
        ...

    async def count_dead_letters(self) -> int: ...
