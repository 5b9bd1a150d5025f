"""Balancing strategies over deployments: distributions with a fixed seed, and what each does when some are down."""

from __future__ import annotations

from collections import Counter

from sluice.config import parse_config
from sluice.routing import Deployment, ModelRoute, Router

NOTHING: frozenset[str] = frozenset()


def route(strategy: str, weights: list[int], *, regions: list[str] | None = None, extra: str = "",
          resilience: str = "", seed: int = 7) -> ModelRoute:
    """A model ``m`` with one target per weight, each on its own provider p0, p1... (labels p0[0], p1[0]...)."""
    providers = "\n".join(f"  p{i}: {{kind: openai, base_url: 'http://10.0.0.{i + 1}'}}" for i in range(len(weights)))
    targets = ", ".join(
        f"{{provider: p{i}, model: t{i}, weight: {w}" + (f", region: {regions[i]}" if regions else "") + "}"
        for i, w in enumerate(weights))
    config = parse_config(f"""
security: {{allow_private_networks: [10.0.0.0/8]}}  # the deployments are on a private network
providers:
{providers}
models:
  m: {{strategy: {strategy}, targets: [{targets}]{extra}}}
{resilience}
""", {})
    table = Router(config, seed=seed)
    found = table.get("m")
    assert found is not None
    return found


def names(picks: list[Deployment | None]) -> Counter[str]:
    return Counter(d.model if d is not None else "none" for d in picks)


def serve(d: Deployment, now: float, latency: float) -> None:
    d.begin(now)
    d.succeeded(now, latency, latency)


# -- weighted ---------------------------------------------------------------------------------------


def test_weighted_is_exact_and_skips_what_is_not_available() -> None:
    r = route("weighted", [5, 1, 1])
    assert [r.choose(NOTHING, now=0.0).model for _ in range(7)] == ["t0", "t0", "t1", "t0", "t2", "t0", "t0"]  # type: ignore[union-attr]
    r.targets[0].cool_down(0.0, 60.0)  # (cool_down ends a request: begin first, as the request path does)
    r.targets[0].in_flight += 1
    assert names([r.choose(NOTHING, now=1.0) for _ in range(10)]) == {"t1": 5, "t2": 5}
    assert names([r.choose(NOTHING, now=61.0) for _ in range(70)]) == {"t0": 50, "t1": 10, "t2": 10}


def test_a_targets_weight_is_shared_by_its_deployments() -> None:
    config = parse_config("""
security: {allow_private_networks: [10.0.0.0/8]}  # the deployments are on a private network
providers:
  pool: {kind: openai, base_url: "http://10.0.0.1", base_urls: ["http://10.0.0.2"], api_keys: [k1, k2, k3]}
  one: {kind: openai, base_url: "http://10.0.0.3"}
models:
  m: {targets: [{provider: pool, model: a, weight: 1}, {provider: one, model: b, weight: 1}]}
""", {})
    r = Router(config).get("m")
    assert r is not None and len(r.targets) == 7
    counts = Counter(r.choose(NOTHING, now=0.0).model for _ in range(120))  # type: ignore[union-attr]
    assert counts == {"a": 60, "b": 60}  # six deployments carry a's half, one carries b's
    labels = Counter(d.label for d in (r.choose(NOTHING, now=0.0) for _ in range(120)) if d is not None)
    assert labels == {"pool[0]#0": 10, "pool[0]#1": 10, "pool[0]#2": 10, "pool[1]#0": 10, "pool[1]#1": 10,
                      "pool[1]#2": 10, "one[0]": 60}


# -- least in flight ----------------------------------------------------------------------------------


def test_least_inflight_picks_the_idle_one() -> None:
    r = route("least_inflight", [1, 1, 1])
    for d in r.targets[:2]:
        d.begin(0.0)
        d.begin(0.0)
    r.targets[2].begin(0.0)
    assert {r.choose(NOTHING, now=0.0).model for _ in range(20)} == {"t2"}  # type: ignore[union-attr]
    r.targets[2].begin(0.0)  # all at 2: ties broken at random
    assert set(names([r.choose(NOTHING, now=0.0) for _ in range(60)])) == {"t0", "t1", "t2"}


def test_least_inflight_counts_in_flight_per_unit_of_weight() -> None:
    r = route("least_inflight", [3, 1])
    picks: Counter[str] = Counter()
    for _ in range(40):  # requests that never end: the in-flight counts grow 3:1
        d = r.choose(NOTHING, now=0.0)
        assert d is not None
        d.begin(0.0)
        picks[d.model] += 1
    assert picks == {"t0": 30, "t1": 10}


# -- latency ------------------------------------------------------------------------------------------


