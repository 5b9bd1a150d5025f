"""Config of auth.jwt and auth.introspection: defaults, ${ENV} secrets, an error naming the path per mistake."""

from __future__ import annotations

import pytest

from sluice.config import parse_config
from sluice.errors import ConfigError

SECRET = "x" * 32

ISSUER = """
auth:
  jwt:
    - issuer: https://idp.example.com/realms/main
      audience: sluice
"""


def parse(text: str, **env: str):  # type: ignore[no-untyped-def]
    return parse_config(text, env)


def test_no_auth_section() -> None:
    auth = parse("").auth
    assert auth.jwt == () and auth.introspection == ()


def test_issuer_defaults() -> None:
    [issuer] = parse(ISSUER).auth.jwt
    assert issuer.algorithms == ("RS256", "ES256", "EdDSA")
    assert (issuer.leeway_s, issuer.jwks_ttl_s, issuer.jwks_min_refresh_s) == (30, 3600, 30)
    assert issuer.jwks_uri is None and issuer.hs256_secret is None
    assert (issuer.claims.user, issuer.claims.team, issuer.claims.roles) == ("sub", None, None)


def test_full_issuer_and_introspection() -> None:
    config = parse("""
auth:
  jwt:
    - issuer: https://a.example
      audience: [sluice, api]
      algorithms: [ES256]
      jwks_uri: https://a.example/keys
      claims: {user: email, team: org.team, roles: realm_access.roles}
    - issuer: internal-service
      audience: sluice
      algorithms: [HS256]
      hs256_secret: ${JWT_SECRET}
  introspection:
    - endpoint: https://idp.example/oauth2/introspect
      client_id: gateway
      client_secret: ${INTROSPECT_SECRET:-fallback}
      token_type_hint: access_token
      claims: {user: username}
""", JWT_SECRET=SECRET)
    first, second = config.auth.jwt
    assert first.audience == ("sluice", "api") and first.claims.roles == "realm_access.roles"
    assert second.audience == "sluice" and second.hs256_secret == SECRET
    [endpoint] = config.auth.introspection
    assert endpoint.client_secret == "fallback"
    assert (endpoint.max_ttl_s, endpoint.inactive_ttl_s) == (300, 10)


@pytest.mark.parametrize(("fragment", "path", "problem"), [
    ("      algorithms: [none]", "auth.jwt[0].algorithms[0]", "never accepted"),
    ("      algorithms: [RS256, None]", "auth.jwt[0].algorithms[1]", "never accepted"),
    ("      algorithms: [RS1]", "auth.jwt[0].algorithms[0]", "unknown algorithm"),
    ("      algorithms: []", "auth.jwt[0].algorithms", "at least one"),
    ("      algorithms: [HS256]", "auth.jwt[0].algorithms", "needs hs256_secret"),
    (f"      algorithms: [HS256, RS256]\n      hs256_secret: {SECRET}", "auth.jwt[0].algorithms", "confusion"),
    (f"      hs256_secret: {SECRET}", "auth.jwt[0].algorithms", "only HS256"),
    ("      algorithms: [HS256]\n      hs256_secret: short", "auth.jwt[0].hs256_secret", "at least 32 bytes"),
    (f"      algorithms: [HS512]\n      hs256_secret: {SECRET}", "auth.jwt[0].hs256_secret", "at least 64 bytes"),
    ("      jwks_uri: ftp://x/keys", "auth.jwt[0].jwks_uri", "http"),
    ("      leeway_s: -1", "auth.jwt[0].leeway_s", "zero or more"),
    ("      leeway_s: 3600", "auth.jwt[0].leeway_s", "at most 300"),
    ("      jwks_min_refresh_s: 0", "auth.jwt[0].jwks_min_refresh_s", "more than zero"),
    ("      jwks_ttl_s: 10", "auth.jwt[0].jwks_min_refresh_s", "must not exceed"),
    ("      claims: {user: ''}", "auth.jwt[0].claims.user", "dotted path"),
    ("      claims: {roles: 'realm..roles'}", "auth.jwt[0].claims.roles", "dotted path"),
    ("      claims: {group: x}", "auth.jwt[0].claims", "unknown field"),
    ("      colour: blue", "auth.jwt[0]", "unknown field"),
])
def test_issuer_mistakes_name_the_path(fragment: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(ISSUER + fragment + "\n")
    assert info.value.path == path
    assert problem in info.value.problem


@pytest.mark.parametrize(("text", "path", "problem"), [
    ("auth:\n  jwt:\n    - {audience: a}", "auth.jwt[0]", "issuer"),
    ("auth:\n  jwt:\n    - {issuer: https://a.example}", "auth.jwt[0]", "audience"),
    ("auth:\n  jwt:\n    - {issuer: https://a.example, audience: []}", "auth.jwt[0].audience", "audience"),
    ("auth:\n  jwt:\n    - {issuer: https://a.example, audience: ''}", "auth.jwt[0].audience", "audience"),
    ("auth:\n  jwt:\n    - {issuer: a, audience: a}\n    - {issuer: a, audience: b}", "auth.jwt[0].issuer", "http"),
    ("auth:\n  jwt:\n    - {issuer: https://a, audience: a}\n    - {issuer: https://a, audience: b}",
     "auth.jwt[1].issuer", "unique"),
    ("auth:\n  jwt:\n    - {issuer: not-a-url, audience: a}", "auth.jwt[0].issuer", "http"),
    ("auth:\n  introspection:\n    - {endpoint: x, client_id: a, client_secret: b}",
     "auth.introspection[0].endpoint", "http"),
    ("auth:\n  introspection:\n    - {endpoint: 'https://i', client_id: '', client_secret: b}",
     "auth.introspection[0].client_id", "empty"),
    ("auth:\n  introspection:\n    - {endpoint: 'https://i', client_id: a}", "auth.introspection[0]", "client_secret"),
    ("auth:\n  introspection:\n    - {endpoint: 'https://i', client_id: a, client_secret: b, max_ttl_s: 0}",
     "auth.introspection[0].max_ttl_s", "more than zero"),
    ("auth:\n  introspection:\n    - {endpoint: 'https://i', client_id: a, client_secret: b, token_type_hint: ''}",
     "auth.introspection[0].token_type_hint", "empty"),
    ("auth: {keys: []}", "auth", "unknown field"),
])
def test_auth_mistakes_name_the_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.path == path
    assert problem in info.value.problem


def test_missing_secret_variable_names_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse(ISSUER + "      algorithms: [HS256]\n      hs256_secret: ${JWT_SECRET}\n")
    assert info.value.path == "auth.jwt[0].hs256_secret"


def test_hs_issuer_needs_no_url() -> None:
    [issuer] = parse(f"auth:\n  jwt:\n    - {{issuer: svc, audience: a, algorithms: [HS256], hs256_secret: {SECRET}}}"
                     ).auth.jwt
    assert issuer.issuer == "svc"
