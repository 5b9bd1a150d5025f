"""Deployments: one per (base URL x key), their credentials, key cool-down, live state, A/B variants, health details."""

from __future__ import annotations

from collections import Counter

import pytest

from sluice.config import parse_config
from sluice.providers import Call
from sluice.routing import ModelRoute, Router, affinity_draw, sticky_affinity

NOTHING: frozenset[str] = frozenset()

POOL = """
security: {allow_private_networks: [10.0.0.0/8]}  # the deployments are on a private network
providers:
  oai:
    kind: openai
    base_url: "http://10.0.0.1:8000/openai"
    base_urls: ["http://10.0.0.2:8000/openai"]
    api_keys: [sk-one, sk-two]
    key_cooldown_s: 20
    max_cooldown_s: 60
  local: {kind: openai, base_url: "http://10.0.0.3"}
models:
  gpt: {targets: [{provider: oai, model: gpt-4o, region: eu, tags: [primary, paid]}], fallbacks: [small]}
  small: {targets: [{provider: local, model: llama}]}
"""


def gpt(text: str = POOL) -> tuple[Router, ModelRoute]:
    router = Router(parse_config(text, {}), seed=1)
    route = router.get("gpt")
    assert route is not None
    return router, route


def test_one_deployment_per_base_url_and_key() -> None:
    router, route = gpt()
    assert [d.label for d in route.targets] == ["oai[0]#0", "oai[0]#1", "oai[1]#0", "oai[1]#1"]
    first, _, third, _ = route.targets
    assert first.provider is router.providers["oai"] and first.provider is not third.provider
    assert [p.origin.key for p in router.endpoints["oai"]] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert third.provider.prefix == "/openai" and third.provider.config.base_url == "http://10.0.0.2:8000/openai"
    one, two = (("authorization", "Bearer sk-one"),), (("authorization", "Bearer sk-two"),)
    assert [d.auth for d in route.targets] == [one, two, one, two]
    assert all(d.region == "eu" and d.tags == ("primary", "paid") and d.model == "gpt-4o" for d in route.targets)
    assert all("sk-" not in d.label and "sk-" not in repr(d) for d in route.targets)
    small = router.get("small")
    assert small is not None and [d.label for d in small.targets] == ["local[0]"] and small.targets[0].auth == ()
    assert route.fallbacks == (small,)


def test_a_call_carries_its_deployments_key() -> None:
    _, route = gpt()
    second = route.targets[1]
    call = Call("/v1/chat/completions", "POST", b"{}", False, "req-1", "gpt-4o")
    request = second.prepare(call)
    assert ("authorization", "Bearer sk-two") in request.headers
    assert ("authorization", "Bearer sk-one") not in request.headers
    assert request.target == "/openai/v1/chat/completions" and request.origin.key == "http://10.0.0.1:8000"
    rotating = Call("/v1/chat/completions", "POST", b"{}", False, "req-2", "gpt-4o")  # no deployment: rotation
    keys = [dict(second.provider.prepare(rotating).headers)["authorization"] for _ in range(4)]
    assert sorted(keys) == ["Bearer sk-one", "Bearer sk-one", "Bearer sk-two", "Bearer sk-two"]


def test_a_429_rests_the_key_while_its_siblings_carry_the_load() -> None:
    _, route = gpt()
    one, two = route.targets[0], route.targets[1]
    one.begin(0.0)
    one.cool_down(0.0, 5.0)  # Retry-After: 5
    assert one.in_flight == 0 and one.state == "closed" and one.success_ratio == 1.0  # not a failure
    picks = Counter(route.choose(NOTHING, now=1.0).label for _ in range(30))  # type: ignore[union-attr]
    assert picks == {"oai[0]#1": 10, "oai[1]#0": 10, "oai[1]#1": 10}
    assert one.available(5.0) and not one.available(4.99)
    two.begin(0.0)
    two.cool_down(0.0, None)  # no Retry-After: the provider's key_cooldown_s
    assert not two.available(19.9) and two.available(20.0)
    two.begin(30.0)
    two.cool_down(30.0, 3600.0)  # capped at max_cooldown_s
    assert not two.available(89.9) and two.available(90.0)


def test_every_key_resting_leaves_nothing_to_choose() -> None:
    _, route = gpt()
    for d in route.targets:
        d.begin(0.0)
        d.cool_down(0.0, 10.0)
    assert route.choose(NOTHING, now=1.0) is None


def test_breakers_are_per_deployment_and_their_transitions_counted() -> None:
    router, route = gpt(POOL + "resilience: {breaker: {enabled: true, consecutive_failures: 2, open_s: 10}}")
    bad = route.targets[2]
    for _ in range(2):
        bad.begin(0.0)
        bad.failed(0.0, 0.3)
    assert bad.state == "open" and all(d.state == "closed" for d in route.targets if d is not bad)
    assert bad not in {route.choose(NOTHING, now=1.0) for _ in range(30)}
    assert router.transitions == {("gpt", "open"): 1}
    assert bad.available(10.0)
    bad.begin(10.0)
    bad.succeeded(10.0, 0.1, 0.05)
    bad.begin(10.0)
    bad.succeeded(10.0, 0.1, 0.05)
    assert bad.state == "closed"
    assert router.transitions == {("gpt", "open"): 1, ("gpt", "half_open"): 1, ("gpt", "closed"): 1}


def test_breakers_off_means_always_closed() -> None:
    _, route = gpt()
    d = route.targets[0]
    for _ in range(100):
        d.begin(0.0)
        d.failed(0.0, 0.1)
    assert d.breaker is None and d.state == "closed" and d.available(0.0)


