"""A third-party provider kind, installed as a package of its own, serves requests; Azure deployments too."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sluice.mock.openai import REPLY
from tests.conftest import ROOT, call, start_gateway

pytestmark = pytest.mark.integration

CHAT = {"model": "house-model", "messages": [{"role": "user", "content": "hello"}]}


def seen(mock_url: str, request_id: str) -> dict:  # type: ignore[type-arg]
    for request in call(mock_url, "GET", "/_mock/requests").json():
        if request["headers"].get("x-request-id") == request_id:
            return request  # type: ignore[no-any-return]
    raise AssertionError(f"the mock never saw {request_id}")


def test_the_example_plugin_installs_and_serves(tmp_path, mock_upstream) -> None:
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(ROOT / "examples" / "plugins" / "sluice-example-provider")], check=True, timeout=300)
    config = f"""
providers: {{inhouse: {{kind: example, base_url: "{mock_upstream.url}", api_keys: [house-key]}}}}
models: {{house-model: {{targets: [{{provider: inhouse, model: gpt-4o-mini}}]}}}}
"""
    path = tmp_path / "plugin.yaml"
    path.write_text(config)
    without = subprocess.run([sys.executable, "-m", "sluice", "check-config", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert without.returncode == 2 and "unknown provider kind 'example'" in without.stderr
    env = {"PYTHONPATH": str(site)}
    with_plugin = subprocess.run([sys.executable, "-m", "sluice", "check-config", str(path)],
                                 capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert with_plugin.returncode == 0, with_plugin.stderr
    gateway = start_gateway(tmp_path, config, env=env)
    try:
        reply = call(gateway.url, "POST", "/v1/chat/completions", CHAT, {"x-request-id": "via-plugin"})
        refused = call(gateway.url, "POST", "/v1/embeddings", {"model": "house-model", "input": "x"})
    finally:
        gateway.stop()
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == REPLY
    headers = seen(mock_upstream.url, "via-plugin")["headers"]
    assert headers["x-example-key"] == "house-key" and headers["x-example-client"] == "sluice"
    # the kind says its targets chat and stream only: embeddings are refused, naming what is missing
    assert refused.status == 400 and "embeddings" in refused.json()["error"]["message"]


def test_azure_deployments(tmp_path, mock_upstream) -> None:
    gateway = start_gateway(tmp_path, f"""
providers: {{az: {{kind: azure, base_url: "{mock_upstream.url}", api_version: "2024-10-21", api_keys: [az-key]}}}}
models: {{gpt-4o: {{targets: [{{provider: az, model: my-deployment}}]}}}}
""")
    try:
        reply = call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "gpt-4o"},
                     {"x-request-id": "via-azure"})
        stream = call(gateway.url, "POST", "/v1/chat/completions", {**CHAT, "model": "gpt-4o", "stream": True})
    finally:
        gateway.stop()
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == REPLY
    assert b"data: [DONE]" in stream.body
    request = seen(mock_upstream.url, "via-azure")
    assert request["path"] == "/openai/deployments/my-deployment/chat/completions"
    assert "api-version=2024-10-21" in request["headers"].get("query", request.get("query", ""))
    assert request["headers"]["api-key"] == "az-key" and request["headers"].get("authorization") is None


def test_azure_needs_its_api_version(tmp_path) -> None:
    path = tmp_path / "azure.yaml"
    path.write_text("""
providers: {az: {kind: azure, base_url: "https://x.openai.azure.com"}}
models: {gpt-4o: {targets: [{provider: az, model: d}]}}
""")
    result = subprocess.run([sys.executable, "-m", "sluice", "check-config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "providers.az.api_version" in result.stderr
