"""A LiteLLM proxy ``config.yaml`` turned into a sluice config (``sluice import litellm FILE``; docs/litellm.md).

What maps (the rest is listed as ``Unmapped``, each with its LiteLLM path and why):

- ``model_list``: each ``model_name`` becomes a sluice model, each entry one of its targets; the
  ``litellm_params.model`` "provider/model" names the provider kind and the upstream model.  One sluice
  provider per distinct (kind, api_base, api_key, api_version, organization).  ``api_key`` and ``api_base``
  given as ``os.environ/VAR`` become ``${VAR}``; ``weight`` the target's weight (fractions scaled to whole
  numbers with their ratios); ``rpm``/``tpm`` a per-model limit policy (the deployments' figures summed: sluice
  limits models, not single deployments).  Wildcard routes (a ``*`` in ``model_name`` or ``model``) are listed:
  sluice names each model.
- ``router_settings`` (and their ``litellm_settings`` twins): ``routing_strategy`` where sluice has the same
  strategy, ``num_retries``, ``timeout``/``request_timeout``, ``fallbacks``, ``allowed_fails`` and
  ``cooldown_time`` (the breaker), ``redis_host``/``redis_port``/``redis_password`` (shared limits).
- ``general_settings.master_key``: a static admin key (auth on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from typing import Any
from urllib.parse import quote

import yaml

from . import ImportProblem, Unmapped

__all__ = ["Imported", "convert", "convert_text"]

# LiteLLM provider prefix -> (sluice kind, default base URL (None: api_base required), key variable LiteLLM reads
# (None: the API takes no key unless api_key gives one)).
_PROVIDERS: dict[str, tuple[str, str | None, str | None]] = {
    "openai": ("openai", "https://api.openai.com", "OPENAI_API_KEY"),
    "anthropic": ("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "gemini": ("gemini", "https://generativelanguage.googleapis.com", "GEMINI_API_KEY"),
    "azure": ("azure", None, "AZURE_API_KEY"),
    # OpenAI-compatible APIs, served by sluice's openai kind.
    "hosted_vllm": ("openai", None, None),  # LiteLLM sends no key unless one is given
    "groq": ("openai", "https://api.groq.com/openai", "GROQ_API_KEY"),
    "mistral": ("openai", "https://api.mistral.ai", "MISTRAL_API_KEY"),
    "deepseek": ("openai", "https://api.deepseek.com", "DEEPSEEK_API_KEY"),
    "xai": ("openai", "https://api.x.ai", "XAI_API_KEY"),
}
# A model named without a prefix: LiteLLM guesses its provider from the name; these guesses are unambiguous.
_BARE_PREFIXES = {"gpt-": "openai", "o1": "openai", "o3": "openai", "o4": "openai", "text-embedding-": "openai",
                  "claude-": "anthropic"}
_STRATEGIES = {"simple-shuffle": None, "least-busy": "least_inflight", "latency-based-routing": "latency"}
# litellm_params fields read while mapping a model_list entry (the others are listed as unmapped).
_READ_PARAMS = frozenset({"model", "api_base", "api_key", "api_version", "organization", "rpm", "tpm", "weight"})
_ROUTER_READ = frozenset({"routing_strategy", "num_retries", "timeout", "fallbacks", "allowed_fails",
                          "cooldown_time", "redis_host", "redis_port", "redis_password"})
_LITELLM_READ = frozenset({"num_retries", "request_timeout", "fallbacks"})


@dataclass
class Imported:
    """The sluice config (plain data, in the order it is written) and what could not be mapped."""

    config: dict[str, Any]
    unmapped: list[Unmapped] = field(default_factory=list)

    def to_yaml(self, source: str) -> str:
        header = (f"# Imported from the LiteLLM config {source} by `sluice import litellm` (docs/litellm.md).\n"
                  "# Check it with `sluice check-config`; what could not be mapped was listed when importing.\n")
        return header + yaml.safe_dump(self.config, sort_keys=False, allow_unicode=True, width=120)


def convert_text(text: str) -> Imported:
    """``convert`` of a YAML text; ImportProblem when it is not YAML."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ImportProblem(f"not YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    return convert(raw)


