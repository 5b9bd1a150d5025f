"""The Locust suite runs against sluice, bounded in users and seconds, without a failure."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, start_gateway

pytestmark = pytest.mark.integration


MODELS = """
models:
  gpt-4o-mini: {targets: [{provider: mock, model: gpt-4o-mini}]}
  text-embedding-3-small: {targets: [{provider: mock, model: text-embedding-3-small}]}
"""


def locust(tmp_path: Path, url: str, env: dict[str, str] | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """A 4-second headless run of the suite: its stats rows by name, and locust's stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
         "--host", url, "-u", "10", "-r", "10", "-t", "4s", "--stop-timeout", "3",
         "--csv", str(tmp_path / "run"), "--only-summary"],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    with (tmp_path / "run_stats.csv").open() as stats:
        return {row["Name"]: row for row in csv.DictReader(stats)}, result.stderr


def test_locust_mix_runs_clean(tmp_path, mock_upstream) -> None:
    upstream = f'providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}'
    gateway = start_gateway(tmp_path, upstream + MODELS)
    try:
        rows, stderr = locust(tmp_path, gateway.url)
        total = rows["Aggregated"]
        assert int(total["Request Count"]) > 50, stderr[-2000:]
        assert int(total["Failure Count"]) == 0, stderr[-3000:]
        assert {"chat", "chat stream", "embeddings", "models"} <= set(rows), stderr[-3000:]
        with (tmp_path / "run_exceptions.csv").open() as exceptions:
            assert list(csv.DictReader(exceptions)) == [], stderr[-3000:]
    finally:
        gateway.stop()


def test_the_key_comes_from_sluice_loadtest_key(tmp_path, mock_upstream) -> None:
    """With auth on, the suite passes with the gateway's key in SLUICE_LOADTEST_KEY, and fails without it."""
    key = "sk-loadtest-" + "k" * 32
    config = f"""
store: {{sqlite_path: "{tmp_path / 'keys.db'}", migrate_on_start: true}}
auth: {{enabled: true, static_keys: [{{name: loadtest, key: "{key}", roles: [user]}}]}}
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
""" + MODELS
    gateway = start_gateway(tmp_path, config)
    try:
        rows, stderr = locust(tmp_path, gateway.url, {"SLUICE_LOADTEST_KEY": key})
        assert int(rows["Aggregated"]["Request Count"]) > 50, stderr[-2000:]
        assert int(rows["Aggregated"]["Failure Count"]) == 0, stderr[-3000:]
        rows, stderr = locust(tmp_path, gateway.url)  # the default key: unknown to this gateway
        assert int(rows["Aggregated"]["Failure Count"]) == int(rows["Aggregated"]["Request Count"]) > 0, stderr
    finally:
        gateway.stop()
