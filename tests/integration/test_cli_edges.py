"""The CLI's rough edges, each through a real `sluice` subprocess: a taken port, admin commands that need only the
store settings (unset variables of any type elsewhere, a missing extra), SLUICE_CONFIG, unset secrets in
check-config/routes, a closed pipe, --format table, import litellm."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

SAMPLE = ROOT / "examples" / "litellm" / "config.yaml"


def sluice(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
           unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in unset and k != "SLUICE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, timeout=timeout,
                          env={**environment, **(env or {})})


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.strip().splitlines() == [text]


@pytest.mark.parametrize("command", [["serve", "--config", str(ROOT / "examples" / "quickstart.yaml")],
                                     ["mock-upstream"]])
def test_a_taken_port_is_one_line_and_exit_1(command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = sluice(*command, "--port", str(port))
    who = "mock-upstream: " if command[0] == "mock-upstream" else ""
    assert_one_line(result, 1, f"sluice: {who}cannot listen on 127.0.0.1:{port}: address already in use")


def store_config(tmp_path: Path) -> Path:
    """A config whose providers name variables that are unset: an admin command must not care."""
    path = tmp_path / "sluice.yaml"
    path.write_text(f"""
store: {{sqlite_path: "{tmp_path / 'store.db'}"}}
providers:
  p: {{kind: openai, base_url: "${{CLI_EDGE_UNSET_URL}}", api_keys: ["${{CLI_EDGE_UNSET_KEY}}"]}}
models: {{m: {{targets: [{{provider: p, model: m}}]}}}}
""")
    return path


def test_admin_commands_need_only_the_store_settings(tmp_path) -> None:
    config = str(store_config(tmp_path))
    created = sluice("keys", "create", "--config", config, "--name", "ci", "--role", "user")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["id"]
    listed = sluice("keys", "list", "--config", config)
    assert listed.returncode == 0, listed.stderr
    assert [k["id"] for k in json.loads(listed.stdout)["data"]] == [key_id]
    for command in (["db", "version"], ["audit", "verify"], ["users", "list"], ["dlq", "list"]):
        result = sluice(*command, "--config", config)
        assert result.returncode == 0, (command, result.stderr)


def test_unset_numbers_and_booleans_outside_the_store_get_placeholders_of_their_type(tmp_path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text(f"""
store: {{sqlite_path: "{tmp_path / 'store.db'}"}}
server:
  port: ${{CLI_EDGE_UNSET_INT}}
  grace_period_s: ${{CLI_EDGE_UNSET_FLOAT}}
observability:
  access_log: ${{CLI_EDGE_UNSET_BOOL}}
providers:
  p: {{kind: openai, base_url: "http://127.0.0.1:9"}}
