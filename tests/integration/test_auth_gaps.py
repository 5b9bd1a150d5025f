"""The gaps a review found in authentication, closed on a real gateway (`sluice serve`) over SQLite:

- a model-limited admin key grants no model it does not hold (the admin API passes its key's globs on);
- a model-limited key's batch file (POST /v1/files, purpose batch) has each line's body.model checked;
- a model-limited key's JSON passthrough body without a model is refused where the endpoint would run a model
  the gateway cannot see, and passes where no model work comes of it;
- the audit log's counters in /metrics, summed over two workers;
- one `config.load` audit record per start, with the file's path and SHA-256, never its content.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Proc, Reply, call, start_gateway, start_mock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ADMIN = "sk-admin-gaps-0123456789abcdef"
MINI_ADMIN = "sk-mini-admin-0123456789abcdef"  # role admin ("*"), but its key is limited to gpt-4o-mini*
LIMITED = "sk-limited-gaps-0123456789abcdef"  # role user, models gpt-4o-mini
FULL = "sk-full-gaps-0123456789abcdefghij"  # role user, any model
BOUNDARY = "gaps-boundary-7f3a"
MAX_BODY = 64 * 1024


def config_yaml(tmp: Path, mock_url: str) -> str:
    return f"""server: {{grace_period_s: 5, max_body_bytes: {MAX_BODY}}}
store: {{sqlite_path: {json.dumps(str(tmp / "store.db"))}}}
auth:
  enabled: true
  static_keys:
    - {{name: admin, key: {ADMIN}, roles: [admin]}}
    - {{name: mini-admin, key: {MINI_ADMIN}, roles: [admin], models: ["gpt-4o-mini*"]}}
    - {{name: limited, key: {LIMITED}, roles: [user], models: [gpt-4o-mini]}}
    - {{name: full, key: {FULL}, roles: [user]}}