def convert(raw: Any) -> Imported:
    """The sluice config for the LiteLLM proxy config ``raw`` (as YAML loads it)."""
    if not isinstance(raw, dict):
        raise ImportProblem(f"a LiteLLM config is a mapping of sections, got {_type(raw)}")
    models = raw.get("model_list")
    if models is None:
        raise ImportProblem("no model_list: nothing to import")
    if not isinstance(models, list):
        raise ImportProblem(f"model_list: expected a list of models, got {_type(models)}")
    state = _State()
    for i, entry in enumerate(models):
        state.add_entry(f"model_list[{i}]", entry)
    router, settings = _section(raw, "router_settings"), _section(raw, "litellm_settings")
    state.add_router(router, settings)
    state.add_general(_section(raw, "general_settings"))
    for name in raw:
        if name not in ("model_list", "router_settings", "litellm_settings", "general_settings"):
            state.skip(name, "not a section sluice reads" if name != "environment_variables"
                       else "set these in the environment sluice runs in")
    if not state.models:
        raise ImportProblem("no model of model_list could be mapped: " + "; ".join(map(str, state.unmapped)))
    return Imported(state.build(), state.unmapped)


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImportProblem(f"{name}: expected a mapping, got {_type(value)}")
    return value


def _type(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value),
                                                                                            type(value).__name__)