def test_live_state_and_health_details() -> None:
    router, route = gpt()
    d = route.targets[0]
    d.begin(0.0)
    d.succeeded(1.0, 0.2, 0.05)
    d.begin(1.0)
    d.succeeded(2.0, 0.4, 0.1)  # EWMA: 0.2 + 0.2 x (0.4 - 0.2)
    d.begin(2.0)
    d.failed(3.0, 0.01)  # a fast failure leaves the latency alone
    d.begin(3.0)
    d.released(3.0)
    d.begin(3.0)  # still in flight
    assert d.in_flight == 1 and d.ewma_latency_s == pytest.approx(0.24) and d.ewma_ttfb_s == pytest.approx(0.06)
    assert d.success_ratio == pytest.approx(0.8) and (d.requests, d.failures) == (3, 1)
    d2 = route.targets[1]
    d2.begin(3.0)
    d2.cool_down(3.0, 7.0)
    states = router.deployment_states(now=4.0)
    assert len(states) == 5
    first = states[0]
    assert first["model"] == "gpt" and first["label"] == "oai[0]#0" and first["state"] == "closed"
    assert first["in_flight"] == 1 and first["ewma_latency_ms"] == 240.0 and first["success_ratio"] == 0.8
    assert first["region"] == "eu" and first["tags"] == ["primary", "paid"] and first["cooling"] is False
    assert states[1]["cooling"] is True and states[1]["cooldown_s"] == 6.0
    assert states[4]["model"] == "small" and states[4]["label"] == "local[0]"


def ab(percents: list[float]) -> Router:
    variants = ", ".join(f"{{name: v{i}, model: m{i}, percent: {p}}}" for i, p in enumerate(percents))
    models = "\n".join(f"  m{i}: {{targets: [{{provider: p, model: up{i}}}]}}" for i in range(len(percents)))
    return Router(parse_config(f"""
security: {{allow_private_networks: [10.0.0.0/8]}}  # the deployments are on a private network
providers: {{p: {{kind: openai, base_url: "http://10.0.0.1"}}}}
models:
  main: {{targets: [{{provider: p, model: up}}], variants: [{variants}]}}
{models}
""", {}))


def test_variants_take_the_bottom_of_the_draw_and_control_the_rest() -> None:
    router = ab([10, 5])
    main = router.get("main")
    assert main is not None
    assert [(r.name, label) for r, label in (main.variant(x) for x in (0.0, 0.0999, 0.1, 0.1499, 0.15, 0.9999))] == [
        ("m0", "v0"), ("m0", "v0"), ("m1", "v1"), ("m1", "v1"), ("main", "control"), ("main", "control")]
    m0 = router.get("m0")
    assert m0 is not None and m0.variants == () and m0.variant(0.0) == (m0, "control")


def test_affinity_draws_split_callers_within_tolerance_and_keep_each_in_its_arm() -> None:
    main = ab([20]).get("main")
    assert main is not None
    arms = Counter(main.variant(affinity_draw(f"key-{i}"))[1] for i in range(10000))
    assert 1800 <= arms["v0"] <= 2200 and arms["v0"] + arms["control"] == 10000  # 20 % ± 2 points
    assert all(main.variant(affinity_draw("key-7")) == main.variant(affinity_draw("key-7")) for _ in range(10))
    assert all(0.0 <= affinity_draw(f"k{i}") < 1.0 for i in range(1000))


def test_sticky_affinity_follows_hash_on() -> None:
    def router(on: str) -> ModelRoute:
        found = Router(parse_config(f"""
security: {{allow_private_networks: [10.0.0.0/8]}}  # the deployments are on a private network
providers: {{p: {{kind: openai, base_url: "http://10.0.0.1"}}}}
models: {{m: {{strategy: sticky, sticky: {{hash_on: "{on}"}}, targets: [{{provider: p, model: a}}]}}}}
""", {})).get("m")
        assert found is not None
        return found

    headers = {"x-session": "s-42"}
    assert sticky_affinity(router("key"), "hash-1", "ann", headers.get) == "hash-1"
    assert sticky_affinity(router("user"), "hash-1", "ann", headers.get) == "ann"
    assert sticky_affinity(router("user"), "hash-1", None, headers.get) is None
    assert sticky_affinity(router("header:X-Session"), "hash-1", "ann", headers.get) == "s-42"
    assert sticky_affinity(router("header:x-other"), "hash-1", "ann", headers.get) is None


@pytest.mark.parametrize(("kind", "extra", "target", "header"), [
    ("openai", "", "/p/v1/models", ("authorization", "Bearer k1")),
    ("anthropic", "", "/p/v1/models", ("x-api-key", "k1")),
    ("gemini", "", "/p/v1beta/models", ("x-goog-api-key", "k1")),
    ("azure", ", api_version: '2024-10-21'", "/p/openai/models?api-version=2024-10-21", ("api-key", "k1")),
])
def test_each_kind_has_a_cheap_health_request(kind: str, extra: str, target: str, header: tuple[str, str]) -> None:
    router = Router(parse_config(f"""
security: {{allow_private_networks: [10.0.0.0/8]}}  # the deployments are on a private network
providers: {{p: {{kind: {kind}, base_url: "http://10.0.0.1/p", api_keys: [k0, k1], headers: {{x-extra: "1"}}{extra}}}}}
models: {{m: {{targets: [{{provider: p, model: a}}]}}}}
""", {}))
    route = router.get("m")
    assert route is not None
    d = route.targets[1]
    request = d.provider.health_request(d.auth)
    assert (request.method, request.target, request.body) == ("GET", target, None)
    assert header in request.headers and ("x-extra", "1") in request.headers
    assert not any(value.endswith("k0") for _, value in request.headers)
