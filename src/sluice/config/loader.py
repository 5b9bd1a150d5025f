"""Loads a YAML config file into a validated, immutable Config.

Every mistake raises ConfigError naming the path and the problem, e.g.
``models.gpt-4o.targets[0].provider: unknown provider 'opneai'``.

The words a config may use are the config's own: the permissions of a role
(``.permissions``), the provider kinds and a target's capabilities (``.vocabulary``).
The loader imports no higher layer.  What only a provider kind's code can say (a
plugin that fails to load, a kind's own ``check_config``) is checked by
``sluice.providers.check_providers`` after loading (see ``.vocabulary``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import yaml

from ..errors import ConfigError
from .extras import check_extras
from .model import (
    ENVIRONMENT_DEFAULTS,
    AbuseConfig,
    AuthConfig,
    ClaimsConfig,
    Config,
    JwtIssuerConfig,
    ModelConfig,
    ObservabilityConfig,
    PassthroughConfig,
    PolicyConfig,
    ProviderConfig,
    RateLimitConfig,
    ResilienceConfig,
    SecurityConfig,
    ServerConfig,
    StoreConfig,
    TargetConfig,
    UpstreamConfig,
)
from .permissions import BUILTIN_ROLES, check_permission
from .schema import did_you_mean, field_names, struct_at
from .urls import check_outbound_urls, parse_networks
from .vocabulary import CAPABILITIES, provider_kind_names

__all__ = ["VARIABLE", "check_serves_something", "interpolate", "load_config", "parse_config", "read_config_text"]

T = TypeVar("T")

# ${VAR} or ${VAR:-default}; $$ is a literal dollar.  (sluice.cli_config finds the unset ones with it.)
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_AT = re.compile(r" - at `\$(.*)`$")
_UNKNOWN_FIELD = re.compile(r"unknown field `(.*)`")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Reads, interpolates and validates the file at ``path``; then resolves the host names of its outbound
    URLs (parse_config checks only literal addresses: it stays pure and quick) and checks that the extras
    its features need are installed."""
    config = parse_config(read_config_text(path), os.environ if env is None else env)
    _check_outbound(config, resolve=True)
    check_extras(config)
    return config


def read_config_text(path: str | os.PathLike[str]) -> str:
    """The text of the config file at ``path``; a ConfigError when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {os.fspath(path)!r}: {exc.strerror}") from exc


def parse_config(text: str, env: Mapping[str, str]) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("", f"invalid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", "the config must be a mapping of sections")
    raw = _interpolate_tree(raw, env, "")
    _environment_defaults(raw, env)
    config = _decode(raw)
    _validate(config)
    return config


def _environment_defaults(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fills in the fields the file leaves out, or sets to null, that take their value from the environment
    (ENVIRONMENT_DEFAULTS): ``region: null`` means "not set here", as the docs' examples write it."""
    for path, variable in ENVIRONMENT_DEFAULTS.items():
        value = env.get(variable)
        section, field = path.split(".")
        if not value or (raw.get(section) is not None and not isinstance(raw[section], dict)):
            continue  # not set, or a section that is no mapping (its conversion says so)
        given = dict(raw.get(section) or {})
        if given.get(field) is None:
            given[field] = value
        raw[section] = given


def interpolate(value: str, env: Mapping[str, str], path: str) -> str:
    """Replaces ${VAR} and ${VAR:-default} from ``env``; $$ stands for $."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = env.get(name)
        if found not in (None, ""):
            return found
        if default is not None:
            return default
        raise ConfigError(path, f"environment variable {name!r} is not set and has no default")

    return VARIABLE.sub(substitute, value)


def _interpolate_tree(node: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(node, str):
        return interpolate(node, env, path)
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if not isinstance(key, str):
                hint = " (YAML reads a bare on, off, yes or no as a boolean: quote it)" if isinstance(key, bool) else ""
                raise ConfigError(path, f"keys must be strings, got {key!r}{hint}")
            out[key] = _interpolate_tree(value, env, _join(path, key))
        return out
    if isinstance(node, list):
        return [_interpolate_tree(item, env, f"{path}[{i}]") for i, item in enumerate(node)]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _convert(value: Any, typ: type[T], path: str) -> T:
    """msgspec.convert, with its error rewritten to name the config path."""
    try:
        return msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        sub = match.group(1).lstrip(".") if match else ""
        where = path + ("" if not sub else sub if sub.startswith("[") or not path else "." + sub)
        problem = message[: match.start()] if match else message
        unknown = _UNKNOWN_FIELD.search(problem)
        struct = struct_at(typ, sub) if unknown else None
        if unknown and struct is not None:
            problem += did_you_mean(unknown.group(1), field_names(struct))
        raise ConfigError(where, problem[0].lower() + problem[1:]) from None


def _named_sections(raw: Any, typ: type[T], path: str) -> dict[str, T]:
    """A mapping of name → section, converted one by one so errors name the key."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping of names to sections, got {type(raw).__name__}")
    return {name: _convert(value, typ, f"{path}.{name}") for name, value in raw.items()}


