"""Config: interpolation, typed decoding, and an error that names the path for each mistake."""

from __future__ import annotations

import pytest

from sluice.config import load_config, parse_config
from sluice.errors import ConfigError
from tests.conftest import ROOT

BASE = """
providers:
  mock: {kind: openai, base_url: "http://127.0.0.1:9000"}
models:
  gpt-4o-mini: {targets: [{provider: mock, model: gpt-4o-mini}]}
"""


def parse(text: str, **env: str):  # type: ignore[no-untyped-def]
    return parse_config(text, env)


def test_defaults_and_structure() -> None:
    config = parse(BASE)
    assert config.server.port == 8080 and config.server.workers == 1
    assert config.models["gpt-4o-mini"].targets[0].provider == "mock"
    assert config.upstream.read_timeout_s == 120.0


def test_config_is_immutable() -> None:
    config = parse(BASE)
    with pytest.raises(AttributeError):
        config.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("value", "env", "expected"), [
    ("${HOST}", {"HOST": "h"}, "h"),
    ("${HOST:-d}", {}, "d"),
    ("${HOST:-d}", {"HOST": ""}, "d"),
    ("${HOST:-}", {}, ""),
    ("a-${X}-${Y:-y}", {"X": "x"}, "a-x-y"),
    ("$$HOME", {}, "$HOME"),
    ("${HOST:-http://a:1/b}", {}, "http://a:1/b"),
])
def test_interpolation(value: str, env: dict[str, str], expected: str) -> None:
    from sluice.config import interpolate

    assert interpolate(value, env, "p") == expected


def test_interpolation_applies_to_numbers_and_nested_lists() -> None:
    config = parse(BASE + "server: {port: '${PORT:-8123}'}\n", PORT="9999")
    assert config.server.port == 9999
    keyed = parse(BASE.replace('kind: openai,', 'kind: openai, api_keys: ["${K1}", "${K2:-k2}"],'), K1="k1")
    assert keyed.providers["mock"].api_keys == ("k1", "k2")


def test_missing_variable_names_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse(BASE.replace('"http://127.0.0.1:9000"', '"${UPSTREAM}"'))
    assert str(info.value) == "providers.mock.base_url: environment variable 'UPSTREAM' is not set and has no default"