passthrough: {{provider: mock}}
providers: {{mock: {{kind: openai, base_url: "{mock_url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  gpt-4o: {{targets: [{{provider: mock, model: gpt-4o}}]}}
"""


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A mock upstream of this module's own, so that its request log holds only what these tests sent."""
    proc = start_mock(tmp_path_factory.mktemp("gaps-mock"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock: Proc) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("gaps")
    proc = start_gateway(tmp, config_yaml(tmp, mock.url))
    yield proc
    proc.stop()


def send(gateway: Proc, key: str, method: str, path: str, body: Any = None,
         content_type: str = "application/json") -> Reply:
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    return call(gateway.url, method, path, data, {"authorization": f"Bearer {key}", "content-type": content_type})


def forwarded(mock: Proc) -> list[str]:
    """The "METHOD path" of each request the mock received, oldest first (its last 100)."""
    return [f"{r['method']} {r['path']}" for r in call(mock.url, "GET", "/_mock/requests").json()]


def error_of(reply: Reply, status: int) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:500])
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}  # OpenAI's shape
    return error


# -- 1. a model-limited admin --------------------------------------------------------------------------------


def test_a_model_limited_admin_key_grants_only_its_models(gateway: Proc) -> None:
    def refused(body: dict[str, Any], permission: str, param: str) -> None:
        error = error_of(send(gateway, MINI_ADMIN, "POST", "/admin/keys", body), 403)
        assert error["code"] == "permission_denied" and f"`{permission}`" in error["message"], error
        assert error["param"] == param

    refused({"name": "any-model", "roles": ["user"]}, "model:*", "models")
    refused({"roles": ["user"], "models": ["gpt-4o"]}, "model:gpt-4o", "models[0]")
    refused({"roles": ["user"], "models": ["gpt-4o-mini", "gpt-*"]}, "model:gpt-*", "models[1]")
    refused({"roles": ["admin"], "models": ["gpt-4o-mini"]}, "model:*", "roles[0]")  # "*" grants every model
    made = send(gateway, MINI_ADMIN, "POST", "/admin/keys", {"roles": ["user"], "models": ["gpt-4o-mini"]})
    assert made.status == 201, made.body
    key = made.json()
    changed = send(gateway, MINI_ADMIN, "PATCH", f"/admin/keys/{key['id']}", {"models": ["gpt-4o"]})
    assert error_of(changed, 403)["param"] == "models[0]"
    role = send(gateway, MINI_ADMIN, "POST", "/admin/roles", {"name": "wide", "permissions": ["model:gpt-4o"]})
    assert error_of(role, 403)["param"] == "permissions[0]"
    # The key it made works on its model only; an unlimited admin is not held to any of this.
    assert send(gateway, key["key"], "POST", "/v1/chat/completions",
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).status == 200
    assert send(gateway, ADMIN, "POST", "/admin/keys", {"roles": ["user"]}).status == 201


# -- 2. batch files ------------------------------------------------------------------------------------------


def batch_line(model: str | None, n: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": f"question {n}"}]}
    if model is not None:
        body["model"] = model
    return {"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def form(lines: list[Any], purpose: str = "batch", *, raw: bytes | None = None, extra: str = "") -> bytes:
    content = raw if raw is not None else b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return (f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n{extra}'
            f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="file"; filename="batch.jsonl"\r\n'
            f"content-type: application/jsonl\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(gateway: Proc, key: str, body: bytes, content_type: str = f"multipart/form-data; boundary={BOUNDARY}"
           ) -> Reply:
    return send(gateway, key, "POST", "/v1/files", body, content_type)


def test_a_limited_keys_batch_file_names_only_its_models(gateway: Proc, mock: Proc) -> None:
    lines = [batch_line("gpt-4o-mini", n) for n in range(3)]
    good = form(lines)
    reply = upload(gateway, LIMITED, good)
    assert reply.status == 200, reply.body[:500]
    # The file went on whole, as sent (the mock reports the size of the file it parsed).
    assert reply.json()["purpose"] == "batch" and reply.json()["bytes"] == sum(len(json.dumps(x)) + 1 for x in lines)
    uploads = forwarded(mock).count("POST /v1/files")

    wrong = form([batch_line("gpt-4o-mini", 1), batch_line("gpt-4o", 2), batch_line("gpt-4o-mini", 3)])
    error = error_of(upload(gateway, LIMITED, wrong), 403)
    assert error["code"] == "model_not_allowed" and error["param"] == "file"
    assert "Line 2" in error["message"] and "`gpt-4o`" in error["message"]
    assert "gpt-4o-mini" not in error["message"]  # names what is refused, not what is allowed
    unnamed = error_of(upload(gateway, LIMITED, form([batch_line("gpt-4o-mini", 1), batch_line(None, 2)])), 403)
    assert unnamed["code"] == "model_not_allowed" and "Line 2" in unnamed["message"] and "no model" in unnamed[
        "message"]
    broken = error_of(upload(gateway, LIMITED, form([], raw=b'{"body": {"model": "gpt-4o-mini"}}\n{"body": \n')),
                      400)
    assert broken["code"] == "invalid_batch_file" and "Line 2" in broken["message"]
    twice = form([batch_line("gpt-4o-mini")], extra=f'--{BOUNDARY}\r\ncontent-disposition: form-data; '
                 f'name="file"; filename="b.jsonl"\r\n\r\n{json.dumps(batch_line("gpt-4o"))}\r\n')
    assert error_of(upload(gateway, LIMITED, twice), 400)["code"] == "invalid_multipart"
    assert error_of(upload(gateway, LIMITED, good, "multipart/form-data"), 400)["code"] == "invalid_multipart"
    assert error_of(upload(gateway, LIMITED, good, "application/octet-stream"), 400)["code"] == "invalid_multipart"
    huge = form([batch_line("gpt-4o-mini", n) for n in range(MAX_BODY // 100)])
    assert len(huge) > MAX_BODY and upload(gateway, LIMITED, huge).status == 413
    assert forwarded(mock).count("POST /v1/files") == uploads  # none of the refused ones went on

    # A file of another purpose is not read; an unlimited key's batch file goes on unread (streamed).
    assert upload(gateway, LIMITED, form([batch_line("gpt-4o")], purpose="assistants")).status == 200
    assert upload(gateway, FULL, wrong).status == 200
    assert forwarded(mock).count("POST /v1/files") == uploads + 2


# -- 3. JSON passthrough bodies without a model -------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/responses", {"input": "hi", "previous_response_id": "resp_1"}),
    ("POST", "/v1/responses", {"model": 4, "input": "hi"}),  # not a string: no model named
    ("POST", "/v1/responses/input_tokens", {"input": "hi"}),
    ("POST", "/v1/threads/runs", {"assistant_id": "asst_1"}),
    ("POST", "/v1/threads/thread_1/runs", {"assistant_id": "asst_1"}),
    ("POST", "/v1/threads//thread_1/runs/", {"assistant_id": "asst_1"}),
    ("POST", "/v1/images/generations", {"prompt": "a cat"}),
    ("POST", "/v1/audio/speech", {"input": "hi", "voice": "alloy"}),
])
def test_model_work_without_a_model_is_refused_to_a_limited_key(gateway: Proc, mock: Proc, method: str, path: str,
                                                                 body: dict[str, Any]) -> None:
    before = forwarded(mock)
    error = error_of(send(gateway, LIMITED, method, path, body), 403)
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert "must name the model" in error["message"]
    assert forwarded(mock) == before  # nothing went on
    # An unlimited key's request goes on as before (the mock answers what it answers: not a 403).
    assert send(gateway, FULL, method, path, body).status != 403
    assert len(forwarded(mock)) == len(before) + 1 or len(before) == 100


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/threads", {"messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/threads/thread_1/messages", {"role": "user", "content": "hi"}),
    ("POST", "/v1/threads/thread_1/runs/run_1/submit_tool_outputs", {"tool_outputs": []}),
    ("POST", "/v1/threads/thread_1/runs/run_1/cancel", None),
    ("POST", "/v1/responses/resp_1/cancel", None),
    ("POST", "/v1/assistants/asst_1", {"instructions": "be brief"}),
    ("POST", "/v1/batches", {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                             "completion_window": "24h"}),
    ("POST", "/v1/vector_stores", {"name": "docs"}),
    ("POST", "/v1/uploads", {"purpose": "assistants", "filename": "a.txt", "bytes": 3, "mime_type": "text/plain"}),
    ("GET", "/v1/files", None),
    ("GET", "/v1/batches/batch_1", None),
    ("DELETE", "/v1/files/file-1", None),
])
def test_model_free_endpoints_pass_for_a_limited_key(gateway: Proc, mock: Proc, method: str, path: str,
                                                     body: dict[str, Any] | None) -> None:
    reply = send(gateway, LIMITED, method, path, body)
    assert reply.status != 403, reply.body[:300]
    assert forwarded(mock)[-1] == f"{method} {path}"


def test_a_batch_upload_by_parts_is_refused_to_a_limited_key(gateway: Proc, mock: Proc) -> None:
    before = forwarded(mock)
    body = {"purpose": "batch", "filename": "b.jsonl", "bytes": 10, "mime_type": "application/jsonl"}
    error = error_of(send(gateway, LIMITED, "POST", "/v1/uploads", body), 403)
    assert error["code"] == "model_not_allowed" and error["param"] == "purpose" and "/v1/files" in error["message"]
    assert forwarded(mock) == before
    assert send(gateway, FULL, "POST", "/v1/uploads", body).status != 403


@pytest.mark.parametrize("path", ["/v1/uploads", "/v1/batches"])
def test_a_limited_keys_upload_or_batch_must_be_json(gateway: Proc, mock: Proc, path: str) -> None:
    before = forwarded(mock)
    body = json.dumps({"purpose": "batch", "filename": "b.jsonl", "bytes": 10}).encode()
    error = error_of(send(gateway, LIMITED, "POST", path, body, content_type="text/plain"), 400)
    assert error["code"] == "unsupported_media_type"
    assert forwarded(mock) == before  # a body the check could not read never went on


# -- 4. the audit log's counters in /metrics -----------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = call(url, "GET", "/metrics")
    assert reply.status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.body.decode()) for s in family.samples}


def test_audit_counters_reach_metrics_summed_over_workers(tmp_path: Path, mock: Proc) -> None:
    gateway = start_gateway(tmp_path, config_yaml(tmp_path, mock.url), "--workers", "2")
    sent = 0
    try:
        for _ in range(12):  # missing credential
            assert call(gateway.url, "GET", "/v1/models").status == 401
            sent += 1
        for i in range(9):  # unknown keys
            assert send(gateway, f"sk-sl-{i:043d}", "GET", "/v1/models").status == 401
            sent += 1
        for _ in range(7):  # a route the key's roles do not allow
            assert send(gateway, LIMITED, "GET", "/admin/keys").status == 403
            sent += 1
        deadline = time.monotonic() + 60
        while True:
            listed = send(gateway, ADMIN, "GET", "/admin/audit?limit=1000").json()["data"]
            records = [r for r in listed if r["action"] != "config.load"]  # the parent's, before the workers
            failures = [r for r in records if r["action"] == "auth.failure"]
            samples = scrape(gateway.url)
            written = samples.get(("sluice_audit_records_total", ()), -1.0)
            dropped = sum(v for (name, _), v in samples.items() if name == "sluice_audit_dropped_total")
            events = sum(r["details"]["count"] for r in failures)
            # Every failure is in a record's count or dropped; every record written is counted.
            if events + dropped == sent and written == len(records):
                break
            assert time.monotonic() < deadline, (sent, events, dropped, written, len(records))
            time.sleep(0.3)  # pacing: poll interval (the loop's deadline above)
    finally:
        gateway.stop()
    reasons = {labels[0][1] for (name, labels) in samples if name == "sluice_audit_dropped_total"}
    assert reasons == {"queue_full", "client_ip_flood", "write_failed"}  # bounded: always these three
    assert {r["details"]["reason"] for r in failures} <= {"missing", "unknown", "missing:admin:keys"}


# -- 5. config.load ------------------------------------------------------------------------------------------


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ})


