"""Config checks of the routing fields: fallbacks, A/B variants, sticky and geo settings, base URLs, breakers."""

from __future__ import annotations

import pytest

from sluice.config import Strategy, parse_config
from sluice.errors import ConfigError

BASE = """
providers:
  mock: {kind: openai, base_url: "http://127.0.0.1:9000"}
models:
  a: {targets: [{provider: mock, model: m}]}
  b: {targets: [{provider: mock, model: m}]}
  c: {targets: [{provider: mock, model: m}]}
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, {})


def model(name: str, extra: str) -> str:
    """BASE with model ``name`` given ``extra`` fields."""
    return BASE.replace(f"  {name}: {{targets: [{{provider: mock, model: m}}]}}",
                        f"  {name}: {{targets: [{{provider: mock, model: m}}], {extra}}}")


@pytest.mark.parametrize(("text", "path", "problem"), [
    (model("a", "fallbacks: [nope]"), "models.a.fallbacks[0]", "unknown model 'nope'"),
    (model("a", "fallbacks: [a]"), "models.a.fallbacks[0]", "cannot fall back to itself"),
    (model("a", "fallbacks: [b, b]"), "models.a.fallbacks[1]", "listed twice"),
    (model("a", "fallbacks: [b]").replace("  b: {targets: [{provider: mock, model: m}]}",
                                          "  b: {targets: [{provider: mock, model: m}], fallbacks: [c]}")
     .replace("  c: {targets: [{provider: mock, model: m}]}",
              "  c: {targets: [{provider: mock, model: m}], fallbacks: [a]}"),
     "models.c.fallbacks", "cycle: a -> b -> c -> a"),
    (model("a", "variants: [{name: v, model: nope, percent: 10}]"), "models.a.variants[0].model",
     "unknown model 'nope'"),
    (model("a", "variants: [{name: v, model: a, percent: 10}]"), "models.a.variants[0].model", "another model"),
    (model("a", "variants: [{name: v, model: b, percent: 0}]"), "models.a.variants[0].percent",
     "between 0 and 100"),
    (model("a", "variants: [{name: v, model: b, percent: 100}]"), "models.a.variants[0].percent",
     "between 0 and 100"),
    (model("a", "variants: [{name: v, model: b, percent: 60}, {name: w, model: c, percent: 40}]"),
     "models.a.variants", "sum to less than 100"),
    (model("a", "variants: [{name: control, model: b, percent: 10}]"), "models.a.variants[0].name", "not 'control'"),
    (model("a", "variants: [{name: v, model: b, percent: 10}, {name: v, model: c, percent: 10}]"),
     "models.a.variants[1].name", "unique"),
    (model("a", "variants: [{name: v, model: b, percent: 10}]").replace(
        "  b: {targets: [{provider: mock, model: m}]}",
        "  b: {targets: [{provider: mock, model: m}], variants: [{name: w, model: c, percent: 5}]}"),
     "models.a.variants[0].model", "has variants of its own"),
    (model("a", "sticky: {hash_on: cookie}"), "models.a.sticky.hash_on", "key, user or header:<name>"),
    (model("a", "sticky: {hash_on: 'header:'}"), "models.a.sticky.hash_on", "key, user or header:<name>"),
    (model("a", "sticky: {hash_on: 'header:x y'}"), "models.a.sticky.hash_on", "key, user or header:<name>"),
    (model("a", "sticky: {on: key}"), "models.a.sticky", "keys must be strings, got True"),  # YAML 1.1's `on`
    (model("a", "strategy: random"), "models.a.strategy", "invalid enum value 'random'"),
    (model("a", "strategy: geo"), "models.a.strategy", "needs targets with a region"),
    (model("a", "geo: {region_header: 'x region'}"), "models.a.geo.region_header", "header name"),
    (model("a", "geo: {spill: {eu: ['']}}"), "models.a.geo.spill.eu[0]", "a region must be a name"),
    (BASE.replace("model: m}]}", "model: m, region: 'eu west'}]}", 1), "models.a.targets[0].region",
     "without spaces"),
    (BASE.replace("model: m}]}", "model: m, tags: ['']}]}", 1), "models.a.targets[0].tags[0]", "label"),
    (BASE.replace('base_url: "http://127.0.0.1:9000"', 'base_url: "http://127.0.0.1:9000", base_urls: [ftp://x]'),
     "providers.mock.base_urls[0]", "http:// or https://"),
    (BASE.replace('base_url: "http://127.0.0.1:9000"',
                  'base_url: "http://127.0.0.1:9000", base_urls: ["http://127.0.0.1:9000"]'),
     "providers.mock.base_urls[0]", "listed twice"),
    (BASE.replace('base_url: "http://127.0.0.1:9000"', 'base_url: "http://127.0.0.1:9000", base_urls: ["http://h?q"]'),
     "providers.mock.base_urls[0]", "query"),
    (BASE.replace('base_url: "http://127.0.0.1:9000"', 'base_url: "http://127.0.0.1:9000", key_cooldown_s: 0'),
     "providers.mock.key_cooldown_s", "more than zero"),
    (BASE.replace('base_url: "http://127.0.0.1:9000"', 'base_url: "http://127.0.0.1:9000", max_cooldown_s: .inf'),
     "providers.mock.max_cooldown_s", "finite"),
    (BASE.replace('base_url: "http://127.0.0.1:9000"', 'base_url: "http://127.0.0.1:9000", key_cooldown_s: 600'),
     "providers.mock.key_cooldown_s", "must not exceed max_cooldown_s"),
    (BASE + "resilience: {breaker: {failure_ratio: 0}}", "resilience.breaker.failure_ratio", "more than 0"),
    (BASE + "resilience: {breaker: {failure_ratio: 1.5}}", "resilience.breaker.failure_ratio", "at most 1"),
    (BASE + "resilience: {breaker: {min_requests: 0}}", "resilience.breaker.min_requests", "more than zero"),
    (BASE + "resilience: {breaker: {window_s: 0}}", "resilience.breaker.window_s", "more than zero"),
    (BASE + "resilience: {breaker: {consecutive_failures: -1}}", "resilience.breaker.consecutive_failures",
     "zero or more"),
    (BASE + "resilience: {breaker: {open_s: .inf}}", "resilience.breaker.open_s", "finite"),
    (BASE + "resilience: {breaker: {half_open_probes: 0}}", "resilience.breaker.half_open_probes", "more than zero"),
    (BASE + "resilience: {breaker: {enabled: true, bogus: 1}}", "resilience.breaker", "unknown field `bogus`"),
    (BASE + "resilience: {health_check: {interval_s: -1}}", "resilience.health_check.interval_s", "zero or more"),
    (BASE + "resilience: {health_check: {timeout_s: 0}}", "resilience.health_check.timeout_s", "more than zero"),
    (BASE + "resilience: {health_check: {interval_s: 1, timeout_s: 2}}", "resilience.health_check.timeout_s",
     "must not exceed interval_s"),
    (BASE + "resilience: {region: ''}", "resilience.region", "without spaces"),
])
def test_each_routing_mistake_names_its_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.path == path
    assert problem in info.value.problem


def test_the_resilience_section_is_read() -> None:
    config = parse(BASE + "resilience: {region: eu-west, breaker: {enabled: true, open_s: 5}, "
                          "health_check: {interval_s: 10}}")
    assert config.resilience.region == "eu-west"
    assert config.resilience.breaker.enabled and config.resilience.breaker.open_s == 5
    assert config.resilience.health_check.interval_s == 10


def test_routing_fields_load() -> None:
    text = model("a", "strategy: geo, sticky: {hash_on: 'header:X-Session'}, fallbacks: [b, c], "
                      "geo: {spill: {eu: [us]}}, variants: [{name: canary, model: b, percent: 2.5}]")
    config = parse(text.replace("model: m}], strategy", "model: m, region: eu, tags: [primary]}], strategy")
                   .replace('base_url: "http://127.0.0.1:9000"',
                            'base_url: "http://127.0.0.1:9000", base_urls: ["http://127.0.0.2:9000"]'))
    a = config.models["a"]
    assert a.strategy is Strategy.GEO and a.fallbacks == ("b", "c") and a.geo.spill == {"eu": ("us",)}
    assert a.variants[0].percent == 2.5 and a.sticky.on == "header:X-Session"
    assert a.targets[0].region == "eu" and a.targets[0].tags == ("primary",)
    assert config.providers["mock"].base_urls == ("http://127.0.0.2:9000",)


def test_fallback_chains_without_a_cycle_load() -> None:
    text = model("a", "fallbacks: [b, c]").replace("  b: {targets: [{provider: mock, model: m}]}",
                                                   "  b: {targets: [{provider: mock, model: m}], fallbacks: [c]}")
    assert parse(text).models["b"].fallbacks == ("c",)
