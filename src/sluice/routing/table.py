"""The routing table: each public model name maps to its deployments and the strategy that picks one.

A model's targets (provider + upstream model + weight + region + tags) become
deployments, one per (base URL x API key) of the target's provider, each with
its own live state (deployment.py) and, when ``resilience.breaker.enabled``,
its own circuit breaker (breaker.py).  A target's weight is shared by its
deployments: every deployment weight is scaled by the least common multiple of
the models' deployment counts so that it stays an integer and smooth WRR stays
exact.

Each deployment has capabilities (its target's config, else its provider's,
else its provider kind's).  A request that needs some (vision, tools,
streaming...) goes to the deployments that have them; when every deployment
has every capability the check is skipped.

The request path calls ``ModelRoute.choose`` (strategies.py): with one
deployment and no breaker, a couple of attribute reads.

A/B splits: ``ModelRoute.variant(draw)`` maps a uniform draw in [0, 1) to the
route that serves and its label.  The variants take the bottom of the range,
in config order, each its percent; "control" (the model itself) takes the
rest.  The caller draws at random, or with ``affinity_draw(affinity)`` so that
a sticky caller stays in its arm.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Collection, Iterator

import msgspec
import xxhash

from ..config import BreakerConfig, Config, ModelConfig, ProviderConfig, TargetConfig
from ..config.vocabulary import CAPABILITIES
from ..providers import Provider, build_provider
from .breaker import Breaker
from .deployment import Deployment
from .strategies import STRATEGIES, affinity_draw

__all__ = ["ModelRoute", "Router", "affinity_draw", "sticky_affinity"]

_EMPTY: frozenset[str] = frozenset()


class ModelRoute:
    """A public model: its deployments, its strategy, and where it fails over and splits to."""

    __slots__ = ("_strategy", "common", "complete", "fallbacks", "geo_any", "geo_groups", "name", "region",
                 "region_header", "rng", "single", "sticky_header", "sticky_on", "strategy", "target_count", "targets",
                 "total_weight", "uniform_weights", "variants")

    def __init__(self, name: str, targets: list[Deployment], config: ModelConfig | None = None, *,
                 rng: random.Random | None = None, region: str | None = None) -> None:
        config = config or ModelConfig(targets=())
        self.name = name
        self.targets = targets  # the deployments (named targets for the code that predates them)
        self.target_count = len(config.targets) or len(targets)  # configured targets
        self.total_weight = sum(d.weight for d in targets)
        self.common = frozenset.intersection(*(d.capabilities for d in targets)) if targets else _EMPTY
        # Every deployment can do everything: no request needs a capability check.  An attribute, not a
        # property: it is read per request, and comparing the sets each time cost ~1,500 instructions.
        self.complete = self.common == CAPABILITIES
        self.uniform_weights = len({d.weight for d in targets}) <= 1
        self.single = targets[0] if len(targets) == 1 else None
        self.strategy = config.strategy
        self._strategy = STRATEGIES[config.strategy]
        self.rng = rng or random.Random()
        self.region = region  # this instance's: the geo strategy's default
        self.region_header = config.geo.region_header
        self.sticky_on, _, header = config.sticky.on.partition(":")
        self.sticky_header = header.strip().lower() or None
        self.geo_groups, self.geo_any = _geo_groups(targets, config.geo.spill)
        self.fallbacks: tuple[ModelRoute, ...] = ()  # set by the Router once every route exists
        self.variants: tuple[tuple[float, ModelRoute, str], ...] = ()  # (upper bound of the draw, route, label)

    def __repr__(self) -> str:
        return f"ModelRoute({self.name!r}, {len(self.targets)} deployments, {self.strategy.value})"

    @property
    def deployments(self) -> list[Deployment]:
        return self.targets

    def choose(self, needs: frozenset[str], *, affinity: str | None = None, region: str | None = None,
               exclude: Collection[Deployment] = (), now: float) -> Deployment | None:
        """A deployment that has every capability in ``needs``, is available and not in ``exclude``, picked by
        the model's strategy; None when none qualifies (the caller then fails over).

        ``affinity``: the sticky key (sticky_affinity); ``region``: the caller's, else this instance's;
        ``now``: time.monotonic()."""
        d = self.single
        if d is not None:  # Deployment.available inlined: this is the common case, and per request
            breaker = d.breaker
            if (now < d.cooldown_until or (breaker is not None and not breaker.closed and not breaker.admits(now))
                    or (needs and not needs <= d.capabilities) or (exclude and d in exclude)):
                return None
            return d
        return self._strategy(self, None if needs <= self.common else needs, affinity, region, exclude, now)

    def missing(self, needs: frozenset[str]) -> frozenset[str]:
        """What no single deployment can do, of ``needs`` (the capabilities to name in a refusal)."""
        return min((needs - d.capabilities for d in self.targets), key=len)

    def variant(self, draw: float) -> tuple[ModelRoute, str]:
        """The route that serves a request of this model for a uniform ``draw`` in [0, 1), and its label:
        "control" (this route) or the variant's name."""
        for bound, route, label in self.variants:
            if draw < bound:
                return route, label
        return self, "control"


