"""The routing decision: which model route, A/B arm and deployment a request goes to first, and where the next
attempt goes after a failure (docs/routing.md).

``Planner.plan`` makes the ``Plan`` of a decoded request: its model's route (404 for an unknown
model), the A/B arm (sticky to the caller when the model is sticky), what the request needs from a
target (400 when no target of the model can do it), the caller's affinity and region, and the first
deployment the model's strategy picks (a fallback model's when the model's own all rest; 503 when
none can).  The attempt loop (sluice.resilience.attempts) asks it for another deployment
(``another``, ``retry_target``) as attempts fail.  ``RoutingStage`` puts the plan on ``ctx.plan``.
"""

from __future__ import annotations

import random
import time
from typing import Any

from ..config import Strategy
from ..context import Exchange, RequestContext
from ..errors import InvalidRequest, NoDeployment, NotFound
from ..pipeline.capabilities import needs_of
from ..pipeline.stage import Stage
from .deployment import Deployment
from .table import ModelRoute, Router, affinity_draw, sticky_affinity

__all__ = ["NOTHING", "Plan", "Planner", "RoutingStage", "model_not_found", "no_deployment", "variant_draw"]

NOTHING: frozenset[str] = frozenset()  # a request that needs nothing special of a target
_STICKY, _GEO = Strategy.STICKY, Strategy.GEO


class Plan:
    """A model call's routing: the model asked for (``primary``), the route serving the first attempt (a
    fallback's when the model's deployments all rest), that attempt's deployment, what the request needs from a
    target, and the caller's affinity (sticky, A/B) and region (geo).  ``alone``: that deployment is the only
    one the request could go to (its route has no other, and no fallback comes after it), so that an attempt
    loop without retries has nothing to loop over (Attempts takes its one-shot path).

    A plan is never changed once made: the Planner hands the same ready plan to every request of a model whose
    routing cannot depend on the request."""

    __slots__ = ("affinity", "alone", "first", "needs", "primary", "region", "route")

    def __init__(self, primary: ModelRoute, route: ModelRoute, first: Deployment, needs: frozenset[str],
                 affinity: str | None, region: str | None) -> None:
        self.primary = primary
        self.route = route
        self.first = first
        self.needs = needs
        self.affinity = affinity
        self.region = region
        self.alone = route.single is first and (not primary.fallbacks or route is primary.fallbacks[-1])


