"""Every test run checks the compiled extensions (tests/conftest.py), not only CI's.

A pytest session is started on a copy of src/ without the built extensions: it must stop at once, saying
why and how to build them, unless SLUICE_REQUIRE_COMPILED=0 or SLUICE_NO_EXTENSIONS=1 asks for the twins.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
A_TEST = "tests/unit/test_extras.py::test_check_extras_raises_for_a_missing_module"


@pytest.fixture(scope="module")
def pure_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("pure") / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return src


def session(src: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {key: value for key, value in os.environ.items()
            if key not in ("SLUICE_REQUIRE_COMPILED", "SLUICE_NO_EXTENSIONS", "CI")}
    full.update(PYTHONPATH=str(src), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", A_TEST], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=100, check=False)


def test_a_run_without_the_extensions_stops_by_default(pure_src: Path) -> None:
    result = session(pure_src)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout
    assert "ERROR: the compiled extensions are required and sluice._native._context does not import" in result.stderr
    assert "SLUICE_REQUIRE_COMPILED=0 runs the pure-Python twins alone" in result.stderr


@pytest.mark.parametrize("opt_out", [{"SLUICE_REQUIRE_COMPILED": "0"}, {"SLUICE_NO_EXTENSIONS": "1"}],
                         ids=["require-0", "no-extensions"])
def test_the_twins_alone_when_asked(pure_src: Path, opt_out: dict[str, str]) -> None:
    result = session(pure_src, **opt_out)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_built_tree_runs() -> None:
    result = session(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
