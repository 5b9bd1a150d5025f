"""JwtVerifier against a local OIDC issuer made here: discovery document, JWKS of keys generated at test time.

The issuer is an HTTP server on 127.0.0.1:0 in the test's loop (tests/integration/_auth_http.py) that
counts its JWKS fetches; the verifier fetches through the gateway's own UpstreamClient.  Time is a
settable clock, so expiry, leeway and the refetch rate limit are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from sluice.auth import AuthFailure, Identity
from sluice.auth.jwt import JwtVerifier, looks_like_jwt
from sluice.config import ClaimsConfig, JwtIssuerConfig
from sluice.upstream import UpstreamClient
from tests.conftest import async_wait_until, free_port
from tests.integration._auth_http import Clock, LocalHttp, Request, async_test

AUDIENCE = "sluice-gateway"
SECRET = "a-test-secret-of-at-least-32-bytes!!"


@functools.cache
def private_key(alg: str, name: str = "") -> Any:
    """One key per (algorithm, name), generated once per run."""
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(alg: str, kid: str | None, name: str = "", *, declare_alg: bool = True) -> dict[str, Any]:
    public = private_key(alg, name).public_key()
    maker: Any = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[alg]
    jwk: dict[str, Any] = maker.to_jwk(public, as_dict=True)
    jwk["use"] = "sig"
    if kid is not None:
        jwk["kid"] = kid
    if declare_alg:
        jwk["alg"] = alg
    return jwk


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Issuer:
    """The local OIDC issuer: its keys can change during a test, and it can go down."""

    jwks: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    server: LocalHttp | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def jwks_fetches(self) -> int:
        assert self.server is not None
        return self.server.hits["/jwks"]

    async def handle(self, request: Request) -> tuple[int, Any]:
        if self.delay:
            await asyncio.sleep(self.delay)  # pacing: a slow issuer
        if self.status != 200:
            return self.status, {"error": "down"}
        if request.path == "/.well-known/openid-configuration":
            return 200, {"issuer": self.url, "jwks_uri": self.url + "/jwks"}
        if request.path == "/jwks":
            return 200, {"keys": self.jwks}
        return 404, {}

    def token(self, alg: str = "RS256", kid: str | None = "rsa-1", name: str = "", **claims: Any) -> str:
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": "user-1", "exp": int(time.time()) + 600, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(payload, private_key(alg, name), algorithm=alg, headers=headers)


@dataclass
class Env:
    issuer: Issuer
    verifier: JwtVerifier
    clock: Clock
    client: UpstreamClient

    async def reason(self, token: str) -> str:
        with pytest.raises(AuthFailure) as info:
            await self.verifier.verify(token)
        assert token not in str(info.value) and token[-20:] not in str(info.value), "the message echoes the token"
        return info.value.reason


@asynccontextmanager
async def oidc(keys: list[dict[str, Any]] | None = None, config: Callable[[str], JwtIssuerConfig] | None = None,
               **verifier_kw: Any) -> AsyncIterator[Env]:
    issuer = Issuer(jwks=keys if keys is not None else [public_jwk("RS256", "rsa-1"), public_jwk("ES256", "ec-1"),
                                                        public_jwk("EdDSA", "ed-1")])
    async with LocalHttp(issuer.handle) as server:
        issuer.server = server
        client = UpstreamClient(connect_timeout=1.0, read_timeout=2.0, total_timeout=3.0)
        clock = Clock(time.time())
        made = config(server.url) if config else JwtIssuerConfig(issuer=server.url, audience=AUDIENCE)
        verifier = JwtVerifier([made], lambda: client, clock=clock, **verifier_kw)
        try:
            yield Env(issuer, verifier, clock, client)
        finally:
            await client.close()


def mapped(url: str, **kw: Any) -> JwtIssuerConfig:
    claims = ClaimsConfig(user="sub", team="org.team", roles="realm_access.roles")
    return JwtIssuerConfig(issuer=url, audience=("other", AUDIENCE), claims=claims, **kw)


# -- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1")])
@async_test
async def test_valid_token_of_each_algorithm_with_claims_mapped(alg: str, kid: str) -> None:
    async with oidc(config=mapped) as env:
        token = env.issuer.token(alg, kid, sub="alice", org={"team": "ml"},
                                 realm_access={"roles": ["admin", "reader"]}, aud=["x", AUDIENCE])
        identity = await env.verifier.verify(token)
        assert isinstance(identity, Identity)
        assert (identity.kind, identity.subject, identity.user, identity.team) == ("jwt", "alice", "alice", "ml")
        assert identity.roles == ("admin", "reader")
        assert identity.issuer == env.issuer.url
        assert identity.expires_at == identity.claims["exp"]
        assert env.issuer.jwks_fetches == 1


@async_test
async def test_space_separated_roles_and_claim_names_with_dots() -> None:
    def config(url: str) -> JwtIssuerConfig:
        claims = ClaimsConfig(user="email", team="https://example.com/team", roles="scope")
        return JwtIssuerConfig(issuer=url, audience=AUDIENCE, claims=claims)

    async with oidc(config=config) as env:
        token = env.issuer.token(email="bob@example.com", scope="chat  embed admin",
                                 **{"https://example.com/team": "search"})
        identity = await env.verifier.verify(token)
        assert (identity.user, identity.team) == ("bob@example.com", "search")
        assert identity.roles == ("chat", "embed", "admin")
        # Without the team and roles claims: none; without the user claim: refused.
        plain = await env.verifier.verify(env.issuer.token(email="carol@example.com"))
        assert (plain.team, plain.roles) == (None, ())
        assert await env.reason(env.issuer.token()) == "malformed"


@async_test
async def test_token_without_kid_matches_a_key_without_kid() -> None:
    async with oidc(keys=[public_jwk("ES256", None, declare_alg=False)]) as env:
        assert (await env.verifier.verify(env.issuer.token("ES256", kid=None))).user == "user-1"


@async_test
async def test_hs256_with_a_configured_secret() -> None:
    def config(url: str) -> JwtIssuerConfig:
        return JwtIssuerConfig(issuer=url, audience=AUDIENCE, algorithms=("HS256",), hs256_secret=SECRET)

    async with oidc(config=config) as env:
        claims = {"iss": env.issuer.url, "aud": AUDIENCE, "sub": "svc", "exp": int(time.time()) + 60}
        identity = await env.verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))
        assert identity.user == "svc"
        wrong = jwt.encode(claims, "another-secret-also-32-bytes-long!!", algorithm="HS256")
        assert await env.reason(wrong) == "bad_signature"
        assert await env.reason(env.issuer.token("RS256")) == "wrong_algorithm"  # an HS issuer takes no RS256
        assert env.issuer.jwks_fetches == 0  # no keys fetched for a shared secret


# -- refused --------------------------------------------------------------------------------


def forged(header: dict[str, Any], payload: Any, signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def case_alg_none(issuer: Issuer) -> str:
    return forged({"alg": "none", "typ": "JWT"}, claims_of(issuer.token()))


def case_hs256_with_rsa_public_key(issuer: Issuer) -> str:
    """The classic confusion: HMAC keyed with the issuer's RSA public key, hoping it is used as the secret."""
    pem = private_key("RS256").public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    unsigned = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims_of(issuer.token())).encode())
    return unsigned + "." + b64(hmac.new(pem, unsigned.encode(), hashlib.sha256).digest())