def _env(value: Any, path: str) -> str:
    """A LiteLLM string that may be ``os.environ/VAR`` as sluice writes it: ``${VAR}``, or the literal with
    its dollars doubled (sluice would read ``$`` as the start of a variable)."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ImportProblem(f"{path}: expected a string, got {_type(value)}")
    text = str(value)
    if text.startswith("os.environ/"):
        return "${" + text.removeprefix("os.environ/") + "}"
    return text.replace("$", "$$")


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ImportProblem(f"{path}: expected a number, got {_type(value)}")
    return value


class _State:
    """The sluice config under construction, and the unmapped list."""

    def __init__(self) -> None:
        self.providers: dict[str, dict[str, Any]] = {}
        self.provider_names: dict[tuple[Any, ...], str] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.limits: dict[tuple[str, str], float] = {}  # (model, "requests" | "tokens") -> per minute
        self.resilience: dict[str, Any] = {}
        self.ratelimit: dict[str, Any] = {}
        self.auth: dict[str, Any] = {}
        self.unmapped: list[Unmapped] = []

    def skip(self, path: str, why: str) -> None:
        self.unmapped.append(Unmapped(path, why))

    # -- model_list ----------------------------------------------------------------------------------------

    def add_entry(self, path: str, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise ImportProblem(f"{path}: expected a mapping with model_name and litellm_params, got {_type(entry)}")
        name, params = entry.get("model_name"), entry.get("litellm_params")
        if not isinstance(name, str) or not name:
            raise ImportProblem(f"{path}.model_name: expected the model's name, got {_type(name)}")
        if not isinstance(params, dict):
            raise ImportProblem(f"{path}.litellm_params: expected a mapping, got {_type(params)}")
        model = params.get("model")
        if not isinstance(model, str) or not model:
            raise ImportProblem(f"{path}.litellm_params.model: expected \"provider/model\", got {_type(model)}")
        for where, value in ((f"{path}.model_name", name), (f"{path}.litellm_params.model", model)):
            if "*" in value:
                self.skip(where, f"{value!r} is a wildcard route (LiteLLM passes on any model name it matches): "
                                 "sluice names each model, add the ones callers use")
                return
        for key in entry:
            if key not in ("model_name", "litellm_params"):
                self.skip(f"{path}.{key}", "metadata sluice does not read (capabilities come from the provider "
                                           "kind; set capabilities: on the target if needed)" if key == "model_info"
                          else "not a field sluice reads")
        target = self._target(path + ".litellm_params", params, model)
        if target is None:
            return
        self.models.setdefault(name, {"targets": []})["targets"].append(target)
        for unit, key in (("requests", "rpm"), ("tokens", "tpm")):
            if key in params:
                rate = _number(params[key], f"{path}.litellm_params.{key}")
                self.limits[name, unit] = self.limits.get((name, unit), 0) + rate

    def _target(self, path: str, params: dict[str, Any], model: str) -> dict[str, Any] | None:
        prefix, _, upstream = model.partition("/")
        if not upstream:
            prefix, upstream = next((p for bare, p in _BARE_PREFIXES.items() if model.startswith(bare)), ""), model
        if prefix not in _PROVIDERS:
            why = (f"provider {prefix!r} has no sluice provider kind (sluice speaks openai, anthropic, gemini, azure "
                   "and OpenAI-compatible APIs; a plugin can add one, docs/providers.md)" if prefix
                   else "no provider prefix, and the name does not say which provider it is: write \"provider/model\"")
            self.skip(f"{path}.model", why)
            return None
        kind, default_base, key_variable = _PROVIDERS[prefix]
        base = params.get("api_base")
        if base is None and default_base is None:
            self.skip(f"{path}.api_base", f"{prefix} needs an api_base, and none is given")
            return None
        if kind == "azure" and "api_version" not in params:
            self.skip(f"{path}.api_version", "azure needs an api_version, and none is given (LiteLLM falls back to "
                                             "AZURE_API_VERSION or its release's default): add api_version")
            return None
        weight = None if "weight" not in params else _number(params["weight"], f"{path}.weight")
        if weight is not None and weight <= 0:
            self.skip(f"{path}.weight", f"weight {weight}: LiteLLM sends this deployment nothing, and sluice "
                                        "weights are positive, so it is left out")
            return None
        base_url = default_base if base is None else _base_url(_env(base, f"{path}.api_base"))
        keys = ([_env(params["api_key"], f"{path}.api_key")] if "api_key" in params
                else [] if key_variable is None else ["${" + key_variable + "}"])
        provider: dict[str, Any] = {"kind": kind, "base_url": base_url}
        if keys:
            provider["api_keys"] = keys
        if "api_version" in params:
            provider["api_version"] = _env(params["api_version"], f"{path}.api_version")
        if "organization" in params:
            provider["headers"] = {"OpenAI-Organization": _env(params["organization"], f"{path}.organization")}
        target: dict[str, Any] = {"provider": self._provider(prefix, provider), "model": upstream}
        if weight is not None:
            target["weight"] = weight  # made whole numbers by build, over all the model's targets
        for key in params:
            if key not in _READ_PARAMS:
                self.skip(f"{path}.{key}", _param_why(key))
        return target

    def _provider(self, prefix: str, provider: dict[str, Any]) -> str:
        identity = tuple((k, repr(v)) for k, v in sorted(provider.items()))
        if identity not in self.provider_names:
            taken = sum(1 for name in self.providers if name == prefix or name.startswith(prefix + "-"))
            name = prefix if not taken else f"{prefix}-{taken + 1}"
            self.provider_names[identity] = name
            self.providers[name] = provider
        return self.provider_names[identity]

    # -- router_settings, litellm_settings, general_settings ------------------------------------------------

    def add_router(self, router: dict[str, Any], settings: dict[str, Any]) -> None:
        strategy = router.get("routing_strategy")
        if strategy is not None:
            if strategy in _STRATEGIES:
                for model in self.models.values():
                    if _STRATEGIES[strategy] is not None:
                        model["strategy"] = _STRATEGIES[strategy]
            else:
                self.skip("router_settings.routing_strategy", f"{strategy!r} has no sluice strategy (sluice has "
                                                              "weighted, least_inflight, latency, health, sticky, geo)")
        for section, values, timeout_key in (("router_settings", router, "timeout"),
                                             ("litellm_settings", settings, "request_timeout")):
            if "num_retries" in values:
                self.resilience["retries"] = int(_number(values["num_retries"], f"{section}.num_retries"))
            if timeout_key in values:
                self.resilience["timeout_s"] = _number(values[timeout_key], f"{section}.{timeout_key}")
            if "fallbacks" in values:
                self._fallbacks(f"{section}.fallbacks", values["fallbacks"])
        self._breaker(router)
        self._redis(router)
        for section, values, read in (("router_settings", router, _ROUTER_READ),
                                      ("litellm_settings", settings, _LITELLM_READ)):
            for key in values:
                if key not in read:
                    self.skip(f"{section}.{key}", _setting_why(key))

    def _fallbacks(self, path: str, fallbacks: Any) -> None:
        if not isinstance(fallbacks, list):
            raise ImportProblem(f"{path}: expected a list of {{model: [fallbacks]}}, got {_type(fallbacks)}")
        for i, rule in enumerate(fallbacks):
            if not isinstance(rule, dict):
                raise ImportProblem(f"{path}[{i}]: expected {{model: [fallbacks]}}, got {_type(rule)}")
            for name, others in rule.items():
                where = f"{path}[{i}].{name}"
                if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
                    raise ImportProblem(f"{where}: expected a list of model names, got {_type(others)}")
                if name not in self.models:
                    self.skip(where, f"{name!r} is not a mapped model")
                    continue
                known = [o for o in others if o in self.models and o != name]
                for j, other in enumerate(others):
                    if other not in known:
                        self.skip(f"{where}[{j}]", f"{other!r} is not a mapped model")
                if known:
                    self.models[name]["fallbacks"] = known

    def _breaker(self, router: dict[str, Any]) -> None:
        breaker: dict[str, Any] = {}
        if "allowed_fails" in router:
            # LiteLLM cools a deployment down after this many failures in a minute; sluice's nearest is a
            # breaker opening after so many failures in a row.
            breaker["consecutive_failures"] = int(_number(router["allowed_fails"], "router_settings.allowed_fails"))
        if "cooldown_time" in router:
            breaker["open_s"] = _number(router["cooldown_time"], "router_settings.cooldown_time")
        if breaker:
            self.resilience["breaker"] = {"enabled": True, **breaker}

    def _redis(self, router: dict[str, Any]) -> None:
        host = router.get("redis_host")
        if host is None:
            for key in ("redis_port", "redis_password"):
                if key in router:
                    self.skip(f"router_settings.{key}", "no redis_host to go with it")
            return
        port = _env(router.get("redis_port", 6379), "router_settings.redis_port")
        password = router.get("redis_password")
        auth = "" if password is None else ":" + _password(password) + "@"
        self.ratelimit["redis"] = f"redis://{auth}{_env(host, 'router_settings.redis_host')}:{port}/0"

    def add_general(self, general: dict[str, Any]) -> None:
        for key, value in general.items():
            if key == "master_key":
                self._master_key(value)
            elif key == "database_url":
                self.skip("general_settings.database_url", "LiteLLM's own database (its keys and spend are not "
                                                           "sluice's): give sluice a store of its own "
                                                           "(store.postgres_url) and create keys with `sluice keys`")
            else:
                self.skip(f"general_settings.{key}", "not a setting sluice has")

    def _master_key(self, value: Any) -> None:
        key = _env(value, "general_settings.master_key")
        literal = None if key.startswith("${") else key.replace("$$", "$")  # its length as sluice will read it
        if literal is not None and len(literal) < 20:
            self.skip("general_settings.master_key", f"a literal key of {len(literal)} characters: sluice wants at "
                                                     "least 20, so the admin key is read from ${SLUICE_ADMIN_KEY}")
            key = "${SLUICE_ADMIN_KEY}"
        self.auth = {"enabled": True, "static_keys": [{"name": "admin", "key": key, "roles": ["admin"]}]}

    # -- the result ----------------------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.auth:
            config["auth"] = self.auth
        if self.resilience:
            config["resilience"] = self.resilience
        policies = [{"name": f"{model}-{'rpm' if unit == 'requests' else 'tpm'}", "scope": "model",
                     "rate": rate, "unit": unit, "period_s": 60, "match": {"models": [model]}}
                    for (model, unit), rate in self.limits.items() if model in self.models]
        if policies:
            self.ratelimit["policies"] = policies
        if self.ratelimit:
            config["ratelimit"] = self.ratelimit
        config["providers"] = self.providers
        for model in self.models.values():
            _whole_weights(model["targets"])
        config["models"] = self.models
        return config


def _base_url(url: str) -> str:
    """sluice's base_url stops before /v1 (the kinds add their paths): LiteLLM's api_base often ends in it."""
    url = url.rstrip("/")
    return url.removesuffix("/v1") if not url.startswith("${") else url


def _password(value: Any) -> str:
    """A Redis password for the URL: ``${VAR}``, or the literal percent-encoded (its ``$`` as ``%24``, so no
    doubling is needed, and doubling before encoding would double it in the password too)."""
    text = _env(value, "router_settings.redis_password")
    return text if text.startswith("${") else quote(str(value), safe="")


def _whole_weights(targets: list[dict[str, Any]]) -> None:
    """sluice's weights are whole numbers: when a model's LiteLLM weights are not, they are scaled, keeping their
    ratios to a thousandth of the largest (a target without one weighs 1, as in sluice), and reduced."""
    weights = [t.get("weight") for t in targets]
    if all(w is None or float(w).is_integer() for w in weights):
        for target in targets:
            if "weight" in target:
                target["weight"] = int(target["weight"])
        return
    given = [1.0 if w is None else float(w) for w in weights]
    scaled = [max(1, round(w / max(given) * 1000)) for w in given]
    divisor = gcd(*scaled)
    for target, whole in zip(targets, scaled, strict=True):
        target["weight"] = whole // divisor


def _param_why(key: str) -> str:
    if key in ("timeout", "stream_timeout"):
        return "per-deployment timeouts: sluice has one (resilience.timeout_s, upstream.*_timeout_s)"
    if key in ("max_retries",):
        return "per-deployment retries: sluice retries per model (resilience.retries)"
    if key.startswith(("vertex_", "aws_")):
        return "cloud credentials of a provider sluice does not speak"
    return "a call parameter sluice does not set (callers send their own)"


def _setting_why(key: str) -> str:
    if "fallbacks" in key:
        return "only plain fallbacks map (models.<name>.fallbacks); sluice does not pick fallbacks by error kind"
    if key in ("success_callback", "failure_callback", "callbacks"):
        return "sluice logs and traces itself (observability: access log, metrics, OpenTelemetry)"
    if key in ("cache", "cache_params"):
        return "sluice has no response cache"
    return "not a setting sluice has"
