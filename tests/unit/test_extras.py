"""The optional extras: a config that needs one the install lacks stops with one line naming it.

The missing library is simulated in a fresh interpreter by a ``sys.modules`` entry set to None (what
Python does for a module that must not import), so the suite's venv, which has every extra, stays whole.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sluice.config import parse_config
from sluice.config.extras import EXTRAS, check_extras, installed, needed
from sluice.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = """
providers:
  mock: {kind: openai, base_url: "http://127.0.0.1:9"}
models:
  m: {targets: [{provider: mock, model: m}]}
"""

# extra -> (a config section that needs it, the config path the error names, a module whose import it guards)
NEEDS = {
    "postgres": ("store: {postgres_url: 'postgresql://u:p@127.0.0.1:5/db'}", "store.postgres_url",
                 "sluice.store.postgres"),
    "otel": ("observability: {tracing: {enabled: true, endpoint: 'http://127.0.0.1:4318/v1/traces'}}",
             "observability.tracing.enabled", "sluice.observability.tracing"),
    "jwt": ("auth: {enabled: true, jwt: [{issuer: 'https://idp.example', audience: sluice, algorithms: [HS256],"
            " hs256_secret: 'a-secret-of-enough-length-000000'}]}", "auth.jwt", "sluice.auth.jwt"),
}
INTROSPECTION = ("auth: {enabled: true, introspection: [{endpoint: 'https://idp.example/introspect',"
                 " client_id: c, client_secret: s}]}")


def without(extra: str, code: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter in which the extra's modules cannot be imported."""
    block = "".join(f"sys.modules[{module!r}] = None\n" for module in EXTRAS[extra])
    program = f"import sys\n{block}{textwrap.dedent(code)}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60,
                          check=False)


def test_the_tests_have_every_extra() -> None:
    """dev includes every extra: the tests below would prove nothing if one were missing already."""
    assert all(installed(extra) for extra in EXTRAS)


@pytest.mark.parametrize("extra", sorted(NEEDS))
def test_check_config_names_the_missing_extra(extra: str, tmp_path: Path) -> None:
    section, path, _ = NEEDS[extra]
    config = tmp_path / "config.yaml"
    config.write_text(BASE + section + "\n")
    result = without(extra, f"from sluice.cli import main; sys.exit(main(['check-config', {str(config)!r}]))")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"sluice: invalid config: {path}: needs the {extra} extra, which is not installed: "
                             f"pip install 'sluice[{extra}]'\n")
    assert result.stdout == ""


@pytest.mark.parametrize("extra", sorted(NEEDS))
def test_the_same_config_is_fine_with_the_extra(extra: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(BASE + NEEDS[extra][0] + "\n")
    result = subprocess.run([sys.executable, "-m", "sluice", "check-config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(": ok (1 providers, 1 models)\n")


@pytest.mark.parametrize("extra", sorted(NEEDS))
def test_the_guarded_import_raises_config_error(extra: str) -> None:
    """A caller that reaches the module without a loaded config gets the same ConfigError, not an ImportError."""
    _, path, module = NEEDS[extra]
    result = without(extra, f"""
        from sluice.errors import ConfigError
        try:
            import {module}
        except ConfigError as exc:
            print(exc)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: needs the {extra} extra, which is not installed: pip install 'sluice[{extra}]'\n"


def test_introspection_needs_the_jwt_extra_too() -> None:
    config = parse_config(BASE + INTROSPECTION + "\n", {})
    assert needed(config) == [("auth.introspection", "jwt")]
    result = without("jwt", "import sluice.auth.introspection")
    assert "ConfigError: auth.introspection: needs the jwt extra" in result.stderr


def test_a_config_without_those_features_needs_no_extra() -> None:
    config = parse_config(BASE, {})
    assert needed(config) == []
    result = without("postgres", f"""
        from sluice.config import parse_config
        from sluice.config.extras import check_extras
        sys.modules["opentelemetry.sdk"] = sys.modules["jwt"] = None
        check_extras(parse_config({BASE!r}, {{}}))
        print("ok")
        """)
    assert result.stdout == "ok\n", result.stderr


def test_check_extras_raises_for_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(BASE + NEEDS["postgres"][0] + "\n", {})
    check_extras(config)
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigError, match=r"^store\.postgres_url: needs the postgres extra"):
        check_extras(config)
