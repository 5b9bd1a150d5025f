"""A key limited to some models, on the passthrough families: the model is checked whatever the Content-Type says.

JSON bodies are recognised by their media type in any case (``Application/JSON``) and their model checked;
forms (audio, images) name their model where the gateway does not look, so such a key may not send one;
plain file uploads name no model and stay allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Proc, Reply, call, start_gateway

pytestmark = pytest.mark.integration

LIMITED = "sk-limited-0123456789abcdef"  # models: [gpt-4o-mini]
FULL = "sk-full-0123456789abcdefghi"
BOUNDARY = "sluice-test-boundary"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Proc) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("passthrough-models")
    proc = start_gateway(tmp, f"""
store: {{sqlite_path: {json.dumps(str(tmp / "store.db"))}}}
auth:
  enabled: true
  static_keys:
    - {{name: limited, key: {LIMITED}, roles: [user], models: [gpt-4o-mini]}}
    - {{name: full, key: {FULL}, roles: [user]}}
passthrough: {{provider: mock}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  gpt-4o: {{targets: [{{provider: mock, model: gpt-4o}}]}}
""")
    yield proc
    proc.stop()


def send(gateway: Proc, key: str, path: str, body: bytes, content_type: str) -> Reply:
    return call(gateway.url, "POST", path, body, {"authorization": f"Bearer {key}", "content-type": content_type})


def form(**fields: str) -> bytes:
    parts = [f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             for name, value in fields.items()]
    parts.append(f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="file"; filename="a.bin"\r\n'
                 f"content-type: application/octet-stream\r\n\r\n0123456789\r\n--{BOUNDARY}--\r\n")
    return "".join(parts).encode()


def refused(reply: Reply) -> str:
    assert reply.status == 403, (reply.status, reply.body[:500])
    error = reply.json()["error"]
    assert error["code"] == "model_not_allowed"
    return str(error["message"])


def upstream_paths(mock: Proc) -> list[str]:
    return [r["path"] for r in call(mock.url, "GET", "/_mock/requests").json()]


@pytest.mark.parametrize("content_type", ["Application/JSON", "APPLICATION/JSON; charset=utf-8",
                                          " application/json ;charset=UTF-8"])
def test_json_in_any_case_has_its_model_checked(gateway: Proc, content_type: str) -> None:
    other = json.dumps({"model": "gpt-4o", "input": "hi"}).encode()
    assert "gpt-4o" in refused(send(gateway, LIMITED, "/v1/responses", other, content_type))
    allowed = json.dumps({"model": "gpt-4o-mini", "input": "hi"}).encode()
    assert send(gateway, LIMITED, "/v1/responses", allowed, content_type).status == 200
    assert send(gateway, FULL, "/v1/responses", other, content_type).status == 200


def test_json_to_a_family_the_gateway_does_not_route_has_its_model_checked(gateway: Proc) -> None:
    speech = json.dumps({"model": "tts-1", "input": "hi", "voice": "alloy"}).encode()
    assert "tts-1" in refused(send(gateway, LIMITED, "/v1/audio/speech", speech, "application/json"))
    assert send(gateway, FULL, "/v1/audio/speech", speech, "application/json").status == 200


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/images/edits",
                                  "/v1/images/variations"])
def test_forms_naming_a_model_are_refused_to_a_limited_key(gateway: Proc, mock_upstream: Proc, path: str) -> None:
    body = form(model="gpt-4o", prompt="a cat")
    message = refused(send(gateway, LIMITED, path, body, f"multipart/form-data; boundary={BOUNDARY}"))
    assert "limited to certain models" in message and "cannot be checked" in message
    assert upstream_paths(mock_upstream)[-1] != path  # nothing went on
    # An unrestricted key's form goes on as before (the mock reads only JSON there: its 400).
    assert send(gateway, FULL, path, body, f"multipart/form-data; boundary={BOUNDARY}").status == 400
    assert upstream_paths(mock_upstream)[-1] == path


def test_other_non_json_bodies_are_refused_to_a_limited_key(gateway: Proc) -> None:
    # A JSON body under another media type: the upstream may read it as JSON all the same.
    other = json.dumps({"model": "gpt-4o", "input": "hi"}).encode()
    refused(send(gateway, LIMITED, "/v1/responses", other, "text/plain"))
    refused(send(gateway, LIMITED, "/v1/images/generations", b"model=gpt-4o&prompt=cat",
                 "application/x-www-form-urlencoded"))


def test_file_uploads_stay_allowed_to_a_limited_key(gateway: Proc) -> None:
    # Not a batch file: no model work comes of it. (Batch files are checked: tests/integration/test_auth_gaps.py.)
    reply = send(gateway, LIMITED, "/v1/files", form(purpose="assistants"),
                 f"multipart/form-data; boundary={BOUNDARY}")
    assert reply.status == 200, reply.body[:500]
    assert reply.json()["purpose"] == "assistants"
