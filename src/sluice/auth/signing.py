"""Request signatures of keys created with ``signing: true``: HMAC-SHA256 over method, path, time and body.

The caller sends::

    x-sluice-timestamp: <unix seconds>
    x-sluice-signature: hex(HMAC-SHA256(secret, f"{METHOD}\\n{path}\\n{timestamp}\\n{sha256_hex(body)}"))

where ``path`` is the request path without the query string.  A request is
refused (401, code ``invalid_signature``) when either header is missing, the
timestamp is not an integer or is more than ``skew_s`` away from the gateway's
clock, the signature does not match (compared in constant time), or the same
signature was accepted before (a replay).

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
        "\"METHOD\\nPATH\\nTIMESTAMP\\nSHA256_HEX(BODY)\" with the key's signing secret")


def sign(secret: bytes, method: str, path: str, timestamp: str, body: bytes) -> str:
    """The signature a caller sends (and the gateway expects)."""
    message = f"{method}\n{path}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
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
               body: bytes) -> None:
        """Returns when the request is signed, fresh and new; Unauthorized otherwise."""
        if not timestamp or not signature:
            raise _refused("the request carries no signature", "signature_missing")
        try:
            at = int(timestamp)
        except ValueError:
            raise _refused("its x-sluice-timestamp is not an integer", "signature_malformed") from None
        now = self._clock()
        if abs(now - at) > self.skew_s:
            raise _refused(f"its timestamp is more than {self.skew_s:g}s away from the gateway's clock (check the "
                           "caller's clock)", "signature_stale")
        expected = sign(secret, method, path, timestamp, body)
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
