"""A deployment: one target of a model served through one base URL with one API key, and its live state.

A model's target (provider + upstream model + weight + region) becomes one
deployment per (base URL x API key) of its provider; each has its own health,
so a key answered 429 or a regional endpoint that fails is set aside while
its siblings carry the load.

The request path calls ``available`` while choosing, then ``begin`` and exactly
one of ``succeeded`` / ``failed`` / ``cool_down`` / ``released``.  Each is a few
attribute reads and arithmetic operations; the breaker is consulted only when
it exists (``resilience.breaker.enabled``) and is touched beyond a flag only
when it is not closed or a request ends.

Latency and time to first byte are exponentially weighted moving averages
(``ALPHA`` per sample).  A failure's latency is sampled as at least the current
average: a deployment that fails fast must not look fast to the latency-aware
strategies (failing is the breaker's business and the health strategy's), and
the average must not grow without bound either, or it would never be tried
again once it recovers.  The success ratio is an EWMA of 1 (success) and 0
(failure), starting at 1 so that a new deployment is tried.
"""

from __future__ import annotations

from ..providers import Call, Provider, UpstreamRequest
from .breaker import STATE_NAMES, Breaker

__all__ = ["ALPHA", "Deployment"]

ALPHA = 0.2  # weight of the newest sample in the moving averages (succeeded() has it as a literal)


class Deployment:
    """One (target, base URL, API key) of a model; what the request path routes to."""

    __slots__ = ("auth", "breaker", "capabilities", "cooldown_until", "current", "ewma_latency_s", "ewma_ttfb_s",
                 "failures", "in_flight", "key_cooldown_s", "label", "max_cooldown_s", "model", "provider", "region",
                 "requests", "seed", "success_ratio", "tags", "weight")

    def __init__(self, provider: Provider, model: str, weight: int, capabilities: frozenset[str], *,
                 auth: tuple[tuple[str, str], ...] = (), label: str = "", region: str | None = None,
                 tags: tuple[str, ...] = (), breaker: Breaker | None = None, seed: int = 0) -> None:
        self.provider = provider
        self.model = model  # the upstream's name for the model
        self.weight = weight  # its share of the target's weight (see Router: scaled to stay an integer)
        self.capabilities = capabilities
        self.auth = auth  # the credential headers of its key
        self.label = label  # provider[url index]#key index: never the key itself
        self.region = region
        self.tags = tags
        self.breaker = breaker  # None: breakers are off, always closed
        self.seed = seed  # its rendezvous-hashing seed (sticky), stable across instances
        self.key_cooldown_s = provider.config.key_cooldown_s
        self.max_cooldown_s = provider.config.max_cooldown_s
        self.current = 0  # smooth WRR state
        self.in_flight = 0
        self.ewma_latency_s = 0.0  # 0: not measured yet
        self.ewma_ttfb_s = 0.0
        self.success_ratio = 1.0
        self.cooldown_until = 0.0
        self.requests = 0  # ended with a verdict (succeeded or failed)
        self.failures = 0

    def __repr__(self) -> str:
        return f"Deployment({self.label} {self.model!r}, {self.state})"

    @property
    def state(self) -> str:
        """The breaker's state: closed, open or half_open."""
        return "closed" if self.breaker is None else STATE_NAMES[self.breaker.state]

    def available(self, now: float) -> bool:
        """The breaker admits a request (closed, or half-open with a probe slot free) and the key is not resting."""
        if now < self.cooldown_until:
            return False
        breaker = self.breaker
        return breaker is None or breaker.closed or breaker.admits(now)

    def cooling(self, now: float) -> bool:
        return now < self.cooldown_until

    def prepare(self, call: Call) -> UpstreamRequest:
        """The upstream request for ``call``, with this deployment's credentials."""
        call.auth = self.auth
        return self.provider.prepare(call)

    # -- a request's life: begin, then exactly one of the four verdicts -------------------------

    def begin(self, now: float) -> None:
        self.in_flight += 1
        breaker = self.breaker
        if breaker is not None and not breaker.closed:
            breaker.begin()  # a half-open probe slot

    def succeeded(self, now: float, latency_s: float, ttfb_s: float | None = None) -> None:
        # Per request: literals rather than ALPHA (a global lookup each), and the ratio written only when it
        # is not 1 already (it snaps back to 1 once within 1e-4 of it).
        self.in_flight -= 1
        self.requests += 1
        ewma = self.ewma_latency_s
        self.ewma_latency_s = ewma + 0.2 * (latency_s - ewma) if ewma else latency_s
        if ttfb_s is not None:
            ewma = self.ewma_ttfb_s
            self.ewma_ttfb_s = ewma + 0.2 * (ttfb_s - ewma) if ewma else ttfb_s
        ratio = self.success_ratio
        if ratio != 1.0:
            ratio += 0.2 * (1.0 - ratio)
            self.success_ratio = 1.0 if ratio > 0.9999 else ratio
        breaker = self.breaker
        if breaker is not None:
            breaker.succeeded(now)

    def failed(self, now: float, latency_s: float) -> None:
        """A failure the breaker counts: connect error, reset, timeout, 5xx."""
        self.in_flight -= 1
        self.requests += 1
        self.failures += 1
        ewma = self.ewma_latency_s
        if latency_s > ewma:  # a fast failure leaves the average alone
            self.ewma_latency_s = latency_s if ewma == 0.0 else ewma + ALPHA * (latency_s - ewma)
        self.success_ratio -= ALPHA * self.success_ratio
        if self.breaker is not None:
            self.breaker.failed(now)

    def cool_down(self, now: float, seconds: float | None = None) -> None:
        """A 429: the key rests for ``seconds`` (Retry-After, capped at max_cooldown_s), else key_cooldown_s.

        Not a breaker failure: the deployment works, its key is out of quota for a while."""
        self.in_flight -= 1
        self.rest(now, seconds)
        if self.breaker is not None:
            self.breaker.released()

    def rest(self, now: float, seconds: float | None = None) -> None:
        """The key rests (cool_down without a request ending: a health check answered 429)."""
        rest = self.key_cooldown_s if seconds is None or not seconds >= 0 else min(seconds, self.max_cooldown_s)
        self.cooldown_until = max(self.cooldown_until, now + rest)

    def released(self, now: float) -> None:
        """Ended without a verdict (the client went away): nothing learnt but the slot it held."""
        self.in_flight -= 1
        if self.breaker is not None:
            self.breaker.released()

    # -- what health details show -------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, object]:
        breaker = self.breaker
        return {
            "label": self.label,
            "target": self.model,
            "provider": self.provider.name,
            "region": self.region,
            "tags": list(self.tags),
            "state": self.state,
            "in_flight": self.in_flight,
            "ewma_latency_ms": round(self.ewma_latency_s * 1000, 3),
            "ewma_ttfb_ms": round(self.ewma_ttfb_s * 1000, 3),
            "success_ratio": round(self.success_ratio, 4),
            "requests": self.requests,
            "failures": self.failures,
            "cooling": now < self.cooldown_until,
            "cooldown_s": round(max(0.0, self.cooldown_until - now), 3),
            "open_for_s": round(breaker.retry_in(now), 3) if breaker is not None else 0.0,
        }
