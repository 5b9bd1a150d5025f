"""Per-key anomaly detection: a key's requests and tokens against its own baseline (``abuse.anomaly``).

Each worker follows the keys it serves (at most ``max_keys``, the least recently seen forgotten first), each
in O(1) per request and a few floats:

- time is cut into fixed windows of ``window_s``; the current window counts the key's requests (on the way
  in) and its tokens (prompt plus completion, on the way back, once the upstream reported them);
- when a window closes, its counts are folded into the key's baselines: exponentially weighted moving
  averages with time constant ``baseline_s`` (``alpha = 1 - exp(-window_s / baseline_s)``), idle windows
  counting as zeros.  The averages are debiased (divided by the weight of the samples seen so far, as Adam
  does), so a new key's baseline is its real mean from its first window on, not a value crawling up from 0;
- a window is a **spike** of a kind (``requests``, ``tokens``) once its count passes
  ``max(factor x baseline, min_requests | min_tokens)``, and the key was first seen at least ``warmup_s``
  ago: a new key is never flagged, nor a quiet key sending a handful;
- a spike window enters the baseline capped at that limit: a flood does not become the key's normal at once,
  while a key whose traffic really grew is accepted over a few time constants.

A spike starts an **episode** for its kind: one metric count (``sluice_key_anomalies_total{kind}``) and one
audit record (``abuse.anomaly``), not one per request.  The episode lasts while windows keep passing the
limit, and ends with the first window that does not.  With ``action: throttle``, while a key's window is
past its limit, the key's further requests in that window are answered 429 (``key_anomaly_throttled``, with
``Retry-After``: the end of the window), in the caller's wire format; refused requests still count, so a key
that keeps flooding stays in its episode and gets its allowance (the limit) per window.

The stage follows authenticated keys (``ctx.principal``): it is built only with auth on, after
``model_access`` on the model routes and on the passthrough.  Time comes from ``clock`` (tests pass their own).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..context import Exchange, RequestContext
from ..errors import AnomalyThrottled
from .stage import Stage

if TYPE_CHECKING:
    from ..config.model import AnomalyConfig

__all__ = ["AnomalyStage"]

REQUESTS, TOKENS = 1, 2  # episode bits
_KINDS = ((REQUESTS, "requests"), (TOKENS, "tokens"))

Audit = Callable[..., None]


class _Key:
    """One key's current window and baselines (debiased EWMAs: ``base / weight``)."""

    __slots__ = ("base_reqs", "base_toks", "episode", "reqs", "since", "start", "toks", "weight")

    def __init__(self, now: float) -> None:
        self.since = self.start = now
        self.reqs = self.toks = 0
        self.base_reqs = self.base_toks = self.weight = 0.0
        self.episode = 0  # REQUESTS | TOKENS while in a spike episode


