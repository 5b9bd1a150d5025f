"""examples/auth.yaml as a user runs it: an admin key from the environment makes a key limited to gpt-4o-mini that
the openai SDK uses at once, that gets 403 on another model and 401 right after its revocation; no key, 401; the
audit log lists those events and `sluice audit verify` passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from tests.conftest import ROOT, call, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ADMIN = "sk-admin-example-5b0e1f0c8d2a4f6e"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_the_auth_example_end_to_end(tmp_path, mock_upstream) -> None:
    env = {"SLUICE_UPSTREAM": mock_upstream.url, "SLUICE_DB": str(tmp_path / "sluice.db"), "SLUICE_ADMIN_KEY": ADMIN}
    example = (ROOT / "examples" / "auth.yaml").read_text()
    gateway = start_gateway(tmp_path, example, env=env)
    admin = {"authorization": f"Bearer {ADMIN}"}
    try:
        made = call(gateway.url, "POST", "/admin/keys", {"name": "app", "roles": ["user"], "models": ["gpt-4o-mini"]},
                    admin)
        assert made.status == 201, made.body
        key, key_id = made.json()["key"], made.json()["id"]
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(**CHAT)  # at once
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(**{**CHAT, "model": "gpt-4o"})
        anonymous = call(gateway.url, "POST", "/v1/chat/completions", CHAT)
        revoked = call(gateway.url, "POST", f"/admin/keys/{key_id}/revoke", {}, admin)
        with pytest.raises(openai.AuthenticationError) as after_revoke:
            client.chat.completions.create(**CHAT)
        audit = call(gateway.url, "GET", "/admin/audit?limit=100", headers=admin).json()
    finally:
        gateway.stop()
    assert answer.choices[0].message.content
    assert denied.value.status_code == 403 and "gpt-4o" in str(denied.value.body)
    assert anonymous.status == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert revoked.status == 200
    assert after_revoke.value.status_code == 401
    actions = [record["action"] for record in audit["data"]]
    assert "key.create" in actions and "key.revoke" in actions and "auth.failure" in actions
    assert key not in json.dumps(audit)  # the key itself is never recorded
    verify = subprocess.run([sys.executable, "-m", "sluice", "audit", "verify", "--config",
                             str(next(tmp_path.glob("gateway-*.yaml")))], capture_output=True, text=True,
                            timeout=60, env={**os.environ, **env})
    assert verify.returncode == 0, verify.stdout + verify.stderr
