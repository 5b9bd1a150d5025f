"""SSRF (issue 15): the gateway's own outbound URLs are checked at config load, and a request can never choose
where the gateway sends it.

Configured URLs (providers' base URLs, OIDC issuers and JWKS, introspection endpoints, the OTLP exporter)
that are or resolve to a non-public address are refused with a ConfigError naming the field unless
security.allow_private_networks holds the address (loopback by default: the quickstart's mock); see
sluice.config.urls and docs/security.md.  Live: absolute-form targets, Host and X-Forwarded-Host headers,
``//host`` and ``@host`` paths all reach the configured upstream, with its own Host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.config import load_config, parse_config
from sluice.errors import ConfigError
from tests.conftest import Proc
from tests.security.capture import (
    CHAT,
    Capture,
    capture,  # noqa: F401  (fixture)
    exchange,
    gateway,  # noqa: F401  (fixture)
    request,
    statuses,
)

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def provider(url: str, security: str = "") -> str:
    return f"""
{security}
providers: {{p: {{kind: openai, base_url: "{url}"}}}}
models: {{m: {{targets: [{{provider: p, model: m}}]}}}}
"""


REFUSED = [
    ("http://169.254.169.254/latest", "link-local"),  # AWS, GCP, Azure metadata
    ("http://[fd00:ec2::254]", "private"),  # AWS metadata over IPv6 (unique-local)
    ("http://[::ffff:169.254.169.254]", "link-local"),  # the same, IPv4-mapped
    ("http://[fe80::1]:8080", "link-local"),
    ("http://10.0.0.1:8000", "private"),
    ("http://172.16.5.4", "private"),
    ("http://192.168.1.1", "private"),
    ("http://100.64.0.1", "private"),  # carrier-grade NAT
    ("http://0.0.0.0:9000", "unspecified"),
    ("http://[::]:9000", "unspecified"),
    ("http://224.0.0.1", "multicast"),
]


@pytest.mark.parametrize(("url", "kind"), REFUSED)
def test_non_public_provider_urls_are_refused(url: str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(provider(url), {})
    assert info.value.path == "providers.p.base_url"
    assert kind in info.value.problem and "security.allow_private_networks" in info.value.problem


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000", "http://127.3.4.5", "http://[::1]:9000",
                                 "http://localhost:9000", "https://8.8.8.8", "https://api.openai.com"])
def test_loopback_and_public_urls_load_by_default(url: str) -> None:
    assert parse_config(provider(url), {}).providers["p"].base_url == url


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://10.0.0.1:8000", "[10.0.0.0/8]"),
    ("http://[fd00::5]", "['fd00::/8']"),
    ("http://169.254.169.254", "[0.0.0.0/0]"),  # everything: the operator's explicit choice
])
def test_allowed_networks_let_their_addresses_through(url: str, allowed: str) -> None:
    config = parse_config(provider(url, f"security: {{allow_private_networks: {allowed}}}"), {})
    assert config.providers["p"].base_url == url


def test_an_empty_allow_list_refuses_loopback_too() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        parse_config(provider("http://127.0.0.1:9000", "security: {allow_private_networks: []}"), {})


def test_a_bad_network_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(provider("http://127.0.0.1", "security: {allow_private_networks: [10.0.0.0/33]}"), {})
    assert info.value.path == "security.allow_private_networks[0]"


@pytest.mark.parametrize(("text", "path"), [
    (provider("https://8.8.8.8").replace('base_url: "https://8.8.8.8"',
                                          'base_url: "https://8.8.8.8", base_urls: ["http://10.1.1.1"]'),
     "providers.p.base_urls[0]"),
    ("auth: {jwt: [{issuer: 'http://169.254.169.254', audience: a}]}", "auth.jwt[0].issuer"),
    ("auth: {jwt: [{issuer: 'https://idp.example', audience: a, jwks_uri: 'http://10.0.0.9/keys'}]}",
     "auth.jwt[0].jwks_uri"),
    ("auth: {introspection: [{endpoint: 'http://192.168.0.2/introspect', client_id: c, client_secret: s}]}",
     "auth.introspection[0].endpoint"),
    ("observability: {tracing: {enabled: true, endpoint: 'http://169.254.170.2/v1/traces'}}",
     "observability.tracing.endpoint"),
])
def test_every_outbound_url_is_checked(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert info.value.path == path


def test_an_hs256_issuer_fetches_nothing_and_is_not_checked() -> None:
    text = "auth: {jwt: [{issuer: 'http://10.0.0.1', audience: a, algorithms: [HS256], hs256_secret: '%s'}]}"
    assert parse_config(text % ("s" * 32), {}).auth.jwt[0].issuer == "http://10.0.0.1"


@pytest.mark.parametrize("host", ["2852039166", "0xa9.0xfe.0xa9.0xfe", "169.254.43518"])
def test_names_that_resolve_to_the_metadata_address_are_refused_at_load(tmp_path: Path, host: str) -> None:
    # Spellings of 169.254.169.254 that are not literal addresses to Python but are to the resolver.
    path = tmp_path / "sluice.yaml"
    path.write_text(provider(f"http://{host}/"))
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.path == "providers.p.base_url" and "169.254.169.254" in info.value.problem


def test_a_name_that_does_not_resolve_loads(tmp_path: Path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(provider("https://upstream.invalid"))  # RFC 6761: never resolves; fails at connect instead
    assert load_config(path, env={}).providers["p"].base_url == "https://upstream.invalid"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_examples_load_with_the_default(example: Path) -> None:
    load_config(example, env={"SLUICE_ADMIN_KEY": "sk-example-admin-0123456789abcdef"})


# -- a request cannot choose the upstream --


@pytest.mark.integration
@pytest.mark.parametrize(("method", "target", "headers"), [
    ("POST", b"http://evil.example/v1/chat/completions", b""),  # absolute form
    ("POST", b"http://evil.example:80/v1/chat/completions", b"x-forwarded-host: evil.example\r\n"),
    ("POST", b"/v1/chat/completions", b"x-forwarded-host: evil.example\r\nforwarded: host=evil.example\r\n"),
    ("GET", b"http://evil.example/v1/files", b""),
    ("GET", b"/v1/files/@evil.example/x", b""),
    ("GET", b"/v1/files/http:%2f%2fevil.example%2fx", b""),
])
def test_a_request_cannot_choose_the_upstream(gateway: Proc, capture: Capture, method: str,  # noqa: F811
                                              target: bytes, headers: bytes) -> None:
    before = len(capture.heads)
    body = CHAT if method == "POST" else b""
    received = exchange(gateway, request(method, target, headers, body, host=b"evil.example"))
    assert statuses(received)[0] < 500, received[:500]
    own = capture.url.removeprefix("http://").encode()
    for head, host, path in zip(capture.heads[before:], capture.hosts()[before:], capture.targets()[before:],
                                strict=True):
        assert host == own, head  # the configured upstream, under its own name
        assert path.startswith(b"/v1/"), head  # origin form: a path on that upstream, never a URL of its own
        assert b"evil.example" not in head.split(b"\r\n", 1)[1].lower(), head  # no header carries the caller's host
