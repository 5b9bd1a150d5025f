"""The store of API keys, users, teams, roles, a change feed and the audit log.

``open_store(config.store)`` gives a ``Store``: a SQLite file by default (one
host; its worker processes share the file) or PostgreSQL when
``store.postgres_url`` is set (many instances).  Call ``migrate()`` before use
(the gateway does when ``store.migrate_on_start``; ``sluice db migrate`` does it
by hand).  The interface and the error tree are in ``base``, the records in
``records``; ``_common`` holds the operations both databases share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MAX_PAGE, RecordConflict, RecordNotFound, Store, StoreError, StoreUnavailable
from .records import (
    GENESIS_HASH,
    KEY_SCHEME,
    ApiKey,
    AuditRecord,
    Change,
    Role,
    Team,
    User,
    audit_hash,
    display_prefix,
    generate_key,
    hash_key,
    new_id,
)
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from ..config import StoreConfig

__all__ = ["GENESIS_HASH", "KEY_SCHEME", "MAX_PAGE", "ApiKey", "AuditRecord", "Change", "RecordConflict",
           "RecordNotFound", "Role", "SqliteStore", "Store", "StoreError", "StoreUnavailable", "Team", "User",
           "audit_hash", "display_prefix", "generate_key", "hash_key", "new_id", "open_store"]


def open_store(config: StoreConfig) -> Store:
    """The store the config names; nothing connects until the first call."""
    if config.postgres_url is not None:
        from .postgres import PostgresStore  # asyncpg is imported only by those who use it

        return PostgresStore(config.postgres_url, pool_size=config.pool_size, timeout_s=config.timeout_s)
    return SqliteStore(config.sqlite_path, timeout_s=config.timeout_s)
