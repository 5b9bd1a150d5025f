"""Authentication, RBAC, IP rules and signatures through `sluice serve`, on SQLite and on PostgreSQL.

Keys are made, revoked and rotated through the store's own API (``open_store``) behind the gateway's
back, as the admin API will; the gateway learns of them from its change feed.  JWTs come from a local
OIDC issuer (discovery document and JWKS, RSA keys generated here) served from a thread.

Most tests share one gateway per backend (module scope); the ones that need a store of their own
(revocation across two instances, the store going down, the openai SDK) take ``store_config``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sluice.config import StoreConfig
from sluice.store import ApiKey, Store, display_prefix, generate_key, hash_key, new_id, open_store
from tests.conftest import Proc, Reply, call, start_gateway, wait_until
from tests.postgres_server import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN_KEY = "sk-admin-" + "A1b2C3d4E5f6G7h8I9j0K1l2"
AUDIENCE = "sluice-gateway"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
JSON_HEADERS = {"content-type": "application/json"}


# -- the store, from the test's side -------------------------------------------------------------------------


def store_run(config: StoreConfig, action: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = open_store(config)
        try:
            async with asyncio.timeout(30):
                return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


def new_key(config: StoreConfig, **fields: Any) -> tuple[str, ApiKey]:
    """A key created in the store as the admin API would: the secret (shown once) and its record."""
    secret = generate_key()
    record = ApiKey(id=new_id("key"), key_hash=hash_key(secret), prefix=display_prefix(secret),
                    **{"roles": ("user",), **fields})
    return secret, store_run(config, lambda store: store.create_key(record))


def store_yaml(config: StoreConfig) -> str:
    if config.postgres_url is not None:
        return f"store: {{postgres_url: '{config.postgres_url}', timeout_s: {config.timeout_s}}}"
    return f"store: {{sqlite_path: '{config.sqlite_path}', timeout_s: {config.timeout_s}}}"


def gateway_yaml(store: StoreConfig, mock_url: str, issuer_url: str | None = None, extra_auth: str = "") -> str:
    jwt_section = f"""
  jwt:
    - issuer: {issuer_url}
      audience: {AUDIENCE}
      algorithms: [RS256]
      jwks_min_refresh_s: 0.5
      claims: {{team: team, roles: roles}}""" if issuer_url else ""
    return f"""
server: {{grace_period_s: 2}}
{store_yaml(store)}
auth:
  enabled: true
  static_keys:
    - {{name: admin, key: "${{SLUICE_TEST_ADMIN_KEY}}", roles: [admin]}}
  roles:
    chatter: [chat, models]
    mini: [chat, models, "model:gpt-4o-mini*"]
  ip_deny: ["203.0.113.0/24", "2001:db8:dead::/48"]
{extra_auth}{jwt_section}
ratelimit: {{trusted_proxies: ["127.0.0.1/32"]}}
passthrough: {{provider: mock}}
providers:
  mock: {{kind: openai, base_url: "{mock_url}", api_keys: [sk-upstream]}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  gpt-4o: {{targets: [{{provider: mock, model: gpt-4o}}]}}
  text-embedding-3-small: {{targets: [{{provider: mock, model: text-embedding-3-small}}]}}
"""


def serve(tmp: Path, config: str) -> Proc:
    return start_gateway(tmp, config, env={"SLUICE_TEST_ADMIN_KEY": ADMIN_KEY})


def migrated(config: StoreConfig) -> StoreConfig:
    store_run(config, lambda store: store.migrate())
    return config


# -- a local OIDC issuer -------------------------------------------------------------------------------------


class Issuer:
    """Discovery document and JWKS on 127.0.0.1, from a thread; ``rotate()`` publishes a new key only."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, Any]] = []
        self.rotate()
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif self.path == "/jwks":
                    body = {"keys": [issuer.jwk(kid, key) for kid, key in issuer.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def jwk(kid: str, key: Any) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def rotate(self) -> None:
        self.keys = [(f"rsa-{len(self.keys) + 1}-{time.monotonic_ns()}",
                      rsa.generate_private_key(public_exponent=65537, key_size=2048))]

    def token(self, **claims: Any) -> str:
        kid, key = self.keys[-1]
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 600, **claims}
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm="RS256",
                          headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreConfig]:
    """One migrated store per backend for the module's shared gateway."""
    if request.param == "sqlite":
        yield migrated(StoreConfig(sqlite_path=str(tmp_path_factory.mktemp("auth") / "store.db"), timeout_s=5.0))
        return
    server = request.getfixturevalue("postgres")
    name, url = server.create_database()
    try:
        yield migrated(StoreConfig(postgres_url=url, timeout_s=5.0))
    finally:
        server.drop_database(name)


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(backend: StoreConfig, mock_upstream: Proc, issuer: Issuer, session_tmp: Path) -> Iterator[Proc]:
    proc = serve(session_tmp, gateway_yaml(backend, mock_upstream.url, issuer.url))
    yield proc
    proc.stop()


def bearer(key: str, **headers: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **JSON_HEADERS, **headers}


def chat(gateway: Proc, headers: dict[str, str], body: dict[str, Any] | None = None) -> Reply:
    return call(gateway.url, "POST", "/v1/chat/completions", body or CHAT, {**JSON_HEADERS, **headers})


def messages(gateway: Proc, headers: dict[str, str], body: dict[str, Any] | None = None) -> Reply:
    return call(gateway.url, "POST", "/v1/messages", body or MESSAGE, {**JSON_HEADERS, **headers})


def openai_error(reply: Reply, status: int) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:500])
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def anthropic_error(reply: Reply, status: int, kind: str) -> str:
    assert reply.status == status, (reply.status, reply.body[:500])
    body = reply.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    message: str = body["error"]["message"]
    return message


