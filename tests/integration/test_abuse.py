"""Abuse protection against a real ``sluice serve`` (docs/abuse.md): IP reputation lists (refused before auth,
reloaded when the file changes), per-key anomaly throttling (429, one audit record), proof of work (429 with a
challenge, a solution good once)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sluice.pipeline.pow import solve
from tests.conftest import Proc, call, start_gateway, wait_until

pytestmark = pytest.mark.integration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-abuse-caller-0123456789abcdef"
ADMIN = "sk-abuse-admin-0123456789abcdef"


def models(mock: Proc) -> str:
    return f"""
providers: {{mock: {{kind: openai, base_url: "{mock.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
"""


def metric(gateway: Proc, name: str) -> float:
    text = call(gateway.url, path="/metrics").body.decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_reputation_lists_refuse_listed_addresses_and_follow_the_file(tmp_path: Path, mock_upstream: Proc) -> None:
    listed = tmp_path / "block.txt"
    listed.write_text("# test list\n203.0.113.0/24\n")
    gateway = start_gateway(tmp_path, models(mock_upstream) + f"""
ratelimit: {{trusted_proxies: ["127.0.0.1/32"]}}
abuse: {{reputation: {{files: ["{listed}"], refresh_s: 0.2}}}}
""")
    try:
        def post(path: str, body: dict, address: str) -> tuple[int, dict]:
            reply = call(gateway.url, "POST", path, body, {"content-type": "application/json",
                                                           "x-forwarded-for": address})
            return reply.status, reply.json()

        status, body = post("/v1/chat/completions", CHAT, "203.0.113.5")
        assert status == 403 and body["error"]["code"] == "ip_listed", body
        status, body = post("/v1/messages", MESSAGES, "203.0.113.5")
        assert status == 403 and body["type"] == "error" and body["error"]["type"] == "permission_error", body
        assert post("/v1/chat/completions", CHAT, "198.51.100.1")[0] == 200
        assert call(gateway.url, path="/health/live", headers={"x-forwarded-for": "203.0.113.5"}).status == 200
        # The list changes (written aside, renamed over): the next check after refresh_s takes it.
        partial = tmp_path / "block.tmp"
        partial.write_text("198.51.100.0/24\n")
        os.replace(partial, listed)
        wait_until(lambda: post("/v1/chat/completions", CHAT, "198.51.100.1")[0] == 403, "the changed list loaded",
                   interval=0.1)
        assert post("/v1/chat/completions", CHAT, "203.0.113.5")[0] == 200
        # A bad file keeps the last good list.
        listed.write_text("198.51.100.0/24\nnot an address\n")

        def failed_reloads() -> float:
            call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-forwarded-for": "192.0.2.1"})
            return metric(gateway, 'sluice_ip_reputation_reloads_total{result="failed"}')

        wait_until(lambda: failed_reloads() >= 1, "the bad file read", interval=0.1)
        assert post("/v1/chat/completions", CHAT, "198.51.100.1")[0] == 403
        assert metric(gateway, "sluice_ip_reputation_refused_total") >= 4
    finally:
        gateway.stop()
    assert gateway.log.read_text().count("not loaded, keeping its last good contents") == 1


def test_anomaly_throttles_a_spiking_key_with_one_audit_record(tmp_path: Path, mock_upstream: Proc) -> None:
    gateway = start_gateway(tmp_path, models(mock_upstream) + f"""
store: {{sqlite_path: {json.dumps(str(tmp_path / "store.db"))}}}
auth:
  enabled: true
  static_keys:
    - {{name: caller, key: {KEY}, roles: [user]}}
    - {{name: admin, key: {ADMIN}, roles: [admin]}}
abuse: {{anomaly: {{window_s: 3600, warmup_s: 0, min_requests: 3, action: throttle}}}}
""")
    try:
        def chat() -> tuple[int, dict[str, str], dict]:
            reply = call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"authorization": f"Bearer {KEY}"})
            return reply.status, reply.headers, reply.json()

        for _ in range(3):  # its allowance: min_requests (a new key has no baseline)
            assert chat()[0] == 200
        status, headers, body = chat()
        assert status == 429 and body["error"]["code"] == "key_anomaly_throttled", body
        assert 1 <= int(headers["retry-after"]) <= 3600
        assert chat()[0] == 429
        reply = call(gateway.url, "POST", "/v1/messages", MESSAGES, {"x-api-key": KEY})
        assert reply.status == 429 and reply.json()["error"]["type"] == "rate_limit_error"
        assert metric(gateway, 'sluice_key_anomalies_total{kind="requests"}') == 1
        assert metric(gateway, "sluice_key_anomaly_throttled_total") == 3
        records = wait_until(lambda: call(gateway.url, path="/admin/audit?action=abuse.anomaly",
                                          headers={"authorization": f"Bearer {ADMIN}"}).json()["data"],
                             "the anomaly audited", interval=0.1)
        assert len(records) == 1, records
        assert records[0]["details"]["kind"] == "requests" and records[0]["details"]["count"] == 4
    finally:
        gateway.stop()


def test_proof_of_work_under_flood(tmp_path: Path, mock_upstream: Proc) -> None:
    gateway = start_gateway(tmp_path, models(mock_upstream) + """
abuse: {pow: {threshold_rps: 0.001, window_s: 100, difficulty: 10, secret: "0123456789abcdef0123"}}
""")
    try:
        reply = call(gateway.url, "POST", "/v1/chat/completions", CHAT)  # 0.1 requests a window: a flood at once
        assert reply.status == 429 and reply.json()["error"]["code"] == "pow_required", reply.body
        challenge = reply.headers["x-sluice-pow-challenge"]
        solution = solve(challenge)
        assert call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-sluice-pow": solution}).status == 200
        again = call(gateway.url, "POST", "/v1/messages", MESSAGES, {"x-sluice-pow": solution})
        assert again.status == 429 and again.json()["error"]["type"] == "rate_limit_error"
        assert "x-sluice-pow-challenge" in again.headers
        assert call(gateway.url, path="/health/ready").status == 200  # the probes are never challenged
        junk = call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-sluice-pow": "junk:1"})
        assert junk.status == 429 and junk.json()["error"]["code"] == "pow_invalid"
        assert metric(gateway, 'sluice_pow_challenges_total{result="solved"}') == 1
        assert metric(gateway, 'sluice_pow_challenges_total{result="invalid"}') == 2
    finally:
        gateway.stop()