class AnomalyStage(Stage):
    """See the module docstring."""

    name = "anomaly"

    def __init__(self, config: AnomalyConfig, *, audit: Audit | None = None,
                 client_ip: Callable[[Exchange], str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = config.window_s
        self.alpha = 1.0 - math.exp(-config.window_s / config.baseline_s)
        self.keep = 1.0 - self.alpha
        self.factor = config.factor
        self.warmup = config.warmup_s
        self.min_requests = config.min_requests
        self.min_tokens = config.min_tokens
        self.throttle = config.action == "throttle"
        self.max_keys = config.max_keys
        self._audit = audit
        self._client_ip = client_ip
        self._clock = clock
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        self.anomalies: dict[tuple[str, ...], int] = {("requests",): 0, ("tokens",): 0}
        self.throttled: dict[tuple[str, ...], int] = {(): 0}  # requests refused, for sluice_key_anomaly_throttled_total
        if not self.throttle:
            self.on_request = self._flag  # type: ignore[method-assign]  # flag only: never refuses

    # -- the request path ---------------------------------------------------------------------------------

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        key = self._count(ex, ctx)
        if key is not None and key.episode and self._over(key):
            self._refuse(key)

    def _flag(self, ex: Exchange, ctx: RequestContext) -> None:
        self._count(ex, ctx)

    def _count(self, ex: Exchange, ctx: RequestContext) -> _Key | None:
        principal = ctx.principal
        if principal is None:
            return None
        now = self._clock()
        key = self._key(principal.key_id, now)
        key.reqs += 1
        if not key.episode & REQUESTS and key.reqs > self._limit(key.base_reqs, key, self.min_requests) \
                and now - key.since >= self.warmup:
            self._begin(key, REQUESTS, ex, ctx)
        return key

    def on_response(self, ex: Exchange, ctx: RequestContext) -> None:
        principal = ctx.principal
        tokens = max(ctx.tokens_in, 0) + max(ctx.tokens_out, 0)
        if principal is None or tokens == 0:
            return
        key = self._keys.get(principal.key_id)
        if key is None:  # forgotten meanwhile (max_keys)
            return
        now = self._clock()
        self._roll(key, now)
        key.toks += tokens
        if not key.episode & TOKENS and key.toks > self._limit(key.base_toks, key, self.min_tokens) \
                and now - key.since >= self.warmup:
            self._begin(key, TOKENS, ex, ctx)

    # -- the windows and baselines ------------------------------------------------------------------------

    def _key(self, key_id: str, now: float) -> _Key:
        keys = self._keys
        key = keys.get(key_id)
        if key is None:
            key = keys[key_id] = _Key(now)
            if len(keys) > self.max_keys:
                keys.popitem(last=False)
        else:
            keys.move_to_end(key_id)
            self._roll(key, now)
        return key

    def _limit(self, base: float, key: _Key, minimum: int) -> float:
        """The count past which a window of this key is a spike (its baseline is ``base / weight``)."""
        mean = base / key.weight if key.weight else 0.0
        return max(self.factor * mean, minimum)

    def _over(self, key: _Key) -> bool:
        return (key.reqs > self._limit(key.base_reqs, key, self.min_requests)
                or key.toks > self._limit(key.base_toks, key, self.min_tokens))

    def _roll(self, key: _Key, now: float) -> None:
        """Closes the key's window(s) that ended before ``now``: folds them into the baselines."""
        elapsed = now - key.start
        if elapsed < self.window:
            return
        closed = int(elapsed // self.window)
        warm = now - key.since >= self.warmup
        episode = 0
        reqs, toks = float(key.reqs), float(key.toks)
        limit = self._limit(key.base_reqs, key, self.min_requests)
        if reqs > limit and warm:
            reqs, episode = limit, REQUESTS  # a spike enters the baseline capped at the limit
        limit = self._limit(key.base_toks, key, self.min_tokens)
        if toks > limit and warm:
            toks, episode = limit, episode | TOKENS
        alpha, keep = self.alpha, self.keep
        key.base_reqs = keep * key.base_reqs + alpha * reqs
        key.base_toks = keep * key.base_toks + alpha * toks
        key.weight = keep * key.weight + alpha
        if closed > 1:  # idle windows since: zeros
            decay = keep ** (closed - 1)
            key.base_reqs *= decay
            key.base_toks *= decay
            key.weight = key.weight * decay + (1.0 - decay)
        key.episode &= episode  # an episode ends with a window under its limit
        key.start += closed * self.window
        key.reqs = key.toks = 0

    # -- a spike ------------------------------------------------------------------------------------------

    def _begin(self, key: _Key, kind: int, ex: Exchange, ctx: RequestContext) -> None:
        key.episode |= kind
        label = "requests" if kind == REQUESTS else "tokens"
        self.anomalies[(label,)] += 1
        if self._audit is not None:
            count, base = (key.reqs, key.base_reqs) if kind == REQUESTS else (key.toks, key.base_toks)
            baseline = base / key.weight if key.weight else 0.0
            self._audit("abuse.anomaly", actor=ctx.key_prefix or ctx.principal.key_id, target=ex.path[:200],
                        client_ip=self._client_ip(ex) if self._client_ip is not None else None,
                        details={"kind": label, "window_s": self.window, "count": count,
                                 "baseline": round(baseline, 3), "factor": self.factor,
                                 "action": "throttle" if self.throttle else "flag"})

    def _refuse(self, key: _Key) -> None:
        self.throttled[()] += 1
        seconds = max(1, math.ceil(key.start + self.window - self._clock()))
        raise AnomalyThrottled(f"Requests with this key are far above its usual rate; try again in {seconds}s.",
                               code="key_anomaly_throttled",
                               headers=(("retry-after", str(seconds)), ("retry-after-ms", str(seconds * 1000))))

    # -- reporting ----------------------------------------------------------------------------------------

    def counters(self) -> dict[str, tuple[str, tuple[str, ...], Callable[[], dict[tuple[str, ...], int]]]]:
        """For Metrics.counters (read at each snapshot, never per request)."""
        return {
            "sluice_key_anomalies": ("Spike episodes of a key against its own baseline, by kind (requests, tokens).",
                                     ("kind",), lambda: self.anomalies),
            "sluice_key_anomaly_throttled": ("Requests refused (429) while their key was in a spike (action: "
                                             "throttle).", (), lambda: self.throttled),
        }

    def describe(self) -> str:
        action = "throttle" if self.throttle else "flag"
        return f"anomaly ({action} past {self.factor:g}x the key's baseline per {self.window:g}s)"
