"""The sluice command: check-config, version, serve's start-up errors, graceful shutdown, workers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import openai
import pytest

from sluice import __version__
from tests.conftest import ROOT, free_port, start_gateway, start_mock

pytestmark = pytest.mark.integration


def sluice(*args: str, timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def test_version_says_which_hot_path() -> None:
    result = sluice("version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"sluice {__version__} (hot path: ")
    assert "pure" in sluice("version", SLUICE_NO_EXTENSIONS="1").stdout


def test_check_config_accepts_the_examples() -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        # examples/auth.yaml takes its admin key from the environment, as a real deployment does
        result = sluice("check-config", str(path), SLUICE_ADMIN_KEY="sk-admin-" + "x" * 24)
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


@pytest.mark.parametrize(("text", "message"), [
    ("providers: {p: {kind: opneai, base_url: 'http://x'}}", "providers.p.kind: unknown provider kind 'opneai'"),
    ("providers: {p: {kind: openai, base_url: 'http://x'}}\nmodels: {gpt-4o: {targets: [{provider: opneai, "
     "model: m}]}}", "models.gpt-4o.targets[0].provider: unknown provider 'opneai'"),
    ("server: {port: eighty}", "server.port: expected `int`, got `str`"),
    ("server: {prot: 80}", "server: object contains unknown field `prot`"),
    ("providers: {p: {kind: openai, base_url: '${NO_SUCH_VAR_X}'}}",
     "providers.p.base_url: environment variable 'NO_SUCH_VAR_X' is not set"),
    ("models: [1, 2", "invalid YAML"),
])
def test_check_config_names_path_and_problem(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = sluice("check-config", str(path))
    assert result.returncode == 2
    assert message in result.stderr


def test_check_config_missing_file(tmp_path) -> None:
    result = sluice("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read config file" in result.stderr


def test_serve_refuses_a_bad_config_with_exit_code_2(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("providers: {p: {kind: openai, base_url: 'ftp://x'}}")
    result = sluice("serve", "--config", str(path), "--port", str(free_port()))
    assert result.returncode == 2
    assert "providers.p.base_url" in result.stderr


def test_sigterm_lets_an_inflight_stream_finish(tmp_path) -> None:
    mock = start_mock(tmp_path, "--chunk-ms", "150")
    config = f"""
server: {{grace_period_s: 10}}
providers: {{mock: {{kind: openai, base_url: "{mock.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
"""
    gateway = start_gateway(tmp_path, config)
    try:
        api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo", max_retries=0)
        stream = api.chat.completions.create(model="gpt-4o-mini", stream=True,
                                             messages=[{"role": "user", "content": "hi"}])
        iterator = iter(stream)
        first = next(iterator)
        gateway.terminate()  # SIGTERM while ~12 events (~1.8 s) are still to come
        rest = list(iterator)
        text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
        assert text.startswith("Hello!") and text.endswith("request.")
        assert rest[-1].choices[0].finish_reason == "stop"
        assert gateway.process.wait(timeout=15) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
    finally:
        gateway.stop()
        mock.stop()


def test_several_workers_serve(tmp_path, mock_upstream) -> None:
    config = f"""
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
"""
    gateway = start_gateway(tmp_path, config, "--workers", "2")
    try:
        api = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-sluice-demo", max_retries=0)
        for _ in range(20):
            api.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        log = gateway.log.read_text()
        assert "worker-2" in log
    finally:
        gateway.stop()


@pytest.mark.parametrize("interface", ["rsgi", "asgi"])
def test_http2_prior_knowledge(tmp_path, mock_upstream, interface: str) -> None:
    """HTTP/2 (h2c) is served with server.http: auto (the default, http1, closes silent connections in time)."""
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True)
    if curl.returncode != 0 or "HTTP2" not in curl.stdout:
        pytest.skip("curl without HTTP/2")
    gateway = start_gateway(tmp_path, f"""
server: {{http: auto}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models: {{gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}}}
""", "--interface", interface)
    try:
        body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        result = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", "-H",
             "content-type: application/json", "-d", body, f"{gateway.url}/v1/chat/completions"],
            capture_output=True, text=True, timeout=10)
        answer, version = result.stdout.rsplit("\n", 1)
        assert version == "2"
        assert json.loads(answer)["object"] == "chat.completion"
    finally:
        gateway.stop()