def test_latency_prefers_the_fast_one() -> None:
    r = route("latency", [1, 1, 1, 1])
    speed = {"t0": 0.01, "t1": 0.2, "t2": 0.2, "t3": 0.2}
    picks: Counter[str] = Counter()
    for i in range(2000):
        d = r.choose(NOTHING, now=float(i))
        assert d is not None
        serve(d, float(i), speed[d.model])
        picks[d.model] += 1
    # Two of four are drawn: the fast one whenever it is among them (half the draws), plus its
    # in-flight-free advantage; it must dominate any slow one and take half or more.
    assert picks["t0"] >= 0.45 * 2000 and all(picks[f"t{i}"] < picks["t0"] / 2 for i in (1, 2, 3))


def test_latency_with_two_picks_the_fast_one_in_most_picks() -> None:
    r = route("latency", [1, 1])
    picks: Counter[str] = Counter()
    for i in range(1000):
        d = r.choose(NOTHING, now=float(i))
        assert d is not None
        serve(d, float(i), 0.01 if d.model == "t0" else 0.1)
        picks[d.model] += 1
    assert picks["t0"] >= 800


def test_latency_tries_unmeasured_deployments_and_weighs_in_flight() -> None:
    r = route("latency", [1, 1])
    fast, new = r.targets
    serve(fast, 0.0, 0.01)
    assert r.choose(NOTHING, now=1.0) is new  # unmeasured counts as best
    serve(new, 1.0, 0.02)
    for _ in range(3):
        fast.begin(2.0)  # 0.01 x 4 > 0.02 x 1
    assert r.choose(NOTHING, now=2.0) is new


def test_latency_skips_what_is_not_available() -> None:
    r = route("latency", [1, 1, 1], resilience="resilience: {breaker: {enabled: true, consecutive_failures: 1}}")
    for d in r.targets[:2]:
        d.begin(0.0)
        d.failed(0.0, 0.001)
    assert {r.choose(NOTHING, now=1.0).model for _ in range(30)} == {"t2"}  # type: ignore[union-attr]
    r.targets[2].begin(1.0)
    r.targets[2].failed(1.0, 0.001)
    assert r.choose(NOTHING, now=2.0) is None


# -- health -------------------------------------------------------------------------------------------


def test_health_scores_success_and_latency_and_adapts() -> None:
    r = route("health", [1, 1])
    good, bad = r.targets
    for i in range(20):
        serve(good, float(i), 0.05)
        bad.begin(float(i))
        bad.failed(float(i), 0.05)
    picks = names([r.choose(NOTHING, now=30.0) for _ in range(1000)])
    assert picks["t0"] >= 950
    for i in range(40):  # bad recovers
        serve(bad, 40.0 + i, 0.05)
    picks = names([r.choose(NOTHING, now=100.0) for _ in range(1000)])
    assert 350 <= picks["t1"] <= 650


def test_health_tries_a_new_deployment() -> None:
    r = route("health", [1, 1, 1])
    for i in range(10):
        serve(r.targets[0], float(i), 0.5)
        serve(r.targets[1], float(i), 0.05)
    picks = names([r.choose(NOTHING, now=20.0) for _ in range(1000)])
    # t2 is unmeasured: its latency prior is the best measured (0.05), so it ties with t1; t0 is 10x slower
    assert picks["t2"] >= 350 and picks["t1"] >= 350 and picks["t0"] <= 100


# -- sticky -------------------------------------------------------------------------------------------


def test_sticky_keeps_a_caller_on_one_deployment_moves_it_and_brings_it_back() -> None:
    r = route("sticky", [1, 1, 1], resilience="resilience: {breaker: {enabled: true, consecutive_failures: 1, "
                                               "open_s: 10, half_open_probes: 1}}")
    home = r.choose(NOTHING, affinity="caller-1", now=0.0)
    assert home is not None
    assert all(r.choose(NOTHING, affinity="caller-1", now=0.0) is home for _ in range(20))
    home.begin(0.0)
    home.failed(0.0, 0.1)  # its breaker opens
    away = r.choose(NOTHING, affinity="caller-1", now=1.0)
    assert away is not None and away is not home
    assert all(r.choose(NOTHING, affinity="caller-1", now=1.0) is away for _ in range(20))
    probe = r.choose(NOTHING, affinity="caller-1", now=10.0)  # half-open: the caller is its probe
    assert probe is home
    home.begin(10.0)
    home.succeeded(10.0, 0.1)
    assert home.state == "closed"
    assert all(r.choose(NOTHING, affinity="caller-1", now=11.0) is home for _ in range(20))


def test_sticky_moves_only_the_callers_of_a_deployment_that_goes_away() -> None:
    r = route("sticky", [1, 1, 1, 1])
    callers = [f"user-{i}" for i in range(4000)]
    before = {c: r.choose(NOTHING, affinity=c, now=0.0) for c in callers}
    spread = Counter(d.model for d in before.values() if d is not None)
    assert all(800 <= n <= 1200 for n in spread.values()) and len(spread) == 4
    gone = r.targets[1]
    gone.in_flight += 1
    gone.cool_down(0.0, 60.0)
    after = {c: r.choose(NOTHING, affinity=c, now=1.0) for c in callers}
    moved = [c for c in callers if after[c] is not before[c]]
    assert all(before[c] is gone for c in moved)  # nobody else moves ...
    assert len(moved) == spread["t1"]  # ... and every caller of the one that went away does (~1/4)
    back = {c: r.choose(NOTHING, affinity=c, now=61.0) for c in callers}
    assert back == before  # and they come back when it does