def case_tampered_payload(issuer: Issuer) -> str:
    head, _, sig = issuer.token().split(".")
    payload = claims_of(issuer.token()) | {"sub": "admin"}
    return f"{head}.{b64(json.dumps(payload).encode())}.{sig}"


def case_bad_signature(issuer: Issuer) -> str:
    return issuer.token("RS256", "rsa-1", name="impostor")  # another key under a known kid


def case_missing_exp(issuer: Issuer) -> str:
    return issuer.token(exp=None)


CASES: list[tuple[str, Callable[[Issuer], str], str]] = [
    ("not three segments", lambda i: "abc.def", "malformed"),
    ("api key", lambda i: "sk-live-1234567890", "malformed"),
    ("not base64 json", lambda i: "eyJub3Q.anNvbg.c2ln", "malformed"),
    ("payload not an object", lambda i: forged({"alg": "RS256"}, [1, 2]), "malformed"),
    ("no exp", case_missing_exp, "malformed"),
    ("exp not a number", lambda i: i.token(exp="tomorrow"), "malformed"),
    ("expired", lambda i: i.token(exp=int(time.time()) - 3600), "expired"),
    ("nbf in the future", lambda i: i.token(nbf=int(time.time()) + 3600), "not_yet_valid"),
    ("wrong iss", lambda i: i.token(iss="https://evil.example"), "wrong_issuer"),
    ("no iss", lambda i: i.token(iss=None), "wrong_issuer"),
    ("wrong aud", lambda i: i.token(aud="someone-else"), "wrong_audience"),
    ("no aud", lambda i: i.token(aud=None), "wrong_audience"),
    ("alg none", case_alg_none, "wrong_algorithm"),
    ("hs256 with the rsa public key", case_hs256_with_rsa_public_key, "wrong_algorithm"),
    ("tampered payload", case_tampered_payload, "bad_signature"),
    ("bad signature", case_bad_signature, "bad_signature"),
    ("unknown kid", lambda i: i.token("RS256", "rsa-unknown"), "unknown_key"),
    ("kid of a key of another type", lambda i: i.token("ES256", "rsa-1"), "wrong_algorithm"),
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in CASES], ids=[name for name, _, _ in CASES])
@async_test
async def test_rejection_reasons(make: Callable[[Issuer], str], reason: str) -> None:
    async with oidc() as env:
        assert await env.reason(make(env.issuer)) == reason
        assert env.verifier.cached == 0


