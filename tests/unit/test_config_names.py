"""A mistyped name is answered with the closest known one; a config must serve something; settings that come
from the environment are the loader's to read (ENVIRONMENT_DEFAULTS), not the code's deeper down."""

from __future__ import annotations

import pytest

from sluice.config import check_serves_something, parse_config
from sluice.errors import ConfigError
from sluice.routing import Router

BASE = """
providers:
  mock: {kind: openai, base_url: "http://127.0.0.1:9000"}
models:
  gpt-4o-mini: {targets: [{provider: mock, model: gpt-4o-mini}]}
"""


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + text, {})
    return str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("rate_limit: {}", "rate_limit: unknown section (did you mean 'ratelimit'?)"),
    ("resiliance: {retries: 1}", "resiliance: unknown section (did you mean 'resilience'?)"),
    ("server: {prot: 80}", "server: object contains unknown field `prot` (did you mean 'port'?)"),
    ("observability: {tracing: {enabeld: true}}",
     "observability.tracing: object contains unknown field `enabeld` (did you mean 'enabled'?)"),
    ("ratelimit: {policies: [{name: a, scope: key, rate: 1, match: {model: [gpt-4o-mini]}}]}",
     "ratelimit.policies[0].match: object contains unknown field `model` (did you mean 'models'?)"),
    ("resilience: {breaker: {open_seconds: 3}}",
     "resilience.breaker: object contains unknown field `open_seconds` (did you mean 'open_s'?)"),
    ("auth: {jwt: [{issuer: 'https://i', audience: a, claims: {usr: sub}}]}",
     "auth.jwt[0].claims: object contains unknown field `usr` (did you mean 'user'?)"),
    ("abuse: {pow: {dificulty: 3}}", "abuse.pow: object contains unknown field `dificulty` (did you mean "
                                     "'difficulty'?)"),
])
def test_an_unknown_name_gets_the_closest_known_one_with_its_path(text: str, message: str) -> None:
    assert refusal(text) == message


def test_unknown_names_under_named_sections_and_lists() -> None:
    text = BASE.replace("model: gpt-4o-mini}", "model: gpt-4o-mini, wieght: 2}")
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert str(info.value) == ("models.gpt-4o-mini.targets[0]: object contains unknown field `wieght` "
                               "(did you mean 'weight'?)")
    text = BASE.replace("kind: openai,", "kind: openai, api_key: [k],")
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert str(info.value) == "providers.mock: object contains unknown field `api_key` (did you mean 'api_keys'?)"
    text = BASE.replace("{targets:", "{sticky: {hash_no: key}, targets:")
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert str(info.value) == ("models.gpt-4o-mini.sticky: object contains unknown field `hash_no` "
                               "(did you mean 'hash_on'?)")  # the name a file writes, not the attribute's


def test_a_name_with_no_close_match_lists_the_known_ones_and_suggests_none() -> None:
    section = refusal("xyzzy: 1")
    assert section == ("xyzzy: unknown section (known: abuse, auth, models, observability, passthrough, providers, "
                       "ratelimit, resilience, security, server, store, upstream)")
    field = refusal("store: {qqqq: 1}")
    assert "did you mean" not in field
    assert field == ("store: object contains unknown field `qqqq` (known: migrate_on_start, pool_size, "
                     "postgres_url, sqlite_path, timeout_s)")


@pytest.mark.parametrize("text", ["", "\n# nothing yet\n", "server: {port: 8080}\n",
                                  "providers: {mock: {kind: openai, base_url: 'http://127.0.0.1:9000'}}\n"])
def test_a_config_that_serves_nothing_is_refused(text: str) -> None:
    config = parse_config(text, {})
    with pytest.raises(ConfigError) as info:
        check_serves_something(config)
    assert info.value.path == ""
    assert info.value.problem.startswith("no models: add a `models:` section, see examples/quickstart.yaml")


def test_models_or_a_passthrough_provider_alone_serve_something() -> None:
    check_serves_something(parse_config(BASE, {}))
    passthrough_only = parse_config("providers: {openai: {kind: openai, base_url: 'http://127.0.0.1:9000'}}\n"
                                    "passthrough: {provider: openai}\n", {})
    check_serves_something(passthrough_only)  # /v1/files, /v1/responses...: something is served


def test_the_region_comes_from_sluice_region_when_the_file_names_none() -> None:
    assert parse_config(BASE, {}).resilience.region is None
    from_env = parse_config(BASE, {"SLUICE_REGION": "eu-west"})
    assert from_env.resilience.region == "eu-west"
    assert Router(from_env).region == "eu-west"
    assert parse_config(BASE + "resilience: {retries: 1}", {"SLUICE_REGION": "eu-west"}).resilience.retries == 1
    assert parse_config(BASE + "resilience: {region: us-east}", {"SLUICE_REGION": "eu-west"}).resilience.region \
        == "us-east"  # the file wins
    assert parse_config(BASE, {"SLUICE_REGION": ""}).resilience.region is None
    # `region: null` as docs/resilience.md writes it means "not set here": the environment still fills it
    assert parse_config(BASE + "resilience: {region: null}", {"SLUICE_REGION": "eu-west"}).resilience.region \
        == "eu-west"


def test_the_router_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_REGION", "ap-south")
    config = parse_config(BASE, {})  # the loader was given an environment without it
    assert Router(config).region is None
    assert Router(config, region="eu-west").region == "eu-west"


def test_the_log_level_comes_from_sluice_log_level_and_is_checked() -> None:
    assert parse_config(BASE, {"SLUICE_LOG_LEVEL": "debug"}).observability.log_level == "debug"
    assert parse_config(BASE + "observability: {log_level: error}", {"SLUICE_LOG_LEVEL": "debug"}) \
        .observability.log_level == "error"
    with pytest.raises(ConfigError) as info:
        parse_config(BASE, {"SLUICE_LOG_LEVEL": "loud"})
    assert info.value.path == "observability.log_level"


def test_a_section_that_is_no_mapping_is_still_refused_with_an_environment_default() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "resilience: [1]\n", {"SLUICE_REGION": "eu-west"})
    assert info.value.path == "resilience"