@pytest.mark.parametrize(("text", "path", "problem"), [
    (BASE.replace("provider: mock", "provider: opneai"), "models.gpt-4o-mini.targets[0].provider",
     "unknown provider 'opneai'"),
    (BASE.replace("kind: openai", "kind: opneai"), "providers.mock.kind", "unknown provider kind 'opneai'"),
    (BASE + "server: {port: 70000}", "server.port", "must be at most 65535"),
    (BASE + "server: {workers: 0}", "server.workers", "must be more than zero"),
    (BASE + "server: {max_body_bytes: -1}", "server.max_body_bytes", "must be more than zero"),
    (BASE + "upstream: {read_timeout_s: 0}", "upstream.read_timeout_s", "must be more than zero"),
    (BASE + "server: {port: [1]}", "server.port", "expected `int`, got `array`"),
    (BASE + "server: {bogus: 1}", "server", "unknown field `bogus`"),
    (BASE + "servers: {}", "servers", "unknown section"),
    (BASE + "observability: {tracing: {sample_ratio: 1.5}}", "observability.tracing.sample_ratio",
     "must be between 0 and 1"),
    (BASE + "observability: {tracing: {enabled: true, endpoint: 'ftp://c:4318'}}", "observability.tracing.endpoint",
     "must start with http:// or https://"),
    (BASE + "observability: {tracing: {queue_size: 0}}", "observability.tracing.queue_size", "more than zero"),
    (BASE + "observability: {tracing: {sampling: 1}}", "observability.tracing", "unknown field `sampling`"),
    (BASE + "observability: {health_details_token: short}", "observability.health_details_token",
     "at least 16 printable characters"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: 0}]}", "ratelimit.policies[0].rate",
     "must be more than zero"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: -5}]}", "ratelimit.policies[0].rate",
     "must be more than zero"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: 1, period_s: 0}]}",
     "ratelimit.policies[0].period_s", "must be more than zero"),
    (BASE + "ratelimit: {policies: [{name: a, scope: planet, rate: 1}]}", "ratelimit.policies[0].scope",
     "invalid enum value 'planet'"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, unit: dollars, rate: 1}]}",
     "ratelimit.policies[0].unit", "invalid enum value 'dollars'"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: 1, mode: distributed}]}",
     "ratelimit.policies[0].mode", "needs ratelimit.redis"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: 1, mode: hybrid}]}",
     "ratelimit.policies[0].mode", "a hybrid policy needs ratelimit.redis"),
    (BASE + "ratelimit: {redis: 'redis://x', sync_interval_s: 0.5, policies: [{name: a, scope: global, "
     "rate: 1000, period_s: 1, burst: 100, mode: hybrid}]}", "ratelimit.policies[0].mode",
     "must not refill more than half its capacity (100) in one sync interval (500"),
    (BASE + "ratelimit: {redis: 'redis://x', policies: [{name: a, scope: key, rate: 1, mode: hybrid, "
     "algorithm: sliding_window}]}", "ratelimit.policies[0].algorithm", "a hybrid policy must be a token_bucket"),
    (BASE + "ratelimit: {redis: 'redis://x', sync_interval_s: 0}", "ratelimit.sync_interval_s",
     "must be more than zero"),
    (BASE + "ratelimit: {hybrid_max_subjects: 0}", "ratelimit.hybrid_max_subjects", "must be more than zero"),
    (BASE + "ratelimit: {quota_max_subjects: -1}", "ratelimit.quota_max_subjects", "must be more than zero"),
    (BASE + "ratelimit: {quota_max_subjects: 1.5}", "ratelimit.quota_max_subjects", "expected `int`"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: 1}, {name: a, scope: ip, rate: 1}]}",
     "ratelimit.policies[1].name", "unique"),
    (BASE + "ratelimit: {trusted_proxies: [not-a-net]}", "ratelimit.trusted_proxies[0]", "not an IP network"),
    (BASE + "ratelimit: {redis: 'http://x'}", "ratelimit.redis", "redis://"),
    (BASE + "ratelimit: {policies: [{name: a, scope: key, rate: 1, match: {models: [nope]}}]}",
     "ratelimit.policies[0].match.models[0]", "unknown model 'nope'"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: 0}]}", "ratelimit.quotas[0].limit",
     "must be more than zero"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: -1}]}", "ratelimit.quotas[0].limit",
     "must be more than zero"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: .inf}]}", "ratelimit.quotas[0].limit",
     "must be finite"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: .nan}]}", "ratelimit.quotas[0].limit",
     "must be finite"),
    (BASE + "ratelimit: {quotas: [{name: a, scope: key, limit: 1}, {name: b, scope: ip, limit: 1}]}",
     "ratelimit.quotas[1].scope", "per key, user or team, got 'ip'"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: global, limit: 1}]}", "ratelimit.quotas[0].scope",
     "per key, user or team"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: 1, period: week}]}", "ratelimit.quotas[0].period",
     "invalid enum value 'week'"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: 1}, {name: q, scope: user, limit: 1}]}",
     "ratelimit.quotas[1].name", "unique"),
    (BASE + "ratelimit: {policies: [{name: q, scope: key, rate: 1}], quotas: [{name: q, scope: key, limit: 1}]}",
     "ratelimit.quotas[0].name", "unique"),
    (BASE + "ratelimit: {quotas: [{name: q, scope: key, limit: 1, match: {models: [nope]}}]}",
     "ratelimit.quotas[0].match.models[0]", "unknown model 'nope'"),
    (BASE + "ratelimit: {timezone: Mars/Olympus_Mons}", "ratelimit.timezone", "unknown IANA time zone"),
    (BASE + "ratelimit: {timezone: '../etc/passwd'}", "ratelimit.timezone", "unknown IANA time zone"),
    (BASE + "ratelimit: {quota_sync_s: 0}", "ratelimit.quota_sync_s", "must be more than zero"),
    (BASE + "ratelimit: {quota_sync_s: .inf}", "ratelimit.quota_sync_s", "must be finite"),
    (BASE + "ratelimit: {quota_store: '', quotas: [{name: q, scope: key, limit: 1}]}", "ratelimit.quota_store",
     "need a file"),
    (BASE.replace("targets: [{provider: mock, model: gpt-4o-mini}]", "targets: []"),
     "models.gpt-4o-mini.targets", "at least one target"),
    (BASE.replace("model: gpt-4o-mini}", "model: gpt-4o-mini, weight: 0}"), "models.gpt-4o-mini.targets[0].weight",
     "more than zero"),
    (BASE.replace("model: gpt-4o-mini}", "weight: 1}"), "models.gpt-4o-mini.targets[0]",
     "missing required field `model`"),
    (BASE.replace('"http://127.0.0.1:9000"', '"ftp://x"'), "providers.mock.base_url", "http:// or https://"),
    (BASE.replace('"http://127.0.0.1:9000"', '"http://"'), "providers.mock.base_url", "no host"),
    (BASE.replace('"http://127.0.0.1:9000"', '"http://h:99999"'), "providers.mock.base_url", "invalid URL"),
    (BASE.replace('"http://127.0.0.1:9000"', '"http://h/?q=1"'), "providers.mock.base_url", "query"),
    (BASE.replace("kind: openai,", 'kind: openai, api_keys: ["a\\nb"],'), "providers.mock.api_keys[0]",
     "single line"),
    ("models: {m: {targets: 5}}", "models.m.targets", "expected `array`"),
    ("models: [1]", "models", "expected a mapping"),
    ("[1, 2]", "", "mapping of sections"),
    ("server: {port: 1", "", "invalid YAML at line"),
    ("{1: 2}", "", "keys must be strings"),
])
def test_each_mistake_names_its_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.path == path
    assert problem in info.value.problem