@async_test
async def test_algorithm_outside_the_allowlist() -> None:
    async with oidc(config=lambda url: JwtIssuerConfig(issuer=url, audience=AUDIENCE, algorithms=("RS256",))) as env:
        assert await env.reason(env.issuer.token("ES256", "ec-1")) == "wrong_algorithm"
        assert await env.reason(env.issuer.token("EdDSA", "ed-1")) == "wrong_algorithm"
        assert (await env.verifier.verify(env.issuer.token("RS256", "rsa-1"))).user == "user-1"


@async_test
async def test_leeway_is_honoured() -> None:
    async with oidc(config=lambda url: JwtIssuerConfig(issuer=url, audience=AUDIENCE, leeway_s=30)) as env:
        now = int(env.clock.now)
        assert (await env.verifier.verify(env.issuer.token(exp=now - 10))).user == "user-1"
        assert (await env.verifier.verify(env.issuer.token(nbf=now + 10))).user == "user-1"
        assert await env.reason(env.issuer.token(exp=now - 31)) == "expired"
        assert await env.reason(env.issuer.token(nbf=now + 31)) == "not_yet_valid"


# -- keys: rotation, rate limit, issuer down --------------------------------------------------


@async_test
async def test_key_rotation_is_followed_without_restart() -> None:
    async with oidc(keys=[public_jwk("RS256", "rsa-1")]) as env:
        old = env.issuer.token("RS256", "rsa-1")
        await env.verifier.verify(old)
        assert env.issuer.jwks_fetches == 1
        # A new key appears: the first token signed with it costs one refetch, then it is known.
        env.issuer.jwks = [public_jwk("RS256", "rsa-1"), public_jwk("RS256", "rsa-2", "next")]
        env.clock.now += 31  # past jwks_min_refresh_s since the first fetch
        new = env.issuer.token("RS256", "rsa-2", name="next")
        assert (await env.verifier.verify(new)).user == "user-1"
        assert (await env.verifier.verify(env.issuer.token("RS256", "rsa-2", name="next", sub="u2"))).user == "u2"
        assert env.issuer.jwks_fetches == 2
        # The old key is withdrawn: once a refetch shows it, its tokens stop validating, cached ones too.
        env.issuer.jwks = [public_jwk("RS256", "rsa-2", "next")]
        assert (await env.verifier.verify(old)).user == "user-1"  # cached; nothing fetched yet
        env.clock.now += 31
        assert await env.reason(env.issuer.token("RS256", "rsa-3")) == "unknown_key"  # triggers the refetch
        assert env.issuer.jwks_fetches == 3
        assert await env.reason(old) == "unknown_key"
        assert (await env.verifier.verify(new)).user == "user-1"


@async_test
async def test_keys_are_refetched_after_their_ttl() -> None:
    config = functools.partial(JwtIssuerConfig, audience=AUDIENCE, jwks_ttl_s=600)
    async with oidc(config=lambda url: config(issuer=url)) as env:
        await env.verifier.verify(env.issuer.token())
        env.clock.now += 300
        await env.verifier.verify(env.issuer.token(sub="b"))
        assert env.issuer.jwks_fetches == 1
        env.clock.now += 301
        await env.verifier.verify(env.issuer.token(sub="c"))
        assert env.issuer.jwks_fetches == 2


