"""The other OpenAI endpoints reach an openai-kind provider as they are: JSON, streams, uploads, binary answers."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from sluice.mock.openai import REPLY
from sluice.mock.openai_extra import SPEECH_BYTES
from tests.conftest import Proc, call, start_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mock_upstream: Proc) -> Iterator[Proc]:
    proc = start_gateway(tmp_path_factory.mktemp("passthrough"), f"""
server: {{max_body_bytes: 1048576}}
passthrough: {{provider: openai}}
providers:
  openai: {{kind: openai, base_url: "{mock_upstream.url}", api_keys: [sk-provider]}}
  anthropic: {{kind: anthropic, base_url: "{mock_upstream.url}", api_keys: [sk-ant]}}
models:
  gpt-4o-mini: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}
  house-alias: {{targets: [{{provider: openai, model: gpt-4o}}]}}
  claude-only: {{targets: [{{provider: anthropic, model: claude-3-5-haiku-latest}}]}}
""")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-caller", max_retries=0)


def last_seen(mock: Proc, path: str) -> dict:  # type: ignore[type-arg]
    return [r for r in call(mock.url, "GET", "/_mock/requests").json() if r["path"] == path][-1]  # type: ignore[no-any-return]


def test_responses_plain_and_routed_by_model(client: openai.OpenAI, mock_upstream: Proc) -> None:
    answer = client.responses.create(model="house-alias", input="Say hello.")
    assert answer.output_text == REPLY
    assert answer.model == "gpt-4o"  # the alias was renamed for its target
    headers = last_seen(mock_upstream, "/v1/responses")["headers"]
    assert headers["authorization"] == "Bearer sk-provider"  # the provider's key, never the caller's


def test_responses_stream_stays_a_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o-mini", input="Say hello.", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY


def test_file_upload_is_streamed_through(client: openai.OpenAI, mock_upstream: Proc) -> None:
    data = b'{"custom_id": "1"}\n' * 30_000  # ~570 KB, multipart, sent on as it arrives
    created = client.files.create(file=("batch.jsonl", data), purpose="batch")
    assert (created.bytes, created.filename, created.purpose) == (len(data), "batch.jsonl", "batch")
    assert last_seen(mock_upstream, "/v1/files")["headers"]["content-type"].startswith("multipart/form-data")
    assert client.files.retrieve(created.id).id == created.id


def test_an_upload_over_the_limit_is_refused(gateway: Proc) -> None:
    reply = call(gateway.url, "POST", "/v1/files", b"x" * 2_000_000,
                 {"content-type": "multipart/form-data; boundary=b"})
    assert reply.status == 413 and reply.json()["error"]["code"] == "request_too_large"


def test_speech_comes_back_binary(client: openai.OpenAI) -> None:
    speech = client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")  # not a gateway model
    audio = speech.read()
    assert len(audio) == SPEECH_BYTES and audio[:4] == bytes(range(4))


def test_a_model_without_an_openai_target_is_refused(gateway: Proc) -> None:
    reply = call(gateway.url, "POST", "/v1/responses", {"model": "claude-only", "input": "hi"})
    assert reply.status == 400 and reply.json()["error"]["code"] == "unsupported_capability"


def test_without_a_passthrough_provider_an_unrouted_call_is_a_clear_404(tmp_path, mock_upstream) -> None:
    gateway = start_gateway(tmp_path, f"""
providers: {{openai: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: openai, model: gpt-4o-mini}}]}}}}
""")
    try:
        lookup = call(gateway.url, "GET", "/v1/files/file-123")
        unknown = call(gateway.url, "POST", "/v1/audio/speech", {"model": "tts-1", "input": "x", "voice": "a"})
        routed = call(gateway.url, "POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "hi"})
    finally:
        gateway.stop()
    assert lookup.status == 404 and "passthrough.provider" in lookup.json()["error"]["message"]
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert routed.status == 200 and routed.json()["output"][0]["content"][0]["text"] == REPLY


@pytest.mark.parametrize("path", ["/v1/files/..%2f..%2fv1%2fchat%2fcompletions", "/v1/files/a%0d%0aHost:%20evil",
                                  "/v1/files/%2e%2e/secrets"])
def test_a_path_cannot_leave_its_family_or_break_the_request_line(gateway: Proc, mock_upstream: Proc,
                                                                  path: str) -> None:
    before = len(call(mock_upstream.url, "GET", "/_mock/requests").json())
    reply = call(gateway.url, "GET", path)
    assert reply.status == 404 and reply.json()["error"]["code"] == "unknown_url"
    assert b"\r\n" not in reply.body
    seen = call(mock_upstream.url, "GET", "/_mock/requests").json()
    assert len(seen) == before or all("evil" not in r["path"] and ".." not in r["path"] for r in seen[before:])


def test_a_path_outside_latin_1_is_re_encoded(gateway: Proc, mock_upstream: Proc) -> None:
    reply = call(gateway.url, "GET", "/v1/files/caf%C3%A9%E2%82%AC")
    assert reply.status == 200
    assert [r for r in call(mock_upstream.url, "GET", "/_mock/requests").json()
            if r["path"].startswith("/v1/files/caf")][-1]["path"] in ("/v1/files/café€", "/v1/files/caf%C3%A9%E2%82%AC")
