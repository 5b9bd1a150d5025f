"""A circuit breaker per deployment: closed → open → half-open → closed (or open again).

Closed, it counts requests and failures in a rolling window of ``window_s``
seconds, kept as a ring of ``_BUCKETS`` time buckets (an index computation and
an increment per request, no allocation).  It opens when failures / requests
reaches ``failure_ratio`` over at least ``min_requests`` requests, or after
``consecutive_failures`` failures in a row, whichever comes first.

Open, it refuses everything for ``open_s``; the first look after that turns it
half-open.  Half-open, it admits ``half_open_probes`` requests at once; when as
many probes have succeeded it closes (with a fresh window), and one failure
opens it again for another ``open_s``.  An active health check may shorten the
wait (``probe_passed``: open → half-open) or lengthen it (``probe_failed``).

A request does not carry a token saying whether it took a probe slot: a request
admitted while closed that ends while half-open (a long stream) is taken for a
probe.  Its verdict is as good evidence as a probe's, and the slot count is kept
from going below zero, so this costs nothing but a slightly early decision.

Time is passed in (``now``, monotonic seconds) so tests drive it exactly.
"""

from __future__ import annotations

from ..config import BreakerConfig

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "STATE_NAMES", "Breaker"]

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
STATE_NAMES = ("closed", "open", "half_open")
_BUCKETS = 10


class Breaker:
    __slots__ = ("_consecutive", "_epochs", "_failures", "_inv_width", "_limit", "_min_requests", "_model",
                 "_open_s", "_probes", "_ratio", "_requests", "_transitions", "closed", "opened_at", "probes_ok",
                 "probing", "state")

    def __init__(self, config: BreakerConfig, model: str = "", transitions: dict[tuple[str, str], int] | None = None
                 ) -> None:
        self._ratio = config.failure_ratio
        self._min_requests = config.min_requests
        self._limit = config.consecutive_failures or 1 << 62  # 0: never on consecutive failures
        self._open_s = config.open_s
        self._probes = config.half_open_probes
        self._inv_width = _BUCKETS / config.window_s
        self._epochs = [-1] * _BUCKETS  # the bucket number (time // width) each slot counts for
        self._requests = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._consecutive = 0
        self._model = model
        self._transitions = transitions  # (model, to_state) -> count, shared by a router's breakers
        self.state = CLOSED
        self.closed = True  # state == CLOSED, read on the hot path
        self.opened_at = 0.0
        self.probing = 0  # half-open probes in flight
        self.probes_ok = 0  # half-open probes that succeeded

    # -- what the router asks ---------------------------------------------------------------------

    def admits(self, now: float) -> bool:
        """Whether a request may go now (an open breaker past open_s turns half-open here)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if now - self.opened_at < self._open_s:
                return False
            self._move(HALF_OPEN)
        return self.probing < self._probes

    def retry_in(self, now: float) -> float:
        """Seconds until an open breaker lets probes through (0 when it admits or is half-open)."""
        return max(0.0, self.opened_at + self._open_s - now) if self.state == OPEN else 0.0

    # -- what a request reports -------------------------------------------------------------------

    def begin(self) -> None:
        if self.state == HALF_OPEN:
            self.probing += 1

    def succeeded(self, now: float) -> None:
        state = self.state
        if state == CLOSED:  # per request: _slot inlined
            self._consecutive = 0
            epoch = int(now * self._inv_width)
            slot = epoch % _BUCKETS
            if self._epochs[slot] != epoch:
                self._epochs[slot] = epoch
                self._requests[slot] = self._failures[slot] = 0
            self._requests[slot] += 1
        elif state == HALF_OPEN:
            self._end_probe()
            self.probes_ok += 1
            if self.probes_ok >= self._probes:
                self._close()
        # OPEN: a request admitted before the breaker opened; the verdict is already in.

    def failed(self, now: float) -> None:
        state = self.state
        if state == CLOSED:
            slot = self._slot(now)
            self._requests[slot] += 1
            self._failures[slot] += 1
            self._consecutive += 1
            if self._consecutive >= self._limit or self._ratio_reached():
                self._open(now)
        elif state == HALF_OPEN:
            self._end_probe()
            self._open(now)

    def released(self) -> None:
        """A request ended without a verdict (client gone, key cooling down): its probe slot is free."""
        if self.state == HALF_OPEN:
            self._end_probe()

    # -- active health checks ---------------------------------------------------------------------

    def probe_passed(self, now: float) -> None:
        """A health check succeeded: an open breaker lets real traffic probe it now."""
        if self.state == OPEN:
            self._move(HALF_OPEN)

    def probe_failed(self, now: float) -> None:
        """A health check failed: an open breaker stays open (its open_s starts again), else it counts as a failure."""
        if self.state == OPEN:
            self.opened_at = now
        elif self.state == HALF_OPEN:
            self._open(now)
        else:
            self.failed(now)

    # -- inside -----------------------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        epoch = int(now * self._inv_width)
        slot = epoch % _BUCKETS
        if self._epochs[slot] != epoch:  # the slot last counted a bucket that left the window
            self._epochs[slot] = epoch
            self._requests[slot] = self._failures[slot] = 0
        return slot

    def _ratio_reached(self) -> bool:
        # Only on a failure: sums over the slots still in the window (the current one was just touched).
        oldest = max(self._epochs) - _BUCKETS
        requests = failures = 0
        for epoch, count, failed in zip(self._epochs, self._requests, self._failures, strict=True):
            if epoch > oldest:
                requests += count
                failures += failed
        return requests >= self._min_requests and failures >= self._ratio * requests

    def _end_probe(self) -> None:
        if self.probing > 0:
            self.probing -= 1

    def _open(self, now: float) -> None:
        self.opened_at = now
        self._move(OPEN)

    def _close(self) -> None:
        self._epochs = [-1] * _BUCKETS
        self._requests = [0] * _BUCKETS
        self._failures = [0] * _BUCKETS
        self._consecutive = 0
        self._move(CLOSED)

    def _move(self, state: int) -> None:
        self.state = state
        self.closed = state == CLOSED
        self.probing = self.probes_ok = 0
        if state != CLOSED:
            self._consecutive = 0
        if self._transitions is not None:
            key = (self._model, STATE_NAMES[state])
            self._transitions[key] = self._transitions.get(key, 0) + 1
