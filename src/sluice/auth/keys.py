"""Who a credential stands for: API keys through an in-process cache, tokens through their verifiers.

**Keys** (``Authorization: Bearer sk-…`` or ``x-api-key``).  A key is hashed
(SHA-256, ``records.hash_key``) and looked up by that hash in this worker's
cache; ``hmac.compare_digest`` on the stored hash decides.  A hit never awaits
(``cached``).  A miss (``authenticate``) asks the store once (concurrent misses
of one hash share the lookup) and caches the answer: a key (revoked or not:
refusing it again costs nothing), or, for a hash the store does not know, a
short-lived negative entry (bounded, so a flood of made-up keys cannot grow it).
The config's static keys are in the cache from the start and never leave it.

**Unknown keys** never reach the store in bulk: a miss first asks the known-key
filter (sluice.auth.keyfilter: a Bloom filter of every key hash in the store,
built with the first read of the feed's version and fed by the change feed).  A
hash it lacks waits for the feed's next read to start and end
(``_after_next_read``: within ``revocation_poll_s`` and the read, no read of
its own, so a key made on another instance still works at its first use) and
is then refused, and remembered as unknown;
only a hash it holds (a real key, or about 1 in 120 made-up ones at the
filter's full size) is read.  Per-address failure limits (sluice.auth.failures)
are the auth stage's, before it calls in here.

Refusals do not tell whether a key exists: an unknown, revoked, rotated-past-
grace or malformed key, or one whose user is disabled, gets the same 401
message and code (``invalid_api_key``); a first-seen revoked key costs one
store read, a first-seen unknown one the wait for the feed (so the time of the
refusal tells a holder whether the key they hold was ever issued: nothing a
guesser can use).  Only an expired key is told so (``expired_api_key``): its
holder can do something about it.

**Changes** reach every worker within ``revocation_poll_s`` (+ one store round
trip): a background task reads the store's change feed.  With Redis
(``auth.redis``, else ``ratelimit.redis``) a change made through the manager
(admin API, CLI) is also announced on pub/sub (sluice.auth.changes), and each
notice wakes the reader at once; while subscribed, the reader polls only every
``max(revocation_poll_s, SUBSCRIBED_POLL_S)`` as a safety net (a notice lost,
a change written behind the manager's back), and back at ``revocation_poll_s``
as soon as the subscription is lost.  The feed stays the source of truth: a
notice only wakes the reader.  A changed key hash is
dropped from the cache and, if it was cached, read again at once (so the request
path does not wait for it); a changed user or team drops the keys it owns; a
changed role reloads the role table (store roles override the config's and the
built-ins) and every cached principal is rebuilt at its next use.  The version
the feed is read from is taken before the first key is read from the store, so
no change between the two is missed.

**The store down**: cached keys go on working (the feed resumes where it
stopped); a first-seen key gets a 503 (``store_unavailable``), never a 401.

**Tokens**: a bearer that looks like a JWT goes to ``JwtVerifier`` when
``auth.jwt`` is configured; another bearer not starting with ``sk-`` goes to
``Introspector`` when ``auth.introspection`` is.  Both are made at first use,
with the gateway's upstream client, and cache what they verified; the
principal of a verified identity is cached beside it.

``prepare_store(config)`` runs the store's migrations before the workers start
(``sluice serve``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config.model import AuthConfig, Config, StaticKeyConfig
from ..errors import AuthUnavailable, Unauthorized
from ..store import MAX_PAGE, ApiKey, RecordNotFound, Store, StoreError, StoreUnavailable, hash_key, open_store
from ..tasks import cancel_and_wait
from .credential import key_digest
from .identity import AuthFailure, Identity
from .keyfilter import KeyFilter
from .principal import Principal, RoleTable, for_identity, for_key, for_static

if TYPE_CHECKING:
    from ..upstream import UpstreamClient
    from .changes import ChangeNotices
    from .introspection import Introspector
    from .jwt import JwtVerifier

__all__ = ["MAX_KEY_LENGTH", "SUBSCRIBED_POLL_S", "Authenticator", "expired_key", "invalid_key", "missing_key",
           "prepare_store"]

log = logging.getLogger("sluice.auth")

MAX_KEY_LENGTH = 4096  # a longer credential is refused unread (JWTs have their own bound)
UNKNOWN_TTL_S = 5.0  # how long "no such key" is believed without asking the store again
MAX_UNKNOWN = 10_000  # negative entries kept at most
MAX_TOKEN_PRINCIPALS = 10_000
LOG_EVERY_S = 10.0
READ_GRACE_S = 2.0  # a key the filter lacks waits for the feed's next read: its interval, and this for the read
_HASH_PAGE = 10_000  # key hashes per store read while the known-key filter is built
REFRESH_PER_POLL = 100  # changed keys read again per poll; past that they are only dropped
# The fallback poll while change notices arrive by Redis pub/sub: they do the work, this catches a lost one.
SUBSCRIBED_POLL_S = 5.0
_BEARER_CHALLENGE = (("www-authenticate", 'Bearer realm="sluice"'),)
_INVALID_CHALLENGE = (("www-authenticate", 'Bearer realm="sluice", error="invalid_token"'),)
_LATEST = 2**62  # asks the change feed for its newest version


def missing_key(problem: str = "You didn't provide an API key") -> Unauthorized:
    return Unauthorized(f"{problem}. Send it as `Authorization: Bearer <key>` or in the `x-api-key` header.",
                        code="missing_api_key", reason="missing", headers=_BEARER_CHALLENGE)


def invalid_key(reason: str) -> Unauthorized:
    """The one refusal of unknown, revoked, rotated and malformed keys: it says nothing of which it was."""
    return Unauthorized("Incorrect API key provided. Check that you sent the whole key; a key that was revoked "
                        "or replaced no longer works: ask your administrator for a new one.",
                        code="invalid_api_key", reason=reason, headers=_INVALID_CHALLENGE)


def expired_key() -> Unauthorized:
    return Unauthorized("This API key has expired; ask your administrator for a new one.", code="expired_api_key",
                        reason="expired", headers=_INVALID_CHALLENGE)


def _token_refused(failure: AuthFailure) -> Unauthorized | AuthUnavailable:
    message = failure.message[:1].upper() + failure.message[1:]
    if failure.status == 503:
        return AuthUnavailable(f"{message}.", code="issuer_unavailable", reason=failure.reason)
    return Unauthorized(f"{message}.", code="invalid_token", reason=failure.reason, headers=_INVALID_CHALLENGE)


def _store_down() -> AuthUnavailable:
    return AuthUnavailable("The gateway cannot check this API key right now (its key store is unavailable); "
                           "try again shortly.", code="store_unavailable", reason="store_unavailable")


class _Entry:
    """A cached key: the record it came from, its principal (rebuilt when the role table changes)."""

    __slots__ = ("epoch", "key_hash", "owners", "principal", "refusal", "source", "team_roles", "until")

    def __init__(self, key_hash: str, source: ApiKey | StaticKeyConfig, principal: Principal, epoch: int,
                 team_roles: tuple[str, ...] = (), refusal: str | None = None) -> None:
        self.key_hash = key_hash
        self.source = source
        self.principal = principal
        self.epoch = epoch
        self.team_roles = team_roles
        self.refusal = refusal  # refused whatever the time ("user_disabled")
        self.until = principal.expires_at if principal.expires_at is not None else math.inf
        owners = []
        if isinstance(source, ApiKey):
            if source.owner_user:
                owners.append(f"user:{source.owner_user}")
            if source.owner_team:
                owners.append(f"team:{source.owner_team}")
        self.owners = tuple(owners)


class Authenticator:
    """Keys and tokens to principals (see the module docstring).  One per worker; ``start`` inside its loop."""

    def __init__(self, config: AuthConfig, store: Store | None, client_factory: Callable[[], UpstreamClient], *,
                 notices: ChangeNotices | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.notices = notices  # Redis pub/sub: wakes the change-feed reader (closed with this object)
        self._wake = asyncio.Event()
        self._client_factory = client_factory
        self._clock = clock
        self.roles = RoleTable(config.roles)
        self.epoch = 0  # bumped when the role table changes: cached principals are rebuilt
        self.cache_size = config.key_cache_size
        self._static = {hash_key(k.key): _Entry(hash_key(k.key), k, for_static(k, self.roles), 0)
                        for k in config.static_keys}
        self._keys: dict[str, _Entry] = {}  # insertion order: the oldest is dropped first
        self._unknown: OrderedDict[str, float] = OrderedDict()  # hash -> believed unknown until
        self._owners: dict[str, set[str]] = {}  # "user:<id>" / "team:<id>" -> hashes of the keys cached
        self._inflight: dict[str, asyncio.Future[_Entry | None]] = {}
        self._stale: set[str] = set()  # in-flight lookups a change overtook: their answer is not cached
        self._version: int | None = None  # the change feed is read after this
        # The known-key filter (sluice.auth.keyfilter): None until built at the first read of the store (and
        # while it cannot be), and then a hash it does not hold is refused without a store read.
        self._filter: KeyFilter | None = None
        self._filter_adds: list[str] | None = None  # hashes the feed named while a larger filter is being built
        self._filter_task: asyncio.Task[None] | None = None
        self._next_read: asyncio.Future[bool] | None = None  # resolved by the change feed's next read
        self._feed_failing = False  # the last read of the change feed failed
        self._init_task: asyncio.Future[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._jwt: JwtVerifier | None = None
        self._introspector: Introspector | None = None
        self._tokens: dict[int, tuple[Identity, Principal, int]] = {}  # id(identity) -> its principal
        self.lookups = 0  # store reads of a key
        self.filtered = 0  # keys refused by the known-key filter, without a store read
        self.polls = 0  # change-feed reads that worked
        self.wakes = 0  # reads of the feed a notice asked for
        self.store_failures = 0
        self._logged_down = -math.inf

    @property
    def running(self) -> bool:
        return self._poll_task is not None

    # -- the request path -----------------------------------------------------------------------------

    def cached(self, token: str) -> Principal | None:
        """The principal of a cached key, without an await; None on a miss (then ``authenticate``).

        Raises Unauthorized for a key the cache knows to refuse.
        """
        digest = key_digest(token)
        entry = self._static.get(digest) or self._keys.get(digest)
        if entry is None:
            until = self._unknown.get(digest)
            if until is not None:
                if until > self._clock():
                    raise invalid_key("unknown")
                del self._unknown[digest]
            return None
        if not hmac.compare_digest(entry.key_hash, digest):
            return None
        return self._usable(entry)

    async def authenticate(self, token: str) -> Principal:
        """Any credential: a key not cached (the store is asked), a JWT, an introspected token."""
        config = self.config
        if config.jwt or config.introspection:
            from .jwt import looks_like_jwt

            if config.jwt and looks_like_jwt(token):
                return self._token_principal(await self._verify(self._jwt_verifier(), token))
            if config.introspection and not token.startswith("sk-"):
                return self._token_principal(await self._verify(self._introspection(), token))
        if len(token) > MAX_KEY_LENGTH or not token.isprintable():
            raise invalid_key("malformed")
        principal = self.cached(token)  # filled meanwhile by another request?
        if principal is not None:
            return principal
        entry = await self._lookup(hash_key(token))
        if entry is None:
            raise invalid_key("unknown")
        return self._usable(entry)

    def _usable(self, entry: _Entry) -> Principal:
        if entry.refusal is not None:
            raise invalid_key(entry.refusal)
        if entry.until <= self._clock():
            raise self._timed_refusal(entry)
        if entry.epoch != self.epoch:
            source = entry.source
            entry.principal = (for_key(source, self.roles, entry.team_roles) if isinstance(source, ApiKey)
                               else for_static(source, self.roles))
            entry.epoch = self.epoch
        return entry.principal

    def _timed_refusal(self, entry: _Entry) -> Unauthorized:
        key = entry.source
        now = self._clock()
        if isinstance(key, ApiKey):
            if key.revoked_at is not None and key.revoked_at <= now:
                return invalid_key("revoked")
            if key.expires_at is not None and key.expires_at <= now:
                return expired_key()
            return invalid_key("rotated")
        return expired_key()

    # -- misses ---------------------------------------------------------------------------------------

    async def _lookup(self, digest: str) -> _Entry | None:
        future = self._inflight.get(digest)
        if future is None:
            future = self._inflight[digest] = asyncio.ensure_future(self._fetch(digest))
            future.add_done_callback(lambda done: self._fetched(digest, done))
        return await asyncio.shield(future)

    def _fetched(self, digest: str, future: asyncio.Future[_Entry | None]) -> None:
        if self._inflight.get(digest) is future:
            del self._inflight[digest]
            self._stale.discard(digest)
        if not future.cancelled():
            future.exception()  # retrieved here too: every waiter may have gone

    async def _fetch(self, digest: str) -> _Entry | None:
        store = self.store
        if store is None:
            return None
        try:
            await self._ready()
            known = self._filter
            if known is not None and digest not in known:
                # Unknown here.  A key made on another instance reaches the filter with the change feed's next
                # read: wait for it (no store read of our own), then believe the filter.
                if not await self._after_next_read():
                    raise StoreUnavailable("its change feed could not be read")
                known = self._filter
                if known is not None and digest not in known:
                    self.filtered += 1
                    if digest not in self._stale:
                        self._remember_unknown(digest)
                    return None
            self.lookups += 1
            key = await store.key_by_hash(digest)
            if key is None:
                if digest not in self._stale:
                    self._remember_unknown(digest)
                return None
            refusal: str | None = None
            team_roles: tuple[str, ...] = ()
            if key.usable(self._clock()):  # a refused key costs what an unknown one does: no more reads
                refusal, team_roles = await self._owners_of(store, key)
        except StoreError as exc:
            self.store_failures += 1
            now = time.monotonic()
            if now - self._logged_down >= LOG_EVERY_S:  # a flood of first-seen keys logs once in a while
                self._logged_down = now
                log.warning("auth: a key could not be looked up, the key store is unavailable: %s", exc)
            raise _store_down() from None
        entry = _Entry(digest, key, for_key(key, self.roles, team_roles), self.epoch, team_roles, refusal)
        if digest not in self._stale:
            self._insert(entry)
        return entry

    async def _after_next_read(self) -> bool:
        """Waits for the change feed's next read that starts after this call: at most ``revocation_poll_s`` and
        ``READ_GRACE_S`` for the read itself (while notices arrive by pub/sub the regular reads are rarer, and a
        key made through the manager comes with a notice that starts one); False when the feed could not be
        read.  At once when no reader runs (the stage starts it at its first request)."""
        if self._poll_task is None:
            return not self._feed_failing
        future = self._next_read
        if future is None:
            future = self._next_read = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.revocation_poll_s + READ_GRACE_S):
                return await asyncio.shield(future)
        return not self._feed_failing

    async def _owners_of(self, store: Store, key: ApiKey) -> tuple[str | None, tuple[str, ...]]:
        """(refusal, team roles): a disabled owner refuses the key; the owning team's roles add to it."""
        async def user_disabled() -> bool:
            if not key.owner_user:
                return False
            with contextlib.suppress(RecordNotFound):
                return (await store.get_user(key.owner_user)).disabled
            return False

        async def team_roles() -> tuple[str, ...]:
            if not key.owner_team:
                return ()
            with contextlib.suppress(RecordNotFound):
                return (await store.get_team(key.owner_team)).roles
            return ()

        disabled, roles = await asyncio.gather(user_disabled(), team_roles())
        return ("user_disabled" if disabled else None), roles

    def _insert(self, entry: _Entry) -> None:
        keys = self._keys
        self._unknown.pop(entry.key_hash, None)
        if entry.key_hash in keys:
            self._evict(entry.key_hash)
        keys[entry.key_hash] = entry
        for owner in entry.owners:
            self._owners.setdefault(owner, set()).add(entry.key_hash)
        while len(keys) > self.cache_size:
            self._evict(next(iter(keys)))

    def _evict(self, digest: str) -> bool:
        """Drops a hash from the caches (and from an in-flight lookup's answer); True if a key was cached."""
        self._unknown.pop(digest, None)
        if digest in self._inflight:
            self._stale.add(digest)
        entry = self._keys.pop(digest, None)
        if entry is None:
            return False
        for owner in entry.owners:
            hashes = self._owners.get(owner)
            if hashes is not None:
                hashes.discard(digest)
                if not hashes:
                    del self._owners[owner]
        return True

    def _remember_unknown(self, digest: str) -> None:
        unknown = self._unknown
        unknown[digest] = self._clock() + UNKNOWN_TTL_S
        unknown.move_to_end(digest)
        while len(unknown) > MAX_UNKNOWN:
            unknown.popitem(last=False)

    # -- tokens ---------------------------------------------------------------------------------------

    def _jwt_verifier(self) -> JwtVerifier:
        if self._jwt is None:
            from .jwt import JwtVerifier

            self._jwt = JwtVerifier(self.config.jwt, self._client_factory)
        return self._jwt

    def _introspection(self) -> Introspector:
        if self._introspector is None:
            from .introspection import Introspector

            self._introspector = Introspector(self.config.introspection, self._client_factory)
        return self._introspector

    @staticmethod
    async def _verify(verifier: JwtVerifier | Introspector, token: str) -> Identity:
        try:
            return await verifier.verify(token)
        except AuthFailure as failure:
            raise _token_refused(failure) from None

    def _token_principal(self, identity: Identity) -> Principal:
        known = self._tokens.get(id(identity))
        if known is not None and known[0] is identity and known[2] == self.epoch:
            return known[1]
        principal = for_identity(identity, self.roles)
        if len(self._tokens) >= MAX_TOKEN_PRINCIPALS:
            self._tokens.clear()
        self._tokens[id(identity)] = (identity, principal, self.epoch)
        return principal

    # -- the change feed ------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts reading the change feed (in the running loop), and listening to change notices when there is
        Redis; the stage calls it at the first request."""
        if self._poll_task is None and self.store is not None:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll_forever())
            if self.notices is not None:
                self.notices.listen(self.wake)

    def wake(self) -> None:
        """Reads the change feed now (a change notice came, or the subscription changed state)."""
        self.wakes += 1
        self._wake.set()

    @property
    def poll_interval(self) -> float:
        """``revocation_poll_s``; slower while change notices arrive by pub/sub (they are the fast path)."""
        poll_s = self.config.revocation_poll_s
        notices = self.notices
        return max(poll_s, SUBSCRIBED_POLL_S) if notices is not None and notices.subscribed else poll_s

    async def _ready(self) -> None:
        """The feed's version and the store's roles, known before the first key is read from the store."""
        if self._version is not None:
            return
        task = self._init_task
        if task is None:
            task = self._init_task = asyncio.ensure_future(self._initialize())
            task.add_done_callback(self._initialized)
        await asyncio.shield(task)

    def _initialized(self, task: asyncio.Future[None]) -> None:
        self._init_task = None
        if not task.cancelled():
            task.exception()

    async def _initialize(self) -> None:
        assert self.store is not None
        version, _ = await self.store.changes_since(_LATEST, 1)
        await self._load_roles()
        await self._load_filter()  # after the version: a key made meanwhile is in the feed too
        self._version = version

    async def _load_filter(self) -> None:
        """Builds the known-key filter from every key hash of the store and swaps it in.  The
        hashes the change feed names meanwhile are added to it as well as to the filter in use."""
        assert self.store is not None
        adds: list[str] = []
        self._filter_adds = adds
        try:
            hashes: list[str] = []
            after = None
            while True:
                page = await self.store.key_hashes(after=after, limit=_HASH_PAGE)
                hashes += [key_hash for _, key_hash in page]
                if len(page) < _HASH_PAGE:
                    break
                after = page[-1][0]
            known = KeyFilter.sized_for(len(hashes) + len(adds))
            for key_hash in hashes:
                known.add(key_hash)
            for key_hash in adds:
                known.add(key_hash)
            self._filter = known
        finally:
            self._filter_adds = None

    def _known(self, key_hash: str) -> None:
        """A key hash the change feed named (created, rotated, revoked) passes the filter from now on."""
        known = self._filter
        if known is not None:
            known.add(key_hash)
        if self._filter_adds is not None:
            self._filter_adds.append(key_hash)

    def _grow_filter(self) -> None:
        """More keys than the filter was sized for: a larger one is built from the store, in the background."""
        task = self._filter_task
        if task is None or task.done():
            self._filter_task = asyncio.get_running_loop().create_task(self._load_filter())
            self._filter_task.add_done_callback(_log_failed_build)

    async def _load_roles(self) -> None:
        assert self.store is not None
        found: dict[str, tuple[str, ...]] = {}
        after = None
        while True:
            page = await self.store.list_roles(after=after, limit=MAX_PAGE)
            found.update({role.name: role.permissions for role in page})
            if len(page) < MAX_PAGE:
                break
            after = page[-1].name
        table = RoleTable(self.config.roles, found)
        self.roles = table
        self.epoch += 1
        self._tokens.clear()

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            self._wake.clear()  # a notice from now on (even during this read) asks for another read
            # The requests waiting for a read that starts after they came (one begun before may miss their key).
            waiting, self._next_read = self._next_read, None
            try:
                if self._version is None:
                    await self._ready()
                else:
                    await self.poll()
                if failing:
                    log.info("auth: the key store answers again; reading its changes")
                failing = False
            except Exception as exc:  # the store down, or anything else: the next poll tries again
                self.store_failures += 1
                if not failing:
                    log.warning("auth: cannot read the key store's changes (%s: %s); cached keys go on working",
                                type(exc).__name__, exc)
                failing = True
            self._feed_failing = failing
            if waiting is not None and not waiting.done():
                waiting.set_result(not failing)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()

    async def poll(self) -> None:
        """Reads the changes since the last poll and applies them to the caches.

        The background task calls it every ``poll_interval`` and on each change notice; the admin API calls it
        after a change, so that the worker that made it applies it at once.  Applying a change twice is harmless.
        """
        store = self.store
        if store is None:
            return
        if self._version is None:
            await self._ready()
            return
        refresh: list[str] = []
        roles_changed = False
        while True:
            version, changes = await store.changes_since(self._version, MAX_PAGE)
            for change in changes:
                if change.kind == "key":
                    self._known(change.ref)
                    if self._evict(change.ref) and change.ref not in refresh:
                        refresh.append(change.ref)
                elif change.kind in ("user", "team"):
                    for digest in list(self._owners.get(f"{change.kind}:{change.ref}", ())):
                        self._evict(digest)
                    # A lookup in flight may have read the owner before this change: its answer is not cached.
                    self._stale.update(self._inflight)
                elif change.kind == "role":
                    roles_changed = True
            if roles_changed:
                await self._load_roles()
                roles_changed = False
            # max: a poll run meanwhile (the admin API's, after a change) may have read further already.
            self._version = max(version, self._version or 0)
            if len(changes) < MAX_PAGE:
                break
        self.polls += 1
        if self._filter is not None and self._filter.full:
            self._grow_filter()
        if refresh:  # read again now, so that the next request finds them cached
            await asyncio.gather(*(self._lookup(d) for d in refresh[:REFRESH_PER_POLL]), return_exceptions=True)

    async def aclose(self) -> None:
        for task in (self._poll_task, self._filter_task):
            if task is not None:
                await cancel_and_wait(task)
        self._poll_task = self._filter_task = None
        if self.notices is not None:
            await self.notices.aclose()
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self.store is not None:
            await self.store.aclose()

    def stats(self) -> dict[str, Any]:
        known = self._filter
        return {"keys_cached": len(self._keys), "unknown_cached": len(self._unknown), "static": len(self._static),
                "lookups": self.lookups, "filtered": self.filtered,
                "filter_keys": known.count if known is not None else None,
                "store_calls": self.store.calls if self.store is not None else 0,
                "polls": self.polls, "store_failures": self.store_failures,
                "version": self._version, "wakes": self.wakes,
                "notices": self.notices.stats() if self.notices is not None else None}


def _log_failed_build(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("auth: could not build a larger known-key filter (%s); the current one stays in use, "
                    "with more false passes (each one store read)", task.exception())


def prepare_store(config: Config) -> list[tuple[int, str]]:
    """Runs the store's missing migrations once, before the workers start, when auth is on and
    ``store.migrate_on_start``; answers (version, name) of those applied.  StoreError when it fails."""
    if not config.auth.enabled or not config.store.migrate_on_start:
        return []

    async def migrate() -> list[tuple[int, str]]:
        store = open_store(config.store)
        try:
            return await store.migrate()
        finally:
            await store.aclose()

    return asyncio.run(migrate())
