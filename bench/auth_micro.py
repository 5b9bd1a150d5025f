"""Micro-benchmark of authentication: µs per cached API key check and per ``await JwtVerifier.verify(token)``.

Four cases, each timed sequentially in one event loop (the way the auth stage awaits it),
best of --repeat runs of --n calls:

- cached: the same RS256 token again and again (the hot path: SHA-256 of the token,
  an LRU dict lookup, a comparison with the clock);
- uncached RS256 (2048-bit), ES256 (P-256) and EdDSA (Ed25519): a verifier whose
  token cache holds nothing (cache_size=0), so every call parses the token, checks
  its claims and has PyJWT/cryptography verify the signature; the JWKS is fetched
  once, before timing, from a local server started here.

``looks_like_jwt`` (which the stage calls before choosing JWT or key auth) is timed
too.  Prints a markdown table.  Takes a few seconds.

    .venv/bin/python bench/auth_micro.py [--n 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from sluice.auth.jwt import JwtVerifier, looks_like_jwt
from sluice.auth.keys import Authenticator
from sluice.config import AuthConfig, JwtIssuerConfig, StaticKeyConfig
from sluice.upstream import UpstreamClient

AUDIENCE = "bench"


def make_keys() -> dict[str, tuple[Any, dict[str, Any]]]:
    """alg → (private key, public JWK)."""
    keys: dict[str, tuple[Any, dict[str, Any]]] = {}
    for alg, private, maker in (
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
        ("ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
    ):
        jwk: dict[str, Any] = maker.to_jwk(private.public_key(), as_dict=True)  # type: ignore[attr-defined]
        keys[alg] = (private, {**jwk, "kid": alg, "alg": alg, "use": "sig"})
    return keys


async def serve_jwks(body: bytes) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def per_call(verify: Any, tokens: list[str], repeat: int) -> float:
    """Best of ``repeat`` runs over ``tokens``, in µs per call."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for token in tokens:
            await verify(token)
        best = min(best, (time.perf_counter() - start) / len(tokens))
    return best * 1e6


def per_sync_call(fn: Any, tokens: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for token in tokens:
            fn(token)
        best = min(best, (time.perf_counter() - start) / len(tokens))
    return best * 1e6


async def main(n: int, repeat: int) -> None:
    keys = make_keys()
    server = await serve_jwks(json.dumps({"keys": [jwk for _, jwk in keys.values()]}).encode())
    port = server.sockets[0].getsockname()[1]
    issuer = f"http://127.0.0.1:{port}"
    config = JwtIssuerConfig(issuer=issuer, audience=AUDIENCE, jwks_uri=f"{issuer}/jwks")
    client = UpstreamClient()
    try:
        cached = JwtVerifier([config], lambda: client)
        uncached = JwtVerifier([config], lambda: client, cache_size=0)
        exp = int(time.time()) + 3600

        def token(alg: str, i: int) -> str:
            claims = {"iss": issuer, "aud": AUDIENCE, "sub": f"user-{i}", "exp": exp,
                      "realm_access": {"roles": ["reader"]}}
            return jwt.encode(claims, keys[alg][0], algorithm=alg, headers={"kid": alg})

        for alg in keys:  # fetch the JWKS and build every key before timing
            await uncached.verify(token(alg, 0))
        one = token("RS256", 0)
        await cached.verify(one)
        api_key = "sk-bench-0123456789abcdef"
        keys_auth = Authenticator(AuthConfig(enabled=True, static_keys=(StaticKeyConfig(name="bench", key=api_key,
                                                                                        roles=("user",)),)),
                                  None, lambda: client)
        assert keys_auth.cached(api_key) is not None
        rows = [
            ("API key, cached (sha-256, dict, checks)", per_sync_call(keys_auth.cached, [api_key] * n, repeat)),
            ("JWT, cached (RS256 token)", await per_call(cached.verify, [one] * n, repeat)),
            *[(f"uncached {alg}", await per_call(uncached.verify, [token(alg, 0)] * max(n // 10, 50), repeat))
              for alg in keys],
            ("looks_like_jwt", per_sync_call(looks_like_jwt, [one] * n, repeat)),
        ]
        assert uncached.signature_checks > 0 and cached.signature_checks == 1
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    print(f"token length {len(one)} bytes; best of {repeat}, sequential\n")
    print("| case | µs per call |")
    print("| --- | ---: |")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeat))