def _decode(raw: dict[str, Any]) -> Config:
    known = set(Config.__struct_fields__)
    for key in raw:
        if key not in known:
            raise ConfigError(key, "unknown section" + did_you_mean(key, known))
    return Config(
        server=_convert(raw.get("server") or {}, ServerConfig, "server"),
        upstream=_convert(raw.get("upstream") or {}, UpstreamConfig, "upstream"),
        observability=_convert(raw.get("observability") or {}, ObservabilityConfig, "observability"),
        passthrough=_convert(raw.get("passthrough") or {}, PassthroughConfig, "passthrough"),
        ratelimit=_convert(raw.get("ratelimit") or {}, RateLimitConfig, "ratelimit"),
        store=_convert(raw.get("store") or {}, StoreConfig, "store"),
        auth=_convert(raw.get("auth") or {}, AuthConfig, "auth"),
        resilience=_convert(raw.get("resilience") or {}, ResilienceConfig, "resilience"),
        security=_convert(raw.get("security") or {}, SecurityConfig, "security"),
        abuse=_convert(raw.get("abuse") or {}, AbuseConfig, "abuse"),
        providers=_named_sections(raw.get("providers"), ProviderConfig, "providers"),
        models=_named_sections(raw.get("models"), ModelConfig, "models"),
    )


def _validate(config: Config) -> None:
    _positive("server.port", config.server.port, maximum=65535, allow_zero=True)
    _positive("server.workers", config.server.workers)
    _positive("server.max_body_bytes", config.server.max_body_bytes)
    _positive("server.max_response_bytes", config.server.max_response_bytes)
    _positive("server.grace_period_s", config.server.grace_period_s, allow_zero=True)
    for field in ("header_read_timeout_s", "body_read_timeout_s", "body_min_rate_bytes_s", "max_connections",
                  "backlog"):
        _positive(f"server.{field}", getattr(config.server, field))
    for field in UpstreamConfig.__struct_fields__:
        _positive(f"upstream.{field}", getattr(config.upstream, field))
    _positive("observability.access_log_queue", config.observability.access_log_queue)
    _ratio("observability.sample_success", config.observability.sample_success)
    level = config.observability.log_level
    if level is not None and level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError("observability.log_level", f"must be debug, info, warning, error or critical, got {level!r}")
    tracing = config.observability.tracing
    if tracing.enabled:
        _check_base_url("observability.tracing.endpoint", tracing.endpoint)
    _ratio("observability.tracing.sample_ratio", tracing.sample_ratio)
    for field in ("queue_size", "batch_size", "flush_interval_s", "timeout_s"):
        _positive(f"observability.tracing.{field}", getattr(tracing, field))
    token = config.observability.health_details_token
    if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
        raise ConfigError("observability.health_details_token",
                          "must be at least 16 printable characters without spaces")
    kinds = provider_kind_names()  # plugins by name: sluice.providers.check_providers loads them
    for name, provider in config.providers.items():
        path = f"providers.{name}"
        if provider.kind not in kinds:
            raise ConfigError(f"{path}.kind", f"unknown provider kind {provider.kind!r} "
                                              f"(known: {', '.join(sorted(kinds))})")
        _check_base_url(f"{path}.base_url", provider.base_url)
        _check_provider_routing(path, provider)
        for i, key in enumerate(provider.api_keys):
            if not key or any(c in key for c in "\r\n"):
                raise ConfigError(f"{path}.api_keys[{i}]", "an API key must be a non-empty single line")
        _check_capabilities(f"{path}.capabilities", provider.capabilities)
    _check_ratelimit(config)
    _check_store(config.store)
    _check_auth(config.auth)
    _check_auth_redis(config)
    _check_abuse(config)
    passthrough = config.passthrough.provider
    if passthrough is not None:
        if passthrough not in config.providers:
            raise ConfigError("passthrough.provider", f"unknown provider {passthrough!r}")
        if config.providers[passthrough].kind != "openai":
            raise ConfigError("passthrough.provider", f"must be an openai-kind provider, {passthrough!r} is "
                                                      f"{config.providers[passthrough].kind}")
    for model_name, model in config.models.items():
        path = f"models.{model_name}"
        if not model.targets:
            raise ConfigError(f"{path}.targets", "a model needs at least one target")
        for i, target in enumerate(model.targets):
            tpath = f"{path}.targets[{i}]"
            if target.provider not in config.providers:
                raise ConfigError(f"{tpath}.provider", f"unknown provider {target.provider!r}")
            if not target.model:
                raise ConfigError(f"{tpath}.model", "the upstream model name is empty")
            _positive(f"{tpath}.weight", target.weight)
            _check_capabilities(f"{tpath}.capabilities", target.capabilities)
            _check_target_routing(tpath, target)
        _check_model_routing(config, model_name, model)
    _check_fallback_cycles(config)
    _check_resilience_routing(config.resilience)
    _check_retries(config)
    _check_outbound(config, resolve=False)


