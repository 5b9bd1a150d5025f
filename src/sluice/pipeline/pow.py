"""Proof of work for routes that need no credential, under flood (``abuse.pow``, docs/abuse.md).

With auth off anyone may call, and a flood cannot be told apart by its key.  This stage counts each route's
requests (per worker, in fixed windows of ``window_s``); while a route's rate is past
``threshold_rps`` (the last full window's, or the current one's so far), a request must carry a solved
challenge in ``X-Sluice-PoW``, else it is answered 429 (``pow_required``) with a fresh challenge in
``X-Sluice-PoW-Challenge``.  Below the threshold it costs a clock read, a dict lookup and a compare.

A challenge is ``<expires>.<nonce>.<difficulty>.<mac>``: an expiry (Unix seconds), 16 random hex digits, the
number of leading zero bits asked for, and an HMAC-SHA256 of the three under the worker's secret (so the
gateway keeps no state per challenge issued).  A solution is ``<challenge>:<counter>`` such that
``sha256(solution)`` starts with ``difficulty`` zero bits; the caller searches for the counter (2^difficulty
hashes on average: ~65,000 at 16, a few tens of milliseconds in Python), the gateway checks it with one
hash, then the MAC (a forged challenge costs its sender the work first).  A solved challenge is good once:
used ones are remembered until they expire, at most ``max_solutions`` (past that, 429 until some expire:
memory stays bounded even when solutions are made in bulk).  Without ``secret``, each worker makes its own,
and a solution is good only on the worker that issued its challenge.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..context import Exchange, RequestContext
from ..errors import PowRequired
from .stage import Stage

if TYPE_CHECKING:
    from ..config.model import PowConfig

__all__ = ["CHALLENGE_HEADER", "SOLUTION_HEADER", "PowStage", "solve"]

SOLUTION_HEADER = "x-sluice-pow"
CHALLENGE_HEADER = "x-sluice-pow-challenge"
_MAX_HEADER = 256


def _zero_bits(text: str, difficulty: int) -> bool:
    """Whether sha256(text) starts with ``difficulty`` (at most 32) zero bits."""
    head = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    return head >> (32 - difficulty) == 0


def solve(challenge: str) -> str:
    """The ``X-Sluice-PoW`` value for a challenge (what a client does; docs/abuse.md has it standalone)."""
    difficulty = int(challenge.split(".")[2])
    counter = 0
    while not _zero_bits(f"{challenge}:{counter}", difficulty):
        counter += 1
    return f"{challenge}:{counter}"


class _Window:
    """One route's requests in the current window, and whether the last one was a flood."""

    __slots__ = ("count", "flood", "start")

    def __init__(self, now: float) -> None:
        self.start = now
        self.count = 0
        self.flood = False


class PowStage(Stage):
    """See the module docstring."""

    name = "pow"

    def __init__(self, config: PowConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.threshold = config.threshold_rps
        self.window = config.window_s
        self.difficulty = config.difficulty
        self.ttl = config.ttl_s
        self.max_solutions = config.max_solutions
        self._secret = (config.secret or "").encode() or os.urandom(32)
        self._clock = clock
        self._allowed = config.threshold_rps * config.window_s  # requests per window before the challenge
        self._routes: dict[str, _Window] = {}  # by ctx.route: the gateway's bounded set of route names
        self._used: dict[str, float] = {}  # solved challenges -> their expiry, oldest first
        self.results: dict[tuple[str, ...], int] = {("challenged",): 0, ("solved",): 0, ("invalid",): 0}

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        now = self._clock()
        window = self._routes.get(ctx.route)
        if window is None:
            window = self._routes[ctx.route] = _Window(now)
        elif now - window.start >= self.window:
            # The window that closed decides whether the next is under flood (one past it: an idle gap, not).
            window.flood = window.count > self._allowed and now - window.start < 2 * self.window
            window.start = now
            window.count = 0
        window.count += 1
        if window.flood or window.count > self._allowed:
            self._check(ex.header(SOLUTION_HEADER), now)

    def _check(self, solution: str | None, now: float) -> None:
        if solution is None:
            raise self._challenge(now, "pow_required", "This endpoint is under heavy load: solve the proof-of-work "
                                  f"challenge in {CHALLENGE_HEADER} and send it in {SOLUTION_HEADER}.")
        problem = self._problem(solution, now)
        if problem is not None:
            self.results[("invalid",)] += 1
            raise self._challenge(now, "pow_invalid", f"{SOLUTION_HEADER} {problem}; solve the new challenge in "
                                                      f"{CHALLENGE_HEADER}.")
        self.results[("solved",)] += 1

    def _problem(self, solution: str, now: float) -> str | None:
        """What is wrong with a solution (None: it is good, and now used)."""
        challenge, _, counter = solution.rpartition(":")
        parts = challenge.split(".")
        if len(solution) > _MAX_HEADER or len(parts) != 4 or not counter.isdigit():
            return "is not <challenge>:<counter>"
        expires, _, difficulty, mac = parts
        if not expires.isdigit() or not difficulty.isdigit() or int(difficulty) != self.difficulty:
            return "names no challenge of this gateway"
        if int(expires) < now:
            return "carries an expired challenge"
        if not _zero_bits(solution, self.difficulty):  # the caller's work first: one hash
            return "does not solve its challenge"
        if not hmac.compare_digest(mac, self._mac(challenge.rpartition(".")[0])):
            return "names no challenge of this gateway"
        used = self._used
        if challenge in used:
            return "was used already"
        # The oldest first, a few at a time (amortised O(1): each is dropped once).
        for old, until in list(itertools.islice(used.items(), 8)):
            if until >= now:
                break
            del used[old]
        if len(used) >= self.max_solutions:
            return "cannot be accepted now (too many solutions in flight)"
        used[challenge] = int(expires)
        return None

    def _mac(self, text: str) -> str:
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()[:32]

    def _challenge(self, now: float, code: str, message: str) -> PowRequired:
        self.results[("challenged",)] += 1
        body = f"{math.ceil(now + self.ttl)}.{secrets.token_hex(8)}.{self.difficulty}"
        return PowRequired(message, code=code, headers=((CHALLENGE_HEADER, f"{body}.{self._mac(body)}"),
                                                        ("retry-after", "1")))

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], Callable[[], dict[tuple[str, ...], int]]]]:
        """For Metrics.counters."""
        return {"sluice_pow_challenges": ("Proof-of-work outcomes: challenged (429 with a challenge), solved, "
                                          "invalid (a wrong, expired or reused solution).", ("result",),
                                          lambda: self.results)}

    def describe(self) -> str:
        return f"pow (past {self.threshold:g} requests/s: {self.difficulty} bits)"
