"""docs/metrics.md has a row for every metric name the code defines, found without starting a gateway.

tests/integration/test_monitoring_emitted.py checks the table against what running gateways declare; this
catches a metric defined where no example reaches it (a stage no example config turns on).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from sluice.observability.metrics import FAMILIES
from tests.integration.test_monitoring import documented

SRC = Path(__file__).resolve().parents[2] / "src" / "sluice"
# A string that is a metric name: the code names its metrics sluice_*; label names never start so.
METRIC = re.compile(r"sluice_[a-z0-9_]+")


def names_in_code() -> set[str]:
    names = {family.name for family in FAMILIES}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and METRIC.fullmatch(node.value):
                names.add(node.value)
    return names


def test_the_scan_finds_the_metrics_of_every_kind() -> None:
    found = names_in_code()
    # a histogram family, a worker gauge, a labelled counter of a stage, the GenAI twins
    assert {"sluice_request_duration_seconds", "sluice_process_open_fds", "sluice_retries",
            "gen_ai_client_token_usage"} <= found


def test_every_metric_in_the_code_has_its_row() -> None:
    docs = documented()
    missing = sorted(name for name in names_in_code() if name not in docs and f"{name}_total" not in docs)
    assert not missing, f"metrics defined in src/sluice without a row in docs/metrics.md: {missing}"