def test_each_start_records_config_load_with_the_files_hash(tmp_path: Path, mock: Proc) -> None:
    text = config_yaml(tmp_path, mock.url)
    for _ in range(2):  # two starts, each from a file of its own (same text, same store)
        start_gateway(tmp_path, text).stop()
    configs = sorted(str(path.resolve()) for path in tmp_path.glob("gateway-*.yaml"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    listed = sluice("audit", "list", "--config", configs[0], "--action", "config.load")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)["data"]
    assert sorted(r["target"] for r in records) == configs, records
    for record in records:
        details = record["details"]
        assert details["path"] == record["target"] and details["sha256"] == digest
        assert details["bytes"] == len(text.encode()) and record["actor"].startswith("cli:")
        dumped = json.dumps(record)
        assert ADMIN not in dumped and MINI_ADMIN not in dumped and "static_keys" not in dumped  # never the content
    verified = sluice("audit", "verify", "--config", configs[0])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout) == {"ok": True, "first_bad_seq": None, "checked": 2}


def test_no_config_load_record_without_auth(tmp_path: Path, mock: Proc) -> None:
    store = tmp_path / "store.db"
    text = (f"store: {{sqlite_path: {json.dumps(str(store))}}}\n"
            f"providers: {{mock: {{kind: openai, base_url: \"{mock.url}\"}}}}\n"
            "models: {gpt-4o-mini: {targets: [{provider: mock, model: gpt-4o-mini}]}}\n")
    start_gateway(tmp_path, text).stop()
    assert not store.exists()  # auth off: the store is not touched at all
