"""Balancing strategies: which of a model's deployments serves a request.

Each strategy is a function ``(route, needs, affinity, region, exclude, now)
-> Deployment | None`` over the route's deployments that qualify: available
(breaker admits, key not cooling down), not in ``exclude`` (the deployments a
retry already tried), and with every capability in ``needs`` (None: every
deployment has them, so the check is skipped).  None when none qualifies.

- weighted: smooth weighted round-robin (nginx's algorithm): over any window of
  sum(weights) picks each deployment is chosen ``weight`` times, interleaved.
  Deployments that do not qualify are skipped, and the others share their turn.
- least_inflight: the fewest requests in flight per unit of weight; ties are
  broken at random, in proportion to weight.
- latency: power of two random choices (Mitzenmacher): of two deployments drawn
  at random, the one with the lower ``ewma_latency_s * (in_flight + 1)``.  An
  unmeasured deployment counts as 0, so it is tried.  Weights do not apply;
  failures count only as slow as they were (the breaker deals with them).
- health: a weighted random draw, each deployment's share ``weight x success
  ratio / latency`` (the ratio floored at 1 %, so that a failing deployment
  keeps a trickle that shows when it recovers); an unmeasured latency is taken as the best measured one
  (a prior that gets new deployments tried), and the averages move with every
  answer, so the shares adapt.
- sticky: weighted rendezvous (highest random weight) hashing of the affinity
  (the caller's key, user or a header): each deployment scores
  ``weight / -ln(u)`` with ``u`` from xxh3(affinity, seed of the deployment),
  the highest serves.  A caller stays on one deployment while it qualifies,
  moves to its second choice when it does not, and comes back when it does
  again; when one of N deployments goes away only the ~1/N of callers it
  served move.  Seeds depend on the deployment only, so every instance agrees.
  No affinity: weighted.
- geo: the deployments of the caller's region (else this instance's), then
  those of the regions in ``geo.spill[region]`` in order, then any; weighted
  within each set.

Nothing here allocates on the common path (all candidates qualify); the
latency strategy builds a list only when a drawn deployment does not qualify.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

import xxhash

from ..config import Strategy
from .deployment import Deployment

if TYPE_CHECKING:
    from .table import ModelRoute

__all__ = ["STRATEGIES", "StrategyFn", "affinity_draw", "qualifies", "smooth_pick"]

StrategyFn = Callable[["ModelRoute", "frozenset[str] | None", "str | None", "str | None",
                       Collection[Deployment], float], "Deployment | None"]

_hash = xxhash.xxh3_64_intdigest
_VARIANT_SEED = 0x5EED_AB  # the A/B draw must not correlate with the deployment choice
_LATENCY_FLOOR_S = 1e-4
_RATIO_FLOOR = 0.01  # a failing deployment keeps a trickle, so that it shows when it recovers


def qualifies(d: Deployment, needs: frozenset[str] | None, exclude: Collection[Deployment], now: float) -> bool:
    return d.available(now) and (needs is None or needs <= d.capabilities) and not (exclude and d in exclude)


def smooth_pick(deployments: Sequence[Deployment], needs: frozenset[str] | None,
                exclude: Collection[Deployment], now: float) -> Deployment | None:
    """nginx's smooth weighted round-robin over the deployments that qualify."""
    best: Deployment | None = None
    total = 0
    for d in deployments:
        if not d.available(now) or (needs is not None and not needs <= d.capabilities) or (exclude and d in exclude):
            continue
        d.current += d.weight
        total += d.weight
        if best is None or d.current > best.current:
            best = d
    if best is not None:
        best.current -= total
    return best


def weighted(route: ModelRoute, needs: frozenset[str] | None, affinity: str | None, region: str | None,
             exclude: Collection[Deployment], now: float) -> Deployment | None:
    return smooth_pick(route.targets, needs, exclude, now)


def least_inflight(route: ModelRoute, needs: frozenset[str] | None, affinity: str | None, region: str | None,
                   exclude: Collection[Deployment], now: float) -> Deployment | None:
    best: Deployment | None = None
    tied_weight = 0
    random = route.rng.random
    for d in route.targets:
        if not qualifies(d, needs, exclude, now):
            continue
        if best is None:
            best, tied_weight = d, d.weight
            continue
        # in_flight / weight compared without a division
        left, right = d.in_flight * best.weight, best.in_flight * d.weight
        if left < right:
            best, tied_weight = d, d.weight
        elif left == right:
            tied_weight += d.weight  # a weighted reservoir over the tied ones
            if random() * tied_weight < d.weight:
                best = d
    return best


