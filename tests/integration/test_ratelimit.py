"""Rate limits on this instance's buckets: 429s the openai SDK understands, headers, tokens settled."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import Proc, call, start_gateway, wait_until
from tests.integration.test_metrics import finished, scrape, value

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def gateway_with(tmp_path, mock_upstream: Proc, policies: str, extra: str = "") -> Proc:  # type: ignore[no-untyped-def]
    return start_gateway(tmp_path, f"""
ratelimit:
  {extra}
  policies:
{policies}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  other: {{targets: [{{provider: mock, model: gpt-4o}}]}}
""")


def client(gateway: Proc, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=retries)


def test_the_sdk_sees_429s_with_headers_and_its_retry_honours_retry_after(tmp_path, mock_upstream) -> None:
    gateway = gateway_with(tmp_path, mock_upstream, """
    - {name: per-key, scope: key, rate: 3, period_s: 3, burst: 3, match: {models: [gpt-4o-mini]}}
""")
    try:
        api = client(gateway, "sk-tenant-a")
        remaining = []
        for _ in range(3):
            raw = api.chat.completions.with_raw_response.create(**CHAT)
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as caught:
            api.chat.completions.create(**CHAT)
        error = caught.value
        assert error.status_code == 429
        retry_ms = int(error.response.headers["retry-after-ms"])
        assert error.response.headers["retry-after"] == "1" and 0 < retry_ms <= 1000
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        body = error.body  # the OpenAI error shape, naming the policy, never a key
        assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert "per-key" in body["message"] and "sk-tenant" not in body["message"]  # type: ignore[index]
        # another key, another bucket; another model, no policy
        assert client(gateway, "sk-tenant-b").chat.completions.create(**CHAT).choices
        assert api.chat.completions.create(**{**CHAT, "model": "other"}).choices
        # The SDK's own retry waits what Retry-After says, then gets through.  To see the retry happen (rather
        # than time it), start from an empty bucket with at least half a second to go: the first try is refused.
        rejected = value(scrape(gateway.url), "sluice_ratelimit_decisions_total", policy="per-key", decision="rejected")
        refusals = []

        def emptied() -> bool:
            try:
                api.chat.completions.create(**CHAT)
            except openai.RateLimitError as refused:
                refusals.append(refused)
                return int(refused.response.headers["retry-after-ms"]) >= 500
            return False

        wait_until(emptied, "an empty bucket with half a second to go")
        answer = client(gateway, "sk-tenant-a", retries=3).chat.completions.create(**CHAT)
        assert answer.choices  # through, after a refusal its retry waited out:
        after = value(scrape(gateway.url), "sluice_ratelimit_decisions_total", policy="per-key", decision="rejected")
        assert after > rejected + len(refusals)
    finally:
        gateway.stop()


def test_a_rejection_by_one_policy_takes_nothing_from_the_others(tmp_path, mock_upstream) -> None:
    gateway = gateway_with(tmp_path, mock_upstream, """
    - {name: everyone, scope: global, rate: 3, period_s: 600}
    - {name: per-key, scope: key, rate: 1, period_s: 600}
""")

    def send(key: str) -> tuple[int, str]:
        reply = call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"authorization": f"Bearer {key}"})
        return reply.status, reply.json()["error"]["message"] if reply.status == 429 else ""

    try:
        first = send("sk-one")
        refused = [send("sk-one") for _ in range(5)]  # per-key refuses: the global bucket must not pay
        later = [send(key) for key in ("sk-two", "sk-three", "sk-four")]
    finally:
        gateway.stop()
    assert first[0] == 200
    assert all(status == 429 and "per-key" in message for status, message in refused)
    # the global 3 went to sk-one, sk-two and sk-three: had the refusals taken any, sk-two would be refused
    assert [status for status, _ in later] == [200, 200, 429] and "everyone" in later[2][1]


def test_token_reservations_are_settled_with_the_usage(tmp_path, mock_upstream) -> None:
    gateway = gateway_with(tmp_path, mock_upstream, """
    - {name: tokens, scope: global, unit: tokens, rate: 5000, period_s: 3600, soft_limit: 0.5}