models: {{m: {{targets: [{{provider: p, model: m}}]}}}}
""")
    result = sluice("keys", "list", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["data"] == []


def test_a_postgres_store_without_its_extra_is_one_line_and_exit_2(tmp_path) -> None:
    """asyncpg hidden, as tests/unit/test_extras.py hides a module: the admin commands name the extra."""
    path = tmp_path / "sluice.yaml"
    path.write_text("store: {postgres_url: 'postgresql://u:p@127.0.0.1:5/db'}\n")
    program = textwrap.dedent("""
        import sys
        sys.modules["asyncpg"] = None
        from sluice.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    for command in (["keys", "list"], ["db", "version"]):
        result = subprocess.run([sys.executable, "-c", program, *command, "--config", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert_one_line(result, 2, "sluice: invalid config: store.postgres_url: needs the postgres extra, which is "
                                   "not installed: pip install 'sluice[postgres]'")


def test_an_unset_store_variable_still_fails(tmp_path) -> None:
    path = tmp_path / "sluice.yaml"
    path.write_text('store: {sqlite_path: "${CLI_EDGE_UNSET_DB}"}\n')
    result = sluice("keys", "list", "--config", str(path))
    assert_one_line(result, 2, "sluice: invalid config: store.sqlite_path: environment variable "
                               "'CLI_EDGE_UNSET_DB' is not set and has no default")


def test_sluice_config_is_the_default_config(tmp_path) -> None:
    config = str(store_config(tmp_path))
    result = sluice("db", "version", env={"SLUICE_CONFIG": config})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sqlite ")
    assert sluice("check-config", env={"SLUICE_CONFIG": str(ROOT / "examples" / "quickstart.yaml")}).returncode == 0
    assert_one_line(sluice("keys", "list"), 2, "sluice: keys: no config: give --config FILE or set SLUICE_CONFIG")


def test_check_config_and_routes_fill_unset_secrets_and_say_so() -> None:
    auth = str(ROOT / "examples" / "auth.yaml")
    note = ("sluice: note: SLUICE_ADMIN_KEY is not set (auth.static_keys[0].key): checked with a placeholder; "
            "serve needs it")
    checked = sluice("check-config", auth, unset=("SLUICE_ADMIN_KEY",))
    assert_one_line(checked, 0, note)
    assert checked.stdout == f"{auth}: ok (1 providers, 2 models)\n"
    routes = sluice("routes", "--config", auth, unset=("SLUICE_ADMIN_KEY",))
    assert_one_line(routes, 0, note)
    assert "POST /v1/chat/completions" in routes.stdout and "auth" in routes.stdout
    strict = sluice("check-config", "--strict", auth, unset=("SLUICE_ADMIN_KEY",))
    assert_one_line(strict, 2, "sluice: invalid config: auth.static_keys[0].key: environment variable "
                               "'SLUICE_ADMIN_KEY' is not set and has no default")


def test_a_closed_pipe_ends_quietly(tmp_path) -> None:
    """`sluice keys list | head -0`: the reader is gone before the first write."""
    config = str(store_config(tmp_path))
    assert sluice("keys", "create", "--config", config, "--name", "a").returncode == 0
    for command in (["keys", "list", "--config", config], ["version"]):
        read, write = os.pipe()
        os.close(read)
        try:
            result = subprocess.run([sys.executable, "-m", "sluice", *command], stdout=write, stderr=subprocess.PIPE,
                                    text=True, timeout=60)
        finally:
            os.close(write)
        assert result.returncode == 1
        assert result.stderr == "", result.stderr


def test_format_table(tmp_path) -> None:
    config = str(store_config(tmp_path))
    key_id = json.loads(sluice("keys", "create", "--config", config, "--name", "ci-bot", "--role", "user").stdout)["id"]
    result = sluice("keys", "list", "--config", config, "--format", "table")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["ID", "PREFIX", "NAME", "SERVICE_ACCOUNT", "ROLES", "SIGNING", "CREATED_AT", "STATUS"]
    assert row.split()[0] == key_id and row.split()[2:6] == ["ci-bot", "no", "user", "no"]
    assert row.index("ci-bot") == header.index("NAME")  # aligned
    one = sluice("keys", "get", key_id, "--config", config, "--format", "table").stdout.splitlines()
    assert one[0].split() == ["FIELD", "VALUE"] and one[2].split() == ["id", key_id]


def test_format_table_prints_a_new_key_whole(tmp_path) -> None:
    """The key is shown once: a table that cut it would lose it.  The printed one is the stored one."""
    config = str(store_config(tmp_path))
    by_json = json.loads(sluice("keys", "create", "--config", config, "--name", "j").stdout)
    created = sluice("keys", "create", "--config", config, "--name", "t", "--format", "table")
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(maxsplit=1) for line in created.stdout.splitlines()[1:] if len(line.split()) == 2)
    key = fields["key"]
    assert len(key) == len(by_json["key"]) > 48
    with sqlite3.connect(tmp_path / "store.db") as db:
        stored = db.execute("SELECT id FROM api_keys WHERE key_hash = ?",
                            (hashlib.sha256(key.encode()).hexdigest(),)).fetchall()
    assert stored == [(fields["id"],)]


def test_import_litellm_sample_passes_check_config(tmp_path) -> None:
    out = tmp_path / "sluice.yaml"
    result = sluice("import", "litellm", str(SAMPLE), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "sluice: import litellm: 9 not mapped:",
        "  model_list[4].litellm_params.model: provider 'bedrock' has no sluice provider kind (sluice speaks "
        "openai, anthropic, gemini, azure and OpenAI-compatible APIs; a plugin can add one, docs/providers.md)",
        "  model_list[6].litellm_params.model: provider 'vertex_ai' has no sluice provider kind (sluice speaks "
        "openai, anthropic, gemini, azure and OpenAI-compatible APIs; a plugin can add one, docs/providers.md)",
        "  model_list[7].model_info: metadata sluice does not read (capabilities come from the provider kind; set "
        "capabilities: on the target if needed)",
        "  router_settings.fallbacks[1].gemini-pro: 'gemini-pro' is not a mapped model",
        "  litellm_settings.drop_params: not a setting sluice has",
        "  litellm_settings.success_callback: sluice logs and traces itself (observability: access log, metrics, "
        "OpenTelemetry)",
        "  litellm_settings.cache: sluice has no response cache",
        "  general_settings.master_key: a literal key of 7 characters: sluice wants at least 20, so the admin key "
        "is read from ${SLUICE_ADMIN_KEY}",
        "  general_settings.database_url: LiteLLM's own database (its keys and spend are not sluice's): give "
        "sluice a store of its own (store.postgres_url) and create keys with `sluice keys`",
    ]
    checked = sluice("check-config", "--strict", str(out), env={
        "SLUICE_ADMIN_KEY": "sk-admin-" + "x" * 24, "OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a",
        "GEMINI_API_KEY": "g", "AZURE_API_KEY_EU": "a1", "AZURE_API_KEY_CA": "a2"})
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == f"{out}: ok (6 providers, 5 models)\n"
    assert sorted(yaml.safe_load(out.read_text())["models"]) == ["claude-sonnet", "gemini-flash", "gpt-4o",
                                                                 "gpt-4o-mini", "llama-3"]


@pytest.mark.parametrize(("text", "problem"), [
    ("model_list: [1", "not YAML at line 1, column 15: expected ',' or ']', but got '<stream end>'"),
    ("- a\n- b\n", "a LiteLLM config is a mapping of sections, got a list"),
    ("general_settings: {}\n", "no model_list: nothing to import"),
    ("model_list: {gpt: 1}\n", "model_list: expected a list of models, got a mapping"),
    ("model_list: [{model_name: m, litellm_params: {model: 3}}]\n",
     'model_list[0].litellm_params.model: expected "provider/model", got int'),
])
def test_import_litellm_bad_input_is_one_line_and_exit_2(tmp_path, text: str, problem: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = sluice("import", "litellm", str(path))
    assert_one_line(result, 2, f"sluice: import litellm: {path}: {problem}")
    assert result.stdout == ""