def check_serves_something(config: Config) -> None:
    """A config file that serves nothing is refused: an empty file, or one whose models went astray, would
    start a gateway that answers 404 to everything.  ``sluice serve`` and ``check-config`` run it after loading;
    the admin commands (keys, db, dlq...) do not, as their config may hold a store section alone."""
    if config.models or config.passthrough.provider is not None:
        return
    raise ConfigError("", "no models: add a `models:` section, see examples/quickstart.yaml "
                                "(or a passthrough.provider, for the other OpenAI endpoints alone)")


def _check_outbound(config: Config, *, resolve: bool) -> None:
    allowed = parse_networks("security.allow_private_networks", config.security.allow_private_networks)
    check_outbound_urls(_outbound_urls(config), allowed, resolve=resolve)


def _outbound_urls(config: Config) -> list[tuple[str, str]]:
    """Every (config path, URL) the gateway calls on its own: checked for SSRF by sluice.config.urls."""
    urls = []
    if config.observability.tracing.enabled:
        urls.append(("observability.tracing.endpoint", config.observability.tracing.endpoint))
    for name, provider in config.providers.items():
        urls.append((f"providers.{name}.base_url", provider.base_url))
        urls += [(f"providers.{name}.base_urls[{i}]", url) for i, url in enumerate(provider.base_urls)]
    for i, issuer in enumerate(config.auth.jwt):
        if issuer.jwks_uri is not None:
            urls.append((f"auth.jwt[{i}].jwks_uri", issuer.jwks_uri))
        elif issuer.hs256_secret is None:  # keys are discovered under the issuer
            urls.append((f"auth.jwt[{i}].issuer", issuer.issuer))
    urls += [(f"auth.introspection[{i}].endpoint", e.endpoint) for i, e in enumerate(config.auth.introspection)]
    return urls


# -- routing (docs/routing.md): deployments, strategies, fallbacks, A/B variants, breakers, health checks --


def _check_provider_routing(path: str, provider: ProviderConfig) -> None:
    seen = {provider.base_url}
    for i, url in enumerate(provider.base_urls):
        _check_base_url(f"{path}.base_urls[{i}]", url)
        if url in seen:
            raise ConfigError(f"{path}.base_urls[{i}]", f"{url!r} is listed twice (base_url included)")
        seen.add(url)
    _finite_positive(f"{path}.key_cooldown_s", provider.key_cooldown_s)
    _finite_positive(f"{path}.max_cooldown_s", provider.max_cooldown_s)
    if provider.key_cooldown_s > provider.max_cooldown_s:
        raise ConfigError(f"{path}.key_cooldown_s", f"must not exceed max_cooldown_s ({provider.max_cooldown_s:g})")


def _check_target_routing(path: str, target: TargetConfig) -> None:
    if target.region is not None and not _is_label(target.region):
        raise ConfigError(f"{path}.region", f"must be a name without spaces, got {target.region!r}")
    for i, tag in enumerate(target.tags):
        if not _is_label(tag):
            raise ConfigError(f"{path}.tags[{i}]", f"must be a label without spaces, got {tag!r}")


