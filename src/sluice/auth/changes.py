"""Change notices on Redis pub/sub: a change committed in the store wakes every worker's change-feed reader.

The store's change feed stays the source of truth (sluice.auth.keys reads it);
a notice only says "read it now".  So a notice may be lost, late, doubled or
come from a change this worker made itself, and nothing is wrong: the next read
of the feed, a notice or the fallback poll, applies whatever it holds.

- **Publishing** (``publish``): the manager (admin API, CLI) publishes one
  short message on ``<auth.redis_prefix>changes`` after each committed change.
  A failure (Redis down, slow) is logged and counted, never raised: the change
  is made, and the other workers see it at their next poll.
- **Listening** (``listen``): one task per worker subscribes with a client of
  its own (redis-py's silent reconnect is off, so that every lost connection is
  seen) and calls ``on_notice`` for each notice of a change made by another
  process, and once each time the subscription is (re)confirmed: changes made
  while it was not subscribed are read then.  A lost connection is retried with
  exponential backoff (0.1 s doubling to 5 s, jittered), forever, quietly: one
  warning when it goes down, one line when it is back.  A connection that stays
  silent is found out by a PING after ``HEARTBEAT_S`` without traffic: no answer
  within ``HEARTBEAT_S`` more and it is dropped and made again.

``subscribed`` tells the reader which poll interval to use (sluice.auth.keys:
``revocation_poll_s`` while not subscribed, a slower safety net while it is).

The message is ``"<origin> <action>"``: ``origin`` is this object's random id,
so a worker skips the notices of the changes it made (it applied them already).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio

from ..state.redis import connect
from ..tasks import cancel_and_wait

if TYPE_CHECKING:
    from ..config.model import Config

__all__ = ["BACKOFF_MAX_S", "HEARTBEAT_S", "ChangeNotices", "auth_redis_url"]

log = logging.getLogger("sluice.auth")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0  # the longest wait between two attempts to subscribe again
HEARTBEAT_S = 5.0  # a PING after this long without traffic; no answer within as long again: reconnect
LOG_EVERY_S = 10.0
# The listener is off the request path: it may wait longer than a publish for its connection and subscription.
LISTEN_TIMEOUT_S = 2.0


def auth_redis_url(config: Config) -> str | None:
    """The Redis of the auth stage: ``auth.redis``, else ``ratelimit.redis``, else None (no Redis)."""
    return config.auth.redis or config.ratelimit.redis


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ChangeNotices:
    """One process's end of the change channel (see the module docstring).  ``client`` is its command
    client (PUBLISH), which the replay cache (sluice.auth.signing) may share; ``aclose`` closes both clients."""

    def __init__(self, url: str, prefix: str, *, timeout_s: float = 1.0) -> None:
        self.channel = f"{prefix}changes"
        self.origin = secrets.token_hex(8)
        self.timeout_s = timeout_s
        self._url = url
        self.client = connect(url, timeout_s=timeout_s, name="auth", health_check_s=0)
        self._listener: redis.asyncio.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = False
        self.published = 0
        self.publish_failures = 0
        self.notices = 0  # notices of changes made by another process
        self.subscriptions = 0  # subscriptions confirmed (the first, then one per reconnection)
        self.disconnects = 0
        self._logged_publish = -math.inf
        self._down = False  # the listener could not subscribe (logged once per outage)

    # -- publishing -----------------------------------------------------------------------------------

    async def publish(self, action: str) -> bool:
        """Announces a committed change; False (logged, counted) when Redis could not be told.  Never raises."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.publish(self.channel, f"{self.origin} {action}")
        except Exception as exc:  # Redis down or slow, or anything else: the change is made all the same
            self.publish_failures += 1
            now = time.monotonic()
            if now - self._logged_publish >= LOG_EVERY_S:
                self._logged_publish = now
                log.warning("auth: could not announce %s on Redis (%s); other workers and instances apply it at "
                            "their next poll of the change feed", action, _describe(exc))
            return False
        self.published += 1
        return True

    async def ping(self) -> float:
        """One PING's round trip in seconds (readiness, health details); raises when Redis does not answer."""
        started = time.perf_counter()
        async with asyncio.timeout(self.timeout_s):
            await self.client.ping()
        return time.perf_counter() - started

    # -- listening ------------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """The subscriber task runs (subscribed or trying to be): it never ends before ``aclose``."""
        return self._task is not None and not self._task.done()

    def listen(self, on_notice: Callable[[], None]) -> None:
        """Starts the subscriber task in the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen_forever(on_notice))

    async def _listen_forever(self, on_notice: Callable[[], None]) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            try:
                await self._session(on_notice)
            except Exception as exc:  # down, refused, reset, silent: try again later, whatever it was
                if self.subscribed:  # it worked until now: the reader goes back to its short interval now
                    self.subscribed = False
                    self.disconnects += 1
                    backoff = BACKOFF_MIN_S
                    on_notice()
                if not self._down:
                    self._down = True
                    log.warning("auth: no change notices from Redis (%s); polling the change feed every "
                                "revocation_poll_s until it is back", _describe(exc))
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _session(self, on_notice: Callable[[], None]) -> None:
        """Subscribes, then hands notices to ``on_notice`` until the connection fails (it raises then)."""
        timeout_s = max(self.timeout_s, LISTEN_TIMEOUT_S)
        if self._listener is None:
            self._listener = connect(self._url, timeout_s=timeout_s, name="auth", retries=0, health_check_s=0)
        pubsub: Any = self._listener.pubsub()  # its methods are untyped
        try:
            async with asyncio.timeout(timeout_s):
                await pubsub.subscribe(self.channel)
                while True:  # the confirmation: from then on every PUBLISH on the channel reaches us
                    message = await pubsub.get_message(timeout=timeout_s)
                    if message is not None and message["type"] == "subscribe":
                        break
            self.subscribed = True
            self.subscriptions += 1
            if self._down:
                self._down = False
                log.info("auth: change notices from Redis again")
            on_notice()  # what changed while we were not subscribed is read now
            await self._read(pubsub, on_notice)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _read(self, pubsub: Any, on_notice: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        origin = self.origin.encode()
        heard = loop.time()
        pinged: float | None = None
        while True:
            message = await pubsub.get_message(timeout=HEARTBEAT_S)
            now = loop.time()
            if message is None:
                if pinged is not None and now - pinged >= HEARTBEAT_S:
                    raise ConnectionError(f"Redis did not answer a PING within {HEARTBEAT_S:g}s")
                if pinged is None and now - heard >= HEARTBEAT_S:
                    await pubsub.ping()
                    pinged = now
                continue
            heard = now
            kind = message["type"]
            if kind == "pong":
                pinged = None
            elif kind == "message":
                data = message["data"]
                if not (isinstance(data, bytes) and data.split(b" ", 1)[0] == origin):
                    self.notices += 1
                    on_notice()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self.subscribed = False
        for client in (self._listener, self.client):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._listener = None

    def stats(self) -> dict[str, Any]:
        return {"subscribed": self.subscribed, "notices": self.notices, "subscriptions": self.subscriptions,
                "disconnects": self.disconnects, "published": self.published,
                "publish_failures": self.publish_failures}