def test_sticky_honours_weights_and_without_affinity_is_weighted() -> None:
    r = route("sticky", [3, 1])
    spread = names([r.choose(NOTHING, affinity=f"k{i}", now=0.0) for i in range(4000)])
    assert 2800 <= spread["t0"] <= 3200
    assert names([r.choose(NOTHING, now=0.0) for _ in range(8)]) == {"t0": 6, "t1": 2}


def test_sticky_choices_agree_across_routers() -> None:
    # Seeds come from the deployments, not from the process: every instance puts a caller in the same place.
    a, b = route("sticky", [1, 1, 1], seed=1), route("sticky", [1, 1, 1], seed=2)
    assert all(a.choose(NOTHING, affinity=f"k{i}", now=0.0).label  # type: ignore[union-attr]
               == b.choose(NOTHING, affinity=f"k{i}", now=0.0).label for i in range(200))  # type: ignore[union-attr]


# -- geo ----------------------------------------------------------------------------------------------


def test_geo_prefers_the_region_then_its_spill_then_any() -> None:
    r = route("geo", [1, 1, 1, 1], regions=["eu", "eu", "us", "ap"],
              extra=", geo: {spill: {eu: [us], ap: [eu]}}")
    eu0, eu1, us, ap = r.targets
    assert names([r.choose(NOTHING, region="eu", now=0.0) for _ in range(10)]) == {"t0": 5, "t1": 5}
    assert names([r.choose(NOTHING, region="ap", now=0.0) for _ in range(4)]) == {"t3": 4}
    for d in (eu0, eu1):
        d.in_flight += 1
        d.cool_down(0.0, 60.0)
    assert names([r.choose(NOTHING, region="eu", now=1.0) for _ in range(4)]) == {"t2": 4}  # spill: us
    us.in_flight += 1
    us.cool_down(0.0, 60.0)
    assert names([r.choose(NOTHING, region="eu", now=1.0) for _ in range(4)]) == {"t3": 4}  # then any
    ap.in_flight += 1
    ap.cool_down(0.0, 60.0)
    assert r.choose(NOTHING, region="eu", now=1.0) is None
    assert names([r.choose(NOTHING, region="mars", now=61.0) for _ in range(8)]) == {"t0": 2, "t1": 2, "t2": 2,
                                                                                    "t3": 2}


def test_geo_defaults_to_this_instances_region() -> None:
    r = route("geo", [1, 1], regions=["eu", "us"], resilience="resilience: {region: us}")
    assert r.region == "us"
    assert {r.choose(NOTHING, now=0.0).model for _ in range(5)} == {"t1"}  # type: ignore[union-attr]
    assert {r.choose(NOTHING, region="eu", now=0.0).model for _ in range(5)} == {"t0"}  # type: ignore[union-attr]


# -- what every strategy shares -------------------------------------------------------------------------


def test_every_strategy_filters_capabilities_and_exclusions() -> None:
    for strategy in ("weighted", "least_inflight", "latency", "health", "sticky"):
        config = parse_config(f"""
security: {{allow_private_networks: [10.0.0.0/8]}}  # the deployments are on a private network
providers:
  oai: {{kind: openai, base_url: "http://10.0.0.1"}}
  ant: {{kind: anthropic, base_url: "http://10.0.0.2"}}
  small: {{kind: openai, base_url: "http://10.0.0.3", capabilities: [chat]}}
models:
  m: {{strategy: {strategy}, targets: [{{provider: oai, model: a}}, {{provider: ant, model: b}},
                                     {{provider: small, model: c}}]}}
""", {})
        r = Router(config, seed=3).get("m")
        assert r is not None
        embeddings = frozenset({"embeddings"})
        assert {r.choose(embeddings, affinity="x", now=0.0).model for _ in range(20)} == {"a"}, strategy  # type: ignore[union-attr]
        vision = frozenset({"vision"})
        assert {r.choose(vision, affinity="x", now=0.0).model for _ in range(40)} <= {"a", "b"}, strategy  # type: ignore[union-attr]
        a = r.targets[0]
        assert r.choose(embeddings, exclude=[a], now=0.0) is None, strategy
        picked = {r.choose(NOTHING, affinity=f"k{i}", exclude=(a,), now=0.0).model for i in range(60)}  # type: ignore[union-attr]
        assert picked == {"b", "c"}, strategy
        assert r.choose(NOTHING, exclude=r.targets, now=0.0) is None, strategy