def _check_model_routing(config: Config, name: str, model: ModelConfig) -> None:
    """Sticky and geo settings, fallbacks and A/B variants of one model."""
    path = f"models.{name}"
    on = model.sticky.on
    header = on[len("header:"):].strip() if on.startswith("header:") else None
    if on not in ("key", "user") and not (header and _HEADER_NAME.fullmatch(header)):
        raise ConfigError(f"{path}.sticky.hash_on", f"must be key, user or header:<name>, got {on!r}")
    if not _HEADER_NAME.fullmatch(model.geo.region_header):
        raise ConfigError(f"{path}.geo.region_header", f"must be a header name, got {model.geo.region_header!r}")
    for region, spill in model.geo.spill.items():
        for i, to in enumerate((region, *spill)):
            if not _is_label(to):
                where = f"{path}.geo.spill" + ("" if i == 0 else f".{region}[{i - 1}]")
                raise ConfigError(where, f"a region must be a name without spaces, got {to!r}")
    if model.strategy.value == "geo" and not any(t.region for t in model.targets):
        raise ConfigError(f"{path}.strategy", "the geo strategy needs targets with a region")
    for i, fallback in enumerate(model.fallbacks):
        if fallback == name:
            raise ConfigError(f"{path}.fallbacks[{i}]", "a model cannot fall back to itself")
        if fallback not in config.models:
            raise ConfigError(f"{path}.fallbacks[{i}]", f"unknown model {fallback!r}")
        if fallback in model.fallbacks[:i]:
            raise ConfigError(f"{path}.fallbacks[{i}]", f"{fallback!r} is listed twice")
    total = 0.0
    names = {"control"}
    for i, variant in enumerate(model.variants):
        vpath = f"{path}.variants[{i}]"
        if not _is_label(variant.name) or variant.name in names:
            raise ConfigError(f"{vpath}.name", f"must be a unique label without spaces, not 'control', "
                                               f"got {variant.name!r}")
        names.add(variant.name)
        if variant.model == name:
            raise ConfigError(f"{vpath}.model", "a variant must be another model")
        if variant.model not in config.models:
            raise ConfigError(f"{vpath}.model", f"unknown model {variant.model!r}")
        if config.models[variant.model].variants:
            raise ConfigError(f"{vpath}.model", f"{variant.model!r} has variants of its own (a split is one level)")
        if not 0 < variant.percent < 100:
            raise ConfigError(f"{vpath}.percent", f"must be between 0 and 100 (both excluded), got {variant.percent}")
        total += variant.percent
    if total >= 100:
        raise ConfigError(f"{path}.variants", f"the percents must sum to less than 100 (control keeps the rest), "
                                              f"got {total:g}")


def _check_fallback_cycles(config: Config) -> None:
    """No chain of fallbacks leads back to where it started (a request would go round forever)."""
    done: set[str] = set()
    for start in config.models:
        trail: list[str] = []
        _walk_fallbacks(config, start, trail, set(), done)


def _walk_fallbacks(config: Config, name: str, trail: list[str], on_trail: set[str], done: set[str]) -> None:
    if name in on_trail:
        cycle = " -> ".join([*trail[trail.index(name):], name])
        raise ConfigError(f"models.{trail[-1]}.fallbacks", f"the fallbacks go round in a cycle: {cycle}")
    if name in done:
        return
    trail.append(name)
    on_trail.add(name)
    for fallback in config.models[name].fallbacks:
        _walk_fallbacks(config, fallback, trail, on_trail, done)
    on_trail.discard(trail.pop())
    done.add(name)


def _check_resilience_routing(resilience: ResilienceConfig) -> None:
    if resilience.region is not None and not _is_label(resilience.region):
        raise ConfigError("resilience.region", f"must be a name without spaces, got {resilience.region!r}")
    breaker = resilience.breaker
    if not 0 < breaker.failure_ratio <= 1:
        raise ConfigError("resilience.breaker.failure_ratio", f"must be more than 0 and at most 1, "
                                                              f"got {breaker.failure_ratio}")
    _positive("resilience.breaker.min_requests", breaker.min_requests)
    _finite_positive("resilience.breaker.window_s", breaker.window_s)
    _positive("resilience.breaker.consecutive_failures", breaker.consecutive_failures, allow_zero=True)
    _finite_positive("resilience.breaker.open_s", breaker.open_s)
    _positive("resilience.breaker.half_open_probes", breaker.half_open_probes)
    checks = resilience.health_check
    _finite_positive("resilience.health_check.interval_s", checks.interval_s, allow_zero=True)
    _finite_positive("resilience.health_check.timeout_s", checks.timeout_s)
    if checks.interval_s and checks.timeout_s > checks.interval_s:
        raise ConfigError("resilience.health_check.timeout_s", f"must not exceed interval_s ({checks.interval_s:g})")


