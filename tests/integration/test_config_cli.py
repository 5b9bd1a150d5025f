"""The config's refusals as a user meets them at the command line: exit 2 and one line that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration

NO_MODELS = "sluice: invalid config: no models: add a `models:` section, see examples/quickstart.yaml"


def sluice(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, timeout=60,
                          env=os.environ.copy())


def written(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text", ["", "server: {host: 127.0.0.1}\n"])
def test_check_config_and_serve_refuse_a_config_with_no_models(tmp_path: Path, text: str) -> None:
    path = written(tmp_path, text)
    checked = sluice("check-config", path)
    assert checked.returncode == 2
    assert checked.stderr.startswith(NO_MODELS), checked.stderr
    served = sluice("serve", "--config", path, "--port", str(free_port()))
    assert served.returncode == 2
    assert served.stderr.startswith(NO_MODELS), served.stderr


def test_a_passthrough_provider_alone_is_a_config_that_serves(tmp_path: Path) -> None:
    path = written(tmp_path, "providers: {openai: {kind: openai, base_url: 'http://127.0.0.1:9000'}}\n"
                             "passthrough: {provider: openai}\n")
    checked = sluice("check-config", path)
    assert checked.returncode == 0, checked.stderr
    assert "ok (1 providers, 0 models)" in checked.stdout


def test_admin_commands_still_take_a_store_section_alone(tmp_path: Path) -> None:
    path = written(tmp_path, f"store: {{sqlite_path: '{tmp_path / 'store.db'}'}}\n")
    migrated = sluice("db", "migrate", "--config", path)
    assert migrated.returncode == 0, migrated.stderr


def test_check_config_suggests_the_section_meant(tmp_path: Path) -> None:
    checked = sluice("check-config", written(tmp_path, "rate_limit: {}\n"))
    assert checked.returncode == 2
    assert checked.stderr.strip() == "sluice: invalid config: rate_limit: unknown section (did you mean 'ratelimit'?)"
