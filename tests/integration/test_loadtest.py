"""The Locust suite runs against sluice, bounded in users and seconds, without a failure."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.conftest import ROOT, start_gateway

pytestmark = pytest.mark.integration


def test_locust_mix_runs_clean(tmp_path, mock_upstream) -> None:
    config = f"""
providers: {{mock: {{kind: openai, base_url: "{mock_upstream.url}"}}}}
models:
  gpt-4o-mini: {{targets: [{{provider: mock, model: gpt-4o-mini}}]}}
  text-embedding-3-small: {{targets: [{{provider: mock, model: text-embedding-3-small}}]}}
"""
    gateway = start_gateway(tmp_path, config)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
             "--host", gateway.url, "-u", "10", "-r", "10", "-t", "4s", "--stop-timeout", "3",
             "--csv", str(tmp_path / "run"), "--only-summary"],
            capture_output=True, text=True, timeout=60)
        with (tmp_path / "run_stats.csv").open() as stats:
            rows = {row["Name"]: row for row in csv.DictReader(stats)}
        total = rows["Aggregated"]
        assert int(total["Request Count"]) > 50, result.stderr[-2000:]
        assert int(total["Failure Count"]) == 0, result.stderr[-3000:]
        assert {"chat", "chat stream", "embeddings", "models"} <= set(rows), result.stderr[-3000:]
        with (tmp_path / "run_exceptions.csv").open() as exceptions:
            assert list(csv.DictReader(exceptions)) == [], result.stderr[-3000:]
    finally:
        gateway.stop()