def sticky_affinity(route: ModelRoute, key_hash: str | None, user: str | None,
                    header: Callable[[str], str | None]) -> str | None:
    """The affinity a request carries for ``route``'s ``sticky.on``: the caller's key (its hash), its user, or
    a header's value; None when the request has none (it is then balanced by weight)."""
    on = route.sticky_on
    if on == "key":
        return key_hash
    if on == "user":
        return user
    return header(route.sticky_header) if route.sticky_header else None


def _geo_groups(targets: list[Deployment], spill: dict[str, tuple[str, ...]]
                ) -> tuple[dict[str, tuple[list[Deployment], ...]], tuple[list[Deployment], ...]]:
    """For each known region, the sets of deployments to try in order: its own, its spill regions', then any."""
    by_region: dict[str, list[Deployment]] = {}
    for d in targets:
        if d.region is not None:
            by_region.setdefault(d.region, []).append(d)
    everyone = (targets,)
    groups = {}
    for region in by_region.keys() | spill.keys():
        order = [region, *spill.get(region, ())]
        groups[region] = tuple(by_region[r] for r in dict.fromkeys(order) if r in by_region) + everyone
    return groups, everyone


def _base_urls(config: ProviderConfig) -> tuple[str, ...]:
    return (config.base_url, *(url for url in config.base_urls if url != config.base_url))


class Router:
    """Built once per config snapshot; lookups are one dict access.

    ``providers``: name -> the provider at its first base URL (passthrough, token counting);
    ``endpoints``: name -> one provider per base URL.  ``transitions``: breaker transitions counted per
    (model, to_state) for metrics.  ``seed`` fixes the strategies' random draws (tests, benchmarks).
    """

    def __init__(self, config: Config, *, seed: int | None = None, region: str | None = None) -> None:
        resilience = config.resilience
        self.region = region or resilience.region  # $SLUICE_REGION is read by the loader (ENVIRONMENT_DEFAULTS)
        self.transitions: dict[tuple[str, str], int] = {}
        self.endpoints: dict[str, tuple[Provider, ...]] = {
            name: tuple(build_provider(name, p if url == p.base_url else msgspec.structs.replace(p, base_url=url))
                        for url in _base_urls(p))
            for name, p in config.providers.items()
        }
        self.providers = {name: providers[0] for name, providers in self.endpoints.items()}
        rng = random.Random(seed)
        breaker = resilience.breaker if resilience.breaker.enabled else None
        self.models = {name: ModelRoute(name, self._deployments(name, m, breaker), m, rng=rng, region=self.region)
                       for name, m in config.models.items()}
        for name, m in config.models.items():  # the loader checked that these exist
            route = self.models[name]
            route.fallbacks = tuple(self.models[f] for f in m.fallbacks if f in self.models)
            percent, variants = 0.0, []
            for v in m.variants:
                if v.model in self.models:
                    percent += v.percent
                    variants.append((percent / 100, self.models[v.model], v.name))
            route.variants = tuple(variants)

    def _deployments(self, model: str, config: ModelConfig, breaker: BreakerConfig | None) -> list[Deployment]:
        counts = [len(self.endpoints[t.provider]) * max(1, len(self.endpoints[t.provider][0].config.api_keys))
                  for t in config.targets]
        scale = math.lcm(*counts) if counts else 1
        deployments: list[Deployment] = []
        for target, count in zip(config.targets, counts, strict=True):
            deployments += self._target(model, target, target.weight * scale // count, breaker)
        return deployments

    def _target(self, model: str, config: TargetConfig, weight: int, breaker: BreakerConfig | None
                ) -> Iterator[Deployment]:
        for u, provider in enumerate(self.endpoints[config.provider]):
            keys = provider.config.api_keys
            capabilities = config.capabilities or provider.config.capabilities
            able = frozenset(capabilities) if capabilities is not None else provider.capabilities
            for k, key in enumerate(keys or ("",)):
                label = f"{config.provider}[{u}]#{k}" if keys else f"{config.provider}[{u}]"
                yield Deployment(
                    provider, config.model, weight, able, auth=provider.auth_headers(key), label=label,
                    region=config.region, tags=config.tags,
                    breaker=Breaker(breaker, model, self.transitions) if breaker is not None else None,
                    seed=xxhash.xxh3_64_intdigest(f"{config.provider}|{config.model}|{u}|{k}".encode()),
                )

    def get(self, model: str) -> ModelRoute | None:
        return self.models.get(model)

    def deployments(self) -> Iterator[tuple[str, Deployment]]:
        """Every (model, deployment)."""
        for name, route in self.models.items():
            for d in route.targets:
                yield name, d

    def deployment_states(self, now: float | None = None) -> list[dict[str, object]]:
        """Each deployment's live state, for /health/details."""
        now = time.monotonic() if now is None else now
        return [{"model": name, **d.snapshot(now)} for name, d in self.deployments()]

