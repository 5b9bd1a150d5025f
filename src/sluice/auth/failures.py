"""Authentication failures limited per client address, before any store lookup.

Each worker keeps a token bucket per client address (the address
sluice.auth.iprules.ClientIp derives: X-Forwarded-For believed from
``ratelimit.trusted_proxies`` only): ``auth.failure_limit`` failures per
``auth.failure_period_s``, as a burst of that many.  Each refused credential
(401: missing, malformed, unknown, revoked, expired key; an invalid token)
takes one.  While an address has none left, a credential this worker has not
cached as valid is answered 429 (``too_many_auth_failures``, with
``Retry-After``) before it is looked up: a flood of made-up keys from one
address costs the store nothing, and a guessing client is slowed to the limit.

A key cached as valid is never refused here (its check is the cached path,
which does not look at this): callers behind one NAT keep working while a
neighbour is throttled.  The buckets are per worker (N workers: up to N times
the limit per address), in the compiled LocalLimiter, at most ``MAX_ADDRESSES``
of them (the least recently seen forgotten first).  ``failure_limit: 0`` turns
it off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .._native import LocalLimiter
from ..errors import AuthThrottled

__all__ = ["MAX_ADDRESSES", "FailureLimits"]

MAX_ADDRESSES = 100_000


class FailureLimits:
    """Per-address buckets of authentication failures (see the module docstring)."""

    def __init__(self, limit: int, period_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.limit = limit
        self.period_s = period_s
        self._buckets = LocalLimiter("token_bucket", limit, period_s, limit, max_addresses)
        self._clock = clock
        self.throttled = 0  # requests answered 429 here
        self.failures = 0  # failures counted

    def check(self, address: str) -> None:
        """AuthThrottled when the address has no failure left: before a credential is looked up."""
        wait = self._buckets.check(address, 1.0, self._clock())
        if wait > 0:
            self.throttled += 1
            raise _throttled(wait)

    def failed(self, address: str) -> None:
        """Counts one failure of the address; AuthThrottled instead when it had none left."""
        now = self._clock()
        buckets = self._buckets
        wait = buckets.check(address, 1.0, now)
        if wait > 0:
            self.throttled += 1
            raise _throttled(wait)
        buckets.consume(address, 1.0, now)
        self.failures += 1

    def stats(self) -> dict[str, int]:
        return {"auth_failures": self.failures, "auth_throttled": self.throttled, "auth_failure_addresses":
                len(self._buckets)}


def _throttled(wait: float) -> AuthThrottled:
    seconds = 1 if math.isinf(wait) else max(1, math.ceil(wait))
    return AuthThrottled(f"Too many failed authentication attempts from your address; try again in {seconds}s.",
                         code="too_many_auth_failures",
                         headers=(("retry-after", str(seconds)), ("retry-after-ms", str(seconds * 1000))))
