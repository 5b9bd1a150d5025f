"""Request signatures of keys created with ``signing: true``: HMAC-SHA256 over method, target, time and body.

The caller sends::

    x-sluice-timestamp: <unix seconds>
    x-sluice-signature: hex(HMAC-SHA256(secret, f"{METHOD}\\n{target}\\n{timestamp}\\n{sha256_hex(body)}"))

where ``target`` is the request path, followed by ``?`` and the query string
exactly as sent when there is one (a request without a query signs its path
alone).  A request is refused (401, code ``invalid_signature``) when either
header is missing, the timestamp is not a whole number of at most 12 digits or
is more than ``skew_s`` away from the gateway's clock, the signature does not
match (compared in constant time), or the same signature was accepted before
(a replay).

Replays are remembered per worker process until their timestamp leaves the
window, in a bounded map (``max_seen``; when full, the oldest are forgotten
first: those closest to leaving the window anyway).  That alone lets a replay
sent to another worker or instance through, so with Redis (``redis``) every
signature is also claimed there, once, by ``claim``: ``SET <prefix>sig:<hex> 1
NX PX <2 x skew>`` (a timestamp is accepted within skew either side of a
gateway's clock, so a signature can come back for at most twice the skew); the
key existing already is a replay, whichever worker or instance saw it first.

``claim`` takes what ``verify`` returns: the signature it checked against the
secret and found fresh and new to this worker.  So a signature is claimed only
once it is known to be valid, after the body was read: only a holder of the
secret can spend one (a bearer of the key alone cannot claim the signatures it
sees on the wire ahead of their requests), and a request whose signature does
not match is refused without a round trip to Redis nor a key left there.
Redis down or slower than ``timeout_s``: the per-worker memory alone (the
guarantee is then per worker), or, with ``fail_closed``, a 503
(``replay_cache_unavailable``) for every signed request, whose signature this
worker then forgets again (resending it works once Redis is back); either way
Redis is not asked again for ``RETRY_S``, so an outage costs a signed request
no wait.  Unsigned requests never reach any of this.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import AuthUnavailable, Unauthorized

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RETRY_S", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Signatures", "sign"]

log = logging.getLogger("sluice.auth")

SIGNATURE_HEADER = "x-sluice-signature"
TIMESTAMP_HEADER = "x-sluice-timestamp"
_HOW = ("sign each request: x-sluice-timestamp (unix seconds) and x-sluice-signature = hex HMAC-SHA256 of "
        "\"METHOD\\nPATH[?QUERY]\\nTIMESTAMP\\nSHA256_HEX(BODY)\" with the key's signing secret")
_MAX_DIGITS = 12  # a timestamp's; unix seconds have 10 until the year 2286
RETRY_S = 1.0  # after a failed claim, Redis is not asked again for this long
LOG_EVERY_S = 10.0


def sign(secret: bytes, method: str, path: str, timestamp: str, body: bytes, query: str = "") -> str:
    """The signature a caller sends (and the gateway expects); ``query`` without the "?", as sent."""
    target = f"{path}?{query}" if query else path
    message = f"{method}\n{target}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _refused(problem: str, reason: str) -> Unauthorized:
    return Unauthorized(f"This key must {_HOW}; {problem}.", code="invalid_signature", reason=reason)


def _unavailable() -> AuthUnavailable:
    return AuthUnavailable("The gateway cannot check this signed request for replays right now (its replay cache "
                           "is unavailable); try again shortly, with a new signature.",
                           code="replay_cache_unavailable", reason="replay_cache_unavailable")


class Signatures:
    """Verifies signed requests and remembers the signatures it accepted (for replays): in this worker, and with
    ``redis`` across workers and instances (``claim``)."""

    def __init__(self, skew_s: float, *, redis: redis.asyncio.Redis | None = None, prefix: str = "sluice:auth:",
                 fail_closed: bool = False, timeout_s: float = 0.25, max_seen: int = 200_000,
                 clock: Callable[[], float] = time.time) -> None:
        self.skew_s = skew_s
        self.max_seen = max_seen
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> when it leaves the window
        self._redis = redis
        self.prefix = f"{prefix}sig:"
        self.fail_closed = fail_closed
        self.timeout_s = timeout_s
        self._ttl_ms = max(1, math.ceil(2 * skew_s * 1000))
        self._retry_at = -math.inf  # monotonic: Redis is not asked before then (it just failed)
        self._logged = -math.inf
        self.claims = 0  # signatures claimed on Redis
        self.replays = 0  # claims that found the signature there already
        self.claim_failures = 0  # claims Redis did not answer (or that were not tried, Redis having just failed)

    @property
    def shared(self) -> bool:
        """True when signatures are claimed on Redis too (``claim`` has work to do)."""
        return self._redis is not None

    def _fresh(self, timestamp: str | None, signature: str | None) -> tuple[str, str]:
        """(timestamp, signature) when both are there and the timestamp is a fresh number; Unauthorized otherwise."""
        if not timestamp or not signature:
            raise _refused("the request carries no signature", "signature_missing")
        # Digits only, and few: int() would take "+1", "1_0" or 400 digits (whose distance overflows a float).
        if len(timestamp) > _MAX_DIGITS or not (timestamp.isascii() and timestamp.isdigit()):
            raise _refused(f"its x-sluice-timestamp is not a whole number of at most {_MAX_DIGITS} digits",
                           "signature_malformed")
        if abs(self._clock() - int(timestamp)) > self.skew_s:
            raise _refused(f"its timestamp is more than {self.skew_s:g}s away from the gateway's clock (check the "
                           "caller's clock)", "signature_stale")
        return timestamp, signature

    def verify(self, secret: bytes, method: str, path: str, timestamp: str | None, signature: str | None,
               body: bytes, query: str = "") -> bytes:
        """The signature (its 32 bytes, for ``claim``) when the request is signed, fresh and new to this worker,
        which remembers it from then on; Unauthorized otherwise."""
        timestamp, signature = self._fresh(timestamp, signature)
        at = int(timestamp)
        now = self._clock()
        expected = sign(secret, method, path, timestamp, body, query)
        if not secret or not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise _refused("its signature does not match", "signature_mismatch")
        digest = bytes.fromhex(expected)
        seen = self._seen
        if digest in seen:
            raise _refused("that signature was already used (make a new one per request)", "signature_replayed")
        self._forget(now)
        seen[digest] = at + self.skew_s
        return digest

    async def claim(self, digest: bytes) -> None:
        """Claims on Redis a signature ``verify`` accepted (what it returned), a no-op without Redis: Unauthorized
        when any worker or instance claimed it before; when Redis cannot answer, AuthUnavailable with
        ``fail_closed`` (and this worker forgets the signature, so the request can be sent again), else nothing
        (the per-worker memory of ``verify`` is all there is)."""
        client = self._redis
        if client is None:
            return
        if time.monotonic() < self._retry_at:
            self.claim_failures += 1
            self._degraded(digest, None)
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                fresh = await client.set(self.prefix + digest.hex(), b"1", nx=True, px=self._ttl_ms)
        except Exception as exc:  # Redis down, slow or refusing: never a 500 on the request path
            self.claim_failures += 1
            self._retry_at = time.monotonic() + RETRY_S
            self._degraded(digest, exc)
            return
        self.claims += 1
        if not fresh:
            self.replays += 1
            raise _refused("that signature was already used (make a new one per request)", "signature_replayed")

    def _degraded(self, digest: bytes, exc: Exception | None) -> None:
        now = time.monotonic()
        if exc is not None and now - self._logged >= LOG_EVERY_S:
            self._logged = now
            then = "signed requests get 503" if self.fail_closed else "replays are caught per worker only"
            log.warning("auth: the replay cache on Redis is unavailable (%s: %s); %s until it is back",
                        type(exc).__name__, str(exc) or "no answer in time", then)
        if self.fail_closed:
            self._seen.pop(digest, None)  # not spent: the 503 asks for the request again
            raise _unavailable()

    def _forget(self, now: float) -> None:
        seen = self._seen
        while seen:
            digest, until = next(iter(seen.items()))
            if until >= now and len(seen) < self.max_seen:
                break
            del seen[digest]