""", "default_max_tokens: 1000")
    try:
        first = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
        second = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
        streamed = call(gateway.url, "POST", "/v1/chat/completions",
                        {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
        last = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
    finally:
        gateway.stop()
    assert first.status == second.status == streamed.status == last.status == 200
    reserve = len(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}') // 4 + 1000
    used = first.json()["usage"]["total_tokens"]
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 5000 - reserve
    # the first request's reservation was settled to what it used before the second was admitted
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 5000 - used - reserve
    assert int(last.headers["x-ratelimit-remaining-tokens"]) >= 5000 - 3 * used - reserve - 5  # streams settle too
    assert "x-sluice-ratelimit-warning" not in first.headers


def test_soft_limits_warn_and_client_ips_come_from_trusted_proxies_only(tmp_path, mock_upstream) -> None:
    gateway = gateway_with(tmp_path, mock_upstream, """
    - {name: per-ip, scope: ip, rate: 4, period_s: 600, soft_limit: 0.5}
""", "trusted_proxies: [127.0.0.0/8]")
    try:
        via = [call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-forwarded-for": "203.0.113.7"})
               for _ in range(3)]
        other = call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-forwarded-for": "203.0.113.8"})
        spoofed = call(gateway.url, "POST", "/v1/chat/completions", CHAT,
                       {"x-forwarded-for": "203.0.113.7, 198.51.100.1"})  # the right-most untrusted hop counts
    finally:
        gateway.stop()
    assert [r.headers["x-ratelimit-remaining-requests"] for r in via] == ["3", "2", "1"]
    assert "x-sluice-ratelimit-warning" not in via[0].headers
    assert "per-ip" in via[2].headers["x-sluice-ratelimit-warning"]
    assert other.headers["x-ratelimit-remaining-requests"] == "3"
    assert spoofed.headers["x-ratelimit-remaining-requests"] == "3"  # 198.51.100.1's own bucket


def test_anthropic_callers_get_429s_in_their_shape(tmp_path, mock_upstream) -> None:
    gateway = gateway_with(tmp_path, mock_upstream, """
    - {name: per-key, scope: key, rate: 1, period_s: 600}
""")
    try:
        request = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"x-api-key": "sk-ant-caller", "anthropic-version": "2023-06-01"}
        assert call(gateway.url, "POST", "/v1/messages", request, headers).status == 200
        refused = call(gateway.url, "POST", "/v1/messages", request, headers)
    finally:
        gateway.stop()
    assert refused.status == 429 and refused.headers["retry-after"]
    assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == "rate_limit_error"


def test_passthrough_endpoints_are_limited_too(tmp_path, mock_upstream) -> None:
    gateway = start_gateway(tmp_path, f"""
