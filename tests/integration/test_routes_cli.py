"""`sluice routes --config FILE`: every route with its stages, as the gateway builds them from the config.

Run as the installed command (.venv/bin/sluice, else ``python -m sluice``) in a subprocess, on every
example config.  What it prints is what the gateway runs (``RouteTable.describe()``), so these are the
checks that a configured feature has its stage, in its place, and that a feature left out has none
(no ``if enabled`` on the request path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages",
                "/v1/messages/count_tokens")
PROBES = ("/health/live", "/health/ready", "/health/startup", "/health/details")
FAMILIES = ("/v1/responses", "/v1/assistants", "/v1/threads", "/v1/files", "/v1/batches", "/v1/audio", "/v1/images",
            "/v1/vector_stores", "/v1/uploads")
FRAME = ("access_log", "metrics", "tracing")
GATED = ("auth", "model_access", "rate_limits")  # present only when configured
ADMIN_KEY = "sk-admin-" + "t" * 24  # a test value for examples/auth.yaml's ${SLUICE_ADMIN_KEY}


def sluice_command() -> list[str]:
    installed = Path(sys.executable).parent / "sluice"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "sluice"]


def routes(config: Path, tmp_path: Path) -> dict[str, list[str]]:
    """``sluice routes`` parsed: route title -> its stages' names (the first word of each line), in order."""
    env = {**os.environ, "SLUICE_ADMIN_KEY": ADMIN_KEY, "SLUICE_DB": str(tmp_path / "sluice.db"),
           "SLUICE_METRICS_DIR": str(tmp_path)}
    # In a scratch directory: nothing the gateway would make (a SQLite file, metrics files) lands in the checkout.
    result = subprocess.run([*sluice_command(), "routes", "--config", str(config)], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table: dict[str, list[str]] = {}
    stages: list[str] = []
    for line in result.stdout.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            assert line not in table, f"route printed twice: {line}"
            table[line] = stages = []
        else:
            number, _, text = line.strip().partition(". ")
            assert number == str(len(stages) + 1), line  # numbered in order from 1
            stages.append(text.split(" ", 1)[0])
    return table


def before(stages: list[str], *names: str) -> bool:
    """``names`` all in ``stages``, in that order."""
    indices = [stages.index(name) if name in stages else -1 for name in names]
    return -1 not in indices and indices == sorted(indices)


@pytest.mark.parametrize("config", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_route_is_printed(config: Path, tmp_path: Path) -> None:
    table = routes(config, tmp_path)
    expected = [f"POST {path}" for path in MODEL_ROUTES] + ["GET /v1/models"] + [f"GET {path}" for path in PROBES]
    expected += [f"* {prefix}/... (passthrough)" for prefix in FAMILIES]
    for title in expected:
        assert title in table, f"{title} missing from `sluice routes --config {config.name}`"
    assert any(title.startswith("* any other path") for title in table)
    for title, stages in table.items():
        assert stages, f"{title}: no stages"
        frame = [s for s in stages if s in FRAME]
        assert stages[:len(frame)] == frame, f"{title}: the frame (access log, metrics, tracing) comes first"
    for path in MODEL_ROUTES:
        stages = table[f"POST {path}"]
        assert stages[-1] == "upstream", (path, stages)
        assert before(stages, "decode", "routing", "upstream"), (path, stages)


def test_auth_and_limits_stand_on_every_model_route(tmp_path: Path) -> None:
    table = routes(ROOT / "examples" / "auth.yaml", tmp_path)
    for path in MODEL_ROUTES:
        stages = table[f"POST {path}"]
        assert before(stages, "auth", "model_access", "rate_limits", "upstream"), (path, stages)
        # the body is read before its model is checked; the model routed (unknown: 404) before any charge
        assert before(stages, "auth", "decode", "model_access", "routing", "rate_limits"), (path, stages)
    # GET /v1/models: authenticated, answered by the gateway, never charged
    assert before(table["GET /v1/models"], "auth", "models")
    assert "rate_limits" not in table["GET /v1/models"]
    # The probes and /metrics are open: orchestrators and Prometheus carry no key.
    for path in (*PROBES, "/metrics"):
        assert not set(GATED) & set(table[f"GET {path}"]), (path, table[f"GET {path}"])
    # The admin API: authenticated (RBAC on the route), never throttled by the callers' limits.
    admin = [title for title in table if title.split(" ")[1].startswith("/admin/")]
    assert "GET /admin/keys" in admin and "POST /admin/keys" in admin
    for title in admin:  # exact admin paths end in their handler, those with ids in the dispatch to theirs
        assert (before(table[title], "admin_headers", "auth", "admin")
                or before(table[title], "admin_headers", "auth", "dispatch")
                or before(table[title], "admin_headers", "auth", "method_not_allowed")), (title, table[title])
        assert "rate_limits" not in table[title]
    # The passthrough: authenticated, its own model check, then admission.
    for prefix in FAMILIES:
        stages = table[f"* {prefix}/... (passthrough)"]
        assert before(stages, "auth", "passthrough_request", "rate_limits", "upstream"), (prefix, stages)
    other = next(stages for title, stages in table.items() if title.startswith("* any other path"))
    assert before(other, "auth", "dispatch")


def test_nothing_configured_nothing_on_the_path(tmp_path: Path) -> None:
    table = routes(ROOT / "examples" / "quickstart.yaml", tmp_path)
    for title, stages in table.items():
        assert not set(GATED) & set(stages), f"{title}: {stages} (the quickstart has no auth and no limits)"
        assert "tracing" not in stages and "admin_headers" not in stages, (title, stages)
    assert not [title for title in table if title.split(" ")[1].startswith("/admin")]  # no admin API without auth
    for path in MODEL_ROUTES:
        assert table[f"POST {path}"] == ["access_log", "metrics", "decode", "routing", "upstream"], path


def test_limits_without_auth(tmp_path: Path) -> None:
    table = routes(ROOT / "examples" / "ratelimit.yaml", tmp_path)
    for path in MODEL_ROUTES:
        stages = table[f"POST {path}"]
        assert before(stages, "decode", "routing", "rate_limits", "upstream"), (path, stages)
        assert "auth" not in stages and "model_access" not in stages, (path, stages)


def test_tracing_wraps_the_stages_worth_a_span(tmp_path: Path) -> None:
    config = tmp_path / "traced.yaml"
    config.write_text((ROOT / "examples" / "auth.yaml").read_text() + (
        "observability:\n"
        "  tracing: {enabled: true, endpoint: 'http://127.0.0.1:9/v1/traces', sample_ratio: 0.5}\n"))
    env = {**os.environ, "SLUICE_ADMIN_KEY": ADMIN_KEY, "SLUICE_DB": str(tmp_path / "sluice.db"),
           "SLUICE_METRICS_DIR": str(tmp_path)}
    result = subprocess.run([*sluice_command(), "routes", "--config", str(config)], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    chat = lines[lines.index("POST /v1/chat/completions") + 1:lines.index("POST /v1/completions")]
    names = [line.strip().split(". ", 1)[1] for line in chat]
    assert names[:3] == ["access_log", "metrics", "tracing (sample_ratio 0.5)"]
    traced = [name.split(" ", 1)[0] for name in names if name.endswith("(traced)")]
    assert traced == ["auth", "routing", "rate_limits"]  # the rest run as they are: no span, no wrapper