@async_test
async def test_unknown_kid_flood_is_rate_limited() -> None:
    async with oidc() as env:
        await env.verifier.verify(env.issuer.token())
        assert env.issuer.jwks_fetches == 1
        for i in range(50):  # within jwks_min_refresh_s of the first fetch: no refetch at all
            assert await env.reason(env.issuer.token(kid=f"made-up-{i}")) == "unknown_key"
        assert env.issuer.jwks_fetches == 1
        for second in range(1, 4):  # then at most one per interval, however many arrive
            env.clock.now += 30
            reasons = await asyncio.gather(*(env.reason(env.issuer.token(kid=f"flood-{second}-{i}"))
                                             for i in range(50)))
            assert set(reasons) == {"unknown_key"}
            assert env.issuer.jwks_fetches == 1 + second


@async_test
async def test_concurrent_misses_share_one_fetch() -> None:
    async with oidc() as env:
        env.issuer.delay = 0.1
        tokens = [env.issuer.token(alg, kid, sub=f"u{i}") for i in range(10)
                  for alg, kid in (("RS256", "rsa-1"), ("ES256", "ec-1"), ("EdDSA", "ed-1"))]
        identities = await asyncio.gather(*(env.verifier.verify(token) for token in tokens))
        assert len(identities) == 30
        assert env.issuer.jwks_fetches == 1
        assert env.issuer.server is not None and env.issuer.server.hits["/.well-known/openid-configuration"] == 1


@async_test
async def test_issuer_down_is_issuer_unavailable() -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    client = UpstreamClient(connect_timeout=1.0, total_timeout=2.0)
    try:
        verifier = JwtVerifier([JwtIssuerConfig(issuer=unreachable, audience=AUDIENCE)], lambda: client)
        token = jwt.encode({"iss": unreachable, "aud": AUDIENCE, "sub": "u", "exp": int(time.time()) + 60},
                           private_key("RS256"), algorithm="RS256", headers={"kid": "rsa-1"})
        with pytest.raises(AuthFailure) as info:
            await verifier.verify(token)
        assert info.value.reason == "issuer_unavailable" and info.value.status == 503
    finally:
        await client.close()


@async_test
async def test_issuer_error_status_then_recovery_and_stale_keys_when_down() -> None:
    async with oidc() as env:
        env.issuer.status = 500
        assert await env.reason(env.issuer.token()) == "issuer_unavailable"
        assert await env.reason(env.issuer.token(sub="b")) == "issuer_unavailable"  # failure rate-limited too
        assert env.issuer.server is not None and sum(env.issuer.server.hits.values()) == 1
        env.issuer.status = 200
        env.clock.now += 30
        assert (await env.verifier.verify(env.issuer.token())).user == "user-1"
        # Keys known, the issuer goes down past their TTL: the keys it had still verify.
        env.issuer.status = 503
        env.clock.now += 3600
        assert (await env.verifier.verify(env.issuer.token(sub="c", exp=int(env.clock.now) + 60))).user == "c"
        assert env.issuer.jwks_fetches == 2  # one failed refetch, then the stale keys until the next interval


@async_test
async def test_discovery_naming_another_issuer_is_refused() -> None:
    async with oidc() as env:
        original = env.issuer.handle

        async def lying(request: Request) -> tuple[int, Any]:
            if request.path.startswith("/.well-known"):
                return 200, {"issuer": "https://elsewhere.example", "jwks_uri": env.issuer.url + "/jwks"}
            return await original(request)

        assert env.issuer.server is not None
        env.issuer.server.handler = lying
        assert await env.reason(env.issuer.token()) == "issuer_unavailable"
        assert env.issuer.jwks_fetches == 0


@async_test
async def test_configured_jwks_uri_skips_discovery() -> None:
    async with oidc(config=lambda url: JwtIssuerConfig(issuer=url, audience=AUDIENCE, jwks_uri=url + "/jwks")) as env:
        await env.verifier.verify(env.issuer.token())
        assert env.issuer.server is not None and dict(env.issuer.server.hits) == {"/jwks": 1}


# -- the verified-token cache ----------------------------------------------------------------


