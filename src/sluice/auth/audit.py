"""The audit log: security-relevant events, queued without waiting, then hash-chained in the store.

``AuditLog.record`` only appends to a bounded in-process queue (past
``queue_size`` the record is dropped and counted in ``dropped``: a request never
waits on the audit log).  The background writer (``sluice.state.writer``),
started by the first record, takes what is queued in batches of up to
``batch_size``, emits each record as one
structured log line (logger ``sluice.audit``, the record under the ``audit``
key of ``extra``) and appends it to the store, which hash-chains it
(``Store.append_audit``; appends are serialised there, so several workers and
instances share one chain).  While the store is down the batch waits and is
retried with backoff; the queue keeps its bound meanwhile.

Floods: auth failures (every action under ``auth.``) that are identical in
(action, details["reason"], client_ip) within ``coalesce_s`` of the first
become one record whose details carry ``count`` (and ``last_at`` when more than
one came).  The actor is not part of the group (a failed caller's actor is
whatever token it sent, so random tokens would each make a record): the record
names the first, and ``details["actors"]`` up to ``SAMPLE_ACTORS`` distinct ones
when more than one came.  A client IP opens at most ``max_groups_per_ip`` groups
per ``coalesce_s`` (varied reasons, say); past that its failures are dropped
and counted in ``dropped`` and ``ip_dropped``.  Such a record enters the queue
when its window closes, so its ``seq`` may follow records of later events; its
``at`` is the first event's.

``flush()`` waits (bounded) until everything recorded before it is written, the
open coalescing windows included; ``aclose()`` flushes and stops the task.

Nothing here logs or stores a credential: actors are key prefixes, key ids or
user ids, and ``details`` are scrubbed of values under secret-looking names
and of anything that looks like a sluice key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..state.writer import MIN_BACKOFF_S, BackgroundWriter, SinkDown, WriterCounts
from ..store import KEY_SCHEME, Store, StoreError, display_prefix

__all__ = ["COALESCE_PREFIX", "SAMPLE_ACTORS", "AuditLog"]

log = logging.getLogger("sluice.audit")
_internal = logging.getLogger("sluice.gateway")

COALESCE_PREFIX = "auth."  # actions that may come in floods (auth failures, denials)
_SECRET_NAMES = frozenset({"key", "api_key", "token", "secret", "signing_secret", "password", "authorization",
                           "client_secret", "hs256_secret"})
SAMPLE_ACTORS = 3  # distinct actors a coalesced record names


class _Entry:
    """One record on its way to the store (a coalesced one counts its duplicates)."""

    __slots__ = ("action", "actor", "actors", "at", "client_ip", "count", "details", "last_at", "logged", "target")

    def __init__(self, at: float, action: str, actor: str, target: str | None, client_ip: str | None,
                 details: dict[str, Any] | None) -> None:
        self.at = at
        self.action = action
        self.actor = actor
        self.actors = [actor]  # a coalesced record's distinct actors, at most SAMPLE_ACTORS
        self.target = target
        self.client_ip = client_ip
        self.details = details
        self.count = 0  # > 0: a coalesced record
        self.last_at = at
        self.logged = False


class AuditLog(WriterCounts):
    """``record`` queues (never waits, never raises); a background task writes; ``aclose`` flushes.

    ``store`` None: the records are only logged.  ``owns_store``: ``aclose``
    closes the store too (the CLI's case; the gateway closes its own store).
    ``backoff_s``: the first and the longest wait before a down store is tried
    again (doubling in between; a flush tries at once).
    """

    def __init__(self, store: Store | None, *, queue_size: int = 10000, batch_size: int = 256,
                 coalesce_s: float = 1.0, max_groups_per_ip: int = 10, close_timeout_s: float = 5.0,
                 owns_store: bool = False, clock: Callable[[], float] = time.time,
                 backoff_s: tuple[float, float] = (MIN_BACKOFF_S, 5.0)) -> None:
        self.store = store
        self.coalesce_s = coalesce_s
        self.max_groups_per_ip = max_groups_per_ip
        self.owns_store = owns_store
        self._clock = clock
        self._groups: dict[tuple[str, Any, str | None], _Entry] = {}  # open coalescing windows
        self._per_ip: dict[str | None, tuple[float, int]] = {}  # client IP -> (window start, groups opened in it)
        # The open windows count in the queue's bound; the writer releases them as they close (``_release``).
        first_backoff_s, max_backoff_s = backoff_s  # the waits between tries of a down store
        self.writer = BackgroundWriter(self._write_batch, name="audit log", logger=_internal, queue_size=queue_size,
                                       batch_size=batch_size, close_timeout_s=close_timeout_s,
                                       first_backoff_s=first_backoff_s, max_backoff_s=max_backoff_s,
                                       holds=self._groups.__len__, tick=self._release, idle_s=self._next_window)
        self.coalesced = 0  # merged into an earlier identical record
        self.ip_dropped = 0  # auth failures past a client IP's max_groups_per_ip (counted in dropped too)

    @property
    def dropped(self) -> int:
        """Refused: the queue was full, the log was closed, or a client IP's flood (``ip_dropped``)."""
        return self.writer.dropped + self.ip_dropped

    # -- the hot side ---------------------------------------------------------------------------------

    def record(self, action: str, *, actor: str, target: str | None = None, client_ip: str | None = None,
               details: dict[str, Any] | None = None) -> None:
        """Queues one event; O(1), never waits, never raises (a full queue or a closed log counts a drop)."""
        writer = self.writer
        if writer.closing:
            writer.dropped += 1
            return
        now = self._clock()
        if action.startswith(COALESCE_PREFIX):
            reason = details.get("reason") if details else None
            group = (action, reason if isinstance(reason, str | int | None) else repr(reason), client_ip)
            entry = self._groups.get(group)
            if entry is not None and now - entry.at < self.coalesce_s:
                entry.count += 1
                entry.last_at = now
                if len(entry.actors) < SAMPLE_ACTORS and actor not in entry.actors:
                    entry.actors.append(actor)
                self.coalesced += 1
                return
            if entry is not None:  # its window is over: to the queue (the writer would have moved it soon)
                del self._groups[group]
                writer.hand_over((entry,))
            if not self._ip_room(client_ip, now) or not writer.room():
                return
            entry = _Entry(now, action, actor, target, client_ip, details)
            entry.count = 1
            self._groups[group] = entry
            if len(self._groups) == 1:
                writer.kick()  # the writer sleeps until this window closes
            return
        writer.put(_Entry(now, action, actor, target, client_ip, details))

    def stats(self) -> dict[str, int]:
        """The counters, for /health/details and the metrics snapshot (``audit_queue_dropped``: the drops that
        were not a client IP's flood: the queue full, or the log closed)."""
        return {"audit_pending": self.pending, "audit_dropped": self.dropped, "audit_failed": self.failed,
                "audit_written": self.written, "audit_coalesced": self.coalesced, "audit_ip_dropped": self.ip_dropped,
                "audit_queue_dropped": self.dropped - self.ip_dropped}

    def _ip_room(self, client_ip: str | None, now: float) -> bool:
        """Counts a new group for ``client_ip``; False (and a drop) past ``max_groups_per_ip`` in its window."""
        per_ip = self._per_ip
        start, opened = per_ip.get(client_ip, (now, 0))
        if now - start >= self.coalesce_s:
            start, opened = now, 0
        if opened >= self.max_groups_per_ip:
            self.ip_dropped += 1
            return False
        bound = self.writer.queue_size
        if client_ip not in per_ip and len(per_ip) >= bound:  # bounded: forget the windows that ended
            for ip in [ip for ip, (began, _) in per_ip.items() if now - began >= self.coalesce_s]:
                del per_ip[ip]
            if len(per_ip) >= bound:
                per_ip.clear()
        per_ip[client_ip] = (start, opened + 1)
        return True

    # -- flushing and closing -------------------------------------------------------------------------

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Waits until what was recorded so far is written (open windows included); False on timeout."""
        return await self.writer.flush(timeout_s)

    async def aclose(self) -> None:
        """Writes what is queued (bounded by ``close_timeout_s``), stops the writer, closes an owned store."""
        if self.writer.closed:
            return
        if await self.writer.aclose():
            self._groups.clear()  # counted lost (failed) with the queue
        if self.owns_store and self.store is not None:
            await self.store.aclose()

    # -- the writer's side ----------------------------------------------------------------------------

    def _next_window(self) -> float | None:
        """Seconds until the oldest open window closes (None: no window open)."""
        if not self._groups:
            return None
        oldest = min(entry.at for entry in self._groups.values())
        return max(0.0, oldest + self.coalesce_s - self._clock())

    async def _release(self, forced: bool) -> None:
        """Hands the closed windows (all of them when ``forced``: a flush or close) to the writer's queue."""
        if not self._groups:
            return
        if forced:
            released = list(self._groups.values())
            self._groups.clear()
        else:
            now = self._clock()
            done = [group for group, entry in self._groups.items() if now - entry.at >= self.coalesce_s]
            released = [self._groups.pop(group) for group in done]
        released.sort(key=lambda entry: entry.at)
        self.writer.hand_over(released)

    async def _write_batch(self, batch: list[_Entry]) -> int:
        """Appends the records one by one; answers how many could not be (SinkDown while the store is down)."""
        failed = 0
        for i, entry in enumerate(batch):
            try:
                await self._write(entry)
            except StoreError as exc:  # the store is down: the writer retries from this record
                raise SinkDown(batch[i:], failed=failed) from exc
            except Exception:  # a record the store cannot encode: dropped, never the writer
                _internal.exception("audit log: record %s by %s could not be written", entry.action, entry.actor)
                failed += 1
        return failed

    async def _write(self, entry: _Entry) -> None:
        details = _scrub(entry.details) if entry.details else {}
        if entry.count:
            details["count"] = entry.count
            if entry.count > 1:
                details["last_at"] = entry.last_at
            if len(entry.actors) > 1:
                details["actors"] = _scrub(entry.actors)
        if not entry.logged:
            entry.logged = True
            _log(entry, details)
        if self.store is not None:
            await self.store.append_audit(entry.actor, entry.action, entry.target, entry.client_ip, details,
                                          at=entry.at)


def _log(entry: _Entry, details: dict[str, Any]) -> None:
    level = logging.WARNING if entry.action.startswith(COALESCE_PREFIX) else logging.INFO
    if not log.isEnabledFor(level):
        return
    record = {"at": entry.at, "action": entry.action, "actor": entry.actor, "target": entry.target,
              "client_ip": entry.client_ip, "details": details}
    log.log(level, "audit %s actor=%s target=%s client_ip=%s%s", entry.action, entry.actor, entry.target or "-",
            entry.client_ip or "-", f" count={entry.count}" if entry.count > 1 else "", extra={"audit": record})


def _scrub(value: Any, name: str = "") -> Any:
    """A copy of ``details`` without secrets: values under secret-looking names, and sluice keys."""
    if name.lower() in _SECRET_NAMES and value is not None:
        return "[redacted]"
    if isinstance(value, dict):
        return {str(k): _scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and KEY_SCHEME in value:
        return " ".join(display_prefix(word) if word.startswith(KEY_SCHEME) else word for word in value.split(" "))
    return value
