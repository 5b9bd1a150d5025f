"""scripts/bootstrap.sh: `make serve` installs the runtime only, changes nothing on the machine, says each step.

Each test runs the script in a copy of the repository, with fakes first on PATH that record every call to
apt-get, apt and sudo, and (but for the last test) a fake interpreter whose venv's pip records what it is asked
to install instead of installing it.  The last test installs for real, runtime only, into a fresh venv.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from requirements import requirements  # noqa: E402 - scripts/ is not a package

RUNTIME_STEPS = [
    "sluice: creating .venv",
    "sluice: installing runtime dependencies (granian, uvloop, msgspec, orjson, xxhash, httptools, pyyaml, "
    "prometheus-client, redis)",
    "sluice: building compiled extensions",
    "sluice: installed in .venv",
]
DEV_ONLY = ("pytest", "ruff", "mypy", "hypothesis", "openai", "schemathesis", "locust", "asyncpg", "opentelemetry",
            "PyJWT")

# The venv's python: records pip's arguments (and the requirements file it is given), answers the hot-path probe
# (compiled, or $HOT_PATH: a build that failed).
FAKE_VENV_PYTHON = """#!/bin/sh
if [ "$1" = -m ] && [ "$2" = pip ]; then
  echo "pip $* SLUICE_NO_EXTENSIONS=${SLUICE_NO_EXTENSIONS:-}" >> "$CALLS/pip"
  while [ $# -gt 0 ]; do [ "$1" = -r ] && cat "$2" >> "$CALLS/requirements"; shift; done
  exit 0
fi
[ "$1" = -c ] && { echo "${HOT_PATH:-compiled}"; exit 0; }
exec REAL "$@"
"""
# The interpreter: `-m venv DIR` makes the fake venv above (or fails, as Debian's python3 without python3-venv).
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = -m ] && [ "$2" = venv ]; then
  [ -n "${NO_VENV_MODULE:-}" ] && { echo "ensurepip is not available" >&2; exit 1; }
  mkdir -p "$3/bin" && cp "$CALLS/../fake-venv-python" "$3/bin/python" && exit 0
fi
exec REAL "$@"
"""
# apt-get and apt record; update succeeds, install fails.  sudo records and runs its command, so that root and
# not root meet the same fakes.
FAKE_APT = '#!/bin/sh\necho "$(basename "$0") $*" >> "$CALLS/system"\n[ "$1" = update ]\n'
FAKE_SUDO = '#!/bin/sh\necho "sudo $*" >> "$CALLS/system"\n[ "$1" = -n ] && exit 0\nexec env "$@"\n'


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def copy_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.c")
    for name in ("src", "ext", "scripts", "examples"):
        shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    return repo


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    repo = copy_repo(tmp_path)
    calls = tmp_path / "calls"
    bin_dir = tmp_path / "bin"
    calls.mkdir()
    bin_dir.mkdir()
    real = sys.executable
    executable(tmp_path / "fake-venv-python", FAKE_VENV_PYTHON.replace("REAL", real))
    executable(bin_dir / "python3", FAKE_PYTHON.replace("REAL", real))
    executable(bin_dir / "apt-get", FAKE_APT)
    executable(bin_dir / "apt", FAKE_APT)
    executable(bin_dir / "sudo", FAKE_SUDO)
    return {"repo": repo, "calls": calls, "bin": bin_dir}


def bootstrap(box: dict[str, Path], extras: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "CC", "VIRTUAL_ENV")}
    full.update(PATH=f"{box['bin']}{os.pathsep}{os.environ['PATH']}", PYTHON=str(box["bin"] / "python3"),
                CALLS=str(box["calls"]), **env)
    return subprocess.run(["bash", str(box["repo"] / "scripts" / "bootstrap.sh"), extras], capture_output=True,
                          text=True, env=full, timeout=120, check=False)


def recorded(box: dict[str, Path], name: str) -> str:
    path = box["calls"] / name
    return path.read_text() if path.exists() else ""