@async_test
async def test_cache_hit_does_not_verify_again_and_expiry_still_applies() -> None:
    async with oidc(config=lambda url: JwtIssuerConfig(issuer=url, audience=AUDIENCE, leeway_s=5)) as env:
        exp = int(env.clock.now) + 60
        token = env.issuer.token(exp=exp)
        first = await env.verifier.verify(token)
        assert env.verifier.signature_checks == 1
        for _ in range(100):
            assert await env.verifier.verify(token) is first
        assert env.verifier.signature_checks == 1
        env.clock.now = exp + 4  # within the leeway
        assert await env.verifier.verify(token) is first
        env.clock.now = exp + 5
        assert await env.reason(token) == "expired"
        assert env.verifier.cached == 0
        assert await env.reason(token) == "expired"  # and again, now uncached


@async_test
async def test_cache_is_bounded() -> None:
    async with oidc(cache_size=3) as env:
        for i in range(10):
            await env.verifier.verify(env.issuer.token(sub=f"u{i}"))
        assert env.verifier.cached == 3


def test_looks_like_jwt() -> None:
    token = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    assert looks_like_jwt(token)
    assert looks_like_jwt(token.rsplit(".", 1)[0] + ".")  # unsigned: still a JWT, refused later
    for key in ("sk-proj-abc123", "sk-ant-api03-xyz", "abc.def", "a.b.c.d", "", "ey J.a.b", "x" * 20000):
        assert not looks_like_jwt(key)


# -- hardening ------------------------------------------------------------------------------


@async_test
async def test_unknown_critical_header_is_refused_and_header_urls_are_never_fetched() -> None:
    async with oidc() as env:
        crit = jwt.encode({**claims_of(env.issuer.token())}, private_key("RS256"), algorithm="RS256",
                          headers={"kid": "rsa-1", "crit": ["urn:example:unknown"], "urn:example:unknown": 1})
        assert await env.reason(crit) == "malformed"
        jku = jwt.encode(claims_of(env.issuer.token()), private_key("RS256", "attacker"), algorithm="RS256",
                         headers={"kid": "attacker", "jku": env.issuer.url + "/attacker-jwks"})
        assert await env.reason(jku) == "unknown_key"
        assert env.issuer.server is not None and "/attacker-jwks" not in env.issuer.server.hits


@async_test
async def test_short_rsa_keys_and_symmetric_keys_in_the_jwks_are_not_used() -> None:
    import warnings

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_jwk = {**RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True), "kid": "weak", "alg": "RS256"}
    oct_jwk = {"kty": "oct", "kid": "shared", "k": b64(SECRET.encode())}
    async with oidc(keys=[weak_jwk, oct_jwk, public_jwk("RS256", "rsa-1")]) as env:
        claims = claims_of(env.issuer.token())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyJWT warns about signing with a short key
            weak_token = jwt.encode(claims, weak, algorithm="RS256", headers={"kid": "weak"})
        assert await env.reason(weak_token) == "wrong_algorithm"
        assert await env.reason(jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "shared"})) \
            == "wrong_algorithm"
        assert (await env.verifier.verify(env.issuer.token())).user == "user-1"


@async_test
async def test_a_cancelled_verification_does_not_stop_the_shared_fetch() -> None:
    async with oidc() as env:
        env.issuer.delay = 0.1
        first = asyncio.ensure_future(env.verifier.verify(env.issuer.token(sub="gone")))
        second = asyncio.ensure_future(env.verifier.verify(env.issuer.token(sub="stays")))
        # both wait on the one fetch once it has reached the issuer (held there by its delay)
        await async_wait_until(lambda: env.issuer.jwks_fetches >= 1, "the shared fetch under way")
        first.cancel()
        assert (await second).user == "stays"
        with pytest.raises(asyncio.CancelledError):
            await first
        assert env.issuer.jwks_fetches == 1


def test_verifier_refuses_unsafe_issuer_configs() -> None:
    def client() -> UpstreamClient:
        raise AssertionError("never called")

    for config in (
        JwtIssuerConfig(issuer="https://a", audience="x", algorithms=("RS256", "none")),
        JwtIssuerConfig(issuer="https://a", audience="x", algorithms=("HS256", "RS256"), hs256_secret=SECRET),
        JwtIssuerConfig(issuer="https://a", audience="x", algorithms=("HS256",)),
        JwtIssuerConfig(issuer="https://a", audience="x", hs256_secret=SECRET),
    ):
        with pytest.raises(ValueError):
            JwtVerifier([config], client)