def _check_retries(config: Config) -> None:
    """Retries, their budget and backoff, the deadline, the dead letters (docs/resilience.md)."""
    res = config.resilience
    _positive("resilience.retries", res.retries, maximum=10, allow_zero=True)
    for i, status in enumerate(res.retry_on):
        if not 400 <= status <= 599:
            raise ConfigError(f"resilience.retry_on[{i}]", f"must be an error status (400-599), got {status}")
    _finite_positive("resilience.backoff_base_s", res.backoff_base_s, allow_zero=True)
    _finite_positive("resilience.backoff_max_s", res.backoff_max_s, allow_zero=True)
    if res.backoff_base_s > res.backoff_max_s:
        raise ConfigError("resilience.backoff_base_s", f"must not exceed backoff_max_s ({res.backoff_max_s:g})")
    _finite_positive("resilience.max_retry_after_s", res.max_retry_after_s, allow_zero=True)
    _finite_positive("resilience.retry_budget", res.retry_budget, allow_zero=True)
    _finite_positive("resilience.retry_budget_floor", res.retry_budget_floor, allow_zero=True)
    _finite_positive("resilience.retry_budget_window_s", res.retry_budget_window_s)
    _finite_positive("resilience.timeout_s", res.timeout_s)
    if not _HEADER_NAME.fullmatch(res.timeout_header):
        raise ConfigError("resilience.timeout_header", f"must be a header name, got {res.timeout_header!r}")
    letters = res.dead_letters
    _positive("resilience.dead_letters.max_entries", letters.max_entries)
    _finite_positive("resilience.dead_letters.max_age_s", letters.max_age_s)
    _positive("resilience.dead_letters.max_body_bytes", letters.max_body_bytes, allow_zero=True)
    if letters.enabled and letters.redis and res.redis is None and config.ratelimit.redis is None:
        raise ConfigError("resilience.dead_letters.redis", "a Redis stream needs resilience.redis or ratelimit.redis")
    if res.redis is not None and not res.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("resilience.redis", f"must be a redis://, rediss:// or unix:// URL, got {res.redis!r}")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)


def _is_label(value: str) -> bool:
    return bool(value) and value.isprintable() and not any(c.isspace() for c in value)


def _finite_positive(path: str, value: float, *, allow_zero: bool = False) -> None:
    import math

    if not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value}")
    _positive(path, value, allow_zero=allow_zero)