def assert_steps(stdout: str, steps: list[str]) -> None:
    """Each step's line, in order (other lines may come between)."""
    lines = stdout.splitlines()
    at = 0
    for step in steps:
        found = [i for i, line in enumerate(lines) if i >= at and line.startswith(step)]
        assert found, f"no {step!r} after line {at} in:\n{stdout}"
        at = found[0] + 1


def test_runtime_installs_no_system_package_nor_dev_extra(sandbox: dict[str, Path]) -> None:
    result = bootstrap(sandbox, "runtime")
    assert result.returncode == 0, result.stderr
    assert recorded(sandbox, "system") == ""
    assert_steps(result.stdout, RUNTIME_STEPS)
    asked = recorded(sandbox, "requirements").split("\n")
    assert [line for line in asked if line] == requirements(["runtime"])
    assert not [line for line in asked if line.startswith(DEV_ONLY)]
    pip = recorded(sandbox, "pip")
    assert pip.count("\n") == 2 and "--no-deps -e . SLUICE_NO_EXTENSIONS=\n" in pip
    assert "[" not in pip  # no extra asked for by name either
    assert "pip install" not in result.stdout and result.stderr == ""  # pip's own output stays quiet


def test_the_dev_bootstrap_does_install_what_the_tests_need(sandbox: dict[str, Path]) -> None:
    """The other side of the first test: the same fakes see the tests' set-up when it is asked for."""
    result = bootstrap(sandbox, "dev", NO_VENV_MODULE="1")
    assert "apt-get install -y -qq python3-venv" in recorded(sandbox, "system")
    assert result.returncode != 0  # the fake apt-get installs nothing


def test_runtime_without_a_compiler_says_so_and_installs_the_twins(sandbox: dict[str, Path]) -> None:
    result = bootstrap(sandbox, "runtime", CC=str(sandbox["bin"] / "no-such-cc"))
    assert result.returncode == 0, result.stderr
    assert recorded(sandbox, "system") == ""
    assert_steps(result.stdout, [RUNTIME_STEPS[0], "sluice: no C compiler or Python headers (gcc, python3-dev): "
                                 "the pure-Python twins will serve", RUNTIME_STEPS[1],
                                 "sluice: installing sluice without its compiled extensions", RUNTIME_STEPS[3]])
    assert "--no-deps -e . SLUICE_NO_EXTENSIONS=1\n" in recorded(sandbox, "pip")


@pytest.mark.skipif(shutil.which("virtualenv") is not None, reason="virtualenv is installed: it would be used")
def test_runtime_without_the_venv_module_names_the_package(sandbox: dict[str, Path]) -> None:
    result = bootstrap(sandbox, "runtime", NO_VENV_MODULE="1")
    assert result.returncode == 1
    assert recorded(sandbox, "system") == ""
    minor = sys.version_info[1]
    assert result.stderr == (f"sluice: '{sandbox['bin'] / 'python3'} -m venv' is unavailable: install "
                             f"python3.{minor}-venv (or python3-venv), e.g. 'sudo apt-get install "
                             f"python3.{minor}-venv', then run this again\n")
    assert not (sandbox["repo"] / ".venv").exists()


def test_runtime_without_the_venv_module_uses_virtualenv(sandbox: dict[str, Path]) -> None:
    executable(sandbox["bin"] / "virtualenv", f'#!/bin/sh\nmkdir -p .venv/bin && cp "{sandbox["calls"]}/../'
                                              'fake-venv-python" .venv/bin/python\n')
    result = bootstrap(sandbox, "runtime", NO_VENV_MODULE="1")
    assert result.returncode == 0, result.stderr
    assert recorded(sandbox, "system") == ""
    assert f"sluice: no venv module (python3.{sys.version_info[1]}-venv is not installed): creating .venv with " \
           "virtualenv\n" in result.stdout


