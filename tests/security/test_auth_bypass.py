"""Authentication bypass attempts (issue 15's probes, kept held): admin path tricks, Host header and
absolute-form tricks, keys in query strings, forged forwarding headers against IP rules, revocation.

Against conftest's gateway (auth on, no trusted proxies) over RSGI and ASGI.  No spelling of an admin path
is served without an admin credential: each is 401 (no credential), 403 (a user key) or 404 (not a route);
a Host or absolute-form target naming localhost changes nothing; a key is read from the Authorization or
x-api-key header only; X-Forwarded-For / Forwarded / X-Real-IP from an untrusted peer are not the client.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import Proc, call
from tests.security.capture import answer_body, exchange, statuses
from tests.security.conftest import ADMIN, ADMIN_KEY, CHAT, MINI_KEY, post, refused, upstream_requests

pytestmark = pytest.mark.integration

ADMIN_TRICKS = [
    b"//admin/keys", b"/admin//keys", b"/./admin/keys", b"/admin/./keys", b"/v1/../admin/keys",
    b"/v1/%2e%2e/admin/keys", b"/v1/%2E%2E/admin/keys", b"/%61dmin/keys", b"/admin%2fkeys", b"/admin%2Fkeys",
    b"/ADMIN/keys", b"/Admin/Keys", b"/admin/keys/", b"/admin/keys;x=1", b"/admin/keys%00", b"/admin/keys%20",
    b"/admin/keys%09", b"/admin/keys?x=/v1/models", b"/v1/models/../../admin/keys", b"/admin\\keys",
    b"/admin/keys#x", b"/%2fadmin/keys", b"/admin/users", b"/admin/audit",
]


def head(method: bytes, target: bytes, credential: bytes, host: bytes = b"gw") -> bytes:
    return b"%s %s HTTP/1.1\r\nhost: %s\r\n%sconnection: close\r\n\r\n" % (method, target, host, credential)


def bearer(key: str) -> bytes:
    return b"authorization: Bearer " + key.encode() + b"\r\n"


@pytest.mark.parametrize("target", ADMIN_TRICKS)
@pytest.mark.parametrize("who", ["nobody", "user"])
def test_no_spelling_of_an_admin_path_is_served_without_an_admin_key(gw: Proc, target: bytes, who: str) -> None:
    credential = b"" if who == "nobody" else bearer(MINI_KEY)
    received = exchange(gw, head(b"GET", target, credential))
    status = statuses(received)[0]
    assert status in ((401, 404, 400) if who == "nobody" else (403, 404, 400)), received[:500]
    assert b'"data"' not in answer_body(received)  # no listing leaked


def test_the_admin_key_is_served_the_plain_admin_path(gw: Proc) -> None:
    assert statuses(exchange(gw, head(b"GET", b"/admin/keys", bearer(ADMIN_KEY)))) == [200]


@pytest.mark.parametrize("host", [b"localhost", b"127.0.0.1", b"admin", b"localhost:8080", b"[::1]",
                                  b"internal.admin.local"])
@pytest.mark.parametrize("target", [b"/admin/keys", b"http://localhost/admin/keys", b"http://127.0.0.1/admin/keys"])
def test_a_host_naming_this_machine_grants_nothing(gw: Proc, host: bytes, target: bytes) -> None:
    received = exchange(gw, head(b"GET", target, b"", host))
    assert statuses(received)[0] in (400, 401), received[:500]


def test_an_absolute_form_target_keeps_the_keys_model_limit(gw: Proc, mock: Proc) -> None:
    body = json.dumps({**CHAT, "model": "gpt-4o"}).encode()
    before = upstream_requests(mock)
    received = exchange(gw, b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\nhost: evil.example\r\n"
                            + bearer(MINI_KEY) + b"content-type: application/json\r\ncontent-length: %d\r\n"
                            b"connection: close\r\n\r\n%s" % (len(body), body))
    assert statuses(received) == [403], received[:500]
    assert upstream_requests(mock) == before


@pytest.mark.parametrize("query", ["api_key={k}", "key={k}", "access_token={k}", "token={k}",
                                   "authorization=Bearer%20{k}", "x-api-key={k}"])
@pytest.mark.parametrize("path", ["/v1/models", "/admin/keys", "/v1/chat/completions", "/v1/messages"])
def test_keys_in_query_strings_are_refused(gw: Proc, mock: Proc, query: str, path: str) -> None:
    before = upstream_requests(mock)
    target = f"{path}?{query.format(k=ADMIN_KEY)}"
    if path.startswith("/v1/") and path != "/v1/models":
        reply = call(gw.url, "POST", target, json.dumps(CHAT).encode(), {"content-type": "application/json"})
    else:
        reply = call(gw.url, "GET", target)
    refused(reply, path, 401)
    assert upstream_requests(mock) == before


@pytest.fixture(scope="module")
def walled_key(gw: Proc) -> str:
    """A key allowed from 10.9.9.0/24 only (the tests call from 127.0.0.1)."""
    created = post(gw, "/admin/keys", {"name": "walled", "roles": ["user"], "ip_allow": ["10.9.9.0/24"]})
    assert created.status == 201, created.body
    return str(created.json()["key"])


@pytest.mark.parametrize("forged", [
    {"x-forwarded-for": "10.9.9.9"}, {"x-forwarded-for": "10.9.9.9, 10.9.9.8"}, {"forwarded": "for=10.9.9.9"},
    {"forwarded": 'for="10.9.9.9:1234";proto=https'}, {"x-real-ip": "10.9.9.9"}, {"true-client-ip": "10.9.9.9"},
    {"cf-connecting-ip": "10.9.9.9"}, {"x-client-ip": "10.9.9.9"},
    {"x-forwarded-for": "10.9.9.9", "forwarded": "for=10.9.9.9", "x-real-ip": "10.9.9.9"},
])
def test_forged_forwarding_headers_do_not_pass_ip_rules(gw: Proc, walled_key: str, forged: dict[str, str]) -> None:
    reply = post(gw, "/v1/chat/completions", CHAT, {"authorization": f"Bearer {walled_key}", **forged})
    assert refused(reply, "/v1/chat/completions", 403)
    assert reply.json()["error"]["code"] == "ip_not_allowed"


def test_a_revoked_key_is_refused_at_once(gw: Proc) -> None:
    created = post(gw, "/admin/keys", {"name": "short-lived", "roles": ["user"]}).json()
    key = {"authorization": f"Bearer {created['key']}"}
    assert post(gw, "/v1/chat/completions", CHAT, key).status == 200
    assert post(gw, f"/admin/keys/{created['id']}/revoke", {"reason": "security suite"}, ADMIN).status == 200
    # The very next request (no waiting for the change feed: the revoking worker drops its cached key).
    refused(post(gw, "/v1/chat/completions", CHAT, key), "/v1/chat/completions", 401)
    refused(post(gw, "/v1/messages", {"model": "claude-mini", "max_tokens": 8,
                                      "messages": [{"role": "user", "content": "hi"}]},
                 {"x-api-key": created["key"]}), "/v1/messages", 401)