def _positive(path: str, value: float, *, maximum: float | None = None, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, f"must be {'zero or more' if allow_zero else 'more than zero'}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(path, f"must be at most {maximum}, got {value}")


def _check_abuse(config: Config) -> None:
    """abuse.*: the anomaly stage follows keys (auth on); proof of work is for routes without a credential."""
    abuse = config.abuse
    if abuse.anomaly is not None:
        if not config.auth.enabled:
            raise ConfigError("abuse.anomaly", "follows API keys: it needs auth.enabled: true")
        for field in ("window_s", "baseline_s", "factor", "max_keys"):
            _positive(f"abuse.anomaly.{field}", getattr(abuse.anomaly, field))
        for field in ("warmup_s", "min_requests", "min_tokens"):
            _positive(f"abuse.anomaly.{field}", getattr(abuse.anomaly, field), allow_zero=True)
        if abuse.anomaly.factor <= 1:
            raise ConfigError("abuse.anomaly.factor", f"must be more than 1, got {abuse.anomaly.factor}")
    if abuse.reputation is not None:
        if not abuse.reputation.files:
            raise ConfigError("abuse.reputation.files", "name at least one file")
        _positive("abuse.reputation.refresh_s", abuse.reputation.refresh_s)
    if abuse.pow is not None:
        if config.auth.enabled:
            raise ConfigError("abuse.pow", "is for routes that need no credential: it needs auth.enabled: false")
        for field in ("threshold_rps", "window_s", "ttl_s", "max_solutions"):
            _positive(f"abuse.pow.{field}", getattr(abuse.pow, field))
        _positive("abuse.pow.difficulty", abuse.pow.difficulty, maximum=32)
        if abuse.pow.secret is not None and len(abuse.pow.secret) < 16:
            raise ConfigError("abuse.pow.secret", "must be at least 16 characters")


def _check_store(store: StoreConfig) -> None:
    import math

    if store.postgres_url is None:
        if not store.sqlite_path or "\x00" in store.sqlite_path:
            raise ConfigError("store.sqlite_path", "must be a file path (or set store.postgres_url)")
    else:
        try:
            parts = urlsplit(store.postgres_url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ConfigError("store.postgres_url", f"invalid URL: {exc}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError("store.postgres_url", f"must be a postgresql:// or postgres:// URL, "
                                                    f"got scheme {parts.scheme!r}")
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError("store.postgres_url", "the URL names no host")
    _positive("store.pool_size", store.pool_size)
    _positive("store.timeout_s", store.timeout_s)
    if not math.isfinite(store.timeout_s):
        raise ConfigError("store.timeout_s", f"must be finite, got {store.timeout_s}")


def _check_ratelimit(config: Config) -> None:
    import ipaddress

    limits = config.ratelimit
    if limits.redis is not None and not limits.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("ratelimit.redis", f"must be a redis://, rediss:// or unix:// URL, got {limits.redis!r}")
    _positive("ratelimit.redis_timeout_s", limits.redis_timeout_s)
    _positive("ratelimit.sync_interval_s", limits.sync_interval_s)
    _positive("ratelimit.hybrid_max_subjects", limits.hybrid_max_subjects)
    _positive("ratelimit.quota_max_subjects", limits.quota_max_subjects)
    _positive("ratelimit.default_max_tokens", limits.default_max_tokens)
    if limits.soft_limit is not None:
        _ratio("ratelimit.soft_limit", limits.soft_limit)
    for i, cidr in enumerate(limits.trusted_proxies):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"ratelimit.trusted_proxies[{i}]", f"not an IP network: {cidr!r}") from None
    names: set[str] = set()
    for i, policy in enumerate(limits.policies):
        path = f"ratelimit.policies[{i}]"
        if not policy.name or policy.name in names:
            raise ConfigError(f"{path}.name", f"must be a unique, non-empty name, got {policy.name!r}")
        names.add(policy.name)
        _positive(f"{path}.rate", policy.rate)
        _positive(f"{path}.period_s", policy.period_s)
        if policy.burst is not None:
            _positive(f"{path}.burst", policy.burst)
        if policy.soft_limit is not None:
            _ratio(f"{path}.soft_limit", policy.soft_limit)
        if policy.mode is not None and policy.mode.value != "local" and limits.redis is None:
            raise ConfigError(f"{path}.mode", f"a {policy.mode.value} policy needs ratelimit.redis")
        _check_hybrid(path, policy, limits.sync_interval_s)
        for j, model in enumerate(policy.match.models):
            if model not in config.models:
                raise ConfigError(f"{path}.match.models[{j}]", f"unknown model {model!r}")
    _check_quotas(config, names)


def _check_hybrid(path: str, policy: PolicyConfig, sync_interval_s: float) -> None:
    """A hybrid instance learns refills only at syncs, and Redis keeps no more than the capacity: what
    refills in one interval must stay within half of it, or refills are lost (bench/hybrid_accuracy.py)."""
    if policy.mode is None or policy.mode.value != "hybrid":
        return
    if policy.algorithm.value != "token_bucket":
        # A window forgets within two periods what the instances overspent together, so the overshoot
        # would come back every period (bench/README.md: 1.2-3.8x the limit with 2-8 instances).
        raise ConfigError(f"{path}.algorithm", "a hybrid policy must be a token_bucket (a sliding window cannot "
                          "carry the instances' overshoot as debt)")
    capacity = policy.burst if policy.burst is not None else policy.rate
    refill = policy.rate / policy.period_s * sync_interval_s
    if refill > capacity / 2:
        raise ConfigError(f"{path}.mode", f"a hybrid policy must not refill more than half its capacity "
                          f"({capacity:g}) in one sync interval ({refill:g} in ratelimit.sync_interval_s="
                          f"{sync_interval_s:g}); lower sync_interval_s or raise the burst")


def _check_quotas(config: Config, names: set[str]) -> None:
    """Quotas: names unique among policies and quotas, a finite limit, a subject scope, a real time zone."""
    import math
    import zoneinfo

    limits = config.ratelimit
    try:
        zoneinfo.ZoneInfo(limits.timezone)
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError):
        raise ConfigError("ratelimit.timezone", f"unknown IANA time zone {limits.timezone!r}") from None
    _positive("ratelimit.quota_sync_s", limits.quota_sync_s)
    if not math.isfinite(limits.quota_sync_s):
        raise ConfigError("ratelimit.quota_sync_s", f"must be finite, got {limits.quota_sync_s}")
    if limits.quotas and limits.redis is None and not limits.quota_store:
        raise ConfigError("ratelimit.quota_store", "quotas need a file (or ratelimit.redis)")
    for i, quota in enumerate(limits.quotas):
        path = f"ratelimit.quotas[{i}]"
        if not quota.name or quota.name in names:
            raise ConfigError(f"{path}.name", f"must be a unique, non-empty name (policies and quotas), "
                                              f"got {quota.name!r}")
        names.add(quota.name)
        if quota.scope.value not in ("key", "user", "team"):
            raise ConfigError(f"{path}.scope", f"a quota counts per key, user or team, got {quota.scope.value!r}")
        _positive(f"{path}.limit", quota.limit)
        if not math.isfinite(quota.limit):
            raise ConfigError(f"{path}.limit", f"must be finite, got {quota.limit}")
        for j, model in enumerate(quota.match.models):
            if model not in config.models:
                raise ConfigError(f"{path}.match.models[{j}]", f"unknown model {model!r}")