def test_an_installed_venv_is_not_installed_again(sandbox: dict[str, Path]) -> None:
    assert bootstrap(sandbox, "runtime").returncode == 0
    (sandbox["calls"] / "pip").unlink()
    again = bootstrap(sandbox, "runtime")
    assert again.stdout == "sluice: .venv is up to date\n" and recorded(sandbox, "pip") == ""
    (sandbox["repo"] / "pyproject.toml").touch()  # newer than the stamp: installed again
    os.utime(sandbox["repo"] / "pyproject.toml", (2**31, 2**31))
    assert_steps(bootstrap(sandbox, "runtime").stdout, RUNTIME_STEPS[1:])


def test_a_dev_install_serves_the_runtime_too(sandbox: dict[str, Path]) -> None:
    (sandbox["repo"] / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(sandbox["calls"].parent / "fake-venv-python", sandbox["repo"] / ".venv" / "bin" / "python")
    (sandbox["repo"] / ".venv" / ".installed-dev").write_text("compiled\n")
    os.utime(sandbox["repo"] / ".venv" / ".installed-dev", (2**31, 2**31))
    result = bootstrap(sandbox, "runtime")
    assert result.stdout == "sluice: .venv is up to date\n" and recorded(sandbox, "pip") == ""


HAS_HEADERS = Path(sysconfig.get_paths()["include"], "Python.h").exists()


@pytest.mark.skipif(not HAS_HEADERS, reason="no Python headers: the script would find no compiler")
def test_twins_installed_without_a_compiler_are_replaced_once_there_is_one(sandbox: dict[str, Path]) -> None:
    no_cc, cc = str(sandbox["bin"] / "no-such-cc"), str(sandbox["bin"] / "cc")
    executable(Path(cc), "#!/bin/sh\nexit 0\n")
    assert bootstrap(sandbox, "runtime", CC=no_cc).returncode == 0
    assert bootstrap(sandbox, "runtime", CC=no_cc).stdout.endswith("sluice: .venv is up to date\n")  # still none
    (sandbox["calls"] / "pip").unlink()
    result = bootstrap(sandbox, "runtime", CC=cc)  # a compiler installed, as the message asked: built this time
    assert result.returncode == 0, result.stderr
    assert_steps(result.stdout, RUNTIME_STEPS[1:])
    assert "--no-deps -e . SLUICE_NO_EXTENSIONS=\n" in recorded(sandbox, "pip")
    assert bootstrap(sandbox, "runtime", CC=cc).stdout == "sluice: .venv is up to date\n"


@pytest.mark.skipif(not HAS_HEADERS, reason="no Python headers: the script would find no compiler")
def test_a_build_that_failed_is_tried_again(sandbox: dict[str, Path]) -> None:
    cc = str(sandbox["bin"] / "cc")
    executable(Path(cc), "#!/bin/sh\nexit 0\n")
    failed = bootstrap(sandbox, "runtime", CC=cc, HOT_PATH="pure")
    assert "sluice: the compiled extensions did not build" in failed.stdout
    again = bootstrap(sandbox, "runtime", CC=cc)
    assert_steps(again.stdout, RUNTIME_STEPS[1:])
    assert "did not build" not in again.stdout
    assert bootstrap(sandbox, "runtime", CC=cc).stdout == "sluice: .venv is up to date\n"


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_a_real_runtime_install_serves_the_quickstart(tmp_path: Path) -> None:
    """A fresh venv, runtime only (pip from its cache or index), no compiler (bounded: the build is the dev
    bootstrap's): the quickstart config checks out and none of the dev or optional libraries is there."""
    repo = copy_repo(tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=sys.executable, CC=str(tmp_path / "no-such-cc"))
    result = subprocess.run(["bash", "scripts/bootstrap.sh", "runtime"], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=140, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    python = str(repo / ".venv" / "bin" / "python")
    check = subprocess.run([python, "-m", "sluice", "check-config", "examples/quickstart.yaml"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    probe = ("import importlib.util as u; print([m for m in ('pytest', 'asyncpg', 'opentelemetry', 'jwt', 'openai', "
             "'ruff') if u.find_spec(m)])")
    present = subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert present.stdout == "[]\n"