def _faster(a: Deployment, b: Deployment) -> Deployment:
    cost_a = a.ewma_latency_s * (a.in_flight + 1)
    cost_b = b.ewma_latency_s * (b.in_flight + 1)
    if cost_a != cost_b:
        return a if cost_a < cost_b else b
    return a if a.in_flight <= b.in_flight else b


def _two(random: Callable[[], float], n: int) -> tuple[int, int]:
    """Two distinct indices below ``n`` (n >= 2), uniformly."""
    i = int(random() * n)
    j = int(random() * (n - 1))
    return i, j + 1 if j >= i else j


def latency(route: ModelRoute, needs: frozenset[str] | None, affinity: str | None, region: str | None,
            exclude: Collection[Deployment], now: float) -> Deployment | None:
    deployments = route.targets
    random = route.rng.random
    if len(deployments) > 1:
        i, j = _two(random, len(deployments))
        a, b = deployments[i], deployments[j]
        if qualifies(a, needs, exclude, now) and qualifies(b, needs, exclude, now):
            return _faster(a, b)
    pool = [d for d in deployments if qualifies(d, needs, exclude, now)]  # some do not: draw among the others
    if len(pool) < 2:
        return pool[0] if pool else None
    i, j = _two(random, len(pool))
    return _faster(pool[i], pool[j])


def health(route: ModelRoute, needs: frozenset[str] | None, affinity: str | None, region: str | None,
           exclude: Collection[Deployment], now: float) -> Deployment | None:
    prior = math.inf  # the best measured latency: the prior of the unmeasured
    for d in route.targets:
        if 0.0 < d.ewma_latency_s < prior:
            prior = d.ewma_latency_s
    if prior == math.inf:
        prior = 1.0
    best: Deployment | None = None
    total = 0.0
    random = route.rng.random
    for d in route.targets:
        if not qualifies(d, needs, exclude, now):
            continue
        seconds = d.ewma_latency_s or prior
        score = d.weight * max(d.success_ratio, _RATIO_FLOOR) / max(seconds, _LATENCY_FLOOR_S)
        total += score
        if random() * total < score:  # a weighted reservoir of one: each kept with its share
            best = d
    return best


def _unit(h: int) -> float:
    """A 64-bit hash as a float strictly inside (0, 1)."""
    return ((h >> 12) + 0.5) * 2.0**-52


def sticky(route: ModelRoute, needs: frozenset[str] | None, affinity: str | None, region: str | None,
           exclude: Collection[Deployment], now: float) -> Deployment | None:
    if affinity is None:
        return smooth_pick(route.targets, needs, exclude, now)
    key = affinity.encode()
    best: Deployment | None = None
    if route.uniform_weights:  # equal weights: the highest hash wins, no logarithm needed
        top = -1
        for d in route.targets:
            h = _hash(key, d.seed)
            if h > top and qualifies(d, needs, exclude, now):
                best, top = d, h
        return best
    best_score = -1.0
    for d in route.targets:
        score = d.weight / -math.log(_unit(_hash(key, d.seed)))
        if score > best_score and qualifies(d, needs, exclude, now):
            best, best_score = d, score
    return best


def geo(route: ModelRoute, needs: frozenset[str] | None, affinity: str | None, region: str | None,
        exclude: Collection[Deployment], now: float) -> Deployment | None:
    region = region or route.region
    groups = route.geo_groups.get(region, route.geo_any) if region is not None else route.geo_any
    for group in groups:
        chosen = smooth_pick(group, needs, exclude, now)
        if chosen is not None:
            return chosen
    return None


def affinity_draw(affinity: str) -> float:
    """A uniform draw in [0, 1) fixed by the affinity: the A/B arm a sticky caller stays in."""
    return (_hash(affinity.encode(), _VARIANT_SEED) >> 11) * 2.0**-53


STRATEGIES: dict[Strategy, StrategyFn] = {
    Strategy.WEIGHTED: weighted,
    Strategy.LEAST_INFLIGHT: least_inflight,
    Strategy.LATENCY: latency,
    Strategy.HEALTH: health,
    Strategy.STICKY: sticky,
    Strategy.GEO: geo,
}