# -- 401s ----------------------------------------------------------------------------------------------------


def test_requests_without_a_credential_are_refused(gw: Proc) -> None:
    for headers in ({}, {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Bearer "}):
        error = openai_error(chat(gw, headers), 401)
        assert error["type"] == "invalid_request_error" and error["code"] == "missing_api_key"
        assert "Authorization: Bearer" in error["message"]
    reply = call(gw.url, "GET", "/v1/models")
    assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Bearer")
    assert "missing_api_key" in reply.body.decode()
    message = anthropic_error(messages(gw, {}), 401, "authentication_error")
    assert "x-api-key" in message
    # Unknown paths need a credential too: nothing about the gateway is answered to anonymous callers.
    assert call(gw.url, "GET", "/v1/whatever").status == 401
    assert call(gw.url, "GET", "/admin/keys").status == 401


def test_unknown_revoked_and_malformed_keys_get_the_same_refusal(gw: Proc, backend: StoreConfig) -> None:
    revoked, record = new_key(backend)
    store_run(backend, lambda store: store.revoke_key(record.id, time.time() - 1))
    malformed = "sk-" + "é" * 30
    replies = [chat(gw, {"authorization": f"Bearer {k}"}) for k in (generate_key(), revoked, "sk-short")]
    replies.append(chat(gw, {"x-api-key": revoked}))
    errors = [openai_error(r, 401) for r in replies]
    assert all(e == errors[0] for e in errors), errors
    assert errors[0]["code"] == "invalid_api_key" and errors[0]["type"] == "invalid_request_error"
    assert revoked not in json.dumps(errors)
    assert all('error="invalid_token"' in r.headers["www-authenticate"] for r in replies)
    anthropic = {anthropic_error(messages(gw, {"x-api-key": k}), 401, "authentication_error")
                 for k in (generate_key(), revoked)}
    assert anthropic == {errors[0]["message"]}
    assert call(gw.url, "GET", "/v1/models", headers={"x-api-key": malformed}).status == 401


def test_an_expired_key_is_told_so(gw: Proc, backend: StoreConfig) -> None:
    expired, _ = new_key(backend, expires_at=time.time() - 5)
    error = openai_error(chat(gw, {"authorization": f"Bearer {expired}"}), 401)
    assert error["code"] == "expired_api_key" and "expired" in error["message"]
    message = anthropic_error(messages(gw, {"x-api-key": expired}), 401, "authentication_error")
    assert "expired" in message


def test_rotation_keeps_the_old_key_for_its_grace_period_only(gw: Proc, backend: StoreConfig) -> None:
    old, old_record = new_key(backend)
    assert chat(gw, bearer(old)).status == 200
    fresh = generate_key()
    new_record = ApiKey(id=new_id("key"), key_hash=hash_key(fresh), prefix=display_prefix(fresh), roles=("user",))
    store_run(backend, lambda store: store.rotate_key(old_record.id, new_record, time.time() + 60))
    wait_until(lambda: chat(gw, bearer(fresh)).status == 200, "the change feed bringing the new key")
    assert chat(gw, bearer(old)).status == 200  # within its grace period
    # Rotated with a grace period already over: refused like an unknown key.
    past, past_record = new_key(backend)
    assert chat(gw, bearer(past)).status == 200
    other = generate_key()
    replacement = ApiKey(id=new_id("key"), key_hash=hash_key(other), prefix=display_prefix(other), roles=("user",))
    store_run(backend, lambda store: store.rotate_key(past_record.id, replacement, time.time() - 1))
    wait_until(lambda: chat(gw, bearer(past)).status != 200, "the rotation reaching the gateway")
    assert openai_error(chat(gw, bearer(past)), 401)["code"] == "invalid_api_key"
    assert chat(gw, bearer(other)).status == 200


# -- who may do what -----------------------------------------------------------------------------------------


def test_the_static_admin_key_may_do_everything(gw: Proc) -> None:
    assert chat(gw, bearer(ADMIN_KEY)).status == 200
    assert chat(gw, bearer(ADMIN_KEY), {**CHAT, "model": "gpt-4o"}).status == 200
    assert messages(gw, {"x-api-key": ADMIN_KEY}).status == 200
    models = call(gw.url, "GET", "/v1/models", headers=bearer(ADMIN_KEY)).json()
    assert {m["id"] for m in models["data"]} == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    embeddings = call(gw.url, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
                      bearer(ADMIN_KEY))
    assert embeddings.status == 200


def test_routes_need_their_permission(gw: Proc, backend: StoreConfig) -> None:
    chatter, _ = new_key(backend, roles=("chatter",))
    assert chat(gw, bearer(chatter)).status == 200
    assert call(gw.url, "GET", "/v1/models", headers=bearer(chatter)).status == 200
    embeddings = call(gw.url, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
                      bearer(chatter))
    error = openai_error(embeddings, 403)
    assert error["code"] == "permission_denied" and "`embeddings`" in error["message"]
    files = call(gw.url, "GET", "/v1/files", headers=bearer(chatter))
    assert openai_error(files, 403)["code"] == "permission_denied" and b"`files`" in files.body
    admin = call(gw.url, "GET", "/admin/keys", headers=bearer(chatter))
    assert openai_error(admin, 403)["code"] == "permission_denied" and b"`admin:keys`" in admin.body
    assert admin.headers["cache-control"] == "no-store"
    # No roles at all: deny by default.
    nothing, _ = new_key(backend, roles=())
    assert openai_error(chat(gw, bearer(nothing)), 403)["code"] == "permission_denied"
    anthropic_error(messages(gw, {"x-api-key": nothing}), 403, "permission_error")
    # The built-in user role may use the passthrough families.
    user, _ = new_key(backend)
    responses = call(gw.url, "POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}, bearer(user))
    assert responses.status == 200, responses.body[:300]


def test_models_outside_the_key_globs_are_refused_and_hidden(gw: Proc, backend: StoreConfig) -> None:
    limited, _ = new_key(backend, models=("gpt-4o-mini",))
    assert chat(gw, bearer(limited)).status == 200
    error = openai_error(chat(gw, bearer(limited), {**CHAT, "model": "gpt-4o"}), 403)
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert "`gpt-4o`" in error["message"] and "gpt-4o-mini" not in error["message"]
    # A model that does not exist is refused the same way: the 403 tells nothing of what exists.
    ghost = openai_error(chat(gw, bearer(limited), {**CHAT, "model": "gpt-5-secret"}), 403)
    assert ghost["code"] == "model_not_allowed"
    anthropic_error(messages(gw, {"x-api-key": limited}, {**MESSAGE, "model": "gpt-4o"}), 403, "permission_error")
    counted = call(gw.url, "POST", "/v1/messages/count_tokens", {**MESSAGE, "model": "gpt-4o"},
                   {"x-api-key": limited, **JSON_HEADERS})
    anthropic_error(counted, 403, "permission_error")
    responses = call(gw.url, "POST", "/v1/responses", {"model": "gpt-4o", "input": "hi"}, bearer(limited))
    assert openai_error(responses, 403)["code"] == "model_not_allowed"
    listed = call(gw.url, "GET", "/v1/models", headers=bearer(limited)).json()
    assert [m["id"] for m in listed["data"]] == ["gpt-4o-mini"]
    assert call(gw.url, "GET", "/v1/models/gpt-4o-mini", headers=bearer(limited)).status == 200
    hidden = call(gw.url, "GET", "/v1/models/gpt-4o", headers=bearer(limited))
    assert openai_error(hidden, 404)["code"] == "model_not_found"


def test_roles_with_model_permissions(gw: Proc, backend: StoreConfig) -> None:
    mini, _ = new_key(backend, roles=("mini",))
    assert chat(gw, bearer(mini)).status == 200
    assert openai_error(chat(gw, bearer(mini), {**CHAT, "model": "gpt-4o"}), 403)["code"] == "model_not_allowed"
    listed = call(gw.url, "GET", "/v1/models", headers=bearer(mini)).json()
    assert [m["id"] for m in listed["data"]] == ["gpt-4o-mini"]


def test_store_roles_override_config_roles_and_reach_the_gateway(gw: Proc, backend: StoreConfig) -> None:
    from sluice.store import Role

    key, _ = new_key(backend, roles=("analyst",))
    assert openai_error(chat(gw, bearer(key)), 403)["code"] == "permission_denied"  # no such role yet
    store_run(backend, lambda store: store.create_role(Role(name="analyst", permissions=("chat",))))
    wait_until(lambda: chat(gw, bearer(key)).status == 200, "the new role reaching the gateway")
    store_run(backend, lambda store: store.update_role("analyst", permissions=("embeddings",)))
    wait_until(lambda: chat(gw, bearer(key)).status != 200, "the role change reaching the gateway")
    assert openai_error(chat(gw, bearer(key)), 403)["code"] == "permission_denied"


def test_jwts_from_the_local_issuer(gw: Proc, issuer: Issuer) -> None:
    user = issuer.token(roles=["user"], team="ml")
    assert chat(gw, bearer(user)).status == 200
    assert messages(gw, bearer(user)).status == 200
    nobody = issuer.token(sub="bob")  # no roles claim: nothing allowed
    assert openai_error(chat(gw, bearer(nobody)), 403)["code"] == "permission_denied"
    chatter = issuer.token(sub="carol", roles="chatter")  # a space-separated string works too
    assert chat(gw, bearer(chatter)).status == 200
    assert openai_error(call(gw.url, "POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"},
                             bearer(chatter)), 403)["code"] == "permission_denied"
    for bad in (issuer.token(aud="someone-else", roles=["user"]), issuer.token(exp=int(time.time()) - 120),
                issuer.token(iss="https://evil.example", roles=["admin"]), user[:-4] + "AAAA"):
        error = openai_error(chat(gw, bearer(bad)), 401)
        assert error["code"] == "invalid_token", error
    message = anthropic_error(messages(gw, {"authorization": f"Bearer {issuer.token(exp=1)}"}), 401,
                              "authentication_error")
    assert "expired" in message
    # The issuer rotates its key: tokens of the new key are accepted without a restart.
    issuer.rotate()
    time.sleep(0.6)  # pacing: jwks_min_refresh_s passes: the gateway may fetch the issuer's keys again
    assert chat(gw, bearer(issuer.token(roles=["user"]))).status == 200


# -- IP rules ------------------------------------------------------------------------------------------------


def test_ip_rules_global_and_per_key_with_trusted_proxies(gw: Proc, backend: StoreConfig) -> None:
    def via(address: str, key: str = ADMIN_KEY) -> Reply:
        return chat(gw, bearer(key, **{"x-forwarded-for": address}))

    assert via("198.51.100.7").status == 200
    for denied in ("203.0.113.9", "2001:db8:dead::1", "198.51.100.7, 203.0.113.9"):
        error = openai_error(via(denied), 403)
        assert error["code"] == "ip_not_allowed", denied
    assert "203.0.113.9" in openai_error(via("203.0.113.9"), 403)["message"]
    anthropic_error(messages(gw, {"x-api-key": ADMIN_KEY, "x-forwarded-for": "203.0.113.9"}), 403, "permission_error")
    v6, _ = new_key(backend, ip_allow=("2001:db8:1::/48",))
    assert via("2001:db8:1::5", v6).status == 200
    assert openai_error(via("2001:db8:2::5", v6), 403)["code"] == "ip_not_allowed"
    assert openai_error(chat(gw, bearer(v6)), 403)["code"] == "ip_not_allowed"  # 127.0.0.1 itself
    local, _ = new_key(backend, ip_allow=("127.0.0.1/32",))
    assert chat(gw, bearer(local)).status == 200
    # X-Forwarded-For from the trusted proxy names the client: no longer 127.0.0.1.
    assert openai_error(via("198.51.100.1", local), 403)["code"] == "ip_not_allowed"
    denied_v4, _ = new_key(backend, ip_allow=("0.0.0.0/0",), ip_deny=("198.51.100.0/24",))
    assert via("192.0.2.1", denied_v4).status == 200
    assert openai_error(via("198.51.100.1", denied_v4), 403)["code"] == "ip_not_allowed"  # deny wins


# -- signatures ----------------------------------------------------------------------------------------------


def signed(secret: str, method: str, path: str, body: bytes, at: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    digest = hashlib.sha256(body).hexdigest()
    signature = hmac.new(secret.encode(), f"{method}\n{path}\n{timestamp}\n{digest}".encode(),
                         hashlib.sha256).hexdigest()
    return {"x-sluice-timestamp": timestamp, "x-sluice-signature": signature}


def test_request_signatures(gw: Proc, backend: StoreConfig) -> None:
    secret = "whsec-" + generate_key()
    key, _ = new_key(backend, signing=True, signing_secret=secret)
    body = json.dumps(CHAT).encode()
    headers = {**bearer(key), **signed(secret, "POST", "/v1/chat/completions", body)}
    assert call(gw.url, "POST", "/v1/chat/completions", body, headers).status == 200
    replayed = call(gw.url, "POST", "/v1/chat/completions", body, headers)
    assert openai_error(replayed, 401)["code"] == "invalid_signature" and b"already used" in replayed.body
    tampered = json.dumps({**CHAT, "model": "gpt-4o"}).encode()
    assert openai_error(call(gw.url, "POST", "/v1/chat/completions", tampered,
                             {**bearer(key), **signed(secret, "POST", "/v1/chat/completions", body)}), 401)[
        "code"] == "invalid_signature"
    wrong = {**bearer(key), **signed("not-the-secret", "POST", "/v1/chat/completions", body)}
    assert openai_error(call(gw.url, "POST", "/v1/chat/completions", body, wrong), 401)["code"] == "invalid_signature"
    stale = {**bearer(key), **signed(secret, "POST", "/v1/chat/completions", body, time.time() - 400)}
    reply = call(gw.url, "POST", "/v1/chat/completions", body, stale)
    assert openai_error(reply, 401)["code"] == "invalid_signature" and b"300s" in reply.body
    assert openai_error(chat(gw, bearer(key)), 401)["code"] == "invalid_signature"  # unsigned
    listed = call(gw.url, "GET", "/v1/models", headers={**bearer(key), **signed(secret, "GET", "/v1/models", b"")})
    assert listed.status == 200
    assert openai_error(call(gw.url, "GET", "/v1/models", headers=bearer(key)), 401)["code"] == "invalid_signature"
    message = json.dumps(MESSAGE).encode()
    assert call(gw.url, "POST", "/v1/messages", message,
                {"x-api-key": key, **JSON_HEADERS, **signed(secret, "POST", "/v1/messages", message)}).status == 200
    anthropic_error(call(gw.url, "POST", "/v1/messages", message, {"x-api-key": key, **JSON_HEADERS}), 401,
                    "authentication_error")
    # Keys that do not sign are not asked to.
    plain, _ = new_key(backend)
    assert call(gw.url, "POST", "/v1/chat/completions", body, bearer(plain)).status == 200


def test_signatures_cover_the_query_odd_methods_and_wild_timestamps(gw: Proc, backend: StoreConfig) -> None:
    secret = "whsec-" + generate_key()
    key, _ = new_key(backend, signing=True, signing_secret=secret)
    path, query = "/v1/files", "purpose=batch&limit=5"
    good = call(gw.url, "GET", f"{path}?{query}", headers={**bearer(key), **signed(secret, "GET", f"{path}?{query}",
                                                                                     b"")})
    assert good.status != 401, good.body
    path_only = call(gw.url, "GET", f"{path}?{query}", headers={**bearer(key), **signed(secret, "GET", path, b"")})
    assert openai_error(path_only, 401)["code"] == "invalid_signature"  # the query is signed too
    odd = call(gw.url, "PROPFIND", path, headers={**bearer(key), **signed(secret, "PROPFIND", path, b"")})
    error = openai_error(odd, 401)
    assert error["code"] == "invalid_signature" and "GET, HEAD, DELETE, OPTIONS, POST, PUT or PATCH" in error[
        "message"]
    huge = {**bearer(key), "x-sluice-timestamp": "9" * 400, "x-sluice-signature": "0" * 64}
    assert openai_error(call(gw.url, "GET", "/v1/models", headers=huge), 401)["code"] == "invalid_signature"
    plain, _ = new_key(backend)  # a key that does not sign may use any method the route takes
    assert call(gw.url, "PROPFIND", path, headers=bearer(plain)).status != 401


# -- headers and the audit log -------------------------------------------------------------------------------


def test_security_headers_on_every_response(gw: Proc) -> None:
    replies = [chat(gw, bearer(ADMIN_KEY)), chat(gw, {}), call(gw.url, "GET", "/health/live"),
               call(gw.url, "GET", "/v1/nothing", headers=bearer(ADMIN_KEY)),
               call(gw.url, "GET", "/v1/models", headers=bearer(ADMIN_KEY)),
               chat(gw, bearer(ADMIN_KEY), {**CHAT, "stream": True})]
    for reply in replies:
        assert reply.headers.get("x-content-type-options") == "nosniff", reply.headers
        server = reply.headers.get("server", "")
        assert not any(c.isdigit() for c in server), server  # no version banner
    assert "cache-control" not in replies[0].headers
    admin = call(gw.url, "GET", "/admin/keys", headers=bearer("sk-wrong-" + "x" * 30))
    assert admin.status == 401 and admin.headers["cache-control"] == "no-store"
    assert call(gw.url, "GET", "/health/ready").status == 200  # probes need no credential
    assert call(gw.url, "GET", "/metrics").status == 200


def test_auth_failures_reach_the_audit_log(gw: Proc, backend: StoreConfig) -> None:
    unknown = generate_key()
    chat(gw, bearer(unknown, **{"x-forwarded-for": "192.0.2.44"}))
    chat(gw, {"x-forwarded-for": "192.0.2.45"})

    async def records(store: Store) -> list[Any]:
        return await store.list_audit(action="auth.failure", limit=1000)

    def both_recorded() -> list[Any]:
        found = store_run(backend, records)
        return found if {"192.0.2.44", "192.0.2.45"} <= {r.client_ip for r in found} else []

    found = wait_until(both_recorded, "both failures audited", interval=0.2)
    by_ip = {r.client_ip: r for r in found}
    record = by_ip["192.0.2.44"]
    assert record.actor == display_prefix(unknown) and record.details["reason"] == "unknown"
    assert record.target == "/v1/chat/completions" and record.details["status"] == 401
    assert by_ip["192.0.2.45"].actor == "anonymous" and by_ip["192.0.2.45"].details["reason"] == "missing"
    assert unknown not in json.dumps([r.details for r in found]) + json.dumps([r.actor for r in found])
    assert store_run(backend, lambda store: store.verify_audit())[0]


# -- a store of their own ------------------------------------------------------------------------------------


def test_a_revocation_reaches_a_second_instance(store_config: StoreConfig, mock_upstream: Proc,
                                                                tmp_path: Path) -> None:
    config = migrated(store_config)
    first = serve(tmp_path, gateway_yaml(config, mock_upstream.url))
    second = serve(tmp_path, gateway_yaml(config, mock_upstream.url))
    try:
        key, record = new_key(config)
        for gateway in (first, second):
            assert chat(gateway, bearer(key)).status == 200  # cached by both
        store_run(config, lambda store: store.revoke_key(record.id, time.time()))
        # Both hear of it through the change feed (how soon is the feed's business and the machine's load: a
        # bounded poll, no stopwatch).
        for gateway in (first, second):
            wait_until(lambda gateway=gateway: chat(gateway, bearer(key)).status == 401, "the revocation")
        assert openai_error(chat(second, bearer(key)), 401)["code"] == "invalid_api_key"
    finally:
        first.stop()
        second.stop()


def test_the_store_down_keeps_cached_keys_and_answers_503_to_new_ones(
        store_config: StoreConfig, mock_upstream: Proc, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    config = migrated(StoreConfig(sqlite_path=store_config.sqlite_path, postgres_url=store_config.postgres_url,
                                  timeout_s=1.0))
    server = request.getfixturevalue("postgres") if config.postgres_url is not None else None
    if server is not None and not isinstance(server, PostgresServer):
        pytest.skip("the machine's own PostgreSQL is not ours to stop")
    gateway = serve(tmp_path, gateway_yaml(config, mock_upstream.url))
    try:
        cached, _ = new_key(config)
        first_seen, _ = new_key(config)
        assert chat(gateway, bearer(cached)).status == 200
        if server is not None:
            server.stop()
        else:
            take_down_sqlite(config.sqlite_path)
        for _ in range(3):
            assert chat(gateway, bearer(cached)).status == 200
            assert chat(gateway, bearer(ADMIN_KEY)).status == 200
        reply = chat(gateway, bearer(first_seen))
        error = openai_error(reply, 503)
        assert error["code"] == "store_unavailable" and reply.headers.get("retry-after") == "1"
        anthropic_error(messages(gateway, {"x-api-key": first_seen}), 503, "overloaded_error")
        time.sleep(1.2)  # pacing: the change feed's polls fail meanwhile (a window to pass): cached keys still go on
        assert chat(gateway, bearer(cached)).status == 200
        if server is not None:
            server.start()
            wait_until(lambda: chat(gateway, bearer(first_seen)).status == 200, "back once the store is")
    finally:
        if server is not None and not server.running:
            server.start()
        gateway.stop()


def take_down_sqlite(path: str) -> None:
    """Checkpoints the WAL into the file, then overwrites the file in place: every read fails from now on."""
    import os
    import sqlite3

    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.write(b"\xff" * size)


def test_the_openai_sdk_with_a_key_made_in_the_store(store_config: StoreConfig, mock_upstream: Proc,
                                                     tmp_path: Path) -> None:
    config = migrated(store_config)
    gateway = serve(tmp_path, gateway_yaml(config, mock_upstream.url))
    try:
        key, _ = new_key(config, models=("gpt-4o-mini",))
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0) as client:
            hi = [{"role": "user", "content": "hi"}]
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=hi)  # type: ignore[arg-type]
            assert answer.choices[0].message.content
            with pytest.raises(openai.PermissionDeniedError) as info:
                client.chat.completions.create(model="gpt-4o", messages=hi)  # type: ignore[arg-type]
            assert info.value.code == "model_not_allowed"
            assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=generate_key(), max_retries=0) as stranger, \
                pytest.raises(openai.AuthenticationError) as refused:
            stranger.models.list()
        assert refused.value.code == "invalid_api_key"
    finally:
        gateway.stop()
