"""The README's promises: `make serve` answers its printed curl; a new user's `pip install .` works."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import venv
from pathlib import Path

import openai
import pytest

from sluice.mock.openai import REPLY
from tests.conftest import ROOT, Proc, call, free_port, start_gateway, wait_for_port, wait_until

pytestmark = pytest.mark.integration


def test_make_serve_answers_the_printed_curl(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.skip("make and curl are needed")
    gateway_port, upstream_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "SLUICE_PORT": str(gateway_port), "UPSTREAM_PORT": str(upstream_port)}
    with log.open("wb") as out:
        serve = subprocess.Popen(["make", "-s", "serve"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    try:
        wait_for_port(gateway_port, serve, log, timeout=120)
        wait_for_port(upstream_port, serve, log, timeout=30)
        printed = log.read_text()
        match = re.search(r"^\s*(curl .*?\})'\s*$", printed, re.S | re.M)
        assert match, printed
        command = match.group(0).replace("\\\n", " ")
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert REPLY in result.stdout
        assert "chat.completion" in result.stdout
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=5)


@pytest.mark.timeout(600)
def test_new_user_pip_install_and_openai_sdk(tmp_path: Path) -> None:
    """Fresh venv, `pip install .`, the mock and the gateway as the README says, the SDK against them."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", str(ROOT)], capture_output=True,
                         text=True, timeout=540)
    assert pip.returncode == 0, pip.stderr[-3000:]
    sluice = str(env_dir / "bin" / "sluice")
    upstream_port, gateway_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    logs = [tmp_path / "mock.log", tmp_path / "gateway.log"]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with logs[0].open("wb") as out:
            processes.append(subprocess.Popen([sluice, "mock-upstream", "--port", str(upstream_port)],
                                              stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        with logs[1].open("wb") as out:
            processes.append(subprocess.Popen(
                [sluice, "serve", "--config", str(ROOT / "examples" / "quickstart.yaml"), "--port",
                 str(gateway_port)], stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                env={**env, "SLUICE_UPSTREAM": f"http://127.0.0.1:{upstream_port}"}))
        wait_for_port(upstream_port, processes[0], logs[0])
        wait_for_port(gateway_port, processes[1], logs[1])
        version = subprocess.run([sluice, "version"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert version.returncode == 0 and "hot path" in version.stdout

        api = openai.OpenAI(base_url=f"http://127.0.0.1:{gateway_port}/v1", api_key="sk-sluice-demo",
                            max_retries=0)
        plain = api.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
        assert plain.choices[0].message.content == REPLY
        streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True) if c.choices)
        assert streamed == REPLY
        vectors = api.embeddings.create(model="text-embedding-3-small", input="Hi")
        assert len(vectors.data[0].embedding) == 1536
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


AUTH_OFF = "auth is off: any caller is accepted, with any key or none; see docs/auth.md"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


def _served_log(gateway: Proc) -> list[str]:
    """The gateway's output once it has answered a request (each worker logs at start, before it answers)."""
    try:
        assert call(gateway.url, "POST", "/v1/chat/completions", body=CHAT, headers={
            "content-type": "application/json", "authorization": "Bearer sk-sluice-demo"}).status == 200
    finally:
        gateway.stop()
    return gateway.log.read_text().splitlines()


def test_the_quickstart_warns_once_that_auth_is_off(tmp_path: Path, mock_upstream: Proc) -> None:
    """Once for `sluice serve`, however many workers it starts (each has built its app once it says Started)."""
    gateway = start_gateway(tmp_path, (ROOT / "examples" / "quickstart.yaml").read_text(), "--workers", "2",
                            env={"SLUICE_UPSTREAM": mock_upstream.url})
    try:
        wait_until(lambda: "Started worker-2" in gateway.log.read_text(), "the second worker's start")
    except BaseException:
        gateway.stop()
        raise
    warnings = [line for line in _served_log(gateway) if AUTH_OFF in line]
    assert len(warnings) == 1, warnings
    assert " WARNING sluice.server " in warnings[0]


def test_no_auth_warning_when_auth_is_on(tmp_path: Path, mock_upstream: Proc) -> None:
    demo = "sk-sluice-demo-" + "x" * 16
    config = (ROOT / "examples" / "quickstart.yaml").read_text() + f"""
store: {{sqlite_path: "{tmp_path / 'sluice.db'}"}}
auth:
  enabled: true
  static_keys: [{{name: demo, key: {demo}, roles: [user]}}]
"""
    gateway = start_gateway(tmp_path, config, env={"SLUICE_UPSTREAM": mock_upstream.url})
    try:
        refused = call(gateway.url, "POST", "/v1/chat/completions", body=CHAT,
                       headers={"content-type": "application/json"})
        assert refused.status == 401
        answered = call(gateway.url, "POST", "/v1/chat/completions", body=CHAT,
                        headers={"content-type": "application/json", "authorization": f"Bearer {demo}"})
        assert answered.status == 200
    finally:
        gateway.stop()
    log = gateway.log.read_text()
    assert "auth is off" not in log
    assert "Started worker-1" in log, log  # the worker did start (after its app was built): the check is real