_ASYMMETRIC_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                              "EdDSA"})
_HMAC_ALGS = {"HS256": 32, "HS384": 48, "HS512": 64}  # the shortest secret each takes (RFC 7518 §3.2), in bytes


def _check_auth(auth: AuthConfig) -> None:
    """JWT issuers: unique, an audience, a safe algorithm allowlist, a way to their keys; introspection endpoints."""
    _check_auth_stage(auth)
    issuers: set[str] = set()
    for i, issuer in enumerate(auth.jwt):
        path = f"auth.jwt[{i}]"
        if not issuer.issuer or issuer.issuer in issuers:
            raise ConfigError(f"{path}.issuer", f"must be a unique, non-empty issuer, got {issuer.issuer!r}")
        issuers.add(issuer.issuer)
        audience = (issuer.audience,) if isinstance(issuer.audience, str) else issuer.audience
        if not audience or not all(audience):
            raise ConfigError(f"{path}.audience", "name the audience (or audiences) tokens must be issued for")
        _check_algorithms(path, issuer)
        if issuer.jwks_uri is not None:
            _check_base_url(f"{path}.jwks_uri", issuer.jwks_uri)
        elif issuer.hs256_secret is None:
            _check_base_url(f"{path}.issuer", issuer.issuer)  # keys are discovered under it
        _positive(f"{path}.leeway_s", issuer.leeway_s, maximum=300, allow_zero=True)
        for field in ("jwks_ttl_s", "jwks_min_refresh_s", "timeout_s"):
            _positive(f"{path}.{field}", getattr(issuer, field))
        if issuer.jwks_min_refresh_s > issuer.jwks_ttl_s:
            raise ConfigError(f"{path}.jwks_min_refresh_s", f"must not exceed jwks_ttl_s ({issuer.jwks_ttl_s:g})")
        _check_claims(f"{path}.claims", issuer.claims)
    for i, endpoint in enumerate(auth.introspection):
        path = f"auth.introspection[{i}]"
        _check_base_url(f"{path}.endpoint", endpoint.endpoint)
        for field in ("client_id", "client_secret"):
            if not getattr(endpoint, field):
                raise ConfigError(f"{path}.{field}", "must not be empty")
        _positive(f"{path}.max_ttl_s", endpoint.max_ttl_s)
        _positive(f"{path}.inactive_ttl_s", endpoint.inactive_ttl_s, allow_zero=True)
        _positive(f"{path}.timeout_s", endpoint.timeout_s)
        if endpoint.token_type_hint is not None and not endpoint.token_type_hint:
            raise ConfigError(f"{path}.token_type_hint", "must not be empty (leave it out to send none)")
        _check_claims(f"{path}.claims", endpoint.claims)


def _check_auth_stage(auth: AuthConfig) -> None:
    """Roles and their permissions, static keys, IP rules and the stage's numbers."""
    import ipaddress
    import math

    _positive("auth.revocation_poll_s", auth.revocation_poll_s, maximum=60)
    _positive("auth.signature_skew_s", auth.signature_skew_s, maximum=86400)
    _positive("auth.key_cache_size", auth.key_cache_size)
    _positive("auth.failure_limit", auth.failure_limit, maximum=1_000_000, allow_zero=True)
    _positive("auth.failure_period_s", auth.failure_period_s, maximum=86400)
    for field in ("ip_allow", "ip_deny"):
        for i, cidr in enumerate(getattr(auth, field)):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"auth.{field}[{i}]", f"not an IP network (CIDR): {cidr!r}") from None
    for name, permissions in auth.roles.items():
        if not name or not name.isprintable() or " " in name:
            raise ConfigError(f"auth.roles.{name}", "a role name must be printable, without spaces")
        for i, permission in enumerate(permissions):
            problem = check_permission(permission)
            if problem is not None:
                raise ConfigError(f"auth.roles.{name}[{i}]", problem)
    roles = BUILTIN_ROLES.keys() | auth.roles.keys()
    names: set[str] = set()
    secrets: set[str] = set()
    for i, static in enumerate(auth.static_keys):
        path = f"auth.static_keys[{i}]"
        if not static.name or static.name in names or not static.name.isprintable() or " " in static.name:
            raise ConfigError(f"{path}.name", f"must be a unique name without spaces, got {static.name!r}")
        names.add(static.name)
        key = static.key
        if len(key) < 20 or not key.isprintable() or any(c.isspace() for c in key):
            raise ConfigError(f"{path}.key", "must be at least 20 printable characters without spaces "
                                             "(give it as ${ENV_VAR}, e.g. 32 random bytes in base64url)")
        if key in secrets:
            raise ConfigError(f"{path}.key", "the same secret as another static key")
        secrets.add(key)
        if not static.roles:
            raise ConfigError(f"{path}.roles", "name at least one role (deny by default), e.g. [user] or [admin]")
        for j, role in enumerate(static.roles):
            if role not in roles:
                raise ConfigError(f"{path}.roles[{j}]", f"unknown role {role!r} (known: {', '.join(sorted(roles))}; "
                                                        "add it under auth.roles)")
        for j, glob in enumerate(static.models):
            if not glob:
                raise ConfigError(f"{path}.models[{j}]", "a model glob must not be empty")
    for field in ("revocation_poll_s", "signature_skew_s"):
        if not math.isfinite(getattr(auth, field)):
            raise ConfigError(f"auth.{field}", f"must be a finite number, got {getattr(auth, field)}")