class Planner:
    """One per gateway (per worker): the routing decisions, and the counts of A/B arms and failovers."""

    def __init__(self, router: Router) -> None:
        self.router = router
        routes = router.models.values()
        # Models whose own targets can do everything but whose fallbacks cannot: their requests' needs are
        # worked out all the same, so that a fallback that lacks one is skipped.
        self.needs_checked = frozenset(r.name for r in routes if any(not f.complete for f in r.fallbacks))
        self.failover_counts: dict[tuple[str, str], int] = {}  # (model, fallback) -> requests moved
        self.variant_counts: dict[tuple[str, str], int] = {}  # (model, variant) -> requests
        # Per model whose routing nothing in a request can change (one deployment, no A/B split, neither sticky
        # nor geo, every capability on it), its plan, made once: a request of it costs a lookup and the
        # deployment's availability (when it rests, the full decision below fails over or refuses as ever).
        self.ready: dict[str, Plan] = {
            r.name: Plan(r, r, r.single, NOTHING, None, None) for r in routes
            if r.single is not None and not r.variants and r.strategy is not _STICKY and r.strategy is not _GEO
            and r.complete and r.name not in self.needs_checked}

    def plan(self, ex: Exchange, ctx: RequestContext, request: Any, endpoint: str) -> Plan:
        ready = self.ready.get(request.model)
        if ready is not None and ready.first.available(time.monotonic()):
            return ready
        route = self.router.get(request.model)
        if route is None:
            raise model_not_found(request.model)
        affinity = self.affinity(ex, ctx, route) if route.strategy is _STICKY or route.variants else None
        if route.variants:
            route, ctx.variant = route.variant(variant_draw(affinity))
            count(self.variant_counts, (request.model, ctx.variant))
        needs = (NOTHING if route.complete and route.name not in self.needs_checked
                 else needs_of(request, endpoint))
        if needs and (missing := route.missing(needs)):
            raise InvalidRequest(f"No target of model `{route.name}` supports what this request needs: "
                                 f"{', '.join(sorted(missing))}.", param="model", code="unsupported_capability")
        region = (ex.header(route.region_header) or route.region) if route.strategy is _GEO else None
        dep = route.choose(needs, affinity=affinity, region=region, now=time.monotonic())
        if dep is not None:
            return Plan(route, route, dep, needs, affinity, region)
        fallback, dep = self.next_model(route, route, needs, [], affinity, region)
        if dep is None:
            raise no_deployment(route.name)
        count(self.failover_counts, (route.name, fallback.name))
        return Plan(route, fallback, dep, needs, affinity, region)

    @staticmethod
    def affinity(ex: Exchange, ctx: RequestContext, route: ModelRoute) -> str | None:
        """What keeps a caller on one deployment (sticky) and in one A/B arm: its key, user or a header."""
        principal = ctx.principal
        if principal is not None:
            return sticky_affinity(route, principal.key_id, principal.user, ex.header)
        return sticky_affinity(route, ex.header("authorization") or ex.header("x-api-key"), None, ex.header)

    def another(self, plan: Plan, route: ModelRoute, tried: list[Deployment]) -> tuple[ModelRoute, Deployment | None]:
        """Another available deployment of ``route`` not in ``tried``, else the next fallback's."""
        dep = route.choose(plan.needs, affinity=plan.affinity, region=plan.region, exclude=tried,
                           now=time.monotonic())
        if dep is not None:
            return route, dep
        return self.next_model(route, plan.primary, plan.needs, tried, plan.affinity, plan.region)

    def retry_target(self, plan: Plan, route: ModelRoute,
                     tried: list[Deployment]) -> tuple[ModelRoute, Deployment | None]:
        """Where a retry goes: another deployment of ``route``, else a fallback's, else (every one tried) the same
        ones again if they are still up."""
        route, dep = self.another(plan, route, tried)
        if dep is None:
            dep = route.choose(plan.needs, affinity=plan.affinity, region=plan.region, now=time.monotonic())
        return route, dep

    @staticmethod
    def next_model(route: ModelRoute, primary: ModelRoute, needs: frozenset[str], tried: list[Deployment],
                   affinity: str | None, region: str | None) -> tuple[ModelRoute, Deployment | None]:
        """The first fallback after ``route`` in the primary's chain with a deployment that can serve ``needs``."""
        chain = primary.fallbacks
        start = 0 if route is primary else next((i + 1 for i, r in enumerate(chain) if r is route), len(chain))
        now = time.monotonic()
        for fallback in chain[start:]:  # choose() skips one that cannot do what the request needs
            dep = fallback.choose(needs, affinity=affinity, region=region, exclude=tried, now=now)
            if dep is not None:
                return fallback, dep
        return route, None


class RoutingStage(Stage):
    """The plan of a model call, on ``ctx.plan``: before the rate limits, so that an unknown model or
    capability is refused before any charge."""

    name = "routing"

    def __init__(self, planner: Planner, endpoint: str) -> None:
        self.planner = planner
        self.endpoint = endpoint

    def on_request(self, ex: Exchange, ctx: RequestContext) -> None:
        ctx.plan = self.planner.plan(ex, ctx, ctx.request, self.endpoint)

    @staticmethod
    def span_attributes(ctx: RequestContext) -> dict[str, Any]:
        """What a sampled request's routing span says (observability: the Traced wrapper)."""
        return {"gen_ai.request.model": str(ctx.model)[:200], "sluice.provider": ctx.plan.first.provider.name}


def count(counts: dict[tuple[str, str], int], key: tuple[str, str]) -> None:
    counts[key] = counts.get(key, 0) + 1


def variant_draw(affinity: str | None) -> float:
    """The A/B arm's draw: fixed by the sticky affinity when there is one (a caller stays in its arm), else random."""
    return random.random() if affinity is None else affinity_draw(affinity)


def model_not_found(name: str) -> NotFound:
    return NotFound(f"The model `{name[:200]}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def no_deployment(model: str) -> NoDeployment:
    return NoDeployment(f"No deployment of model `{model}` (or of its fallbacks) can take this request now: they "
                        "are failing or resting. Retry later.", code="no_healthy_deployment",
                        headers=(("retry-after", "1"),))