def test_empty_file_parses_but_serves_nothing() -> None:
    """parse_config takes any section alone (the admin commands' store-only files); serving needs models."""
    from sluice.config import check_serves_something

    empty = parse("")
    assert empty.models == {}
    with pytest.raises(ConfigError) as info:
        check_serves_something(empty)
    assert str(info.value) == ("no models: add a `models:` section, see examples/quickstart.yaml (or a "
                               "passthrough.provider, for the other OpenAI endpoints alone)")


def test_quickstart_example_loads_with_and_without_env() -> None:
    path = ROOT / "examples" / "quickstart.yaml"
    config = load_config(path, env={})
    assert config.providers["mock"].base_url == "http://127.0.0.1:9000"
    assert set(config.models) == {"gpt-4o-mini", "text-embedding-3-small"}
    moved = load_config(path, env={"SLUICE_UPSTREAM": "http://upstream.example:1234"})
    assert moved.providers["mock"].base_url == "http://upstream.example:1234"


def test_quotas_load_with_their_defaults() -> None:
    config = parse(BASE + "ratelimit: {timezone: Europe/Paris, quotas: [{name: daily, scope: key, limit: 1000},"
                          " {name: monthly-tokens, scope: team, limit: 5e6, unit: tokens, period: month}]}")
    daily, monthly = config.ratelimit.quotas
    assert (daily.unit.value, daily.period.value, daily.match.models) == ("requests", "day", ())
    assert (monthly.scope.value, monthly.unit.value, monthly.period.value, monthly.limit) == (
        "team", "tokens", "month", 5e6)
    assert (config.ratelimit.timezone, config.ratelimit.quota_store, config.ratelimit.quota_sync_s) == (
        "Europe/Paris", "sluice-quotas.db", 1.0)


# -- provider kinds: known by name to the loader, by their code to sluice.providers (sluice.config.vocabulary) --

AZURE = """
providers: {az: {kind: azure, base_url: "https://x.openai.azure.com"}}
models: {gpt-4o: {targets: [{provider: az, model: d}]}}
"""


def test_the_builtin_kind_names_are_the_registrys() -> None:
    from sluice.config.vocabulary import BUILTIN_KINDS
    from sluice.providers import provider_kinds

    built_in = {name for name, kind in provider_kinds().items() if kind.__module__.startswith("sluice.providers.")}
    assert built_in == BUILTIN_KINDS


def test_a_kinds_own_check_is_a_config_error_with_its_path() -> None:
    from sluice.providers import build_provider, check_providers

    config = parse(AZURE)  # the loader knows azure by name; its check_config is the kind's code
    for check in (lambda: check_providers(config), lambda: build_provider("az", config.providers["az"])):
        with pytest.raises(ConfigError) as info:
            check()
        assert info.value.path == "providers.az.api_version" and "needs its api_version" in info.value.problem


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Two installed provider plugins that the registry leaves out: one fails to import, one is no Provider."""
    from sluice.config.vocabulary import provider_kind_names
    from sluice.providers import provider_kinds

    info = tmp_path / "sluice_broken_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sluice-broken-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sluice.providers]\nbroken = sluice_no_such_module:Kind\n"
                                           "notakind = json:loads\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    provider_kind_names.cache_clear()
    provider_kinds.cache_clear()
    yield
    monkeypatch.undo()
    provider_kind_names.cache_clear()
    provider_kinds.cache_clear()


@pytest.mark.parametrize("kind", ["broken", "notakind"])
@pytest.mark.usefixtures("broken_plugins")
def test_a_plugin_kind_that_does_not_load_is_refused_in_the_loaders_words(kind: str) -> None:
    from sluice.providers import check_providers

    config = parse(BASE.replace("kind: openai", f"kind: {kind}"))  # known by its entry point's name
    with pytest.raises(ConfigError) as info:
        check_providers(config)
    assert str(info.value) == (f"providers.mock.kind: unknown provider kind {kind!r} "
                               "(known: anthropic, azure, gemini, openai)")
    with pytest.raises(ConfigError) as typo:
        parse(BASE.replace("kind: openai", "kind: opneai"))
    assert typo.value.path == "providers.mock.kind" and "unknown provider kind 'opneai'" in typo.value.problem
