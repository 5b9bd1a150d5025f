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
first: those closest to leaving the window anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable

from ..errors import Unauthorized

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Signatures", "sign"]

SIGNATURE_HEADER = "x-sluice-signature"
TIMESTAMP_HEADER = "x-sluice-timestamp"
_HOW = ("sign each request: x-sluice-timestamp (unix seconds) and x-sluice-signature = hex HMAC-SHA256 of "
        "\"METHOD\\nPATH[?QUERY]\\nTIMESTAMP\\nSHA256_HEX(BODY)\" with the key's signing secret")
_MAX_DIGITS = 12  # a timestamp's; unix seconds have 10 until the year 2286


def sign(secret: bytes, method: str, path: str, timestamp: str, body: bytes, query: str = "") -> str:
    """The signature a caller sends (and the gateway expects); ``query`` without the "?", as sent."""
    target = f"{path}?{query}" if query else path
    message = f"{method}\n{target}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _refused(problem: str, reason: str) -> Unauthorized:
    return Unauthorized(f"This key must {_HOW}; {problem}.", code="invalid_signature", reason=reason)


class Signatures:
    """Verifies signed requests and remembers the signatures it accepted (for replays)."""

    def __init__(self, skew_s: float, *, max_seen: int = 200_000, clock: Callable[[], float] = time.time) -> None:
        self.skew_s = skew_s
        self.max_seen = max_seen
        self._clock = clock
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # signature -> when it leaves the window

    def verify(self, secret: bytes, method: str, path: str, timestamp: str | None, signature: str | None,
               body: bytes, query: str = "") -> None:
        """Returns when the request is signed, fresh and new; Unauthorized otherwise."""
        if not timestamp or not signature:
            raise _refused("the request carries no signature", "signature_missing")
        # Digits only, and few: int() would take "+1", "1_0" or 400 digits (whose distance overflows a float).
        if len(timestamp) > _MAX_DIGITS or not (timestamp.isascii() and timestamp.isdigit()):
            raise _refused(f"its x-sluice-timestamp is not a whole number of at most {_MAX_DIGITS} digits",
                           "signature_malformed")
        at = int(timestamp)
        now = self._clock()
        if abs(now - at) > self.skew_s:
            raise _refused(f"its timestamp is more than {self.skew_s:g}s away from the gateway's clock (check the "
                           "caller's clock)", "signature_stale")
        expected = sign(secret, method, path, timestamp, body, query)
        if not secret or not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise _refused("its signature does not match", "signature_mismatch")
        digest = bytes.fromhex(expected)
        seen = self._seen
        if digest in seen:
            raise _refused("that signature was already used (make a new one per request)", "signature_replayed")
        self._forget(now)
        seen[digest] = at + self.skew_s

    def _forget(self, now: float) -> None:
        seen = self._seen
        while seen:
            digest, until = next(iter(seen.items()))
            if until >= now and len(seen) < self.max_seen:
                break
            del seen[digest]
