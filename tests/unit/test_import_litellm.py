"""sluice.importers.litellm: each LiteLLM field it maps, what it lists as unmapped, and bad input."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from sluice.config import parse_config
from sluice.importers import ImportProblem
from sluice.importers.litellm import convert, convert_text


def entry(model: str, name: str = "m", **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, **params}}


def one(model: str, **params: Any) -> tuple[dict[str, Any], list[str]]:
    imported = convert({"model_list": [entry(model, **params)]})
    return imported.config, [str(u) for u in imported.unmapped]


@pytest.mark.parametrize(("model", "kind", "base_url", "key", "target"), [
    ("openai/gpt-4o", "openai", "https://api.openai.com", "${OPENAI_API_KEY}", "gpt-4o"),
    ("gpt-4o", "openai", "https://api.openai.com", "${OPENAI_API_KEY}", "gpt-4o"),
    ("anthropic/claude-3-5-haiku-latest", "anthropic", "https://api.anthropic.com", "${ANTHROPIC_API_KEY}",
     "claude-3-5-haiku-latest"),
    ("claude-3-opus-20240229", "anthropic", "https://api.anthropic.com", "${ANTHROPIC_API_KEY}",
     "claude-3-opus-20240229"),
    ("gemini/gemini-1.5-flash", "gemini", "https://generativelanguage.googleapis.com", "${GEMINI_API_KEY}",
     "gemini-1.5-flash"),
    ("groq/llama3-8b-8192", "openai", "https://api.groq.com/openai", "${GROQ_API_KEY}", "llama3-8b-8192"),
])
def test_provider_prefix_names_kind_base_key_and_model(model: str, kind: str, base_url: str, key: str,
                                                        target: str) -> None:
    config, unmapped = one(model)
    [(name, provider)] = config["providers"].items()
    assert provider == {"kind": kind, "base_url": base_url, "api_keys": [key]}
    assert config["models"] == {"m": {"targets": [{"provider": name, "model": target}]}}
    assert unmapped == []


def test_azure_api_base_version_and_environment_key() -> None:
    config, unmapped = one("azure/my-deployment", api_base="https://res.openai.azure.com/",
                           api_key="os.environ/AZURE_KEY", api_version="2024-10-21")
    assert config["providers"] == {"azure": {"kind": "azure", "base_url": "https://res.openai.azure.com",
                                             "api_keys": ["${AZURE_KEY}"], "api_version": "2024-10-21"}}
    assert config["models"]["m"]["targets"] == [{"provider": "azure", "model": "my-deployment"}]
    assert unmapped == []


def test_azure_without_api_base_is_unmapped() -> None:
    with pytest.raises(ImportProblem, match=r"model_list\[0\]\.litellm_params\.api_base: azure needs an api_base"):
        one("azure/d")


def test_api_base_loses_v1_and_literal_dollars_are_kept() -> None:
    config, _ = one("hosted_vllm/llama", api_base="http://127.0.0.1:8000/v1/", api_key="pa$$word")
    assert config["providers"]["hosted_vllm"]["base_url"] == "http://127.0.0.1:8000"
    assert config["providers"]["hosted_vllm"]["api_keys"] == ["pa$$$$word"]  # sluice reads $$ as $
    assert parse_config("providers: {p: {kind: openai, base_url: 'http://x', api_keys: ['pa$$$$word']}}",
                        {}).providers["p"].api_keys == ("pa$$word",)


def test_organization_becomes_a_header() -> None:
    config, _ = one("openai/gpt-4o", organization="org-1")
    assert config["providers"]["openai"]["headers"] == {"OpenAI-Organization": "org-1"}


@pytest.mark.parametrize(("weights", "whole"), [
    ((2, 3), [2, 3]),  # whole numbers are kept as they are
    ((0.2, 0.8), [1, 4]),  # not flattened to 1/1: scaled, keeping the ratio
    ((0.5, None), [1, 2]),  # a target without a weight weighs 1 (sluice's default)
    ((2.5, 1), [5, 2]),
    ((1 / 3, 2 / 3), [1, 2]),
])
def test_weights_become_whole_numbers_keeping_their_ratios(weights: tuple[float | None, ...],
                                                           whole: list[int]) -> None:
    imported = convert({"model_list": [entry(f"openai/t{i}", "g", **({} if w is None else {"weight": w}))
                                       for i, w in enumerate(weights)]})
    assert [t["weight"] for t in imported.config["models"]["g"]["targets"]] == whole
    assert imported.unmapped == []
    parsed = parse_config(imported.to_yaml("x.yaml"), {"OPENAI_API_KEY": "k"})
    assert [t.weight for t in parsed.models["g"].targets] == whole


def test_a_weight_of_zero_leaves_the_deployment_out() -> None:
    imported = convert({"model_list": [entry("openai/a", "g", weight=1), entry("openai/b", "g", weight=0)]})
    assert imported.config["models"]["g"]["targets"] == [{"provider": "openai", "model": "a", "weight": 1}]
    assert [str(u) for u in imported.unmapped] == [
        "model_list[1].litellm_params.weight: weight 0: LiteLLM sends this deployment nothing, and sluice weights "
        "are positive, so it is left out"]


def test_wildcard_routes_are_listed_not_copied() -> None:
    imported = convert({"model_list": [entry("openai/*", "*"), entry("openai/*", "all-openai"),
                                       entry("anthropic/claude-*", "claude"), entry("openai/a", "a")]})
    assert list(imported.config["models"]) == ["a"]
    assert [u.path for u in imported.unmapped] == ["model_list[0].model_name", "model_list[1].litellm_params.model",
                                                   "model_list[2].litellm_params.model"]
    assert imported.unmapped[1].why.startswith("'openai/*' is a wildcard route")


def test_azure_without_api_version_is_unmapped() -> None:
    imported = convert({"model_list": [entry("azure/d", "a", api_base="https://r.openai.azure.com"),
                                       entry("openai/b", "b")]})
    assert list(imported.config["models"]) == ["b"] and list(imported.config["providers"]) == ["openai"]
    [unmapped] = imported.unmapped
    assert unmapped.path == "model_list[0].litellm_params.api_version"
    assert unmapped.why.startswith("azure needs an api_version, and none is given")


def test_hosted_vllm_without_api_key_has_no_key() -> None:
    config, unmapped = one("hosted_vllm/llama", api_base="http://127.0.0.1:8000/v1")
    assert config["providers"]["hosted_vllm"] == {"kind": "openai", "base_url": "http://127.0.0.1:8000"}
    assert unmapped == []
    yaml_text = convert({"model_list": [entry("hosted_vllm/llama", api_base="http://127.0.0.1:8000")]}).to_yaml("x")
    assert parse_config(yaml_text, {}).providers["hosted_vllm"].api_keys == ()  # no variable to set


def test_deployments_share_a_provider_only_when_identical() -> None:
    imported = convert({"model_list": [entry("openai/a", "x"), entry("openai/b", "y"),
                                       entry("openai/c", "z", api_key="os.environ/OTHER")]})
    assert list(imported.config["providers"]) == ["openai", "openai-2"]
    assert [m["targets"][0]["provider"] for m in imported.config["models"].values()] == ["openai", "openai",
                                                                                         "openai-2"]


def test_rpm_and_tpm_of_a_model_group_sum_into_limit_policies() -> None:
    imported = convert({"model_list": [entry("openai/a", "g", rpm=100, tpm=1000), entry("openai/b", "g", rpm=50)]})
    assert imported.config["ratelimit"]["policies"] == [
        {"name": "g-rpm", "scope": "model", "rate": 150, "unit": "requests", "period_s": 60,
         "match": {"models": ["g"]}},
        {"name": "g-tpm", "scope": "model", "rate": 1000, "unit": "tokens", "period_s": 60,
         "match": {"models": ["g"]}}]


def test_router_settings() -> None:
    imported = convert({"model_list": [entry("openai/a", "a"), entry("openai/b", "b")],
                        "router_settings": {"routing_strategy": "latency-based-routing", "num_retries": 3,
                                            "timeout": 20, "fallbacks": [{"a": ["b", "nope"]}],
                                            "allowed_fails": 2, "cooldown_time": 45, "redis_host": "r.local",
                                            "redis_port": 6380, "redis_password": "os.environ/REDIS_PASSWORD",
                                            "model_group_alias": {"x": "a"}}})
    config = imported.config
    assert config["models"]["a"] == {"targets": [{"provider": "openai", "model": "a"}], "strategy": "latency",
                                     "fallbacks": ["b"]}
    assert config["resilience"] == {"retries": 3, "timeout_s": 20,
                                    "breaker": {"enabled": True, "consecutive_failures": 2, "open_s": 45}}
    assert config["ratelimit"] == {"redis": "redis://:${REDIS_PASSWORD}@r.local:6380/0"}
    assert [str(u) for u in imported.unmapped] == [
        "router_settings.fallbacks[0].a[1]: 'nope' is not a mapped model",
        "router_settings.model_group_alias: not a setting sluice has"]


@pytest.mark.parametrize(("password", "in_url"), [("pa$s@", "pa%24s%40"), ("a:b/c", "a%3Ab%2Fc"),
                                                   ("os.environ/REDIS_PASSWORD", "${REDIS_PASSWORD}")])
def test_a_redis_password_is_encoded_once(password: str, in_url: str) -> None:
    imported = convert({"model_list": [entry("openai/a")],
                        "router_settings": {"redis_host": "r.local", "redis_password": password}})
    url = imported.config["ratelimit"]["redis"]
    assert url == f"redis://:{in_url}@r.local:6379/0"
    if not password.startswith("os.environ/"):
        loaded = parse_config(imported.to_yaml("x"), {"OPENAI_API_KEY": "k"}).ratelimit.redis
        assert loaded is not None and unquote(urlsplit(loaded).password or "") == password


def test_litellm_settings_twins_and_an_unknown_strategy() -> None:
    imported = convert({"model_list": [entry("openai/a", "a")],
                        "router_settings": {"routing_strategy": "usage-based-routing-v2"},
                        "litellm_settings": {"num_retries": 1, "request_timeout": 600, "set_verbose": True}})
    assert imported.config["resilience"] == {"retries": 1, "timeout_s": 600}
    assert "strategy" not in imported.config["models"]["a"]
    assert [u.path for u in imported.unmapped] == ["router_settings.routing_strategy", "litellm_settings.set_verbose"]


@pytest.mark.parametrize(("master_key", "key", "unmapped"), [
    ("os.environ/LITELLM_MASTER_KEY", "${LITELLM_MASTER_KEY}", []),
    ("sk-" + "a" * 30, "sk-" + "a" * 30, []),
    ("sk-1234", "${SLUICE_ADMIN_KEY}", ["general_settings.master_key"]),
    ("sk-$$$$$$$$$$$$$$$$", "${SLUICE_ADMIN_KEY}", ["general_settings.master_key"]),  # 19 as read, 35 as written
])
def test_master_key_is_a_static_admin_key(master_key: str, key: str, unmapped: list[str]) -> None:
    imported = convert({"model_list": [entry("openai/a")], "general_settings": {"master_key": master_key}})
    assert imported.config["auth"] == {"enabled": True,
                                       "static_keys": [{"name": "admin", "key": key, "roles": ["admin"]}]}
    assert [u.path for u in imported.unmapped] == unmapped


def test_what_cannot_be_mapped_is_listed_with_its_path() -> None:
    imported = convert({"model_list": [entry("openai/a", "a", temperature=0.2),
                                       entry("bedrock/anthropic.claude", "b", aws_region_name="us-east-1"),
                                       entry("mystery-model", "c")],
                        "environment_variables": {"X": "1"}})
    assert list(imported.config["models"]) == ["a"]
    assert [u.path for u in imported.unmapped] == ["model_list[0].litellm_params.temperature",
                                                   "model_list[1].litellm_params.model",
                                                   "model_list[2].litellm_params.model", "environment_variables"]
    assert "'bedrock' has no sluice provider kind" in imported.unmapped[1].why


def test_the_output_is_a_valid_sluice_config() -> None:
    imported = convert({"model_list": [entry("openai/a", "a", rpm=10), entry("anthropic/b", "b")],
                        "router_settings": {"fallbacks": [{"a": ["b"]}], "num_retries": 1}})
    config = parse_config(imported.to_yaml("x.yaml"), {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"})
    assert config.models["a"].fallbacks == ("b",) and config.resilience.retries == 1


@pytest.mark.parametrize(("raw", "message"), [
    ("[1", "not YAML"),
    ("just text", "a LiteLLM config is a mapping of sections, got a string"),
    ("{}", "no model_list: nothing to import"),
    ("model_list: 3", "model_list: expected a list of models, got int"),
    ("model_list: [3]", r"model_list\[0\]: expected a mapping with model_name and litellm_params, got int"),
    ("model_list: [{litellm_params: {model: openai/a}}]", r"model_list\[0\]\.model_name: expected the model's name"),
    ("model_list: [{model_name: a, litellm_params: [1]}]", r"model_list\[0\]\.litellm_params: expected a mapping"),
    ("model_list: [{model_name: a, litellm_params: {model: openai/a, rpm: many}}]",
     r"model_list\[0\]\.litellm_params\.rpm: expected a number, got a string"),
    ("model_list: [{model_name: a, litellm_params: {model: openai/a, api_key: [1]}}]",
     r"model_list\[0\]\.litellm_params\.api_key: expected a string, got a list"),
    ("model_list: [{model_name: a, litellm_params: {model: openai/a}}]\nrouter_settings: [1]",
     "router_settings: expected a mapping, got a list"),
    ("model_list: [{model_name: a, litellm_params: {model: openai/a}}]\nrouter_settings: {fallbacks: {a: b}}",
     r"router_settings\.fallbacks: expected a list"),
    ("model_list: [{model_name: a, litellm_params: {model: bedrock/a}}]", "no model of model_list could be mapped"),
])
def test_bad_input_is_one_clear_problem(raw: str, message: str) -> None:
    with pytest.raises(ImportProblem, match=message) as caught:
        convert_text(raw)
    assert "\n" not in str(caught.value)
