#!/usr/bin/env bash
# Creates .venv and installs sluice into it, one "sluice: ..." line per step; pip's own output is kept in
# build/bootstrap.log and shown only when a step fails.
#
#   scripts/bootstrap.sh runtime       `make serve`: the runtime dependencies and the compiled extensions, and
#                                      never a system package.  No C compiler or Python headers: it says so, the
#                                      pure-Python twins serve, and the next run that finds them builds the
#                                      extensions.  No venv module (Debian without python3-venv): virtualenv if
#                                      there is one, else one line naming the package.
#   scripts/bootstrap.sh dev[,bench]   `make test`, `make venv`, `make bench`: the dev extras (every optional
#                                      extra included) and what the tests need from the system (compiler,
#                                      promtool, valgrind, PostgreSQL, Redis), installed with apt-get when we may
#                                      (root or passwordless sudo).
#
# PYTHON picks the interpreter (python3), CC the compiler looked for (cc).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=${1:-dev}
mkdir -p build
log=build/bootstrap.log
: >"$log"

step() { echo "sluice: $*"; }

# Runs a command with its output in the log; on failure shows the log's tail and stops.
quietly() {
  if ! "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "sluice: failed: $* (whole output in $log)" >&2
    exit 1
  fi
}

# The system set-up is the tests' business: the runtime bootstrap never changes the machine.
system_setup() { [[ $extras != runtime ]]; }

apt_install() {
  system_setup || return 1
  step "installing system packages: $*"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >>"$log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq >>"$log" 2>&1 \
      && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$log" 2>&1
  else echo "sluice: please install: $*" >&2; return 1; fi
}

# A stamp newer than everything the install depends on, whose install has the best hot path to be had: the stamp
# holds the hot path installed, and one that is not "compiled" is out of date when there is a compiler (installed
# since, as the step without one asks, or there at a build that failed: it is tried again).
up_to_date() {
  [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ] && [ ! setup.py -nt "$1" ] \
    && [ -z "$(find ext -newer "$1" -name '*.pyx' 2>/dev/null)" ] \
    && { [ "$compiler" = no ] || [ "$(cat "$1")" = compiled ]; }
}

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "sluice: needs Python >= 3.11 ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  step "creating .venv ($PYTHON -m venv)"
  if ! "$PYTHON" -m venv .venv >>"$log" 2>&1; then
    rm -rf .venv
    venv_package=$("$PYTHON" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")')
    if system_setup && apt_install python3-venv; then
      quietly "$PYTHON" -m venv .venv
    elif command -v virtualenv >/dev/null; then
      step "no venv module ($venv_package is not installed): creating .venv with virtualenv"
      quietly virtualenv -q -p "$PYTHON" .venv
    else
      echo "sluice: '$PYTHON -m venv' is unavailable: install $venv_package (or python3-venv), e.g." \
           "'sudo apt-get install $venv_package', then run this again" >&2
      exit 1
    fi
  fi
fi

# The extensions need a C compiler and the Python headers; without them the pure twins serve.
compiler=yes
include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
if ! command -v "${CC:-cc}" >/dev/null || [ ! -f "$include/Python.h" ]; then
  if ! apt_install gcc python3-dev; then
    step "no C compiler or Python headers (gcc, python3-dev): the pure-Python twins will serve (install them" \
         "and run this again for the compiled hot path)"
    compiler=no
  fi
fi

if system_setup && [[ ",$extras," == *,dev,* ]]; then
  # promtool and prometheus check monitoring/ in the tests (they skip without them, outside CI).
  if ! command -v promtool >/dev/null; then
    apt_install --no-install-recommends prometheus \
      || echo "sluice: no promtool; the monitoring tests will be skipped" >&2
  fi
  # The performance gate (tests/perf/) counts instructions per request under callgrind (fails in CI without it).
  if ! command -v valgrind >/dev/null; then
    apt_install --no-install-recommends valgrind \
      || echo "sluice: no valgrind; the performance gate will be skipped (it fails in CI)" >&2
  fi
  # The integration tests start throwaway PostgreSQL (initdb, postgres) and redis-server processes of their own.
  servers=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || command -v initdb >/dev/null || servers+=(postgresql)
  command -v redis-server >/dev/null || servers+=(redis-server)
  if [ ${#servers[@]} -gt 0 ]; then
    apt_install --no-install-recommends "${servers[@]}" \
      || echo "sluice: no ${servers[*]}; the store and Redis tests will fail" >&2
  fi
fi

stamp=.venv/.installed-$extras
# The dev install holds the runtime: `make serve` after `make test` installs nothing.
if up_to_date "$stamp" || { [ "$extras" = runtime ] && up_to_date .venv/.installed-dev; }; then
  step ".venv is up to date"
  exit 0
fi
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if [ "$extras" = runtime ]; then
  step "installing runtime dependencies ($("$PYTHON" scripts/requirements.py --names runtime))"
else
  step "installing runtime and $extras dependencies ($("$PYTHON" scripts/requirements.py --names "$extras"))"
fi
"$PYTHON" scripts/requirements.py "$extras" >build/requirements.txt
quietly "${pip[@]}" -r build/requirements.txt
if [ "$compiler" = yes ]; then
  step "building compiled extensions (Cython, then the C compiler: a minute or two)"
  quietly "${pip[@]}" --no-deps -e .
  hot_path=$(.venv/bin/python -c 'from sluice._native import IMPLEMENTATION; print(IMPLEMENTATION)')
  if [ "$hot_path" != compiled ]; then
    step "the compiled extensions did not build (see $log): the pure-Python twins will serve (the next run" \
         "tries again)"
  fi
else
  step "installing sluice without its compiled extensions"
  SLUICE_NO_EXTENSIONS=1 quietly "${pip[@]}" --no-deps -e .
  hot_path=pure
fi
echo "$hot_path" >"$stamp"
step "installed in .venv"