passthrough: {{provider: mock}}
ratelimit:
  policies:
    - {{name: audio-per-key, scope: key, rate: 3, period_s: 60, match: {{routes: [/v1/audio]}}}}
    - {{name: key-tokens, scope: key, unit: tokens, rate: 10000, period_s: 60}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
""")
    speech = {"model": "tts-1", "input": "hello", "voice": "alloy"}
    key = {"authorization": "Bearer sk-audio"}
    try:
        replies = []
        for done in range(1, 5):
            replies.append(call(gateway.url, "POST", "/v1/audio/speech", speech, key))
            # each request is settled once its answer has gone
            wait_until(lambda done=done: finished(gateway.url, None) >= done, "settled")
    finally:
        gateway.stop()
    assert [r.status for r in replies] == [200, 200, 200, 429]
    assert "audio-per-key" in replies[3].json()["error"]["message"]
    # A passthrough answer is not read for usage: each token reservation went back whole, so every
    # request saw the bucket full but for its own reservation (requests still count).
    reservation = len(json.dumps(speech).encode()) // 4 + 1024
    assert [int(r.headers["x-ratelimit-remaining-tokens"]) for r in replies[:3]] == [10000 - reservation] * 3


def test_authenticated_callers_get_user_and_team_limits_and_their_keys_own(tmp_path, mock_upstream) -> None:
    """Auth on: a team policy counts across its members' keys; a key made with its own policy and quota by the
    admin API is limited by them at once (examples of the key store's per-key limits)."""
    admin = "sk-admin-ratelimit-0123456789"
    gateway = start_gateway(tmp_path, f"""
store: {{sqlite_path: {json.dumps(str(tmp_path / "store.db"))}}}
auth:
  enabled: true
  static_keys:
    - {{name: admin, key: {admin}, roles: [admin]}}
    - {{name: ann, key: sk-ann-0123456789abcdefgh, roles: [user], user: ann, team: red}}
    - {{name: bob, key: sk-bob-0123456789abcdefgh, roles: [user], user: bob, team: red}}
ratelimit:
  quota_store: {json.dumps(str(tmp_path / "quotas.db"))}
  policies:
    - {{name: per-team, scope: team, rate: 3, period_s: 3600}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
""")
    try:
        team = [call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"authorization": f"Bearer {key}"}).status
                for key in ("sk-ann-0123456789abcdefgh", "sk-bob-0123456789abcdefgh", "sk-ann-0123456789abcdefgh",
                            "sk-bob-0123456789abcdefgh")]
        made = call(gateway.url, "POST", "/admin/keys", {
            "name": "capped", "policies": [{"name": "own-rpm", "rate": 1, "period_s": 3600}],
            "quotas": [{"name": "own-daily", "limit": 5}]}, {"authorization": f"Bearer {admin}"})
        key = {"authorization": f"Bearer {made.json()['key']}"}
        own = [call(gateway.url, "POST", "/v1/chat/completions", CHAT, key) for _ in range(2)]
        bad = call(gateway.url, "POST", "/admin/keys", {"policies": [{"name": "x", "rate": 0}]},
                   {"authorization": f"Bearer {admin}"})
    finally:
        gateway.stop()
    assert team == [200, 200, 200, 429]
    assert made.status == 201
    assert own[0].status == 200 and own[0].headers["x-sluice-quota-remaining-requests"] == "4"
    assert own[1].status == 429 and "own-rpm" in own[1].json()["error"]["message"]
    assert bad.status == 400 and "policies[0]" in bad.json()["error"]["param"]


def test_embeddings_settle_with_their_input_and_negative_budgets_are_refused(tmp_path, mock_upstream) -> None:
    gateway = gateway_with(tmp_path, mock_upstream, """
    - {name: tpm, scope: global, unit: tokens, rate: 100000, period_s: 10000000}
""", "quota_store: " + json.dumps(str(tmp_path / "q.db")) + "\n  quotas: [{name: daily, scope: key, unit: tokens, "
         "limit: 1000000}]")
    embedding = {"model": "gpt-4o-mini", "input": "hello there"}
    try:
        first = call(gateway.url, "POST", "/v1/embeddings", embedding, {"authorization": "Bearer sk-e"})
        wait_until(lambda: finished(gateway.url, "/v1/embeddings") >= 1, "settled once its answer has gone")
        second = call(gateway.url, "POST", "/v1/embeddings", embedding, {"authorization": "Bearer sk-e"})
        negative = [call(gateway.url, "POST", path, body, {"authorization": "Bearer sk-e"}) for path, body in (
            ("/v1/chat/completions", {**CHAT, "max_tokens": -1000000000}),
            ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}),
            ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": -5, "messages": [{"role": "user",
                                                                                       "content": "hi"}]}))]
        after = call(gateway.url, "POST", "/v1/embeddings", embedding, {"authorization": "Bearer sk-e"})
    finally:
        gateway.stop()
    used = first.json()["usage"]["prompt_tokens"]
    reservation = len(json.dumps(embedding).encode()) // 4  # an embedding reserves its input, no max_tokens
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 100000 - reservation
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 100000 - used - reservation
    assert [r.status for r in negative] == [400, 400, 400]
    assert [r.json()["error"].get("param") for r in negative[:2]] == ["max_tokens", "max_completion_tokens"]
    # the refused budgets took nothing: the quota went down by the embeddings alone
    assert int(after.headers["x-sluice-quota-remaining-tokens"]) >= 1000000 - 3 * (used + reservation)