def _check_auth_redis(config: Config) -> None:
    """auth.redis (change notices, shared replay cache) and the settings that go with it."""
    import math

    auth = config.auth
    if auth.redis is not None and not auth.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("auth.redis", f"must be a redis://, rediss:// or unix:// URL, got {auth.redis!r}")
    prefix = auth.redis_prefix
    if not prefix or not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise ConfigError("auth.redis_prefix", f"must be printable, without spaces, got {prefix!r}")
    if not math.isfinite(auth.redis_timeout_s):
        raise ConfigError("auth.redis_timeout_s", f"must be a finite number, got {auth.redis_timeout_s}")
    _positive("auth.redis_timeout_s", auth.redis_timeout_s, maximum=10)
    if auth.signature_fail_closed and auth.redis is None and config.ratelimit.redis is None:
        raise ConfigError("auth.signature_fail_closed", "needs a Redis to fail over from: set auth.redis "
                                                        "(or ratelimit.redis)")


def _check_algorithms(path: str, issuer: JwtIssuerConfig) -> None:
    if not issuer.algorithms:
        raise ConfigError(f"{path}.algorithms", "list at least one algorithm")
    hmac = [alg for alg in issuer.algorithms if alg in _HMAC_ALGS]
    for j, alg in enumerate(issuer.algorithms):
        if alg.lower() == "none":
            raise ConfigError(f"{path}.algorithms[{j}]", "unsigned tokens (alg 'none') are never accepted")
        if alg not in _ASYMMETRIC_ALGS and alg not in _HMAC_ALGS:
            known = ", ".join(sorted(_ASYMMETRIC_ALGS | _HMAC_ALGS.keys()))
            raise ConfigError(f"{path}.algorithms[{j}]", f"unknown algorithm {alg!r} (known: {known})")
    secret = issuer.hs256_secret
    if hmac and secret is None:
        raise ConfigError(f"{path}.algorithms", f"{hmac[0]} needs hs256_secret")
    if secret is not None:
        if len(hmac) != len(issuer.algorithms):
            raise ConfigError(f"{path}.algorithms", "with hs256_secret, list only HS256, HS384 or HS512 (an issuer "
                                                    "of asymmetric keys goes in its own entry: no key-type confusion)")
        need = max(_HMAC_ALGS[alg] for alg in hmac)
        if len(secret.encode()) < need:
            raise ConfigError(f"{path}.hs256_secret", f"must be at least {need} bytes for {', '.join(hmac)}")


def _check_claims(path: str, claims: ClaimsConfig) -> None:
    for field in ("user", "team", "roles"):
        claim = getattr(claims, field)
        if claim is not None and (not claim or "" in claim.split(".")):
            raise ConfigError(f"{path}.{field}", f"must be a claim name or a dotted path like 'org.team', "
                                                 f"got {claim!r}")


def _check_capabilities(path: str, capabilities: tuple[str, ...] | None) -> None:
    for i, capability in enumerate(capabilities or ()):
        if capability not in CAPABILITIES:
            raise ConfigError(f"{path}[{i}]", f"unknown capability {capability!r} "
                                              f"(known: {', '.join(sorted(CAPABILITIES))})")


def _ratio(path: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(path, f"must be between 0 and 1, got {value}")


def _check_base_url(path: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(path, f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(path, f"the URL must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ConfigError(path, f"the URL has no host: {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(path, f"the URL must not have a query or fragment: {url!r}")
    if port == 0:
        raise ConfigError(path, f"the URL's port must not be 0: {url!r}")
